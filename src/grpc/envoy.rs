//! `envoy.service.auth.v3.Authorization/Check`: Envoy's (and Istio's)
//! external authorization, on the gRPC port.
//!
//! The credential is taken from the HTTP request Envoy describes (headers,
//! the session cookie, the token query parameter in the path) by the same
//! code as `ValidateToken`'s `http` form and forward auth
//! ([`crate::gateway`]), and validated by the same rule. Required scopes
//! come from the route's `context_extensions`
//! (`required_scopes: "assets:read, assets:write"`).
//!
//! - Allowed: OK, with identity headers for the upstream (user id, role,
//!   scopes, session or key id; names configurable) that overwrite any the
//!   client sent, the identity headers that do not apply removed, and the
//!   request id kept.
//! - Denied: the HTTP status of the error table (401, 403, 429; 400 for bad
//!   input, 503 when the database does not answer), the S4E JSON body
//!   `{"status":"error","error":{"code":…,"message":…}}`, and
//!   `www-authenticate` on 401.
//!
//! A `CheckRequest` is never logged whole: it carries the credential.

use std::{collections::HashMap, sync::Arc};

use envoy_types::{
    ext_authz::v3::pb::{
        Authorization, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderAppendAction, HeaderValue,
        HeaderValueOption, HttpResponse, HttpStatus, OkHttpResponse,
    },
    pb::{envoy::service::auth::v3::attribute_context::HttpRequest, google::rpc},
};
use tonic::{Code, Request, Response, Status};

pub use crate::gateway::IdentityHeaders;
use crate::{
    domain::{Domain, Error, Principal},
    errors::Problem,
    gateway,
    metrics::Metrics,
    request,
};

/// Descriptors of `envoy.service.auth.v3` and its imports, for server
/// reflection (made by `scripts/envoy-descriptor` from the envoy-types
/// crate's protos).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("envoy_ext_authz.binpb");

/// The `context_extensions` key that lists a route's required scopes.
pub const REQUIRED_SCOPES_KEY: &str = "required_scopes";

/// The header naming a request, kept from the HTTP request.
const REQUEST_ID_HEADER: &str = "x-request-id";

/// The external authorization service.
#[derive(Clone)]
pub struct EnvoyAuthorization {
    domain: Arc<Domain>,
    metrics: Arc<Metrics>,
    headers: Arc<IdentityHeaders>,
}

impl EnvoyAuthorization {
    /// Authorizes with the rules in `domain`, naming upstream headers as
    /// `headers` says, counting results in `metrics`.
    #[must_use]
    pub fn new(domain: Arc<Domain>, metrics: Arc<Metrics>, headers: IdentityHeaders) -> Self {
        Self { domain, metrics, headers: Arc::new(headers) }
    }

    /// The principal behind the credential in `http`, if it holds `required`.
    async fn authorize(&self, http: &HttpRequest, required: &[String]) -> Result<Principal, Error> {
        let mut headers: Vec<(&str, &str)> =
            http.headers.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
        // With `encode_raw_headers`, Envoy sends every header line apart
        // (a repeated header twice) in `header_map` instead.
        if let Some(map) = &http.header_map {
            headers.extend(map.headers.iter().filter_map(|header| {
                let value = if header.raw_value.is_empty() {
                    header.value.as_str()
                } else {
                    std::str::from_utf8(&header.raw_value).ok()?
                };
                Some((header.key.as_str(), value))
            }));
        }
        // `path` is the request target, query included; `query` is empty
        // from Envoy but may be set by other callers.
        let query = gateway::query_of(&http.path).unwrap_or(&http.query);
        let token = gateway::credential(self.domain.credential_sources(), headers, &[query])?;
        self.domain.validate_token(&token, required).await
    }

