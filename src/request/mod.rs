//! The layers every call passes through — gRPC and the HTTP API alike, one
//! stack for both — and the extractor every handler starts with.
//!
//! [`stack`] writes the order down once, outermost first:
//! 1. [`observe`]: keeps the caller's `x-request-id` or makes one ([`id`]),
//!    opens the call's span (with the request id, continuing the caller's
//!    trace), bounds its time ([`timeout`]: answered with the request id)
//!    and, when the call ends, returns the id on the response and records
//!    its status on the span, in the metrics and in one log line —
//!    `CANCELLED` when the client went away first;
//! 2. dispatch: `content-type: application/grpc*` goes to the gRPC routes,
//!    everything else to the HTTP router.
//!
//! [`call`] builds a handler's context and caller from the request.

pub mod call;
pub mod id;
pub mod observe;
pub mod timeout;

use std::{
    convert::Infallible,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http::{HeaderMap, Request, Response};
use tower::{Layer as _, Service};

pub use call::{Call, Source};

use crate::metrics::Metrics;

/// Whether a request is a gRPC call (`content-type: application/grpc`,
/// `application/grpc+proto`, …).
#[must_use]
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"))
}

/// What the stack needs besides the routes.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Time limit of one call.
    pub timeout: Duration,
    /// One `info` line per finished call.
    pub log_calls: bool,
}

/// The whole request stack around the gRPC routes and the HTTP router.
pub fn stack(
    grpc: axum::Router,
    http: axum::Router,
    metrics: Arc<Metrics>,
    settings: Settings,
) -> impl Service<
    Request<hyper::body::Incoming>,
    Response = Response<impl http_body::Body<Data = axum::body::Bytes, Error = axum::Error> + Send + 'static>,
    Error = Infallible,
    Future = impl Send + 'static,
> + Clone
+ Send
+ 'static {
    // One layer: the id, the span, the time limit, the metrics and the log
    // line of every call (see the module docs).
    observe::ObserveLayer::new(metrics, settings.timeout, settings.log_calls).layer(Dispatch { grpc, http })
}

/// Sends gRPC calls to the gRPC routes and the rest to the HTTP router.
#[derive(Clone, Debug)]
pub struct Dispatch {
    grpc: axum::Router,
    http: axum::Router,
}

impl<B> Service<Request<B>> for Dispatch
where
    B: http_body::Body<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response<axum::body::Body>;
    type Error = Infallible;
    type Future = axum::routing::future::RouteFuture<Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Both routers are always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if is_grpc(request.headers()) { self.grpc.call(request) } else { self.http.call(request) }
    }
}
