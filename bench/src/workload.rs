//! What one call is, per mode: a grpc.health check, a `ValidateToken`
//! (one token, or a different token each call), a `Login`, or an Envoy
//! `Check`. A workload turns a call index into a future that yields the
//! call's outcome (its gRPC status code, by name); the load engine decides
//! when calls start and measures them.

use std::{collections::HashMap, future::Future, pin::Pin, sync::Arc};

use envoy_types::{
    ext_authz::v3::pb::CheckRequest,
    pb::envoy::service::auth::v3::{
        AttributeContext, attribute_context, authorization_client::AuthorizationClient,
    },
};
use portcullis::proto::v1::{
    LoginRequest, ValidateTokenRequest, auth_service_client::AuthServiceClient,
    validate_token_request::Credential,
};
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::client::{Connection, origin};

/// A call in flight; resolves to its outcome.
pub type Call = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// How a call ended: a gRPC status code's canonical name (`OK`,
/// `UNAUTHENTICATED`, `RESOURCE_EXHAUSTED`, …), or one of the generator's
/// own: [`NOT_SENT`].
pub type Outcome = &'static str;

/// An arrival the generator did not send because `max_in_flight` calls were
/// already waiting: the generator (or the server) could not keep up.
pub const NOT_SENT: Outcome = "NOT_SENT";

/// A kind of call.
pub trait Workload: Send + Sync + 'static {
    /// Starts call number `index` (0, 1, 2, … over the run). Spreads calls
    /// over the connections by index.
    fn call(&self, index: u64) -> Call;
}

/// The canonical name of a gRPC status code: the server's own table.
pub use portcullis::errors::code_name;

fn outcome<T>(result: Result<T, tonic::Status>) -> Outcome {
    match result {
        Ok(_) => "OK",
        Err(status) => code_name(status.code()),
    }
}

/// Picks the client for call `index`, round robin.
fn pick<T: Clone>(clients: &[T], index: u64) -> T {
    // `clients` is never empty: every constructor takes connections from
    // `Connection::open_many`, which refuses zero.
    clients[(index % clients.len() as u64) as usize].clone()
}

// === Health ===

/// `grpc.health.v1.Health/Check`: the baseline, no auth work.
pub struct Health {
    clients: Vec<HealthClient<Connection>>,
    service: String,
}

impl Health {
    /// Checks `service` (`""`: the whole server) over `connections`.
    ///
    /// # Errors
    /// The target's address does not make an origin URI.
    pub fn new(
        connections: &[Connection],
        target: std::net::SocketAddr,
        service: String,
    ) -> anyhow::Result<Self> {
        let origin = origin(target)?;
        let clients =
            connections.iter().map(|c| HealthClient::with_origin(c.clone(), origin.clone())).collect();
        Ok(Self { clients, service })
    }
}

impl Workload for Health {
    fn call(&self, index: u64) -> Call {
        let mut client = pick(&self.clients, index);
        let request = HealthCheckRequest { service: self.service.clone() };
        Box::pin(async move { outcome(client.check(request).await) })
    }
}

// === Validate ===

/// `portcullis.v1.AuthService/ValidateToken` with a raw token. With one
/// token every call after the first is a cache hit; with many, call `index`
/// uses token `(offset + index) mod len`, so each is revisited only after a
/// full cycle through the list.
pub struct Validate {
    clients: Vec<AuthServiceClient<Connection>>,
    tokens: Arc<[String]>,
    offset: u64,
}

impl Validate {
    /// Validates `tokens` in turn from `offset`, over `connections`.
    ///
    /// # Errors
    /// No tokens; the target's address does not make an origin URI.
    pub fn new(
        connections: &[Connection],
        target: std::net::SocketAddr,
        tokens: Arc<[String]>,
        offset: u64,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(!tokens.is_empty(), "no tokens to validate");
        let origin = origin(target)?;
        let clients =
            connections.iter().map(|c| AuthServiceClient::with_origin(c.clone(), origin.clone())).collect();
        Ok(Self { clients, tokens, offset })
    }
}

