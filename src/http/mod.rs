//! The HTTP API on the gRPC port: the S4E dialect ([`s4e`]), the Rehive
//! dialect ([`rehive`]), forward auth for nginx, Traefik and Caddy
//! ([`forward_auth`]) and the OpenAPI description ([`openapi`]).
//!
//! Handlers read alike, as the gRPC ones do: extract the
//! [`Call`](crate::request::Call) from the request, convert the JSON body,
//! one domain call, convert back. Every failure is a row of the error table
//! ([`crate::errors`]) in the dialect's envelope. The request layers (ids,
//! spans, metrics, timeout) are the gRPC ones: see [`crate::request`].

// A `Problem` is the answer to a failed request, made once per failure and
// turned into a response at once: boxing it would buy nothing.
#![allow(clippy::result_large_err)]

pub mod browser;
pub mod caller;
pub mod forward_auth;
pub mod json;
pub mod model;
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
///
/// Around every route, innermost first: the body limit
/// (`max_message_bytes`, enforced where a handler reads the body: 413); the
/// S4E envelope for a method the path does not take (405, with `Allow`);
/// CORS with credentials for `allowed_origins` ([`browser::cors`]), so its
/// headers are on every answer, errors included.
pub fn router(state: State, config: &Config) -> Router {
    // The dialects browsers call: CORS with credentials for the allowed
    // origins. Forward auth is called by proxies with any method (an OPTIONS
    // among them), so it stays out of CORS.
    let mut dialects = Router::new();
    if config.s4e_api {
        dialects = dialects.merge(s4e::routes(&state.settings));
    }
    if config.rehive_api {
        dialects = dialects.merge(rehive::routes());
    }
    let mut router = dialects.merge(openapi::routes(config)).layer(browser::cors(&state.settings));
    if config.forward_auth {
        router = router.merge(forward_auth::routes(&state.settings));
    }
    router
        .fallback(|| async { Problem::new(errors::NOT_FOUND, "no such path").into_s4e_response() })
        .layer(axum::extract::DefaultBodyLimit::max(config.max_message_bytes))
        .layer(tower::util::MapResponseLayer::new(method_not_allowed))
        .with_state(state)
}

/// Gives axum's bare 405 (a method the path does not take) the S4E
/// envelope. axum adds the `Allow` header itself as the answer leaves the
/// router.
fn method_not_allowed(response: Response) -> Response {
    if response.status() != http::StatusCode::METHOD_NOT_ALLOWED
        || response.headers().contains_key(http::header::CONTENT_TYPE)
    {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    let problem = Problem::new(
        errors::METHOD_NOT_ALLOWED,
        "this path does not take this method; `Allow` lists those it does",
    );
    let body = problem.s4e_body().to_string();
    parts.headers.extend(problem.http_headers());
    Response::from_parts(parts, axum::body::Body::from(body))
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
