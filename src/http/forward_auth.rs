//! Forward auth: `GET /auth/verify` (path configurable) for nginx
//! `auth_request`, Traefik `ForwardAuth` and Caddy `forward_auth` — the HTTP
//! twin of Envoy's `Check` ([`crate::grpc::envoy`]), sharing its credential
//! extraction and identity headers ([`crate::gateway`]) and the rule and
//! cache of `ValidateToken`.
//!
//! The proxy calls it with the original request's headers (nginx copies
//! them into its subrequest; Traefik and Caddy send them by default), so the
//! credential is found in `Authorization`, `X-API-Key` and the session
//! cookie as usual, and `?token=` in the original target the proxy names:
//! `X-Forwarded-Uri` (Traefik, Caddy) or `X-Original-URI` (nginx) — never in
//! this request's own query, which holds only the route's required scopes
//! (`?scopes=assets:read,assets:write`, comma- or space-separated). Any
//! method is taken: nginx asks with `GET`, Traefik and Caddy too (the
//! original method comes in `X-Forwarded-Method`, logged only).
//!
//! - Allowed: 200, empty body, the identity headers (user id, role, scopes,
//!   session or key id) for the proxy to copy upstream; the request id
//!   comes back as on every response.
//! - Denied: the error table's status (401, 403, 429; 400 for bad input,
//!   503 when the database does not answer) with the S4E body,
//!   `www-authenticate` on 401 and `retry-after` on 429; and the same body
//!   in [`ERROR_HEADER`], for nginx, which drops the body of its auth
//!   subrequest but can answer with a header it captured.
//!
//! Counted as `portcullis_token_validations_total{source="forward_auth"}`;
//! refused credentials are audited in aggregate per client, as
//! `ValidateToken`'s are.

use std::borrow::Cow;

use axum::{
    Router,
    extract::{Request, State},
    response::{IntoResponse as _, Response},
    routing::any,
};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, request::Parts};

use super::{Settings, source};
use crate::{
    domain::{Error, Principal, scope},
    errors::{self, Problem},
    gateway::{self, IdentityHeaders},
    request::Call,
};

/// The label of forward-auth validations in the metrics.
const METRICS_SOURCE: &str = "forward_auth";

/// The response header that repeats a denial's S4E body (JSON, ASCII only).
pub const ERROR_HEADER: HeaderName = HeaderName::from_static("x-portcullis-error");

/// The headers naming the original request target, whose query may carry
/// the token: Traefik's and Caddy's, then nginx's conventional one.
const ORIGINAL_URI_HEADERS: [&str; 2] = ["x-forwarded-uri", "x-original-uri"];

/// The headers naming the original method (logged only).
const ORIGINAL_METHOD_HEADERS: [&str; 2] = ["x-forwarded-method", "x-original-method"];

/// The query parameter listing the required scopes.
const SCOPES_PARAM: &str = "scopes";

/// Longest query string of the forward-auth request itself.
const MAX_QUERY_BYTES: usize = 16 * 1024;

/// Forward auth, as the OpenAPI description shows it (at its default path;
/// [`super::openapi`] moves it to `forward_auth_path`).
#[utoipa::path(
    get, path = "/auth/verify", tag = "Forward auth",
    params(
        ("scopes" = Option<String>, Query, description = "Scopes the route needs, comma- or space-separated"),
        ("X-Forwarded-Uri" = Option<String>, Header, description = "The original request target (Traefik, Caddy); its `token` parameter may carry the credential"),
        ("X-Original-URI" = Option<String>, Header, description = "The original request target (nginx)"),
    ),
    responses(
        (status = 200, description = "Allowed; the identity headers (`x-portcullis-user-id`, `-role`, `-scopes`, `-session-id` or `-key-id`) are for the upstream"),
        (status = 400, description = "Bad input (a malformed scope, oversized headers)"),
        (status = 401, description = "No, an unknown, revoked or expired credential; `WWW-Authenticate` says which"),
        (status = 403, description = "A required scope is missing, or the login still needs its second factor"),
        (status = 503, description = "The database does not answer"),
    ),
    security((), ("bearer" = []), ("api_key" = []), ("cookie" = []))
)]
#[allow(dead_code, reason = "describes the route `routes` serves")]
fn verify_doc() {}

