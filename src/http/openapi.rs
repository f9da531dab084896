//! The OpenAPI 3.1 description of the HTTP API, served at
//! `GET /openapi.json` so users can generate clients.
//!
//! It is generated from the code: each handler carries its `utoipa::path`
//! annotation and each body and answer derives `ToSchema`, so a route or a
//! field cannot change without its description. The document is assembled
//! once at start for the configuration: the S4E paths nested under
//! `s4e_prefix`, each dialect present only when it is served, Rehive's
//! paths with and without their trailing slash, and the security schemes
//! (the session cookie under its configured name).

use std::sync::Arc;

use axum::{Router, routing::get};
use http::header;
use utoipa::{
    OpenApi as _,
    openapi::{
        InfoBuilder, OpenApi,
        security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};

use super::{State, rehive, route, s4e};
use crate::config::Config;

/// Where the description is served.
pub const PATH: &str = "/openapi.json";

/// The route serving the description of what `config` serves.
pub fn routes(config: &Config) -> Router<State> {
    let body: Arc<str> = match document(config).to_json() {
        Ok(json) => json.into(),
        Err(err) => {
            // Serialising plain structs cannot fail; say so loudly if it does.
            tracing::error!(error = %err, "the OpenAPI description does not serialise");
            "{}".into()
        }
    };
    let serve = move || {
        let body = Arc::clone(&body);
        async move { ([(header::CONTENT_TYPE, "application/json")], body.to_string()) }
    };
    route(Router::new(), PATH, get(serve))
}

/// This description.
#[utoipa::path(
    get, path = "/openapi.json", tag = "Meta",
    responses((status = 200, description = "The OpenAPI 3.1 description of the HTTP API", content_type = "application/json"))
)]
#[allow(dead_code, reason = "describes the route `routes` serves")]
fn openapi_json() {}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(openapi_json),
    tags(
        (name = "S4E", description = "The S4E dialect: login, second factors, sessions, the caller's API keys. \
            Failures: `{\"status\":\"error\",\"error\":{\"code\":…,\"message\":…}}`."),
        (name = "Rehive", description = "The Rehive dialect: logins and logouts. \
            Failures: `{\"status\":\"error\",\"message\":…}`."),
        (name = "Meta", description = "About the API itself."),
    )
)]
struct Base;

/// The description of the HTTP API `config` serves.
#[must_use]
pub fn document(config: &Config) -> OpenApi {
    let mut doc = Base::openapi();
    doc.info = InfoBuilder::new()
        .title("portcullis HTTP API")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(
            "The S4E and Rehive dialects of portcullis's HTTP API. The caller's own credential is read \
             from `Authorization: Bearer`, `Authorization: Token`, `X-API-Key`, the session cookie or \
             the token query parameter; a request carrying two different ones is refused.",
        ))
        .build();
    if config.s4e_api {
        doc = doc.nest(config.s4e_prefix.as_str(), s4e::Api::openapi());
    }
    if config.rehive_api {
        let mut rehive = rehive::Api::openapi();
        let slashless: Vec<_> = rehive
            .paths
            .paths
            .iter()
            .map(|(path, item)| (path.trim_end_matches('/').to_owned(), item.clone()))
            .collect();
        rehive.paths.paths.extend(slashless);
        doc.merge(rehive);
    }
    if config.forward_auth {
        let mut forward = super::forward_auth::Api::openapi();
        forward.paths.paths =
            forward.paths.paths.into_values().map(|item| (config.forward_auth_path.clone(), item)).collect();
        doc.merge(forward);
    }
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
    );
    components.add_security_scheme(
        "api_key",
        SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
    );
    components.add_security_scheme(
        "token",
        SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
            "Authorization",
            "`Token <key>` (Rehive)",
        ))),
    );
    components.add_security_scheme(
        "cookie",
        SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
            config.session_cookie_name.clone(),
            "The browser's session cookie; a state change needs an `Origin` in `allowed_origins`".into(),
        ))),
    );
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_description_follows_the_configuration() {
        let config = Config { s4e_prefix: "/s4e".into(), rehive_api: false, ..Config::default() };
        let doc = serde_json::to_value(document(&config)).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().unwrap();
        assert!(paths.contains_key("/s4e/auth/login"), "{paths:?}");
        assert!(paths.contains_key("/s4e/api-keys/{id}/rotate"), "{paths:?}");
        assert!(paths.contains_key("/openapi.json"));
        assert!(!paths.keys().any(|path| path.starts_with("/3/")), "{paths:?}");
        let doc = serde_json::to_value(document(&Config::default())).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for path in
            ["/api/user/auth/login", "/3/auth/login/", "/3/auth/login", "/3/auth/logout/all", "/auth/verify"]
        {
            assert!(paths.contains_key(path), "{path} missing: {paths:?}");
        }
    }
}
