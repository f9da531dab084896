//! What a finished call leaves behind: its span, its metrics and its log
//! line, through tower-http's `TraceLayer`.
//!
//! [`MakeCallSpan`] opens the call's server span (`rpc` for gRPC, `http`
//! for the HTTP API), continuing the caller's W3C `traceparent`/`tracestate`
//! (a malformed one starts a new trace), with the request id as a field, so
//! every log line of the call carries it.
//!
//! [`Classify`] makes one [`Outcome`] per call, which tower-http hands the
//! response (and, for gRPC, the trailers that carry `grpc-status`). When the
//! outcome is known it records the status on the span, counts the call in
//! the metrics and writes the `info` line "call finished" (method, status,
//! milliseconds; the request id comes with the span). An outcome dropped
//! before that — the client went away, or reset its stream — counts as
//! `CANCELLED`.

use std::{
    fmt,
    sync::{Arc, Mutex},
    time::Instant,
};

use http::{HeaderMap, Method, Request, Response};
use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::Code;
use tower_http::{
    classify::{ClassifiedResponse, ClassifyEos, ClassifyResponse, MakeClassifier},
    trace::MakeSpan,
};
use tracing::{Span, field};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::{id, is_grpc};
use crate::{
    errors::code_name,
    metrics::{HttpLabels, Metrics, RpcLabels},
};

/// The gRPC path of Envoy's `Check`, which takes its request id from the
/// HTTP request it describes: its span records the id the handler adopts.
pub(crate) const ENVOY_CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// The route a response of the HTTP API answered, set by the router; the
/// metrics label and the span's `http.route`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route(pub &'static str);

// === the span ===

/// Opens each call's server span.
#[derive(Clone, Copy, Debug, Default)]
pub struct MakeCallSpan;

impl<B> MakeSpan<B> for MakeCallSpan {
    fn make_span(&mut self, request: &Request<B>) -> Span {
        let path = request.uri().path();
        let span = if is_grpc(request.headers()) {
            let (service, method) = split_path(path);
            tracing::info_span!(
                target: "portcullis::request",
                "rpc",
                otel.name = %path.trim_start_matches('/'),
                otel.kind = "server",
                otel.status_code = field::Empty,
                rpc.system = "grpc",
                rpc.service = service,
                rpc.method = method,
                rpc.grpc.status_code = field::Empty,
                request_id = field::Empty,
            )
        } else {
            tracing::info_span!(
                target: "portcullis::request",
                "http",
                otel.name = %request.method(),
                otel.kind = "server",
                otel.status_code = field::Empty,
                http.request.method = %request.method(),
                http.route = field::Empty,
                http.response.status_code = field::Empty,
                request_id = field::Empty,
            )
        };
        if path != ENVOY_CHECK_PATH
            && let Some(id) = id::of(request)
        {
            span.record("request_id", field::display(id));
        }
        // A malformed traceparent extracts to an empty context: the span
        // then starts a new trace, as it does without one (nothing to
        // extract, the common case, costs nothing). Without an OpenTelemetry
        // layer (no exporter configured) there is nothing to set.
        if request.headers().contains_key("traceparent") {
            let parent = TraceContextPropagator::new().extract(&HeaderExtractor(request.headers()));
            let _ = span.set_parent(parent);
        }
        span
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

/// Makes each call's [`Outcome`].
#[derive(Clone)]
pub struct Classify {
    metrics: Arc<Metrics>,
    log_calls: bool,
}

impl Classify {
    /// Records into `metrics`; `log_calls` writes one `info` line per call.
    #[must_use]
    pub fn new(metrics: Arc<Metrics>, log_calls: bool) -> Self {
        Self { metrics, log_calls }
    }
}

impl fmt::Debug for Classify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Classify").field("log_calls", &self.log_calls).finish_non_exhaustive()
    }
}

impl MakeClassifier for Classify {
    type Classifier = Outcome;
    type FailureClass = Failed;
    type ClassifyEos = Outcome;

    fn make_classifier<B>(&self, request: &Request<B>) -> Outcome {
        let kind = if is_grpc(request.headers()) {
            let (grpc_service, grpc_method) = self.metrics.method(request.uri().path());
            Kind::Grpc(RpcLabels { grpc_service, grpc_method, grpc_code: "" })
        } else {
            Kind::Http(method_label(request.method()))
        };
        Outcome(Arc::new(Shared {
            pending: Mutex::new(Some(Pending {
                metrics: Arc::clone(&self.metrics),
                kind,
                started: Instant::now(),
                log_calls: self.log_calls,
            })),
        }))
    }
}

/// A call that ended in an error status (tower-http's failure class).
#[derive(Clone, Copy, Debug)]
pub struct Failed;

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("failed")
    }
}

/// One call's outcome, recorded once: when known, or as `CANCELLED` when
/// the last handle is dropped unknown. (tower-http asks classifiers to be
/// `Clone`; clones share the one outcome.)
#[derive(Clone)]
pub struct Outcome(Arc<Shared>);