    /// The OK answer: identity headers for the upstream.
    fn allow(&self, principal: &Principal, request_id: Option<&str>) -> CheckResponse {
        // The identity headers never have an empty value (Envoy would skip
        // one, leaving the client's in place): those that do not apply are
        // removed instead.
        let gateway::Identity { mut set, absent } = self.headers.of(principal);
        if let Some(id) = request_id {
            set.push((REQUEST_ID_HEADER, id.to_owned()));
        }
        let ok = OkHttpResponse {
            headers: set.into_iter().map(|(name, value)| overwrite(name, value)).collect(),
            headers_to_remove: absent.into_iter().map(str::to_owned).collect(),
            ..OkHttpResponse::default()
        };
        CheckResponse {
            status: Some(rpc::Status { code: Code::Ok as i32, message: String::new(), details: vec![] }),
            http_response: Some(HttpResponse::OkResponse(ok)),
            dynamic_metadata: None,
        }
    }
}

/// A header that replaces any of the same name the client sent.
fn overwrite(name: &str, value: String) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue { key: name.to_owned(), value, raw_value: vec![] }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..HeaderValueOption::default()
    }
}

/// The denial for `err`: the error table's HTTP status and S4E body, the
/// headers of an HTTP denial (`www-authenticate` on 401, `retry-after`), and
/// the same gRPC code `ValidateToken` would answer. Returns the table's
/// reason too, for the metrics.
fn deny(err: Error, request_id: Option<&str>) -> (CheckResponse, &'static str) {
    let problem = Problem::from(err);
    let mut headers: Vec<HeaderValueOption> = problem
        .http_headers()
        .into_iter()
        .filter_map(|(name, value)| Some(overwrite(name.as_str(), value.to_str().ok()?.to_owned())))
        .collect();
    if let Some(id) = request_id {
        headers.push(overwrite(REQUEST_ID_HEADER, id.to_owned()));
    }
    let denied = DeniedHttpResponse {
        status: Some(HttpStatus { code: i32::from(problem.class.http.as_u16()) }),
        headers,
        body: problem.s4e_body().to_string(),
    };
    let response = CheckResponse {
        status: Some(rpc::Status {
            code: problem.class.grpc as i32,
            message: problem.message.clone(),
            details: vec![],
        }),
        http_response: Some(HttpResponse::DeniedResponse(denied)),
        dynamic_metadata: None,
    };
    (response, problem.class.reason)
}

/// The scopes a route requires: `required_scopes`, comma- or
/// space-separated.
fn required_scopes(extensions: &HashMap<String, String>) -> Vec<String> {
    extensions.get(REQUIRED_SCOPES_KEY).map(|list| gateway::scope_list(list)).unwrap_or_default()
}

#[tonic::async_trait]
impl Authorization for EnvoyAuthorization {
    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        let own_id = request::id::from_extensions(request.extensions()).map(str::to_owned);
        let CheckRequest { attributes } = request.into_inner();
        let (http, extensions) = match attributes {
            Some(attributes) => (attributes.request.and_then(|r| r.http), attributes.context_extensions),
            None => (None, HashMap::new()),
        };
        // The id of the HTTP request Envoy describes becomes this call's id
        // (when acceptable), so the upstream, Envoy and the audit rows show
        // one id. This runs inside the call's span (no span of its own).
        let offered_id = http.as_ref().and_then(|http| {
            http.headers
                .get(REQUEST_ID_HEADER)
                .map(String::as_str)
                .or_else(|| (!http.id.is_empty()).then_some(http.id.as_str()))
        });
        let request_id =
            offered_id.and_then(|id| request::id::accept(id.as_bytes())).map(str::to_owned).or(own_id);
        if let Some(id) = &request_id {
            tracing::Span::current().record("request_id", tracing::field::display(id));
        }
        let Some(http) = http else {
            tracing::info!("ext_authz check without HTTP attributes refused");
            let (response, _) = deny(
                Error::invalid(
                    "attributes.request.http",
                    "the CheckRequest describes no HTTP request; use the HTTP ext_authz filter",
                ),
                request_id.as_deref(),
            );
            return Ok(with_request_id(response, request_id.as_deref()));
        };
        let required = required_scopes(&extensions);
        let (response, result) = match self.authorize(&http, &required).await {
            Ok(principal) => (self.allow(&principal, request_id.as_deref()), "valid"),
            Err(err) => deny(err, request_id.as_deref()),
        };
        self.metrics.record_validation("envoy_check", result);
        tracing::debug!(result, method = %http.method, "ext_authz check");
        Ok(with_request_id(response, request_id.as_deref()))
    }
}

