//! The one error table: every failure a client can see, classified once as
//! (`ErrorInfo.reason`, gRPC code, HTTP status, S4E code).
//!
//! Every edge reads it and nothing else: the gRPC status mapping
//! (`grpc::status`), Envoy's denial (`grpc::envoy`), the HTTP API's JSON
//! envelopes (`http`), forward auth, and the metrics labels. No edge builds a
//! `tonic::Status` and decodes it again to learn the reason. The README's
//! "Errors" table is [`TABLE`] (a test keeps the two equal).
//!
//! A [`Problem`] is what an edge tells the client about one failure: its
//! [`Class`], a message that never holds a secret, and the details some
//! classes carry (the field at fault, the missing scope, when to retry).
//! `INTERNAL` and `UNAVAILABLE` log their cause here and tell the client
//! nothing more.

use std::{collections::HashMap, time::Duration};

use http::{HeaderValue, StatusCode, header};
use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt as _};

use crate::domain::{AuthFailure, Error};

/// `ErrorInfo.domain` of every error.
pub const ERROR_DOMAIN: &str = "portcullis";

/// How one kind of failure looks at each edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Class {
    /// `google.rpc.ErrorInfo.reason`, in upper snake case.
    pub reason: &'static str,
    /// The gRPC status code.
    pub grpc: Code,
    /// The HTTP status of the HTTP API, forward auth and Envoy's denial.
    pub http: StatusCode,
    /// The S4E error code of the JSON envelope (`"error":{"code":…}`).
    pub s4e: &'static str,
    /// When it happens, for the README.
    pub when: &'static str,
}

macro_rules! classes {
    ($($name:ident = $reason:literal, $grpc:ident, $http:ident, $s4e:literal, $when:literal;)*) => {
        $(
            #[doc = concat!("`", $reason, "`: ", $when)]
            pub const $name: Class = Class {
                reason: $reason,
                grpc: Code::$grpc,
                http: StatusCode::$http,
                s4e: $s4e,
                when: $when,
            };
        )*
        /// Every class, in the README's order.
        pub const TABLE: &[Class] = &[$($name),*];
    };
}

classes! {
    UNAUTHORIZED = "UNAUTHORIZED", Unauthenticated, UNAUTHORIZED, "unauthorized",
        "no, unknown, revoked, malformed (bad checksum) or ambiguous credential; its owner is disabled; wrong login; wrong, used or expired second-factor code";
    TOKEN_EXPIRED = "TOKEN_EXPIRED", Unauthenticated, UNAUTHORIZED, "token_expired",
        "the session's lifetime or the key's expiry is over";
    FORBIDDEN = "FORBIDDEN", PermissionDenied, FORBIDDEN, "forbidden",
        "a scope is missing (`metadata.missing_scope` names it); a cookie-only state change from an origin not allowed";
    MFA_REQUIRED = "MFA_REQUIRED", PermissionDenied, FORBIDDEN, "mfa_required",
        "a pending login still needs its second factor";
    RATE_LIMITED = "RATE_LIMITED", ResourceExhausted, TOO_MANY_REQUESTS, "rate_limited",
        "too many attempts, or password hashing saturated; with `google.rpc.RetryInfo` and `retry-after`";
    CAPTCHA_REQUIRED = "CAPTCHA_REQUIRED", Unauthenticated, UNAUTHORIZED, "captcha_required",
        "the captcha policy wants a captcha and none was sent";
    CAPTCHA_INVALID = "CAPTCHA_INVALID", Unauthenticated, UNAUTHORIZED, "captcha_invalid",
        "the captcha vendor refused the response";
    CAPTCHA_UNAVAILABLE = "CAPTCHA_UNAVAILABLE", Unavailable, SERVICE_UNAVAILABLE, "captcha_unavailable",
        "the captcha vendor could not be asked (fails closed)";
    INVALID_ARGUMENT = "INVALID_ARGUMENT", InvalidArgument, BAD_REQUEST, "invalid_argument",
        "bad input (`google.rpc.BadRequest` names the field); a body that does not decode";
    MESSAGE_TOO_LARGE = "MESSAGE_TOO_LARGE", ResourceExhausted, PAYLOAD_TOO_LARGE, "message_too_large",
        "a request message or body over `max_message_bytes`";
    UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE", InvalidArgument, UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type",
        "an HTTP request body not sent as `application/json` (form-encoded, another or no content type)";
    NOT_FOUND = "NOT_FOUND", NotFound, NOT_FOUND, "not_found",
        "no such user, session or key (or not yours); no such HTTP path";
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED", Unimplemented, METHOD_NOT_ALLOWED, "method_not_allowed",
        "an HTTP method the path does not take (`Allow` lists those it does)";
    UNIMPLEMENTED = "UNIMPLEMENTED", Unimplemented, NOT_FOUND, "not_found",
        "no such gRPC service or method";
    ALREADY_EXISTS = "ALREADY_EXISTS", AlreadyExists, CONFLICT, "already_exists",
        "the email is taken";
    FAILED_PRECONDITION = "FAILED_PRECONDITION", FailedPrecondition, PRECONDITION_FAILED, "failed_precondition",
        "the account is not in a state for this (e.g. confirming TOTP without enrolling, email without SMTP)";
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED", DeadlineExceeded, GATEWAY_TIMEOUT, "deadline_exceeded",
        "the call ran past `request_timeout` (or the client's own deadline)";
    UNAVAILABLE = "UNAVAILABLE", Unavailable, SERVICE_UNAVAILABLE, "unavailable",
        "the database does not answer, or the server is shutting down; retry";
    INTERNAL = "INTERNAL", Internal, INTERNAL_SERVER_ERROR, "internal",
        "a bug; logged, the client is told nothing more";
}

