//! The gRPC edge: tonic services that validate, read the caller, convert,
//! make one domain call and convert back. No SQL, hashing or policy here.

mod auth;
mod convert;
mod keys;
mod redact;
mod status;
mod user;

use std::sync::Arc;

pub use auth::AuthService;
pub use keys::KeyService;
pub use status::to_status;
pub use user::UserService;

use tonic::metadata::{KeyAndValueRef, MetadataMap};

use crate::domain::{Domain, Principal, credential};

/// Finds the caller's own credential in the request metadata
/// (`authorization`, `x-api-key`, `cookie`), if there is one.
///
/// # Errors
/// `Unauthenticated` for a missing or ambiguous credential.
fn caller_token(domain: &Domain, metadata: &MetadataMap) -> Result<String, crate::domain::Error> {
    let headers: Vec<(&str, &str)> = metadata
        .iter()
        .filter_map(|entry| match entry {
            KeyAndValueRef::Ascii(key, value) => Some((key.as_str(), value.to_str().ok()?)),
            KeyAndValueRef::Binary(..) => None,
        })
        .collect();
    credential::find(domain.credential_sources(), headers, "")
}

/// The authenticated caller of a request.
///
/// # Errors
/// As [`caller_token`], or the token's validation failure.
async fn caller(domain: &Arc<Domain>, metadata: &MetadataMap) -> Result<Principal, tonic::Status> {
    let token = caller_token(domain, metadata).map_err(to_status)?;
    domain.validate_token(&token, &[]).await.map_err(to_status)
}

/// The caller, when the request carries a credential at all.
///
/// # Errors
/// A credential that is present but not valid.
async fn optional_caller(
    domain: &Arc<Domain>,
    metadata: &MetadataMap,
) -> Result<Option<Principal>, tonic::Status> {
    match caller_token(domain, metadata) {
        Err(crate::domain::Error::Unauthenticated(crate::domain::AuthFailure::Missing)) => Ok(None),
        Err(err) => Err(to_status(err)),
        Ok(token) => domain.validate_token(&token, &[]).await.map(Some).map_err(to_status),
    }
}
