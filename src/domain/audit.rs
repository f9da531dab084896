//! Who asked, from where, and what the audit log says about it.
//!
//! Every rule that changes state takes a [`Ctx`] (request id, client, actor)
//! and hands the store an [`AuditEvent`] to write in the same transaction
//! as the change, so a change is never without its row, nor a row without
//! its change. Events never hold a secret.

use std::net::IpAddr;

use chrono::{DateTime, Utc};

use super::{CredentialId, KeyId, Principal, UserId};

/// Who is acting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Actor {
    /// No credential (a login, a token validation).
    Anonymous,
    /// A user's session.
    User(UserId),
    /// An API key.
    Key(KeyId),
    /// The operator, through the command line.
    System,
}

impl Actor {
    /// The actor of a principal.
    #[must_use]
    pub fn of(principal: &Principal) -> Self {
        match principal.credential {
            CredentialId::Session(_) => Actor::User(principal.user_id),
            CredentialId::ApiKey(id) => Actor::Key(id),
        }
    }

    /// As stored: `user:1`, `key:3`, `anonymous`, `system`.
    #[must_use]
    pub fn label(self) -> String {
        match self {
            Actor::Anonymous => "anonymous".into(),
            Actor::User(id) => format!("user:{id}"),
            Actor::Key(id) => format!("key:{id}"),
            Actor::System => "system".into(),
        }
    }
}

/// The request a rule runs for.
#[derive(Clone, Debug)]
pub struct Ctx {
    /// The caller's `x-request-id` (or a generated one).
    pub request_id: String,
    /// The end user's IP: the peer's, or `client.ip` from a trusted caller.
    pub client_ip: Option<IpAddr>,
    /// The end user's user agent, when known.
    pub user_agent: String,
    /// Who is acting.
    pub actor: Actor,
}

impl Ctx {
    /// A context for work the operator starts (the CLI) or tests.
    #[must_use]
    pub fn system() -> Self {
        Self { request_id: String::new(), client_ip: None, user_agent: String::new(), actor: Actor::System }
    }

    /// The same request, acting as `principal`.
    #[must_use]
    pub fn acting_as(&self, principal: &Principal) -> Self {
        Self { actor: Actor::of(principal), ..self.clone() }
    }

    /// An event of this request.
    #[must_use]
    pub fn event(
        &self,
        at: DateTime<Utc>,
        action: Action,
        outcome: Outcome,
        subject: impl Into<String>,
    ) -> AuditEvent {
        AuditEvent {
            at,
            action,
            outcome,
            actor: self.actor.label(),
            subject: subject.into(),
            client_ip: self.client_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            user_agent: self.user_agent.chars().take(512).collect(),
            request_id: self.request_id.clone(),
            detail: String::new(),
            count: 1,
        }
    }
}

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs, reason = "the names say it")]
pub enum Action {
    LoginSucceeded,
    LoginFailed,
    LoginPendingMfa,
    MfaSucceeded,
    MfaFailed,
    MfaEnabled,
    MfaDisabled,
    RecoveryCodesRegenerated,
    SessionRefreshed,
    RefreshReuse,
    Logout,
    SessionRevoked,
    SessionsRevoked,
    UserCreated,
    UserUpdated,
    PasswordChanged,
    PasswordSet,
    KeyCreated,
    KeyUpdated,
    KeyRotated,
    KeyRevoked,
    AccountLocked,
    CaptchaFailed,
    InvalidTokens,
}

impl Action {
    /// As stored and filtered on.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Action::LoginSucceeded => "login.succeeded",
            Action::LoginFailed => "login.failed",
            Action::LoginPendingMfa => "login.pending_mfa",
            Action::MfaSucceeded => "mfa.succeeded",
            Action::MfaFailed => "mfa.failed",
            Action::MfaEnabled => "mfa.enabled",
            Action::MfaDisabled => "mfa.disabled",
            Action::RecoveryCodesRegenerated => "mfa.recovery_codes_regenerated",
            Action::SessionRefreshed => "session.refreshed",
            Action::RefreshReuse => "session.refresh_reuse",
            Action::Logout => "session.logout",
            Action::SessionRevoked => "session.revoked",
            Action::SessionsRevoked => "sessions.revoked",
            Action::UserCreated => "user.created",
            Action::UserUpdated => "user.updated",
            Action::PasswordChanged => "user.password_changed",
            Action::PasswordSet => "user.password_set",
            Action::KeyCreated => "key.created",
            Action::KeyUpdated => "key.updated",
            Action::KeyRotated => "key.rotated",
            Action::KeyRevoked => "key.revoked",
            Action::AccountLocked => "account.locked",
            Action::CaptchaFailed => "captcha.failed",
            Action::InvalidTokens => "token.invalid",
        }
    }
}

/// How it ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It happened.
    Success,
    /// It was refused.
    Failure,
}

impl Outcome {
    /// As stored and filtered on.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
        }
    }
}

/// One row of the audit log.
#[derive(Clone, Debug)]
pub struct AuditEvent {
    /// When.
    pub at: DateTime<Utc>,
    /// What.
    pub action: Action,
    /// How it ended.
    pub outcome: Outcome,
    /// Who (see [`Actor::label`]).
    pub actor: String,
    /// What it was done to: `user:5`, `session:9`, `key:2`, `email:a@b.c`.
    pub subject: String,
    /// The end user's IP.
    pub client_ip: String,
    /// The end user's user agent.
    pub user_agent: String,
    /// The request it came from.
    pub request_id: String,
    /// Why (a reason code, never a secret).
    pub detail: String,
    /// How many occurrences one row stands for (aggregated floods).
    pub count: i64,
}

impl AuditEvent {
    /// The same event with a reason.
    #[must_use]
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }
}

/// A stored audit row, as read back.
#[derive(Clone, Debug)]
pub struct AuditRecord {
    /// Identifier (ascending in time).
    pub id: i64,
    /// When.
    pub at: DateTime<Utc>,
    /// What (see [`Action::as_str`]).
    pub action: String,
    /// `success` or `failure`.
    pub outcome: String,
    /// Who.
    pub actor: String,
    /// To what.
    pub subject: String,
    /// The end user's IP.
    pub client_ip: String,
    /// The end user's user agent.
    pub user_agent: String,
    /// The request.
    pub request_id: String,
    /// Why.
    pub detail: String,
    /// Occurrences this row stands for.
    pub count: i64,
}

/// Filters of `ListAuditEvents`.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    /// Exact subject.
    pub subject: Option<String>,
    /// Exact actor.
    pub actor: Option<String>,
    /// Exact action.
    pub action: Option<String>,
    /// `success` or `failure`.
    pub outcome: Option<String>,
    /// At or after.
    pub start: Option<DateTime<Utc>>,
    /// Before.
    pub end: Option<DateTime<Utc>>,
    /// Exact request id.
    pub request_id: Option<String>,
}
