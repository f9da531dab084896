//! What browsers need: the session cookie, the CSRF rule and CORS.
//!
//! - A successful S4E login (or MFA verification, or refresh of a cookie
//!   session) sets `<name>=<token>; HttpOnly; Secure; SameSite=Lax; Path=/;
//!   Max-Age=<seconds left>`; logout clears it. Page scripts cannot read it
//!   (`HttpOnly`); `Secure` is left out only when `session_cookie_secure =
//!   false` (loopback development). No `Expires`: `Max-Age` is relative, so
//!   the browser's clock does not matter.
//! - CSRF: a request that changes state (any method but GET, HEAD and
//!   OPTIONS) and is authenticated by the cookie alone must come from a page
//!   of an origin in `allowed_origins` (its `Origin` header), else 403
//!   `forbidden`. A request carrying its credential in a header or the
//!   query was written by a program that holds the token: no browser adds
//!   those by itself.
//! - CORS with credentials for `allowed_origins` (tower-http), so those
//!   pages can read the answers; every other origin's script gets nothing.

use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, header, request::Parts};
use tower_http::cors::{AllowOrigin, CorsLayer};

use super::Settings;
use crate::{
    domain::{AuthFailure, Domain, Error, credential},
    errors::{self, Problem},
};

/// The `Set-Cookie` value that stores `token` for `max_age` seconds.
#[must_use]
pub fn session_cookie(settings: &Settings, token: &str, max_age: i64) -> Option<HeaderValue> {
    cookie(settings, token, max_age.max(0))
}

/// The `Set-Cookie` value that removes the session cookie.
#[must_use]
pub fn cleared_cookie(settings: &Settings) -> Option<HeaderValue> {
    cookie(settings, "", 0)
}

fn cookie(settings: &Settings, value: &str, max_age: i64) -> Option<HeaderValue> {
    let secure = if settings.cookie_secure { " Secure;" } else { "" };
    let cookie = format!(
        "{}={value}; HttpOnly;{secure} SameSite=Lax; Path=/; Max-Age={max_age}",
        settings.cookie_name
    );
    // Tokens are base62 and `_`: always a valid header value.
    HeaderValue::from_str(&cookie).ok()
}

/// Whether the request carries its credential in the session cookie and
/// in no other form.
#[must_use]
pub fn cookie_only(domain: &Domain, parts: &Parts) -> bool {
    let sources = domain.credential_sources();
    let query = parts.uri.query().unwrap_or_default();
    let headers =
        || parts.headers.iter().filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)));
    let is_cookie = |name: &str| name.eq_ignore_ascii_case("cookie");
    let cookie_carries_one =
        credential::find(sources, headers().filter(|(name, _)| is_cookie(name)), "").is_ok();
    cookie_carries_one
        && matches!(
            credential::find(sources, headers().filter(|(name, _)| !is_cookie(name)), query),
            Err(Error::Unauthenticated(AuthFailure::Missing))
        )
}

/// The CSRF rule (see the module docs).
///
/// # Errors
/// `FORBIDDEN` for a cookie-only state change without an allowed `Origin`.
pub fn check_origin(domain: &Domain, settings: &Settings, parts: &Parts) -> Result<(), Problem> {
    let safe = matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
    if safe || !cookie_only(domain, parts) {
        return Ok(());
    }
    let origin = parts.headers.get(header::ORIGIN).and_then(|value| value.to_str().ok()).unwrap_or_default();
    if settings.allowed_origins.iter().any(|allowed| allowed.eq_ignore_ascii_case(origin)) {
        Ok(())
    } else {
        Err(Problem::new(
            errors::FORBIDDEN,
            "a request authenticated by the session cookie must come from an allowed origin",
        ))
    }
}

/// CORS with credentials for `allowed_origins`; no CORS headers for any
/// other origin.
pub fn cors(settings: &Settings) -> CorsLayer {
    let origins: Vec<HeaderValue> =
        settings.allowed_origins.iter().filter_map(|origin| HeaderValue::from_str(origin).ok()).collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_credentials(true)
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers([
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
            HeaderName::from_static("x-api-key"),
            HeaderName::from_static("x-request-id"),
            HeaderName::from_static("traceparent"),
            HeaderName::from_static("tracestate"),
        ])
        .expose_headers([
            HeaderName::from_static("x-request-id"),
            header::RETRY_AFTER,
            header::WWW_AUTHENTICATE,
        ])
        .max_age(Duration::from_mins(10))
}