impl Workload for Validate {
    fn call(&self, index: u64) -> Call {
        let mut client = pick(&self.clients, index);
        let token = pick(&self.tokens, self.offset.wrapping_add(index));
        let request =
            ValidateTokenRequest { credential: Some(Credential::Token(token)), required_scopes: Vec::new() };
        Box::pin(async move { outcome(client.validate_token(request).await) })
    }
}

// === Login ===

/// `portcullis.v1.AuthService/Login` with the right password; call `index`
/// logs in to account `index mod accounts`.
pub struct Login {
    clients: Vec<AuthServiceClient<Connection>>,
    emails: Arc<[String]>,
    password: String,
}

impl Login {
    /// Logs in to `emails` in turn with `password`, over `connections`.
    ///
    /// # Errors
    /// No accounts; the target's address does not make an origin URI.
    pub fn new(
        connections: &[Connection],
        target: std::net::SocketAddr,
        emails: Arc<[String]>,
        password: String,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(!emails.is_empty(), "no accounts to log in to");
        let origin = origin(target)?;
        let clients =
            connections.iter().map(|c| AuthServiceClient::with_origin(c.clone(), origin.clone())).collect();
        Ok(Self { clients, emails, password })
    }
}

impl Workload for Login {
    fn call(&self, index: u64) -> Call {
        let mut client = pick(&self.clients, index);
        let request = LoginRequest {
            email: pick(&self.emails, index),
            password: self.password.clone(),
            ..LoginRequest::default()
        };
        Box::pin(async move { outcome(client.login(request).await) })
    }
}

// === EnvoyCheck ===

/// `envoy.service.auth.v3.Authorization/Check` for `GET /` carrying
/// `authorization: Bearer <token>`, as Envoy's `ext_authz` filter sends it.
/// The outcome is the decision: `OK` when allowed, otherwise the code of
/// the denial's status (`UNAUTHENTICATED`, …); a failed call counts by its
/// own gRPC code.
pub struct EnvoyCheck {
    clients: Vec<AuthorizationClient<Connection>>,
    request: CheckRequest,
}

impl EnvoyCheck {
    /// Checks requests bearing `token`, over `connections`.
    ///
    /// # Errors
    /// The target's address does not make an origin URI.
    pub fn new(
        connections: &[Connection],
        target: std::net::SocketAddr,
        token: &str,
    ) -> anyhow::Result<Self> {
        let origin = origin(target)?;
        let clients =
            connections.iter().map(|c| AuthorizationClient::with_origin(c.clone(), origin.clone())).collect();
        let headers = HashMap::from([
            (":authority".to_owned(), "app.internal".to_owned()),
            (":method".to_owned(), "GET".to_owned()),
            (":path".to_owned(), "/".to_owned()),
            ("authorization".to_owned(), format!("Bearer {token}")),
        ]);
        let request = CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(attribute_context::Request {
                    http: Some(attribute_context::HttpRequest {
                        method: "GET".to_owned(),
                        path: "/".to_owned(),
                        host: "app.internal".to_owned(),
                        scheme: "http".to_owned(),
                        protocol: "HTTP/1.1".to_owned(),
                        headers,
                        ..attribute_context::HttpRequest::default()
                    }),
                    ..attribute_context::Request::default()
                }),
                ..AttributeContext::default()
            }),
        };
        Ok(Self { clients, request })
    }
}

impl Workload for EnvoyCheck {
    fn call(&self, index: u64) -> Call {
        let mut client = pick(&self.clients, index);
        let request = self.request.clone();
        Box::pin(async move {
            match client.check(request).await {
                Ok(response) => {
                    let decision = response.into_inner().status.map_or(0, |status| status.code);
                    code_name(Code::from_i32(decision))
                }
                Err(status) => code_name(status.code()),
            }
        })
    }
}