/// The response, with the call's request id in its metadata.
fn with_request_id(response: CheckResponse, request_id: Option<&str>) -> Response<CheckResponse> {
    let mut response = Response::new(response);
    if let Some(value) = request_id.and_then(|id| id.parse().ok()) {
        response.metadata_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_split_on_commas_and_spaces() {
        let extensions = HashMap::from([(
            REQUIRED_SCOPES_KEY.to_owned(),
            " assets:read,assets:write  billing:read ,".to_owned(),
        )]);
        assert_eq!(required_scopes(&extensions), ["assets:read", "assets:write", "billing:read"]);
        assert!(required_scopes(&HashMap::new()).is_empty());
    }

    #[test]
    fn denials_carry_the_s4e_body_and_status() {
        let (response, reason) = deny(crate::domain::AuthFailure::Missing.into(), Some("req-1"));
        assert_eq!(reason, "UNAUTHORIZED");
        assert_eq!(response.status.unwrap().code, Code::Unauthenticated as i32);
        let Some(HttpResponse::DeniedResponse(denied)) = response.http_response else { panic!() };
        assert_eq!(denied.status.unwrap().code, 401);
        let body: serde_json::Value = serde_json::from_str(&denied.body).unwrap();
        assert_eq!(body["status"], "error");
        assert_eq!(body["error"]["code"], "unauthorized");
        let header = |name: &str| {
            denied
                .headers
                .iter()
                .find_map(|h| h.header.as_ref().filter(|h| h.key == name).map(|h| h.value.clone()))
        };
        assert_eq!(header("content-type").as_deref(), Some("application/json"));
        assert_eq!(header("www-authenticate").as_deref(), Some(r#"Bearer realm="portcullis""#));
        assert_eq!(header("x-request-id").as_deref(), Some("req-1"));

        let (response, _) = deny(Error::missing_scope("assets:read"), None);
        let Some(HttpResponse::DeniedResponse(denied)) = response.http_response else { panic!() };
        assert_eq!(denied.status.unwrap().code, 403);
        assert!(denied.body.contains("\"forbidden\""), "{}", denied.body);
        assert!(denied.headers.iter().all(|h| h.header.as_ref().unwrap().key != "www-authenticate"));

        let (response, _) =
            deny(Error::Overloaded { what: "x", retry_after: std::time::Duration::from_secs(3) }, None);
        let Some(HttpResponse::DeniedResponse(denied)) = response.http_response else { panic!() };
        assert_eq!(denied.status.unwrap().code, 429);
        assert!(denied.body.contains("\"rate_limited\""), "{}", denied.body);
        assert!(denied.headers.iter().any(|h| h.header.as_ref().unwrap().key == "retry-after"));
    }

    #[test]
    fn the_descriptor_set_is_complete() {
        use prost::Message as _;
        let set = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
        let names: std::collections::HashSet<_> = set.file.iter().filter_map(|f| f.name.as_deref()).collect();
        for file in &set.file {
            for dependency in &file.dependency {
                assert!(names.contains(dependency.as_str()), "{dependency} is missing");
            }
        }
        let service = set
            .file
            .iter()
            .filter(|f| f.package.as_deref() == Some("envoy.service.auth.v3"))
            .flat_map(|f| &f.service)
            .find(|s| s.name.as_deref() == Some("Authorization"))
            .expect("Authorization service");
        let check = service.method.iter().find(|m| m.name.as_deref() == Some("Check")).unwrap();
        assert_eq!(check.input_type.as_deref(), Some(".envoy.service.auth.v3.CheckRequest"));
        assert_eq!(check.output_type.as_deref(), Some(".envoy.service.auth.v3.CheckResponse"));
    }
}
