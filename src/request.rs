//! One request's context: its request id, its server span and its server's
//! metrics, set by [`RequestLayer`] around every RPC and readable anywhere in
//! that call through [`current_request_id`].
//!
//! The layer, for each request:
//! 1. keeps the caller's `x-request-id` when it is 1 to 128 visible ASCII
//!    characters, else replaces it with a generated one (a bad id is never
//!    echoed), and hands the kept id on to the handler in the same header;
//! 2. opens the RPC's server span (`rpc`, with `request_id`), continuing the
//!    caller's W3C `traceparent`/`tracestate` (a malformed one starts a new
//!    trace), so every log line of the call carries the id;
//! 3. bounds the call by `request_timeout` (and the client's `grpc-timeout`),
//!    answering `DEADLINE_EXCEEDED` itself, so that answer carries the id too;
//! 4. returns the id in the response metadata, errors included;
//! 5. records the RPC's status code on the span and in the metrics (counts,
//!    latency, and `ValidateToken`'s result by reason) when the response ends.

use std::{
    fmt,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use http::{HeaderMap, HeaderValue};
use http_body::{Body as HttpBody, Frame};
use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::Code;
use tonic_types::StatusExt as _;
use tower::{Layer, Service};
use tracing::{Instrument as _, Span, field};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::metrics::{Metrics, RpcLabels};

/// The metadata key that carries a request id, in and out.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Longest request id kept, in bytes.
pub const MAX_REQUEST_ID_BYTES: usize = 128;

/// The gRPC path of `ValidateToken`, whose results are counted by reason.
const VALIDATE_TOKEN_PATH: &str = "/portcullis.v1.AuthService/ValidateToken";

/// The gRPC path of Envoy's `Check`, which takes its request id from the
/// HTTP request it describes (see [`adopt_request_id`]).
pub(crate) const ENVOY_CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

tokio::task_local! {
    static CURRENT: Arc<RequestContext>;
}

/// What the code serving one request may ask about it.
struct RequestContext {
    /// The request id, and whether it has been recorded on the span yet.
    id: Mutex<(Arc<str>, bool)>,
    span: Span,
    metrics: Arc<Metrics>,
}

impl RequestContext {
    fn id(&self) -> Arc<str> {
        Arc::clone(&self.id.lock().unwrap_or_else(std::sync::PoisonError::into_inner).0)
    }

    /// Records the id on the span once; later calls only read it.
    fn settle(&self) -> Arc<str> {
        let mut guard = self.id.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !guard.1 {
            self.span.record("request_id", field::display(&*guard.0));
            guard.1 = true;
        }
        Arc::clone(&guard.0)
    }
}

/// The request id of the RPC being served, from anywhere inside it (handlers,
/// the rules, the store); `None` outside a request (the CLI, background
/// tasks, code run in a task spawned from the request).
#[must_use]
pub fn current_request_id() -> Option<String> {
    CURRENT.try_with(|context| context.id().to_string()).ok()
}

/// For Envoy's `Check`: makes the id of the HTTP request Envoy describes the
/// id of this call (when it is acceptable; else the id the call already
/// has), so the upstream, the portcullis log and the audit rows all show one
/// id. Returns the id in force.
pub(crate) fn adopt_request_id(http_request_id: Option<&str>) -> Option<String> {
    CURRENT
        .try_with(|context| {
            if let Some(candidate) = http_request_id.and_then(|id| accept(id.as_bytes())) {
                let mut guard = context.id.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if !guard.1 {
                    guard.0 = Arc::from(candidate);
                }
            }
            context.settle().to_string()
        })
        .ok()
}

/// Runs `f` with the metrics of the server serving the current request.
pub(crate) fn with_metrics(f: impl FnOnce(&Metrics)) {
    let _ = CURRENT.try_with(|context| f(&context.metrics));
}

/// `candidate` as a request id, when it is 1 to 128 bytes of visible ASCII
/// (`!` to `~`: no spaces, no control characters, nothing beyond ASCII).
#[must_use]
pub fn accept(candidate: &[u8]) -> Option<&str> {
    if candidate.is_empty()
        || candidate.len() > MAX_REQUEST_ID_BYTES
        || !candidate.iter().all(|b| (0x21..=0x7e).contains(b))
    {
        return None;
    }
    std::str::from_utf8(candidate).ok()
}

/// A fresh request id: 128 random bits written as a UUID (version 4).
#[must_use]
pub fn generate() -> String {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 16];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        // The system random source failing is not a reason to fail a
        // request; ids only need to be unique, so fall back to a counter.
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        bytes[..8].copy_from_slice(&n.to_be_bytes());
        bytes[8..].copy_from_slice(&u64::from(std::process::id()).to_be_bytes());
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex = bytes.iter().fold(String::with_capacity(32), |mut hex, b| {
        use std::fmt::Write as _;
        let _ = write!(hex, "{b:02x}");
        hex
    });
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

// === RequestLayer ===

/// The tower layer that gives every RPC its context (see the module docs).
#[derive(Clone)]
pub struct RequestLayer {
    metrics: Arc<Metrics>,
    timeout: Duration,
}

impl RequestLayer {
    /// Records into `metrics` and ends calls that run longer than `timeout`.
    #[must_use]
    pub fn new(metrics: Arc<Metrics>, timeout: Duration) -> Self {
        Self { metrics, timeout }
    }
}

impl fmt::Debug for RequestLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestLayer").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl<S> Layer<S> for RequestLayer {
    type Service = RequestService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestService { inner, metrics: Arc::clone(&self.metrics), timeout: self.timeout }
    }
}

