//! The one mapping from `domain::Error` to a gRPC status. Every status
//! carries a `google.rpc.ErrorInfo` (domain `portcullis`); bad input adds a
//! `google.rpc.BadRequest`, load shedding a `google.rpc.RetryInfo`.
//! `INTERNAL` and `UNAVAILABLE` log their cause and tell the client nothing.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::domain::{AuthFailure, Error};

/// `ErrorInfo.domain` of every error.
pub const ERROR_DOMAIN: &str = "portcullis";

/// Converts a domain error to the status the client sees.
#[must_use]
pub fn to_status(err: Error) -> Status {
    let info = |reason: &str, metadata: HashMap<String, String>| {
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata)
    };
    match err {
        Error::InvalidArgument { field, description } => {
            let mut details = ErrorDetails::with_bad_request_violation(field, description.clone());
            details.set_error_info("INVALID_ARGUMENT", ERROR_DOMAIN, HashMap::new());
            Status::with_error_details(Code::InvalidArgument, format!("{field}: {description}"), details)
        }
        Error::Unauthenticated(failure) => {
            let (code, reason) = match failure {
                AuthFailure::Expired => (Code::Unauthenticated, "TOKEN_EXPIRED"),
                AuthFailure::MfaRequired => (Code::PermissionDenied, "MFA_REQUIRED"),
                AuthFailure::CaptchaRequired => (Code::Unauthenticated, "CAPTCHA_REQUIRED"),
                AuthFailure::CaptchaInvalid => (Code::Unauthenticated, "CAPTCHA_INVALID"),
                AuthFailure::CaptchaUnavailable => (Code::Unavailable, "CAPTCHA_UNAVAILABLE"),
                AuthFailure::Missing
                | AuthFailure::Ambiguous
                | AuthFailure::InvalidToken
                | AuthFailure::InvalidLogin
                | AuthFailure::WrongPassword
                | AuthFailure::InvalidCode
                | AuthFailure::RefreshReuse => (Code::Unauthenticated, "UNAUTHORIZED"),
            };
            let mut metadata = HashMap::new();
            if failure == AuthFailure::RefreshReuse {
                metadata.insert("session_revoked".to_owned(), "true".to_owned());
            }
            Status::with_error_details(code, failure.to_string(), info(reason, metadata))
        }
        Error::Forbidden { message, missing_scope } => {
            let metadata = missing_scope
                .map(|scope| HashMap::from([("missing_scope".to_owned(), scope)]))
                .unwrap_or_default();
            Status::with_error_details(Code::PermissionDenied, message, info("FORBIDDEN", metadata))
        }
        Error::NotFound(what) => Status::with_error_details(
            Code::NotFound,
            format!("{what} not found"),
            info("NOT_FOUND", HashMap::from([("resource".to_owned(), what.to_owned())])),
        ),
        Error::FailedPrecondition(message) => Status::with_error_details(
            Code::FailedPrecondition,
            message,
            info("FAILED_PRECONDITION", HashMap::new()),
        ),
        Error::AlreadyExists(what) => Status::with_error_details(
            Code::AlreadyExists,
            format!("{what} already exists"),
            info("ALREADY_EXISTS", HashMap::from([("resource".to_owned(), what.to_owned())])),
        ),
        Error::RateLimited { retry_after } => {
            let mut details = info("RATE_LIMITED", HashMap::new());
            details.set_retry_info(Some(retry_after));
            let mut status =
                Status::with_error_details(Code::ResourceExhausted, err_message(retry_after), details);
            if let Ok(value) = retry_after.as_secs().max(1).to_string().parse() {
                status.metadata_mut().insert("retry-after", value);
            }
            status
        }
        Error::Overloaded { what, retry_after } => {
            let mut details = info("RATE_LIMITED", HashMap::new());
            details.set_retry_info(Some(retry_after));
            let mut status = Status::with_error_details(
                Code::ResourceExhausted,
                format!("{what} is busy; retry later"),
                details,
            );
            if let Ok(value) = retry_after.as_secs().max(1).to_string().parse() {
                status.metadata_mut().insert("retry-after", value);
            }
            status
        }
        Error::Unavailable(source) => {
            tracing::error!(error = %source, "database unavailable");
            Status::with_error_details(
                Code::Unavailable,
                "service temporarily unavailable; retry later",
                info("UNAVAILABLE", HashMap::new()),
            )
        }
        Error::Internal(cause) => {
            tracing::error!(%cause, "internal error");
            Status::with_error_details(Code::Internal, "internal error", info("INTERNAL", HashMap::new()))
        }
    }
}

fn err_message(retry_after: std::time::Duration) -> String {
    Error::RateLimited { retry_after }.to_string()
}
