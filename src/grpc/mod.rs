//! The gRPC edge: tonic services whose handlers all read alike — extract the
//! [`Call`], convert, one domain call, convert back — and [`router`], the
//! routes of every service served on the port (portcullis's own, health,
//! reflection, Envoy's `ext_authz`). No SQL, hashing or policy here.

mod audit;
mod auth;
mod convert;
pub mod envoy;
mod keys;
mod redact;
mod status;
mod user;

use std::sync::Arc;

use envoy_types::ext_authz::v3::pb::AuthorizationServer;
use http::Response;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request};

pub use audit::AuditService;
pub use auth::AuthService;
pub use envoy::{EnvoyAuthorization, IdentityHeaders};
pub use keys::KeyService;
pub use status::to_status;
pub use user::UserService;

use crate::{
    config::Config,
    domain::{Domain, Principal},
    errors::{self, Problem},
    metrics::Metrics,
    proto::{
        self,
        v1::{
            audit_service_server::AuditServiceServer, auth_service_server::AuthServiceServer,
            key_service_server::KeyServiceServer, user_service_server::UserServiceServer,
        },
    },
    request::{Call, Source},
    server::EndStreamsLayer,
};

/// The request's [`Source`]: its metadata and extensions.
fn source<T>(request: &Request<T>) -> Source<'_> {
    Source::new(request.metadata().as_ref(), request.extensions())
}

/// A call that needs no credential of its own.
fn anonymous<T>(domain: &Domain, request: &Request<T>) -> Call<()> {
    Call::anonymous(domain, &source(request))
}

/// A call that must carry the caller's own credential in its metadata.
///
/// # Errors
/// A missing, ambiguous or invalid credential.
async fn authenticated<T>(domain: &Domain, request: &Request<T>) -> Result<Call<Principal>, tonic::Status> {
    Call::authenticated(domain, &source(request)).await.map_err(to_status)
}

/// Everything `router` serves on the gRPC port.
pub struct Routes<H> {
    /// The rules.
    pub domain: Arc<Domain>,
    /// Where validations and logins are counted.
    pub metrics: Arc<Metrics>,
    /// The health service (its status is set by the app).
    pub health: tonic_health::pb::health_server::HealthServer<H>,
    /// Cancelled when the server closes: open streams end then.
    pub closed: CancellationToken,
}

/// The routes of every gRPC service, for the request stack's dispatch.
///
/// # Errors
/// The reflection descriptors do not decode (a build defect).
pub fn router<H: tonic_health::pb::health_server::Health>(
    routes: Routes<H>,
    config: &Config,
) -> anyhow::Result<axum::Router> {
    let Routes { domain, metrics, health, closed } = routes;
    let max = config.max_message_bytes;
    let end_streams = EndStreamsLayer::new(closed);
    let reflection_v1 = descriptor_sets(tonic_reflection::server::Builder::configure()).build_v1()?;
    // grpcurl 1.8 still asks the v1alpha reflection service.
    let reflection_v1alpha =
        descriptor_sets(tonic_reflection::server::Builder::configure()).build_v1alpha()?;
    let envoy = EnvoyAuthorization::new(
        Arc::clone(&domain),
        Arc::clone(&metrics),
        IdentityHeaders::from_config(config),
    );
    let served = axum::Router::new()
        .route_service(&path_of::<AuthServiceServer<AuthService>>(), {
            AuthServiceServer::new(AuthService::new(Arc::clone(&domain), Arc::clone(&metrics)))
                .max_decoding_message_size(max)
        })
        .route_service(
            &path_of::<UserServiceServer<UserService>>(),
            UserServiceServer::new(UserService::new(Arc::clone(&domain))).max_decoding_message_size(max),
        )
        .route_service(
            &path_of::<KeyServiceServer<KeyService>>(),
            KeyServiceServer::new(KeyService::new(Arc::clone(&domain))).max_decoding_message_size(max),
        )
        .route_service(
            &path_of::<AuditServiceServer<AuditService>>(),
            AuditServiceServer::new(AuditService::new(Arc::clone(&domain))).max_decoding_message_size(max),
        )
        .route_service(
            &path_of::<AuthorizationServer<EnvoyAuthorization>>(),
            AuthorizationServer::new(envoy).max_decoding_message_size(max),
        )
        .route_service(&named_path(&health), tower::Layer::layer(&end_streams, health))
        .route_service(&named_path(&reflection_v1), tower::Layer::layer(&end_streams, reflection_v1))
        .route_service(
            &named_path(&reflection_v1alpha),
            tower::Layer::layer(&end_streams, reflection_v1alpha),
        )
        .fallback(|| async {
            Problem::new(errors::UNIMPLEMENTED, "no such service or method").into_grpc_response()
        })
        .layer(tower::util::MapResponseLayer::new(framework_status));
    Ok(served)
}