/// One failure as a client sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Its class.
    pub class: Class,
    /// A message for people; never a secret, never whether an email exists.
    pub message: String,
    /// For `INVALID_ARGUMENT`: the request field at fault and what is wrong
    /// with it (`google.rpc.BadRequest`).
    pub violation: Option<(&'static str, String)>,
    /// `ErrorInfo.metadata`: `missing_scope`, `resource`, `session_revoked`.
    pub metadata: Vec<(&'static str, String)>,
    /// For `RATE_LIMITED`: when to retry.
    pub retry_after: Option<Duration>,
    /// A 401 for a request that carried no credential at all (RFC 6750:
    /// then the challenge names no error).
    pub missing_credential: bool,
}

impl Problem {
    /// A problem of `class` with `message` and no details.
    #[must_use]
    pub fn new(class: Class, message: impl Into<String>) -> Self {
        Self {
            class,
            message: message.into(),
            violation: None,
            metadata: Vec::new(),
            retry_after: None,
            missing_credential: false,
        }
    }

    /// `INVALID_ARGUMENT` naming `field`.
    #[must_use]
    pub fn invalid(field: &'static str, description: impl std::fmt::Display) -> Self {
        let message = format!("{field}: {description}");
        Self { violation: Some((field, description.to_string())), ..Self::new(INVALID_ARGUMENT, message) }
    }

    /// The `Retry-After` value in whole seconds (at least 1), when set.
    #[must_use]
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after.map(|after| after.as_secs().max(1))
    }
}

// === the views of a problem ===

impl From<Problem> for tonic::Status {
    /// The table's code, a `google.rpc.ErrorInfo` (domain `portcullis`, the
    /// table's reason) on every status, a `google.rpc.BadRequest` for bad
    /// input, a `google.rpc.RetryInfo` and `retry-after` metadata when the
    /// client should retry later.
    fn from(problem: Problem) -> Self {
        let Problem { class, message, violation, metadata, retry_after, missing_credential: _ } = problem;
        let metadata: HashMap<String, String> =
            metadata.into_iter().map(|(key, value)| (key.to_owned(), value)).collect();
        let mut details = ErrorDetails::with_error_info(class.reason, ERROR_DOMAIN, metadata);
        if let Some((field, description)) = violation {
            details.add_bad_request_violation(field, description);
        }
        if let Some(after) = retry_after {
            details.set_retry_info(Some(after));
        }
        let mut status = tonic::Status::with_error_details(class.grpc, message, details);
        if let Some(after) = retry_after
            && let Ok(value) = after.as_secs().max(1).to_string().parse()
        {
            status.metadata_mut().insert("retry-after", value);
        }
        status
    }
}