struct Shared {
    pending: Mutex<Option<Pending>>,
}

struct Pending {
    metrics: Arc<Metrics>,
    kind: Kind,
    started: Instant,
    log_calls: bool,
}

enum Kind {
    Grpc(RpcLabels),
    Http(&'static str),
}

impl Outcome {
    fn take(&self) -> Option<Pending> {
        self.0.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
    }

    fn is_grpc(&self) -> bool {
        matches!(
            &*self.0.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
            Some(Pending { kind: Kind::Grpc(_), .. })
        )
    }

    /// Records a gRPC call's end with `code`; `in_span` when the call's span
    /// is the current one (tower-http enters it while it classifies).
    fn finish_grpc(&self, code: Code, in_span: bool) -> Result<(), Failed> {
        self.take().map_or(Ok(()), |pending| pending.finish_grpc(code, in_span))
    }

    /// Records an HTTP request's end with `status` on `route`.
    fn finish_http(&self, status: u16, route: Option<Route>) -> Result<(), Failed> {
        self.take().map_or(Ok(()), |pending| pending.finish_http(status, route))
    }
}

impl Pending {
    fn finish_grpc(self, code: Code, in_span: bool) -> Result<(), Failed> {
        let Pending { metrics, kind, started, log_calls } = self;
        let Kind::Grpc(mut labels) = kind else { return Ok(()) };
        let elapsed = started.elapsed();
        labels.grpc_code = code_name(code);
        metrics.record_rpc(&labels, elapsed);
        let failed = matches!(
            code,
            Code::Unknown
                | Code::DeadlineExceeded
                | Code::Unimplemented
                | Code::Internal
                | Code::Unavailable
                | Code::DataLoss
        );
        if in_span {
            let span = Span::current();
            span.record("rpc.grpc.status_code", code as i32);
            if failed {
                span.record("otel.status_code", "ERROR");
            }
        }
        if log_calls {
            tracing::info!(
                target: "portcullis::request",
                method = labels.grpc_method,
                grpc_code = labels.grpc_code,
                elapsed_ms = elapsed.as_secs_f64() * 1000.0,
                "rpc finished"
            );
        }
        if failed { Err(Failed) } else { Ok(()) }
    }

    fn finish_http(self, status: u16, route: Option<Route>) -> Result<(), Failed> {
        let Pending { metrics, kind, started, log_calls } = self;
        let Kind::Http(method) = kind else { return Ok(()) };
        let elapsed = started.elapsed();
        let route = route.map_or("unknown", |Route(route)| route);
        metrics.record_http(&HttpLabels { route, method, status }, elapsed);
        let span = Span::current();
        span.record("http.route", route);
        span.record("http.response.status_code", status);
        span.record("otel.name", format!("{method} {route}"));
        if status >= 500 {
            span.record("otel.status_code", "ERROR");
        }
        if log_calls {
            tracing::info!(
                target: "portcullis::request",
                route,
                status,
                elapsed_ms = elapsed.as_secs_f64() * 1000.0,
                "http request finished"
            );
        }
        if status >= 500 { Err(Failed) } else { Ok(()) }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Dropped unanswered or mid-stream: the client went away.
        let pending = self.pending.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        match pending {
            Some(pending @ Pending { kind: Kind::Grpc(_), .. }) => {
                let _ = pending.finish_grpc(Code::Cancelled, false);
            }
            // nginx's 499: the client closed the request.
            Some(pending) => {
                let _ = pending.finish_http(499, None);
            }
            None => {}
        }
    }
}

impl ClassifyResponse for Outcome {
    type FailureClass = Failed;
    type ClassifyEos = Outcome;

    fn classify_response<B>(self, response: &Response<B>) -> ClassifiedResponse<Failed, Outcome> {
        if !self.is_grpc() {
            let route = response.extensions().get::<Route>().copied();
            return ClassifiedResponse::Ready(self.finish_http(response.status().as_u16(), route));
        }
        // A trailers-only response (every error of a unary call) has its
        // status in the headers; otherwise it comes in the trailers.
        match grpc_status(response.headers()) {
            Some(code) => ClassifiedResponse::Ready(self.finish_grpc(code, true)),
            None => ClassifiedResponse::RequiresEos(self),
        }
    }

    fn classify_error<E: fmt::Display + 'static>(self, _: &E) -> Failed {
        if self.is_grpc() {
            let _ = self.finish_grpc(Code::Internal, true);
        } else {
            let _ = self.finish_http(500, None);
        }
        Failed
    }
}

impl ClassifyEos for Outcome {
    type FailureClass = Failed;

    fn classify_eos(self, trailers: Option<&HeaderMap>) -> Result<(), Failed> {
        // A gRPC response always ends with trailers; without them the
        // stream was cut.
        let code = trailers.and_then(grpc_status).unwrap_or(Code::Unknown);
        self.finish_grpc(code, true)
    }

    fn classify_error<E: fmt::Display + 'static>(self, _: &E) -> Failed {
        let _ = self.finish_grpc(Code::Internal, true);
        Failed
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