/// The service [`RequestLayer`] wraps around the gRPC routes.
#[derive(Clone)]
pub struct RequestService<S> {
    inner: S,
    metrics: Arc<Metrics>,
    timeout: Duration,
}

impl<S> fmt::Debug for RequestService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestService").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<http::Request<B>> for RequestService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone is not ready; the ready one serves this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let started = Instant::now();
        let path = request.uri().path().to_owned();
        let (service, method) = split_path(&path);

        let id: Arc<str> = request
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|value| accept(value.as_bytes()))
            .map_or_else(|| Arc::from(generate()), Arc::from);
        if let Ok(value) = HeaderValue::from_str(&id) {
            request.headers_mut().insert(REQUEST_ID_HEADER, value);
        }

        let span = tracing::info_span!(
            target: "portcullis::request",
            "rpc",
            otel.name = %path.trim_start_matches('/'),
            otel.kind = "server",
            otel.status_code = field::Empty,
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = field::Empty,
            request_id = field::Empty,
        );
        // A missing or malformed traceparent extracts to an empty context:
        // the span then starts a new trace. Without an OpenTelemetry layer
        // (no exporter configured) there is nothing to set.
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(request.headers()));
        let _ = span.set_parent(parent);

        let context = Arc::new(RequestContext {
            id: Mutex::new((id, false)),
            span: span.clone(),
            metrics: Arc::clone(&self.metrics),
        });
        if path != ENVOY_CHECK_PATH {
            context.settle();
        }
        let client_deadline = client_timeout(request.headers());
        let deadline = client_deadline.map_or(self.timeout, |t| t.min(self.timeout));
        let mut completion = Completion {
            context: Arc::clone(&context),
            labels: RpcLabels {
                grpc_service: service.to_owned(),
                grpc_method: method.to_owned(),
                grpc_code: "",
            },
            validate_token: path == VALIDATE_TOKEN_PATH,
            started,
            client_deadline,
            done: false,
        };

        let future = CURRENT.scope(Arc::clone(&context), async move {
            let mut response = match tokio::time::timeout(deadline, inner.call(request)).await {
                Ok(Ok(response)) => response,
                Ok(Err(err)) => {
                    completion.finish(Code::Internal, None);
                    return Err(err);
                }
                Err(_elapsed) => {
                    tracing::warn!(timeout = ?deadline, "request timed out");
                    tonic::Status::deadline_exceeded("request timed out").into_http()
                }
            };
            let id = completion.context.settle();
            if let Ok(value) = HeaderValue::from_str(&id) {
                response.headers_mut().insert(REQUEST_ID_HEADER, value);
            }
            // A trailers-only response (every error of a unary call) has
            // its status in the headers; otherwise it comes in the trailers.
            if let Some(code) = grpc_status(response.headers()) {
                completion.finish(code, Some(response.headers()));
                return Ok(response);
            }
            Ok(response.map(|body| tonic::body::Body::new(ObservedBody { inner: body, completion })))
        });
        Box::pin(future.instrument(span))
    }
}

/// Records an RPC's end once: when its status is known, or, if the response
/// is dropped first (the client went away or its deadline passed), then.
struct Completion {
    context: Arc<RequestContext>,
    labels: RpcLabels,
    validate_token: bool,
    started: Instant,
    /// The client's `grpc-timeout`: tonic answers it outside this layer.
    client_deadline: Option<Duration>,
    done: bool,
}

