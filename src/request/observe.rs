//! What every call leaves behind — its request id, its span, its metrics
//! and its log line — from one tower layer, [`ObserveLayer`], that also
//! bounds the call's time (so a timed-out call is answered, counted and
//! logged like any other).
//!
//! Per call it makes one boxed future and, for a gRPC response whose status
//! comes in trailers, wraps the body to read them; nothing else is
//! allocated unless a subscriber wants the span. (It replaces tower-http's
//! request-id and trace layers, which cost about a tenth of a cache-hit
//! `ValidateToken` between them.)
//!
//! The call's server span (`rpc` for gRPC, `http` for the HTTP API)
//! continues the caller's W3C `traceparent`/`tracestate` (a malformed one
//! starts a new trace), with the request id as a field, so every log line
//! of the call carries it. When the call's outcome is known — the response
//! headers of an HTTP request or of a trailers-only gRPC answer (every
//! error of a unary call), else the gRPC trailers — its status is recorded
//! on the span and in the metrics, and the `info` line "rpc finished"
//! (`method=package.Service/Method`, code, milliseconds) or "http request finished" (route, status,
//! milliseconds) is written. A call dropped before that — the client went
//! away, or reset its stream — counts as `CANCELLED` (HTTP: 499).

use std::{
    convert::Infallible,
    fmt,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use http::{HeaderMap, HeaderValue, Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::Code;
use tower::{Layer, Service};
use tracing::{Instrument as _, Span, field};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::{AnyBody, id, is_grpc, timeout};
use crate::{
    errors::{self, Problem},
    metrics::{HttpLabels, Metrics, RpcMethod},
};

/// The gRPC path of Envoy's `Check`, which takes its request id from the
/// HTTP request it describes: its span records the id the handler adopts.
pub(crate) const ENVOY_CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// The route a response of the HTTP API answered, set by the router; the
/// metrics label and the span's `http.route`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route(pub &'static str);

// === the layer ===

/// Observes every call and bounds its time.
#[derive(Clone)]
pub struct ObserveLayer {
    metrics: Arc<Metrics>,
    limit: Duration,
    log_calls: bool,
}

impl ObserveLayer {
    /// Records into `metrics`; calls longer than `limit` (or the gRPC
    /// client's shorter `grpc-timeout`) are answered with a timeout;
    /// `log_calls` writes one `info` line per call.
    #[must_use]
    pub fn new(metrics: Arc<Metrics>, limit: Duration, log_calls: bool) -> Self {
        Self { metrics, limit, log_calls }
    }
}

impl fmt::Debug for ObserveLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObserveLayer")
            .field("limit", &self.limit)
            .field("log_calls", &self.log_calls)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe { inner, layer: self.clone() }
    }
}

/// The service of [`ObserveLayer`].
#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    layer: ObserveLayer,
}

impl<S> fmt::Debug for Observe<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Observe").field("layer", &self.layer).finish_non_exhaustive()
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<Request<B>> for Observe<S>
where
    S: Service<Request<B>, Response = Response<AnyBody>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<CallBody>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<CallBody>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let started = Instant::now();
        let request_id = id::keep_or_make(request.headers_mut());
        let grpc = is_grpc(request.headers());
        let ObserveLayer { metrics, limit, log_calls } = &self.layer;
        let (kind, span) = if grpc {
            let method = metrics.rpc_method(request.uri().path());
            (Kind::Grpc(method), grpc_span(&request, metrics.labels(method), &request_id))
        } else {
            (Kind::Http(method_label(request.method())), http_span(&request, &request_id))
        };
        let limit = if grpc {
            timeout::client_timeout(request.headers()).map_or(*limit, |t| t.min(*limit))
        } else {
            *limit
        };
        id::record(&mut request, request_id.clone());
        let call = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        // Made before the future: a call dropped before it is first polled
        // is counted too.
        let pending =
            Pending { metrics: Arc::clone(metrics), kind, started, log_calls: *log_calls, span, done: false };
        Box::pin(async move {
            let pending = pending;
            let answered = tokio::time::timeout(limit, call).instrument(pending.span.clone()).await;
            let mut response = match answered {
                Ok(Ok(response)) => response,
                Ok(Err(never)) => match never {},
                Err(_elapsed) => {
                    let _entered = pending.span.enter();
                    tracing::warn!(timeout = ?limit, "request timed out");
                    let problem = Problem::new(errors::DEADLINE_EXCEEDED, "request timed out");
                    if grpc {
                        problem.into_grpc_response().map(AnyBody::Axum)
                    } else {
                        problem.into_s4e_response().map(AnyBody::Axum)
                    }
                }
            };
            if !response.headers().contains_key(id::HEADER) {
                response.headers_mut().insert(id::HEADER, request_id);
            }
            Ok(pending.classify(response))
        })
    }
}

