//! The one error type of the rules. `grpc::status` maps it to a gRPC status
//! with an `ErrorInfo` reason; nothing here knows about gRPC.

/// Result of a rule.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a rule refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The client sent something malformed; `field` names it.
    #[error("{field}: {description}")]
    InvalidArgument {
        /// The request field at fault.
        field: &'static str,
        /// What is wrong with it.
        description: String,
    },
    /// The credential is missing, unknown, expired or otherwise not accepted.
    #[error("{0}")]
    Unauthenticated(AuthFailure),
    /// The caller is known but may not do this.
    #[error("{message}")]
    Forbidden {
        /// What was refused.
        message: String,
        /// The scope that would have allowed it, if one would.
        missing_scope: Option<String>,
    },
    /// The named thing does not exist (or is not visible to the caller).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The request is well-formed but the account is not in a state that
    /// allows it (e.g. confirming TOTP without enrolling).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The named thing exists already.
    #[error("{0} already exists")]
    AlreadyExists(&'static str),
    /// Too much work queued; the client should retry later.
    #[error("{what} is busy; retry later")]
    Overloaded {
        /// What is saturated.
        what: &'static str,
        /// When to retry.
        retry_after: std::time::Duration,
    },
    /// Too many attempts for a limit; the client should retry later.
    #[error("too many attempts; retry in {} s", retry_after.as_secs().max(1))]
    RateLimited {
        /// When to retry.
        retry_after: std::time::Duration,
    },
    /// The database cannot be reached or failed; never read as "valid".
    #[error("database unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A bug or an impossible state; logged, never shown to the client.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The ways a credential is not accepted. Each maps to an S4E error code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    /// No credential where one is needed.
    #[error("missing credential: send `authorization: Bearer <token>`")]
    Missing,
    /// The request carries two different credentials.
    #[error("ambiguous credential: the request carries different tokens")]
    Ambiguous,
    /// Malformed, bad checksum, unknown, revoked, or its user is disabled.
    #[error("invalid or revoked token")]
    InvalidToken,
    /// Login failed. The same answer for an unknown email, a wrong password
    /// and a disabled account.
    #[error("invalid email or password")]
    InvalidLogin,
    /// The captcha policy requires a captcha and none was sent.
    #[error("captcha required")]
    CaptchaRequired,
    /// The captcha vendor did not accept the response.
    #[error("captcha verification failed")]
    CaptchaInvalid,
    /// The captcha vendor could not be asked; the login fails closed.
    #[error("captcha verification is unavailable; retry later")]
    CaptchaUnavailable,
    /// A second-factor code is wrong, used, or expired.
    #[error("invalid or expired code")]
    InvalidCode,
    /// The current password given to change it is wrong.
    #[error("the current password is not correct")]
    WrongPassword,
    /// The token's lifetime is over.
    #[error("token expired")]
    Expired,
    /// A pending login that still needs its second factor.
    #[error("multi-factor authentication required")]
    MfaRequired,
    /// A refresh token presented again after its grace: the session is revoked.
    #[error("token was already refreshed; the session has been revoked")]
    RefreshReuse,
}

impl AuthFailure {
    /// A short label for logs, metrics and aggregated audit rows.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Ambiguous => "ambiguous",
            AuthFailure::InvalidToken => "invalid",
            AuthFailure::InvalidLogin => "invalid_login",
            AuthFailure::Expired => "expired",
            AuthFailure::MfaRequired => "mfa_required",
            AuthFailure::RefreshReuse => "refresh_reuse",
            AuthFailure::CaptchaRequired => "captcha_required",
            AuthFailure::CaptchaInvalid => "captcha_invalid",
            AuthFailure::CaptchaUnavailable => "captcha_unavailable",
            AuthFailure::InvalidCode => "invalid_code",
            AuthFailure::WrongPassword => "wrong_password",
        }
    }
}

impl Error {
    /// An `INVALID_ARGUMENT` naming `field`.
    pub fn invalid(field: &'static str, description: impl Into<String>) -> Self {
        Self::InvalidArgument { field, description: description.into() }
    }

    /// A `FORBIDDEN` for lack of `scope`.
    #[must_use]
    pub fn missing_scope(scope: &str) -> Self {
        Self::Forbidden {
            message: format!("the credential lacks the scope `{scope}`"),
            missing_scope: Some(scope.to_owned()),
        }
    }
}

impl From<AuthFailure> for Error {
    fn from(failure: AuthFailure) -> Self {
        Self::Unauthenticated(failure)
    }
}
