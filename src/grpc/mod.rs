//! The gRPC edge: tonic services that validate, read the caller, convert,
//! make one domain call and convert back. No SQL, hashing or policy here.

mod audit;
mod auth;
mod convert;
pub mod envoy;
mod keys;
mod redact;
mod status;
mod user;

use std::sync::Arc;

pub use audit::AuditService;
pub use auth::AuthService;
pub use envoy::{EnvoyAuthorization, IdentityHeaders};
pub use keys::KeyService;
pub use status::to_status;
pub use user::UserService;

use tonic::metadata::{KeyAndValueRef, MetadataMap};

use crate::domain::{Actor, CredentialId, Ctx, Domain, Principal, credential};

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

/// The rules' context for a request: its request id, the end user's IP and
/// user agent, and (once known) who is acting.
///
/// The IP is the connection's peer, unless the caller is trusted (a
/// configured trusted peer, or a caller authenticated with an API key) and
/// names the end user's IP in `client.ip`; a forwarded value from anyone else
/// is ignored.
fn request_ctx(
    domain: &Domain,
    metadata: &MetadataMap,
    peer: Option<std::net::SocketAddr>,
    caller: Option<&Principal>,
    client: Option<&crate::proto::v1::ClientInfo>,
) -> Ctx {
    let peer_ip = peer.map(|addr| addr.ip());
    let trusted = caller.is_some_and(|c| matches!(c.credential, CredentialId::ApiKey(_)))
        || peer_ip.is_some_and(|ip| domain.is_trusted_peer(ip));
    let claimed = client.and_then(|c| c.ip.parse::<std::net::IpAddr>().ok());
    let client_ip = if trusted { claimed.or(peer_ip) } else { peer_ip };
    let user_agent = client
        .map(|c| c.user_agent.clone())
        .filter(|ua| !ua.is_empty())
        .or_else(|| metadata.get("user-agent").and_then(|v| v.to_str().ok()).map(str::to_owned))
        .unwrap_or_default();
    let ctx = Ctx { request_id: request_id(metadata), client_ip, user_agent, actor: Actor::Anonymous };
    match caller {
        Some(caller) => ctx.acting_as(caller),
        None => ctx,
    }
}

/// The request id the request layer kept or made for this call (see
/// `request.rs`); the header it wrote back is the fallback.
fn request_id(metadata: &MetadataMap) -> String {
    crate::request::current_request_id()
        .or_else(|| metadata.get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned))
        .unwrap_or_default()
}