// === the span ===

/// The server span of a gRPC call, labelled with its (service, method).
fn grpc_span<B>(
    request: &Request<B>,
    labels: (&'static str, &'static str),
    request_id: &HeaderValue,
) -> Span {
    let path = request.uri().path();
    // A path no service serves is still named in the span when it is a
    // plain protobuf name (the metrics say `unknown`).
    let (service, method) = if labels.0 == "unknown" { split_path(path) } else { labels };
    let span = tracing::info_span!(
        target: "portcullis::request",
        "rpc",
        otel.name = path.strip_prefix('/').unwrap_or(path),
        otel.kind = "server",
        otel.status_code = field::Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = field::Empty,
        request_id = field::Empty,
    );
    if !span.is_disabled() {
        if path != ENVOY_CHECK_PATH {
            record_id(&span, request_id);
        }
        continue_trace(&span, request.headers());
    }
    span
}

/// The server span of an HTTP API request.
fn http_span<B>(request: &Request<B>, request_id: &HeaderValue) -> Span {
    let span = tracing::info_span!(
        target: "portcullis::request",
        "http",
        otel.name = %request.method(),
        otel.kind = "server",
        otel.status_code = field::Empty,
        http.request.method = %request.method(),
        http.route = field::Empty,
        http.response.status_code = field::Empty,
        request_id = field::Empty,
    );
    if !span.is_disabled() {
        record_id(&span, request_id);
        continue_trace(&span, request.headers());
    }
    span
}

fn record_id(span: &Span, request_id: &HeaderValue) {
    if let Ok(id) = request_id.to_str() {
        span.record("request_id", field::display(id));
    }
}

/// Continues the caller's trace in `span`. A malformed traceparent extracts to an
/// empty context: the span then starts a new trace, as it does without one
/// (nothing to extract, the common case, costs nothing). Without an
/// OpenTelemetry layer (no exporter configured) there is nothing to set.
pub fn continue_trace(span: &Span, headers: &HeaderMap) {
    if headers.contains_key("traceparent") {
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        let _ = span.set_parent(parent);
    }
}

/// Reads W3C trace headers from request headers.
struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

// === the outcome ===

/// One call whose outcome is not recorded yet: recorded once, when known,
/// or as `CANCELLED` (HTTP: 499) when dropped unknown.
struct Pending {
    metrics: Arc<Metrics>,
    kind: Kind,
    started: Instant,
    log_calls: bool,
    span: Span,
    done: bool,
}

#[derive(Clone, Copy)]
enum Kind {
    Grpc(RpcMethod),
    Http(&'static str),
}

impl Pending {
    /// Records the outcome if the response headers carry it, else hands
    /// the call to the body, which reads it from the trailers.
    fn classify(mut self, response: Response<AnyBody>) -> Response<CallBody> {
        match self.kind {
            Kind::Http(_) => {
                let route = response.extensions().get::<Route>().copied();
                self.finish_http(response.status().as_u16(), route);
                response.map(|body| CallBody { inner: body, pending: None })
            }
            Kind::Grpc(_) => match grpc_status(response.headers()) {
                Some(code) => {
                    self.finish_grpc(code);
                    response.map(|body| CallBody { inner: body, pending: None })
                }
                None => response.map(|body| CallBody { inner: body, pending: Some(Box::new(self)) }),
            },
        }
    }