/// The forward-auth part of the OpenAPI description.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(verify_doc),
    tags((name = "Forward auth", description = "For nginx `auth_request`, Traefik `ForwardAuth` and Caddy `forward_auth`: the S4E envelope on denial, also in `x-portcullis-error`."))
)]
pub struct Api;

/// The forward-auth route, at `forward_auth_path`, for every method.
pub fn routes(settings: &Settings) -> Router<super::State> {
    super::route(Router::new(), &settings.forward_auth_path, any(verify))
}

/// Answers whether the request the proxy describes may pass.
async fn verify(State(state): State<super::State>, request: Request) -> Response {
    let (parts, _body) = request.into_parts();
    let outcome = authorize(&state, &parts).await;
    let result = outcome.as_ref().map_or_else(|err| errors::classify(err).reason, |_| "valid");
    state.metrics.record_validation(METRICS_SOURCE, result);
    let method = first_value(&parts.headers, &ORIGINAL_METHOD_HEADERS);
    tracing::debug!(result, method, "forward auth check");
    match outcome {
        Ok(principal) => allow(&state.settings.identity, &principal),
        Err(err) => {
            // Floods of bad tokens are audited in aggregate, per client: the
            // address the proxy names when it is a trusted peer.
            if let Error::Unauthenticated(failure) = &err {
                let claimed = forwarded_for(&parts.headers);
                let call = Call::anonymous(&state.domain, &source(&parts).claiming(claimed, ""));
                state.domain.note_invalid_token(call.ctx.client_ip, failure.label());
            }
            deny(err)
        }
    }
}

/// The principal behind the original request's credential, if it holds the
/// required scopes.
async fn authorize(state: &super::State, parts: &Parts) -> Result<Principal, Error> {
    let required = required_scopes(parts.uri.query().unwrap_or_default())?;
    // Bytes beyond visible ASCII become U+FFFD: such a credential is
    // refused as invalid, another header's odd bytes do not matter.
    let headers: Vec<(&str, Cow<'_, str>)> = parts
        .headers
        .iter()
        .map(|(name, value)| (name.as_str(), String::from_utf8_lossy(value.as_bytes())))
        .collect();
    let targets: Vec<&str> = headers
        .iter()
        .filter(|(name, _)| ORIGINAL_URI_HEADERS.contains(name))
        .map(|(_, value)| value.as_ref())
        .collect();
    let queries: Vec<&str> = targets.into_iter().filter_map(gateway::query_of).collect();
    let token = gateway::credential(
        state.domain.credential_sources(),
        headers.iter().map(|(name, value)| (*name, value.as_ref())),
        &queries,
    )?;
    state.domain.validate_token(&token, &required).await
}

/// The scopes `?scopes=` lists (the parameter may repeat).
///
/// # Errors
/// `InvalidArgument` naming `scopes` for a malformed scope or an oversized
/// query.
fn required_scopes(query: &str) -> Result<Vec<String>, Error> {
    if query.len() > MAX_QUERY_BYTES {
        return Err(Error::invalid(
            SCOPES_PARAM,
            format!("the query is longer than {MAX_QUERY_BYTES} bytes"),
        ));
    }
    let mut scopes = Vec::new();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        if name == SCOPES_PARAM {
            scopes.extend(gateway::scope_list(&value));
        }
    }
    for wanted in &scopes {
        scope::check_syntax(wanted).map_err(|why| Error::invalid(SCOPES_PARAM, why))?;
    }
    Ok(scopes)
}