impl Completion {
    fn finish(&mut self, code: Code, headers: Option<&HeaderMap>) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let span = &self.context.span;
        let code_name = code_name(code);
        span.record("rpc.grpc.status_code", code as i32);
        if matches!(
            code,
            Code::Unknown
                | Code::DeadlineExceeded
                | Code::Unimplemented
                | Code::Internal
                | Code::Unavailable
                | Code::DataLoss
        ) {
            span.record("otel.status_code", "ERROR");
        }
        if code == Code::Unimplemented {
            // Unknown paths must not grow the label set without bound.
            "unknown".clone_into(&mut self.labels.grpc_service);
            "unknown".clone_into(&mut self.labels.grpc_method);
        }
        self.labels.grpc_code = code_name;
        let metrics = &self.context.metrics;
        metrics.record_rpc(&self.labels, self.started.elapsed());
        if self.validate_token {
            let result = if code == Code::Ok {
                "VALID".to_owned()
            } else {
                headers
                    .and_then(tonic::Status::from_header_map)
                    .and_then(|status| status.get_details_error_info())
                    .map_or_else(|| code_name.to_owned(), |info| info.reason)
            };
            metrics.record_validation("validate_token", &result);
        }
        let _entered = span.enter();
        tracing::debug!(
            target: "portcullis::request",
            grpc_code = code_name,
            elapsed_ms = self.started.elapsed().as_secs_f64() * 1000.0,
            "rpc finished"
        );
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if !self.done {
            // Dropped unanswered: tonic answered the client's own deadline,
            // or the client went away.
            let code = if self.client_deadline.is_some_and(|d| self.started.elapsed() >= d) {
                Code::DeadlineExceeded
            } else {
                Code::Cancelled
            };
            self.finish(code, None);
        }
    }
}

/// A response body that watches for the trailers carrying `grpc-status`.
struct ObservedBody {
    inner: tonic::body::Body,
    completion: Completion,
}

impl HttpBody for ObservedBody {
    type Data = <tonic::body::Body as HttpBody>::Data;
    type Error = <tonic::body::Body as HttpBody>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = grpc_status(trailers).unwrap_or(Code::Unknown);
                    self.completion.finish(code, Some(trailers));
                }
            }
            Poll::Ready(Some(Err(_))) => self.completion.finish(Code::Internal, None),
            Poll::Ready(None) => self.completion.finish(Code::Ok, None),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// `grpc-status` in `headers`, if present.
fn grpc_status(headers: &HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?;
    Some(Code::from_bytes(value.as_bytes()))
}

/// The client's deadline from `grpc-timeout` (e.g. `100m`, `5S`), if valid.
fn client_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
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

/// The canonical upper-case name of a gRPC status code.
#[must_use]
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_ids_are_kept_and_bad_ones_refused() {
        assert_eq!(accept(b"abc-123_XYZ.~!"), Some("abc-123_XYZ.~!"));
        assert_eq!(accept("x".repeat(128).as_bytes()).map(str::len), Some(128));
        assert_eq!(accept("x".repeat(129).as_bytes()), None);
        assert_eq!(accept("x".repeat(10 * 1024).as_bytes()), None);
        assert_eq!(accept(b""), None);
        assert_eq!(accept(b"has space"), None);
        assert_eq!(accept(b"tab\there"), None);
        assert_eq!(accept(b"new\nline"), None);
        assert_eq!(accept("caf\u{e9}".as_bytes()), None);
        assert_eq!(accept(b"\x7f"), None);
    }

    #[test]
    fn generated_ids_are_acceptable_uuids() {
        let id = generate();
        assert_eq!(id.len(), 36);
        assert_eq!(accept(id.as_bytes()), Some(id.as_str()));
        assert_eq!(&id[14..15], "4");
        assert_ne!(generate(), id);
    }

    #[test]
    fn paths_split_into_bounded_labels() {
        assert_eq!(split_path(VALIDATE_TOKEN_PATH), ("portcullis.v1.AuthService", "ValidateToken"));
        assert_eq!(split_path("/"), ("unknown", "unknown"));
        assert_eq!(split_path("/a/b/c"), ("unknown", "unknown"));
        assert_eq!(split_path("/svc/me{th}"), ("unknown", "unknown"));
        assert_eq!(split_path(&format!("/{}/M", "s".repeat(200))), ("unknown", "unknown"));
    }

    #[test]
    fn grpc_timeouts_parse() {
        let headers = |v: &str| {
            let mut map = HeaderMap::new();
            map.insert("grpc-timeout", HeaderValue::from_str(v).unwrap());
            map
        };
        assert_eq!(client_timeout(&headers("100m")), Some(Duration::from_millis(100)));
        assert_eq!(client_timeout(&headers("5S")), Some(Duration::from_secs(5)));
        assert_eq!(client_timeout(&headers("2H")), Some(Duration::from_hours(2)));
        assert_eq!(client_timeout(&headers("5x")), None);
        assert_eq!(client_timeout(&headers("m")), None);
        assert_eq!(client_timeout(&headers("1234567890S")), None);
    }

    #[tokio::test]
    async fn outside_a_request_there_is_no_id() {
        assert_eq!(current_request_id(), None);
        assert_eq!(adopt_request_id(Some("abc")), None);
    }
}