impl Problem {
    /// The S4E error envelope: `{"status":"error","error":{"code":…,"message":…}}`
    /// (plus `field` for bad input).
    #[must_use]
    pub fn s4e_body(&self) -> serde_json::Value {
        let mut error = serde_json::json!({ "code": self.class.s4e, "message": self.message });
        if let Some((field, _)) = &self.violation {
            error["field"] = serde_json::Value::from(*field);
        }
        serde_json::json!({ "status": "error", "error": error })
    }

    /// The headers every HTTP denial of this problem carries besides its
    /// body: `content-type`, `retry-after`, and on 401 the RFC 6750
    /// `www-authenticate` challenge.
    #[must_use]
    pub fn http_headers(&self) -> Vec<(header::HeaderName, HeaderValue)> {
        let mut headers = vec![(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))];
        if self.class.http == StatusCode::UNAUTHORIZED {
            let challenge = if self.missing_credential {
                r#"Bearer realm="portcullis""#
            } else {
                r#"Bearer realm="portcullis", error="invalid_token""#
            };
            headers.push((header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge)));
        }
        if let Some(secs) = self.retry_after_secs() {
            headers.push((header::RETRY_AFTER, HeaderValue::from(secs)));
        }
        headers
    }

    /// An HTTP response with `body` as JSON and [`Problem::http_headers`].
    #[must_use]
    pub fn json_response(&self, body: &serde_json::Value) -> http::Response<axum::body::Body> {
        let mut response = http::Response::new(axum::body::Body::from(body.to_string()));
        *response.status_mut() = self.class.http;
        response.headers_mut().extend(self.http_headers());
        response
    }

    /// The S4E HTTP answer: the table's status and the S4E envelope.
    #[must_use]
    pub fn into_s4e_response(self) -> http::Response<axum::body::Body> {
        self.json_response(&self.s4e_body())
    }

    /// The gRPC answer (trailers only).
    #[must_use]
    pub fn into_grpc_response(self) -> http::Response<axum::body::Body> {
        tonic::Status::from(self).into_http()
    }
}

/// The canonical upper-case name of a gRPC status code.
#[must_use]
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The class of a credential failure.
#[must_use]
pub fn classify_auth(failure: AuthFailure) -> Class {
    match failure {
        AuthFailure::Expired => TOKEN_EXPIRED,
        AuthFailure::MfaRequired => MFA_REQUIRED,
        AuthFailure::CaptchaRequired => CAPTCHA_REQUIRED,
        AuthFailure::CaptchaInvalid => CAPTCHA_INVALID,
        AuthFailure::CaptchaUnavailable => CAPTCHA_UNAVAILABLE,
        AuthFailure::Missing
        | AuthFailure::Ambiguous
        | AuthFailure::InvalidToken
        | AuthFailure::InvalidLogin
        | AuthFailure::WrongPassword
        | AuthFailure::InvalidCode
        | AuthFailure::RefreshReuse => UNAUTHORIZED,
    }
}

/// The class of a domain error.
#[must_use]
pub fn classify(err: &Error) -> Class {
    match err {
        Error::InvalidArgument { .. } => INVALID_ARGUMENT,
        Error::Unauthenticated(failure) => classify_auth(*failure),
        Error::Forbidden { .. } => FORBIDDEN,
        Error::NotFound(_) => NOT_FOUND,
        Error::FailedPrecondition(_) => FAILED_PRECONDITION,
        Error::AlreadyExists(_) => ALREADY_EXISTS,
        Error::Overloaded { .. } | Error::RateLimited { .. } => RATE_LIMITED,
        Error::Unavailable(_) => UNAVAILABLE,
        Error::Internal(_) => INTERNAL,
    }
}

