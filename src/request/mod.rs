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
/// `grpc` is always ready (it is called without `poll_ready`).
pub fn stack<G>(
    grpc: G,
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
+ 'static
where
    G: Service<Request<hyper::body::Incoming>, Response = Response<tonic::body::Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    G::Future: Send + Unpin + 'static,
{
    // One layer: the id, the span, the time limit, the metrics and the log
    // line of every call (see the module docs).
    observe::ObserveLayer::new(metrics, settings.timeout, settings.log_calls).layer(Dispatch { grpc, http })
}

/// Sends gRPC calls to the gRPC routes and the rest to the HTTP router.
#[derive(Clone, Debug)]
pub struct Dispatch<G> {
    grpc: G,
    http: axum::Router,
}

impl<G> Service<Request<hyper::body::Incoming>> for Dispatch<G>
where
    G: Service<Request<hyper::body::Incoming>, Response = Response<tonic::body::Body>, Error = Infallible>,
    G::Future: Unpin,
{
    type Response = Response<AnyBody>;
    type Error = Infallible;
    type Future = DispatchFuture<G::Future>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The gRPC routes and the router are always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<hyper::body::Incoming>) -> Self::Future {
        if is_grpc(request.headers()) {
            DispatchFuture::Grpc(self.grpc.call(request))
        } else {
            DispatchFuture::Http(self.http.call(request))
        }
    }
}

/// The future of [`Dispatch`].
#[allow(
    clippy::large_enum_variant,
    reason = "it lives inside the call's one boxed future; boxing the router's would add an allocation"
)]
pub enum DispatchFuture<F> {
    /// A gRPC call.
    Grpc(F),
    /// An HTTP request.
    Http(axum::routing::future::RouteFuture<Infallible>),
}

impl<F> std::fmt::Debug for DispatchFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DispatchFuture")
    }
}

impl<F> Future for DispatchFuture<F>
where
    F: Future<Output = Result<Response<tonic::body::Body>, Infallible>> + Unpin,
{
    type Output = Result<Response<AnyBody>, Infallible>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut *self {
            DispatchFuture::Grpc(future) => {
                std::pin::Pin::new(future).poll(cx).map_ok(|response| response.map(AnyBody::Tonic))
            }
            DispatchFuture::Http(future) => {
                std::pin::Pin::new(future).poll(cx).map_ok(|response| response.map(AnyBody::Axum))
            }
        }
    }
}

/// A response body from the gRPC routes (tonic's) or the HTTP router
/// (axum's), without boxing either again.
pub enum AnyBody {
    /// From a gRPC service.
    Tonic(tonic::body::Body),
    /// From the HTTP router, or an answer of the request layers.
    Axum(axum::body::Body),
}

impl std::fmt::Debug for AnyBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AnyBody::Tonic(_) => "AnyBody::Tonic",
            AnyBody::Axum(_) => "AnyBody::Axum",
        })
    }
}

impl http_body::Body for AnyBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        match self.get_mut() {
            AnyBody::Tonic(body) => std::pin::Pin::new(body).poll_frame(cx).map_err(axum::Error::new),
            AnyBody::Axum(body) => std::pin::Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            AnyBody::Tonic(body) => body.is_end_stream(),
            AnyBody::Axum(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            AnyBody::Tonic(body) => body.size_hint(),
            AnyBody::Axum(body) => body.size_hint(),
        }
    }
}
