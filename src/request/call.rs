//! Who is calling and from where: the one extractor every handler — gRPC
//! and HTTP — starts with.
//!
//! A [`Source`] is what a request says about itself (headers or metadata,
//! the extensions the server and the request layers set, the query string,
//! and the client fields a trusted caller may claim). From it, [`Call`]
//! builds the rules' [`Ctx`] — request id, client IP, user agent, actor —
//! and, where the handler needs one, the authenticated caller:
//! - the caller's own credential is found by [`credential::find`] in every
//!   form `ValidateToken` accepts and validated by the same rule;
//! - the client IP is the connection's peer, unless the caller is trusted (a
//!   configured trusted peer, or a caller authenticated with an API key) and
//!   names the end user's IP; a claimed IP from anyone else is ignored.

use std::net::IpAddr;

use http::{Extensions, HeaderMap};
use tonic::transport::server::TcpConnectInfo;

use super::id;
use crate::domain::{Actor, AuthFailure, CredentialId, Ctx, Domain, Error, Principal, credential};

/// What a request says about itself.
#[derive(Clone, Copy, Debug)]
pub struct Source<'a> {
    headers: &'a HeaderMap,
    extensions: &'a Extensions,
    query: &'a str,
    claimed_ip: &'a str,
    claimed_user_agent: &'a str,
}

impl<'a> Source<'a> {
    /// A request's headers (gRPC metadata) and extensions.
    #[must_use]
    pub fn new(headers: &'a HeaderMap, extensions: &'a Extensions) -> Self {
        Self { headers, extensions, query: "", claimed_ip: "", claimed_user_agent: "" }
    }

    /// With the query string, whose token parameter may carry the caller's
    /// credential (HTTP).
    #[must_use]
    pub fn with_query(self, query: &'a str) -> Self {
        Self { query, ..self }
    }

    /// With the end user's IP and user agent as the request body claims
    /// them (believed only from a trusted caller; the user agent is used
    /// when present).
    #[must_use]
    pub fn claiming(self, ip: &'a str, user_agent: &'a str) -> Self {
        Self { claimed_ip: ip, claimed_user_agent: user_agent, ..self }
    }

    /// The connection's peer, as the server recorded it.
    #[must_use]
    pub fn peer(&self) -> Option<IpAddr> {
        self.extensions.get::<TcpConnectInfo>().and_then(|info| info.remote_addr).map(|addr| addr.ip())
    }

    /// The caller's own credential, if the request carries one.
    ///
    /// # Errors
    /// `Unauthenticated(Missing)` when there is none, `Ambiguous` when two
    /// forms carry different tokens, `InvalidArgument` for oversized input.
    pub fn credential(&self, domain: &Domain) -> Result<String, Error> {
        let headers =
            self.headers.iter().filter_map(|(name, value)| Some((name.as_str(), value.to_str().ok()?)));
        credential::find(domain.credential_sources(), headers, self.query)
    }
}

/// One call as the rules see it: its context and its caller — `()` for an
/// anonymous call, `Option<Principal>` where a credential is optional,
/// `Principal` where one is required.
#[derive(Clone, Debug)]
pub struct Call<C = Principal> {
    /// Request id, client IP and user agent, actor.
    pub ctx: Ctx,
    /// The authenticated caller.
    pub caller: C,
}

impl Call<()> {
    /// A call that needs no credential of its own; its IP is the peer's.
    #[must_use]
    pub fn anonymous(domain: &Domain, source: &Source<'_>) -> Self {
        Call { ctx: context(domain, source, None), caller: () }
    }
}

impl Call<Option<Principal>> {
    /// A call whose credential is optional (a login, where it matters only
    /// for `bypass_captcha`). The actor stays anonymous.
    ///
    /// # Errors
    /// A credential that is present but not valid.
    pub async fn optional(domain: &Domain, source: &Source<'_>) -> Result<Self, Error> {
        let caller = match source.credential(domain) {
            Err(Error::Unauthenticated(AuthFailure::Missing)) => None,
            Err(err) => return Err(err),
            Ok(token) => Some(domain.validate_token(&token, &[]).await?),
        };
        let ctx = Ctx { actor: Actor::Anonymous, ..context(domain, source, caller.as_ref()) };
        Ok(Call { ctx, caller })
    }
}

impl Call<Principal> {
    /// A call that must carry a valid credential of its own; it acts as
    /// its caller.
    ///
    /// # Errors
    /// A missing, ambiguous or invalid credential.
    pub async fn authenticated(domain: &Domain, source: &Source<'_>) -> Result<Self, Error> {
        let token = source.credential(domain)?;
        let caller = domain.validate_token(&token, &[]).await?;
        let ctx = context(domain, source, Some(&caller));
        Ok(Call { ctx, caller })
    }
}

/// The rules' context of a request (see the module docs for the IP rule).
fn context(domain: &Domain, source: &Source<'_>, caller: Option<&Principal>) -> Ctx {
    let peer = source.peer();
    let trusted = caller.is_some_and(|c| matches!(c.credential, CredentialId::ApiKey(_)))
        || peer.is_some_and(|ip| domain.is_trusted_peer(ip));
    let claimed = source.claimed_ip.parse::<IpAddr>().ok();
    let client_ip = if trusted { claimed.or(peer) } else { peer };
    let user_agent = if source.claimed_user_agent.is_empty() {
        source.headers.get(http::header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or_default()
    } else {
        source.claimed_user_agent
    };
    let ctx = Ctx {
        request_id: id::from_extensions(source.extensions).unwrap_or_default().to_owned(),
        client_ip,
        user_agent: user_agent.to_owned(),
        actor: Actor::Anonymous,
    };
    match caller {
        Some(caller) => ctx.acting_as(caller),
        None => ctx,
    }
}