/// `/<package.Service>/{*method}` for a tonic server.
fn path_of<S: tonic::server::NamedService>() -> String {
    format!("/{}/{{*method}}", S::NAME)
}

/// [`path_of`] for a server whose type cannot be named.
fn named_path<S: tonic::server::NamedService>(_: &S) -> String {
    path_of::<S>()
}

/// Registers every descriptor set served: portcullis, health, the error
/// details (so grpcurl can decode `ErrorInfo`, `BadRequest`, `RetryInfo`),
/// and Envoy's `ext_authz`.
fn descriptor_sets(builder: tonic_reflection::server::Builder<'_>) -> tonic_reflection::server::Builder<'_> {
    builder
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(envoy::FILE_DESCRIPTOR_SET)
}

/// Every gRPC method served, as (`package.Service`, `Method`): the label
/// values of the RPC metrics.
#[must_use]
pub fn served_methods() -> Vec<(String, String)> {
    use prost::Message as _;
    let mut methods = Vec::new();
    let services = [
        "portcullis.v1.AuthService",
        "portcullis.v1.UserService",
        "portcullis.v1.KeyService",
        "portcullis.v1.AuditService",
        "grpc.health.v1.Health",
        "envoy.service.auth.v3.Authorization",
    ];
    for set in [proto::FILE_DESCRIPTOR_SET, tonic_health::pb::FILE_DESCRIPTOR_SET, envoy::FILE_DESCRIPTOR_SET]
    {
        let Ok(set) = prost_types::FileDescriptorSet::decode(set) else { continue };
        for file in &set.file {
            let package = file.package();
            for service in &file.service {
                let name = format!("{package}.{}", service.name());
                if services.contains(&name.as_str()) {
                    methods.extend(service.method.iter().map(|m| (name.clone(), m.name().to_owned())));
                }
            }
        }
    }
    methods.sort();
    methods.dedup();
    for service in ["grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"] {
        methods.push((service.to_owned(), "ServerReflectionInfo".to_owned()));
    }
    methods
}

/// Gives the statuses tonic itself answers — a body that does not decode, a
/// message over `max_message_bytes`, a method the service does not have —
/// their row of the error table: our handlers' statuses always carry
/// `ErrorInfo` (`grpc-status-details-bin`); an error without came from the
/// framework.
fn framework_status(response: Response<axum::body::Body>) -> Response<axum::body::Body> {
    let headers = response.headers();
    let failed = headers.get("grpc-status").is_some_and(|code| code.as_bytes() != b"0");
    if !failed || headers.contains_key("grpc-status-details-bin") {
        return response;
    }
    let status = response
        .extensions()
        .get::<tonic::Status>()
        .cloned()
        .or_else(|| tonic::Status::from_header_map(headers))
        .unwrap_or_else(|| tonic::Status::unknown(""));
    let problem = match status.code() {
        Code::OutOfRange | Code::ResourceExhausted => Problem::new(
            errors::MESSAGE_TOO_LARGE,
            format!("the request message is larger than the server accepts: {}", status.message()),
        ),
        Code::Internal if status.message().contains("decode") || status.message().contains("compression") => {
            Problem::invalid("message", format!("the request message does not decode ({})", status.message()))
        }
        Code::Unimplemented => Problem::new(errors::UNIMPLEMENTED, "no such method"),
        // A service of the framework's own (health, reflection) answering
        // in its own words: keep them, with the table's row for the code.
        code => match errors::TABLE
            .iter()
            .find(|class| class.grpc == code && class.reason == errors::code_name(code))
        {
            Some(class) => Problem::new(*class, status.message()),
            None => Problem::new(errors::INTERNAL, "internal error"),
        },
    };
    problem.into_grpc_response()
}