impl From<Error> for Problem {
    fn from(err: Error) -> Self {
        let class = classify(&err);
        let message = err.to_string();
        match err {
            Error::InvalidArgument { field, description } => Problem::invalid(field, description),
            Error::Unauthenticated(failure) => {
                let mut problem = Problem::new(class, message);
                match failure {
                    AuthFailure::RefreshReuse => problem.metadata.push(("session_revoked", "true".into())),
                    AuthFailure::Missing => problem.missing_credential = true,
                    _ => {}
                }
                problem
            }
            Error::Forbidden { missing_scope, .. } => Problem {
                metadata: missing_scope.map(|scope| vec![("missing_scope", scope)]).unwrap_or_default(),
                ..Problem::new(class, message)
            },
            Error::NotFound(what) | Error::AlreadyExists(what) => {
                Problem { metadata: vec![("resource", what.to_owned())], ..Problem::new(class, message) }
            }
            Error::FailedPrecondition(_) => Problem::new(class, message),
            Error::RateLimited { retry_after } | Error::Overloaded { retry_after, .. } => {
                Problem { retry_after: Some(retry_after), ..Problem::new(class, message) }
            }
            Error::Unavailable(source) => {
                tracing::error!(error = %source, "database unavailable");
                Problem::new(class, "service temporarily unavailable; retry later")
            }
            Error::Internal(cause) => {
                tracing::error!(%cause, "internal error");
                Problem::new(class, "internal error")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_table_is_this_table() {
        let readme = include_str!("../README.md");
        let mut table = String::from(
            "| S4E code | HTTP | gRPC code | `ErrorInfo.reason` | when |\n|---|---|---|---|---|\n",
        );
        for class in TABLE {
            use std::fmt::Write as _;
            let _ = writeln!(
                table,
                "| `{}` | {} | `{}` | `{}` | {} |",
                class.s4e,
                class.http.as_u16(),
                code_name(class.grpc),
                class.reason,
                class.when
            );
        }
        assert!(readme.contains(&table), "the README's error table should read:\n{table}");
    }

    #[test]
    fn reasons_are_unique_and_s4e_codes_lower_snake_case() {
        let mut reasons: Vec<_> = TABLE.iter().map(|class| class.reason).collect();
        reasons.sort_unstable();
        reasons.dedup();
        assert_eq!(reasons.len(), TABLE.len());
        for class in TABLE {
            assert!(class.reason.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'), "{class:?}");
            assert!(class.s4e.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{class:?}");
        }
    }

    #[test]
    fn the_seed_rows_are_as_s4e_documents_them() {
        for (class, http, s4e) in [
            (UNAUTHORIZED, 401, "unauthorized"),
            (TOKEN_EXPIRED, 401, "token_expired"),
            (FORBIDDEN, 403, "forbidden"),
            (MFA_REQUIRED, 403, "mfa_required"),
            (RATE_LIMITED, 429, "rate_limited"),
        ] {
            assert_eq!(class.http.as_u16(), http);
            assert_eq!(class.s4e, s4e);
        }
    }

    #[test]
    fn every_domain_error_has_its_row() {
        let cases: Vec<(Error, Class)> = vec![
            (Error::invalid("email", "bad"), INVALID_ARGUMENT),
            (AuthFailure::Expired.into(), TOKEN_EXPIRED),
            (AuthFailure::MfaRequired.into(), MFA_REQUIRED),
            (AuthFailure::InvalidLogin.into(), UNAUTHORIZED),
            (AuthFailure::CaptchaUnavailable.into(), CAPTCHA_UNAVAILABLE),
            (Error::missing_scope("a:b"), FORBIDDEN),
            (Error::NotFound("user"), NOT_FOUND),
            (Error::AlreadyExists("user"), ALREADY_EXISTS),
            (Error::RateLimited { retry_after: Duration::from_secs(3) }, RATE_LIMITED),
            (Error::Overloaded { what: "hashing", retry_after: Duration::from_secs(1) }, RATE_LIMITED),
            (Error::Internal("x".into()), INTERNAL),
        ];
        for (err, class) in cases {
            assert_eq!(Problem::from(err).class, class);
        }
    }

    #[test]
    fn details_travel_with_the_problem() {
        let problem = Problem::from(Error::missing_scope("assets:read"));
        assert_eq!(problem.metadata, vec![("missing_scope", "assets:read".to_owned())]);
        let problem = Problem::from(Error::RateLimited { retry_after: Duration::from_millis(1500) });
        assert_eq!(problem.retry_after_secs(), Some(1));
        let problem = Problem::from(Error::invalid("email", "is not valid"));
        assert_eq!(problem.violation, Some(("email", "is not valid".to_owned())));
        assert_eq!(problem.message, "email: is not valid");
        let problem = Problem::from(Error::Internal("secret cause".into()));
        assert_eq!(problem.message, "internal error");
        assert!(Problem::from(Error::from(AuthFailure::Missing)).missing_credential);
        assert!(!Problem::from(Error::from(AuthFailure::InvalidToken)).missing_credential);
    }
}
