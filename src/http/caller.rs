//! Who calls the HTTP API: the request's [`Call`], built by the same code
//! as for gRPC ([`crate::request::call`]), after the browser's CSRF rule
//! ([`browser::check_origin`]).

use http::request::Parts;

use super::{State, browser, source};
use crate::{domain::Principal, errors::Problem, request::Call};

/// A call that needs no credential of its own.
#[must_use]
pub fn anonymous(state: &State, parts: &Parts) -> Call<()> {
    Call::anonymous(&state.domain, &source(parts))
}

/// A call whose credential is optional; a credential that is present must
/// be valid.
///
/// # Errors
/// A cookie-only state change from an origin not allowed; a present
/// credential that is ambiguous or not valid.
pub async fn optional(state: &State, parts: &Parts) -> Result<Call<Option<Principal>>, Problem> {
    browser::check_origin(&state.domain, &state.settings, parts)?;
    Ok(Call::optional(&state.domain, &source(parts)).await?)
}

/// A call that must carry a valid credential of its own.
///
/// # Errors
/// A cookie-only state change from an origin not allowed; a missing,
/// ambiguous or invalid credential.
pub async fn authenticated(state: &State, parts: &Parts) -> Result<Call<Principal>, Problem> {
    browser::check_origin(&state.domain, &state.settings, parts)?;
    Ok(Call::authenticated(&state.domain, &source(parts)).await?)
}

/// The caller's own credential, unvalidated (refresh and logout take the
/// token itself), and whether it came in the session cookie alone.
///
/// # Errors
/// As [`authenticated`], before validation.
pub fn credential(state: &State, parts: &Parts) -> Result<(String, bool), Problem> {
    browser::check_origin(&state.domain, &state.settings, parts)?;
    let token = source(parts).credential(&state.domain)?;
    Ok((token, browser::cookie_only(&state.domain, parts)))
}