/// 200 with the identity headers.
fn allow(names: &IdentityHeaders, principal: &Principal) -> Response {
    let mut response = StatusCode::OK.into_response();
    for (name, value) in names.of(principal).set {
        // Names are checked when the configuration loads, values are ids,
        // a role and scopes (all plain ASCII): this never fails.
        match (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            (Ok(name), Ok(value)) => {
                response.headers_mut().insert(name, value);
            }
            _ => return deny(Error::Internal(format!("identity header {name} cannot be written"))),
        }
    }
    response
}

/// The S4E denial of `err`, its body repeated in [`ERROR_HEADER`].
fn deny(err: Error) -> Response {
    let problem = Problem::from(err);
    let body = problem.s4e_body();
    let mut response = problem.json_response(&body);
    if let Ok(value) = HeaderValue::try_from(ascii_json(&body)) {
        response.headers_mut().insert(ERROR_HEADER, value);
    }
    response
}

/// `value` as JSON text of visible ASCII only (a header value): characters
/// beyond ASCII, and DEL, as `\u` escapes (they occur only in strings).
fn ascii_json(value: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let text = value.to_string();
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() && c != '\x7f' {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                let _ = write!(out, "\\u{unit:04x}");
            }
        }
    }
    out
}

/// The first value of the first of `names` present, if plain text.
fn first_value<'a>(headers: &'a HeaderMap, names: &[&str]) -> Option<&'a str> {
    names.iter().find_map(|name| headers.get(*name)).and_then(|value| value.to_str().ok())
}

/// The client address the proxy appended to `X-Forwarded-For` (its last
/// entry), or `""`. Believed only from a trusted peer (see [`Call`]).
fn forwarded_for(headers: &HeaderMap) -> &str {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .next_back()
        .and_then(|value| value.to_str().ok())
        .and_then(|list| list.rsplit(',').next())
        .map_or("", str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_come_from_the_own_query() {
        assert_eq!(
            required_scopes("scopes=assets:read,assets:write").unwrap(),
            ["assets:read", "assets:write"]
        );
        assert_eq!(required_scopes("scopes=a:b+c:d&scopes=e:f&token=x").unwrap(), ["a:b", "c:d", "e:f"]);
        assert_eq!(required_scopes("scopes=a:b%20c:d").unwrap(), ["a:b", "c:d"]);
        assert!(required_scopes("").unwrap().is_empty());
        assert!(required_scopes("scopes=").unwrap().is_empty());
        assert!(matches!(
            required_scopes("scopes=Assets"),
            Err(Error::InvalidArgument { field: "scopes", .. })
        ));
        let long = format!("scopes={}", "a".repeat(MAX_QUERY_BYTES));
        assert!(matches!(required_scopes(&long), Err(Error::InvalidArgument { field: "scopes", .. })));
    }

    #[test]
    fn the_error_header_is_ascii_json() {
        let body = serde_json::json!({"message": "caf\u{e9} \u{1f600} \u{7f} \"q\""});
        let text = ascii_json(&body);
        assert!(text.bytes().all(|b| (0x20..0x7f).contains(&b)), "{text}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&text).unwrap(), body);
        assert!(HeaderValue::try_from(text).is_ok());
    }

    #[test]
    fn the_proxy_appends_the_client_address() {
        let mut headers = HeaderMap::new();
        assert_eq!(forwarded_for(&headers), "");
        headers.append("x-forwarded-for", HeaderValue::from_static("198.51.100.1, 203.0.113.7"));
        assert_eq!(forwarded_for(&headers), "203.0.113.7");
        headers.append("x-forwarded-for", HeaderValue::from_static("192.0.2.9"));
        assert_eq!(forwarded_for(&headers), "192.0.2.9");
    }

    #[test]
    fn denials_repeat_their_body_in_a_header() {
        let response = deny(crate::domain::AuthFailure::Missing.into());
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let header = response.headers().get(ERROR_HEADER).unwrap().to_str().unwrap();
        let body: serde_json::Value = serde_json::from_str(header).unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");
        assert_eq!(response.headers().get("www-authenticate").unwrap(), r#"Bearer realm="portcullis""#);
    }
}
