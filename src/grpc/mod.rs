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

use std::{
    convert::Infallible,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use envoy_types::ext_authz::v3::pb::AuthorizationServer;
use http::Response;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, server::NamedService};
use tower::Service;

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
    server::{EndStreams, EndStreamsLayer},
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
) -> anyhow::Result<GrpcRoutes<H>> {
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
    Ok(GrpcRoutes {
        auth: AuthServiceServer::new(AuthService::new(Arc::clone(&domain), Arc::clone(&metrics)))
            .max_decoding_message_size(max),
        user: UserServiceServer::new(UserService::new(Arc::clone(&domain))).max_decoding_message_size(max),
        keys: KeyServiceServer::new(KeyService::new(Arc::clone(&domain))).max_decoding_message_size(max),
        audit: AuditServiceServer::new(AuditService::new(Arc::clone(&domain))).max_decoding_message_size(max),
        envoy: AuthorizationServer::new(envoy).max_decoding_message_size(max),
        health: tower::Layer::layer(&end_streams, health),
        reflection: tower::util::BoxCloneSyncService::new(ReflectionRoutes {
            v1: tower::Layer::layer(&end_streams, reflection_v1),
            v1alpha: tower::Layer::layer(&end_streams, reflection_v1alpha),
        }),
    })
}

/// Every gRPC service served, chosen by the service name in the path
/// (`/package.Service/Method`): no router, no path parameters. Each
/// service is called directly (tonic's servers and the stream-ending
/// wrapper are always ready); a response without `ErrorInfo` that tonic
/// itself made gets its row of the error table ([`framework_status`]).
pub struct GrpcRoutes<H> {
    auth: AuthServiceServer<AuthService>,
    user: UserServiceServer<UserService>,
    keys: KeyServiceServer<KeyService>,
    audit: AuditServiceServer<AuditService>,
    envoy: AuthorizationServer<EnvoyAuthorization>,
    health: EndStreams<tonic_health::pb::health_server::HealthServer<H>>,
    /// Both reflection services (their types cannot be named).
    reflection: tower::util::BoxCloneSyncService<
        http::Request<hyper::body::Incoming>,
        Response<axum::body::Body>,
        Infallible,
    >,
}

// Not derived: the health server is `Clone` whatever `H` is.
impl<H> Clone for GrpcRoutes<H> {
    fn clone(&self) -> Self {
        Self {
            auth: self.auth.clone(),
            user: self.user.clone(),
            keys: self.keys.clone(),
            audit: self.audit.clone(),
            envoy: self.envoy.clone(),
            health: self.health.clone(),
            reflection: self.reflection.clone(),
        }
    }
}

impl<H> std::fmt::Debug for GrpcRoutes<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcRoutes").finish_non_exhaustive()
    }
}

/// The two reflection services, told apart by their service name.
#[derive(Clone)]
struct ReflectionRoutes<A, B> {
    v1: A,
    v1alpha: B,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

const REFLECTION_V1: &str = "grpc.reflection.v1.ServerReflection";
const REFLECTION_V1ALPHA: &str = "grpc.reflection.v1alpha.ServerReflection";

impl<A, B> Service<http::Request<hyper::body::Incoming>> for ReflectionRoutes<A, B>
where
    A: Service<
            http::Request<hyper::body::Incoming>,
            Response = Response<axum::body::Body>,
            Error = Infallible,
        >,
    A::Future: Send + 'static,
    B: Service<
            http::Request<hyper::body::Incoming>,
            Response = Response<axum::body::Body>,
            Error = Infallible,
        >,
    B::Future: Send + 'static,
{
    type Response = Response<axum::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<axum::body::Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<hyper::body::Incoming>) -> Self::Future {
        if service_name(request.uri().path()) == REFLECTION_V1 {
            Box::pin(self.v1.call(request))
        } else {
            Box::pin(self.v1alpha.call(request))
        }
    }
}

/// The service name of a gRPC path, `package.Service` of
/// `/package.Service/Method`.
fn service_name(path: &str) -> &str {
    path.strip_prefix('/').and_then(|rest| rest.split_once('/')).map_or("", |(service, _)| service)
}

impl<H: tonic_health::pb::health_server::Health> Service<http::Request<hyper::body::Incoming>>
    for GrpcRoutes<H>
{
    type Response = Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = GrpcFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Every service here is always ready (see the type's docs).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<hyper::body::Incoming>) -> GrpcFuture {
        use envoy_types::ext_authz::v3::pb::AuthorizationServer as Envoy;
        use tonic_health::pb::health_server::HealthServer;
        match service_name(request.uri().path()) {
            AuthServiceServer::<AuthService>::NAME => GrpcFuture::Tonic(self.auth.call(request)),
            UserServiceServer::<UserService>::NAME => GrpcFuture::Tonic(self.user.call(request)),
            KeyServiceServer::<KeyService>::NAME => GrpcFuture::Tonic(self.keys.call(request)),
            AuditServiceServer::<AuditService>::NAME => GrpcFuture::Tonic(self.audit.call(request)),
            Envoy::<EnvoyAuthorization>::NAME => GrpcFuture::Tonic(self.envoy.call(request)),
            HealthServer::<H>::NAME => GrpcFuture::Axum(self.health.call(request)),
            REFLECTION_V1 | REFLECTION_V1ALPHA => GrpcFuture::Axum(self.reflection.call(request)),
            _ => GrpcFuture::Ready(Some(
                tonic::Status::from(Problem::new(errors::UNIMPLEMENTED, "no such service or method"))
                    .into_http(),
            )),
        }
    }
}

/// The future of one call through [`GrpcRoutes`].
pub enum GrpcFuture {
    /// One of portcullis's own services.
    Tonic(BoxFuture<Result<Response<tonic::body::Body>, Infallible>>),
    /// Health or reflection, whose streams end when the server closes.
    Axum(BoxFuture<Result<Response<axum::body::Body>, Infallible>>),
    /// Answered at once.
    Ready(Option<Response<tonic::body::Body>>),
}

impl std::fmt::Debug for GrpcFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GrpcFuture")
    }
}

impl Future for GrpcFuture {
    type Output = Result<Response<tonic::body::Body>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let response = match &mut *self {
            GrpcFuture::Tonic(future) => match future.as_mut().poll(cx) {
                Poll::Ready(Ok(response)) => response,
                Poll::Ready(Err(never)) => match never {},
                Poll::Pending => return Poll::Pending,
            },
            GrpcFuture::Axum(future) => match future.as_mut().poll(cx) {
                Poll::Ready(Ok(response)) => response.map(tonic::body::Body::new),
                Poll::Ready(Err(never)) => match never {},
                Poll::Pending => return Poll::Pending,
            },
            GrpcFuture::Ready(response) => {
                return Poll::Ready(Ok(response.take().unwrap_or_else(|| {
                    tonic::Status::from(Problem::new(errors::INTERNAL, "internal error")).into_http()
                })));
            }
        };
        Poll::Ready(Ok(framework_status(response)))
    }
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
    for service in [REFLECTION_V1, REFLECTION_V1ALPHA] {
        methods.push((service.to_owned(), "ServerReflectionInfo".to_owned()));
    }
    methods
}

/// Gives the statuses tonic itself answers — a body that does not decode, a
/// message over `max_message_bytes`, a method the service does not have —
/// their row of the error table: our handlers' statuses always carry
/// `ErrorInfo` (`grpc-status-details-bin`); an error without came from the
/// framework.
fn framework_status(response: Response<tonic::body::Body>) -> Response<tonic::body::Body> {
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
    tonic::Status::from(problem).into_http()
}