    fn finish_grpc(&mut self, code: Code) {
        let Kind::Grpc(method) = self.kind else { return };
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let elapsed = self.started.elapsed();
        self.metrics.record_rpc(method, code, elapsed);
        let failed = matches!(
            code,
            Code::Unknown
                | Code::DeadlineExceeded
                | Code::Unimplemented
                | Code::Internal
                | Code::Unavailable
                | Code::DataLoss
        );
        if self.span.is_disabled() && !self.log_calls {
            return;
        }
        self.span.record("rpc.grpc.status_code", code as i32);
        if failed {
            self.span.record("otel.status_code", "ERROR");
        }
        if self.log_calls {
            let _entered = self.span.enter();
            tracing::info!(
                target: "portcullis::request",
                method = self.metrics.full_name(method),
                grpc_code = errors::code_name(code),
                elapsed_ms = elapsed.as_secs_f64() * 1000.0,
                "rpc finished"
            );
        }
    }

    fn finish_http(&mut self, status: u16, route: Option<Route>) {
        let Kind::Http(method) = self.kind else { return };
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let elapsed = self.started.elapsed();
        let route = route.map_or("unknown", |Route(route)| route);
        self.metrics.record_http(&HttpLabels { route, method, status }, elapsed);
        if !self.span.is_disabled() {
            self.span.record("http.route", route);
            self.span.record("http.response.status_code", status);
            self.span.record("otel.name", format!("{method} {route}"));
            if status >= 500 {
                self.span.record("otel.status_code", "ERROR");
            }
        }
        if self.log_calls {
            let _entered = self.span.enter();
            tracing::info!(
                target: "portcullis::request",
                route,
                status,
                elapsed_ms = elapsed.as_secs_f64() * 1000.0,
                "http request finished"
            );
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        // Dropped unanswered or mid-stream: the client went away.
        match self.kind {
            Kind::Grpc(_) => self.finish_grpc(Code::Cancelled),
            // nginx's 499: the client closed the request.
            Kind::Http(_) => self.finish_http(499, None),
        }
    }
}

/// A response body; for a gRPC response whose status comes in trailers, it
/// records the call's outcome from them (`UNKNOWN` when the stream ends
/// without, `INTERNAL` when the body fails).
pub struct CallBody {
    inner: AnyBody,
    pending: Option<Box<Pending>>,
}

impl fmt::Debug for CallBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallBody").field("watching", &self.pending.is_some()).finish_non_exhaustive()
    }
}

impl CallBody {
    fn finish(&mut self, code: Code) {
        if let Some(mut pending) = self.pending.take() {
            pending.finish_grpc(code);
        }
    }
}

impl Body for CallBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if self.pending.is_some() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(trailers) = frame.trailers_ref() {
                        // A gRPC response always ends with trailers.
                        let code = grpc_status(trailers).unwrap_or(Code::Unknown);
                        self.finish(code);
                    }
                }
                // Without trailers the stream was cut.
                Poll::Ready(None) => self.finish(Code::Unknown),
                Poll::Ready(Some(Err(_))) => self.finish(Code::Internal),
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// `grpc-status` in `headers`, if present.
fn grpc_status(headers: &HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?;
    Some(Code::from_bytes(value.as_bytes()))
}

/// The metrics label of an HTTP method: the standard ones, else `OTHER`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// `/package.Service/Method` as (`package.Service`, `Method`); `unknown` for
/// either part that is not a plain protobuf name.
fn split_path(path: &str) -> (&str, &str) {
    let plain = |s: &str, dots: bool| {
        !s.is_empty()
            && s.len() <= 100
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || (dots && b == b'.'))
    };
    match path.strip_prefix('/').and_then(|rest| rest.split_once('/')) {
        Some((service, method)) if plain(service, true) && plain(method, false) => (service, method),
        _ => ("unknown", "unknown"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_bounded_labels() {
        assert_eq!(
            split_path("/portcullis.v1.AuthService/ValidateToken"),
            ("portcullis.v1.AuthService", "ValidateToken")
        );
        assert_eq!(split_path("/"), ("unknown", "unknown"));
        assert_eq!(split_path("/a/b/c"), ("unknown", "unknown"));
        assert_eq!(split_path("/svc/me{th}"), ("unknown", "unknown"));
        assert_eq!(split_path(&format!("/{}/M", "s".repeat(200))), ("unknown", "unknown"));
    }
}
