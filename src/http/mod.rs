//! The HTTP API on the gRPC port: the S4E dialect ([`s4e`]), the Rehive
//! dialect ([`rehive`]), forward auth for nginx, Traefik and Caddy
//! ([`forward_auth`]) and the OpenAPI description ([`openapi`]).
//!
//! Handlers read alike, as the gRPC ones do: extract the
//! [`Call`](crate::request::Call) from the request, convert the JSON body,
//! one domain call, convert back. Every failure is a row of the error table
//! ([`crate::errors`]) in the dialect's envelope. The request layers (ids,
//! spans, metrics, timeout) are the gRPC ones: see [`crate::request`].

pub mod forward_auth;
pub mod openapi;
pub mod rehive;
pub mod s4e;

use std::sync::Arc;

use axum::{
    Router,
    response::{IntoResponse, Response},
    routing::MethodRouter,
};

use crate::{
    config::Config,
    domain::Domain,
    errors::{self, Problem},
    metrics::Metrics,
    request::{Source, observe::Route},
};

/// What every HTTP handler shares.
#[derive(Clone)]
pub struct State {
    /// The rules.
    pub domain: Arc<Domain>,
    /// Where validations and logins are counted.
    pub metrics: Arc<Metrics>,
    /// The HTTP API's settings.
    pub settings: Arc<Settings>,
}

/// The HTTP API's settings, from the configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Where the S4E dialect lives, e.g. `/api/user`.
    pub s4e_prefix: String,
    /// The session cookie's name.
    pub cookie_name: String,
    /// Whether the session cookie is `Secure`.
    pub cookie_secure: bool,
    /// Origins whose pages may use the cookie (CORS, CSRF).
    pub allowed_origins: Vec<String>,
    /// Where forward auth answers.
    pub forward_auth_path: String,
    /// Names of the identity headers forward auth (and Envoy) give the
    /// upstream.
    pub identity: crate::grpc::IdentityHeaders,
}

impl Settings {
    /// The HTTP settings of `config`.
    #[must_use]
    pub fn from_config(config: &Config) -> Self {
        Self {
            s4e_prefix: config.s4e_prefix.clone(),
            cookie_name: config.session_cookie_name.clone(),
            cookie_secure: config.session_cookie_secure,
            allowed_origins: config.allowed_origins.clone(),
            forward_auth_path: config.forward_auth_path.clone(),
            identity: crate::grpc::IdentityHeaders::from_config(config),
        }
    }
}

/// The HTTP router: the dialects and forward auth the configuration turns
/// on, the OpenAPI description, and the S4E envelope for unknown paths.
pub fn router(state: State, config: &Config) -> Router {
    let mut router = Router::new();
    if config.s4e_api {
        router = router.merge(s4e::routes());
    }
    if config.rehive_api {
        router = router.merge(rehive::routes());
    }
    if config.forward_auth {
        router = router.merge(forward_auth::routes(&state.settings));
    }
    router
        .merge(openapi::routes())
        .fallback(|| async { Problem::new(errors::NOT_FOUND, "no such path").into_s4e_response() })
        .with_state(state)
}

/// `method_router` at `path`, its responses tagged with the route for the
/// metrics and the span (`http.route`). Paths are few and fixed at start
/// (some come from the configuration), so their labels live for the
/// process.
pub fn route(router: Router<State>, path: &str, method_router: MethodRouter<State>) -> Router<State> {
    let label: &'static str = Box::leak(path.to_owned().into_boxed_str());
    let tag = tower::util::MapResponseLayer::new(move |mut response: Response| {
        response.extensions_mut().insert(Route(label));
        response
    });
    router.route(path, method_router.layer(tag))
}

/// The request's [`Source`]: its headers, extensions and query string.
#[must_use]
pub fn source(parts: &http::request::Parts) -> Source<'_> {
    Source::new(&parts.headers, &parts.extensions).with_query(parts.uri.query().unwrap_or_default())
}

/// A problem in the S4E envelope, as an axum response.
impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        self.into_s4e_response()
    }
}
