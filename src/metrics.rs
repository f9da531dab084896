//! Prometheus metrics: what one server counts, and the HTTP endpoint that
//! serves them on their own port (`metrics_addr`, off by default).
//!
//! Each [`Metrics`] belongs to one server (tests run several in a process).
//! RPC counts, latencies and `ValidateToken` results are recorded by
//! [`crate::request::RequestLayer`]; the rules report logins and lockouts with
//! [`record_login`] and [`record_lockout`], which find the current request's
//! metrics through its task-local context. Password-hashing and database-pool
//! figures are read from their owners at scrape time.
//!
//! The endpoint answers `GET /metrics` (and `HEAD`) in the text format of
//! `OpenMetrics` (which Prometheus reads); every other path is 404, another
//! method on `/metrics` is 405.

use std::{
    collections::HashMap,
    convert::Infallible,
    fmt,
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::Duration,
};

use http::{Method, Request, Response, StatusCode, header};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::ConstGauge,
        histogram::Histogram,
    },
    registry::Registry,
};
use tokio::{net::TcpListener, sync::Semaphore};

use crate::domain::{Error, LoginOutcome, password::Hasher};

/// The `Content-Type` of a scrape.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Latency buckets (seconds): `ValidateToken` answers in well under a
/// millisecond from the cache, a login takes tens of milliseconds of argon2.
const LATENCY_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A scrape's response body: the whole text at once.
type Body = http_body_util::Full<hyper::body::Bytes>;

/// Scrapes served at once; more connections wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 32;

/// Labels of the per-RPC metrics. Every value is a `&'static str` resolved
/// before the call (see [`Metrics::method`]): recording allocates nothing.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// e.g. `portcullis.v1.AuthService`; `unknown` for paths no service serves.
    pub grpc_service: &'static str,
    /// e.g. `ValidateToken`; `unknown` for paths no service serves.
    pub grpc_method: &'static str,
    /// The gRPC status code name, e.g. `OK`, `UNAUTHENTICATED`.
    pub grpc_code: &'static str,
}

/// Labels of the HTTP API's per-route metrics.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The route template, e.g. `/api/user/auth/login`; `unknown` when no
    /// route matched.
    pub route: &'static str,
    /// The request method, e.g. `POST`; `OTHER` for an unusual one.
    pub method: &'static str,
    /// The response status, e.g. `200`.
    pub status: u16,
}

/// Labels of a token validation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ValidationLabels {
    /// `validate_token` (the RPC), `envoy_check` (external authorization) or
    /// `forward_auth` (the HTTP endpoint for nginx, Traefik and Caddy).
    source: &'static str,
    /// `valid`, or the `ErrorInfo` reason (`UNAUTHORIZED`, `TOKEN_EXPIRED`, …).
    result: &'static str,
}

/// Label of a login result.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// Database pool figures at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolUse {
    /// Open connections, idle or in use.
    pub open: u32,
    /// Open connections not in use.
    pub idle: u32,
    /// The most the pool will open.
    pub max: u32,
}

/// Reads the database pool's figures at scrape time.
pub type PoolProbe = Arc<dyn Fn() -> Option<PoolUse> + Send + Sync>;

/// The metrics of one server.
pub struct Metrics {
    registry: Registry,
    rpcs: Family<RpcLabels, Counter>,
    rpc_seconds: Family<RpcLabels, Histogram, fn() -> Histogram>,
    http: Family<HttpLabels, Counter>,
    http_seconds: Family<HttpLabels, Histogram, fn() -> Histogram>,
    validations: Family<ValidationLabels, Counter>,
    logins: Family<OutcomeLabels, Counter>,
    lockouts: Counter,
    /// gRPC path → the method's index in `rpc_handles`, for every method
    /// served.
    methods: HashMap<&'static str, RpcMethod>,
    /// Per method served (and one more for `unknown`), its labels and, per
    /// gRPC code, the counter and histogram of that label set once used:
    /// recording a call then takes no lock and hashes nothing.
    rpc_handles: Box<[MethodHandles]>,
    /// `token_validations{source, result="valid"}` per source, once used.
    valid_handles: [(&'static str, OnceLock<Counter>); 3],
}

/// A gRPC method as [`Metrics`] knows it: resolved once per call from its
/// path, then used to label the call's span and record its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RpcMethod(usize);

/// The recording handles of one gRPC method.
struct MethodHandles {
    /// `package.Service/Method`.
    name: &'static str,
    service: &'static str,
    method: &'static str,
    /// Indexed by the gRPC code's number (0 to 16).
    codes: [OnceLock<(Counter, Histogram)>; 17],
}

impl MethodHandles {
    fn new(name: &'static str, service: &'static str, method: &'static str) -> Self {
        Self { name, service, method, codes: std::array::from_fn(|_| OnceLock::new()) }
    }
}

/// The `source` labels of token validations.
const VALIDATION_SOURCES: [&str; 3] = ["validate_token", "envoy_check", "forward_auth"];

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

impl Metrics {
    /// Metrics that read the hashing queue from `hasher` and the pool from
    /// `pool` at each scrape; `methods` lists the gRPC methods served, as
    /// (`package.Service`, `Method`), the only label values RPCs get.
    #[must_use]
    pub fn new(
        hasher: Hasher,
        pool: Option<PoolProbe>,
        methods: impl IntoIterator<Item = (String, String)>,
    ) -> Arc<Self> {
        let mut registry = Registry::with_prefix("portcullis");
        let rpcs = Family::<RpcLabels, Counter>::default();
        registry.register(
            "grpc_server_handled",
            "RPCs completed, by service, method and gRPC status code",
            rpcs.clone(),
        );
        let rpc_seconds = Family::<RpcLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "grpc_server_handling_seconds",
            "Time from request headers to the end of the response, by service, method and status code",
            rpc_seconds.clone(),
        );
        let http = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_server_handled",
            "HTTP API requests completed, by route, method and status",
            http.clone(),
        );
        let http_seconds = Family::<HttpLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "http_server_handling_seconds",
            "Time from request headers to the end of the response, by route, method and status",
            http_seconds.clone(),
        );
        let validations = Family::<ValidationLabels, Counter>::default();
        registry.register(
            "token_validations",
            "Token validations (ValidateToken and Envoy Check), by source and result: valid or the error reason",
            validations.clone(),
        );
        let logins = Family::<OutcomeLabels, Counter>::default();
        registry.register("logins", "Login attempts, by outcome", logins.clone());
        let lockouts = Counter::default();
        registry.register("lockouts", "Accounts locked after too many failed attempts", lockouts.clone());
        registry.register_collector(Box::new(Live { hasher, pool: pool.map(DebugProbe) }));
        let mut rpc_handles = Vec::new();
        let mut paths = HashMap::new();
        for (service, method) in methods {
            let path: &'static str = Box::leak(format!("/{service}/{method}").into_boxed_str());
            let service: &'static str = Box::leak(service.into_boxed_str());
            let method: &'static str = Box::leak(method.into_boxed_str());
            if let std::collections::hash_map::Entry::Vacant(vacant) = paths.entry(path) {
                vacant.insert(RpcMethod(rpc_handles.len()));
                let name = path.strip_prefix('/').unwrap_or(path);
                rpc_handles.push(MethodHandles::new(name, service, method));
            }
        }
        // The last one: every path no service serves.
        rpc_handles.push(MethodHandles::new("unknown", "unknown", "unknown"));
        Arc::new(Self {
            registry,
            rpcs,
            rpc_seconds,
            http,
            http_seconds,
            validations,
            logins,
            lockouts,
            methods: paths,
            rpc_handles: rpc_handles.into_boxed_slice(),
            valid_handles: VALIDATION_SOURCES.map(|source| (source, OnceLock::new())),
        })
    }

    /// The (service, method) labels of gRPC `path`; `unknown` for a path no
    /// service serves, so callers cannot grow the label set.
    #[must_use]
    pub fn method(&self, path: &str) -> (&'static str, &'static str) {
        self.labels(self.rpc_method(path))
    }

    /// The method of gRPC `path`, for [`Metrics::record_rpc`].
    #[must_use]
    pub fn rpc_method(&self, path: &str) -> RpcMethod {
        self.methods.get(path).copied().unwrap_or(RpcMethod(self.rpc_handles.len() - 1))
    }

    /// The (service, method) labels of `method`.
    #[must_use]
    pub fn labels(&self, method: RpcMethod) -> (&'static str, &'static str) {
        self.rpc_handles.get(method.0).map_or(("unknown", "unknown"), |h| (h.service, h.method))
    }

    /// `package.Service/Method` of `method` (`unknown` for a path no
    /// service serves).
    #[must_use]
    pub fn full_name(&self, method: RpcMethod) -> &'static str {
        self.rpc_handles.get(method.0).map_or("unknown", |h| h.name)
    }

    /// Records one finished RPC of `method` that ended with `code`.
    pub fn record_rpc(&self, method: RpcMethod, code: tonic::Code, elapsed: Duration) {
        let Some(handles) = self.rpc_handles.get(method.0) else { return };
        let Some(slot) = handles.codes.get(code as usize) else { return };
        let (count, seconds) = slot.get_or_init(|| {
            let labels = RpcLabels {
                grpc_service: handles.service,
                grpc_method: handles.method,
                grpc_code: crate::errors::code_name(code),
            };
            (self.rpcs.get_or_create_owned(&labels), self.rpc_seconds.get_or_create_owned(&labels))
        });
        count.inc();
        seconds.observe(elapsed.as_secs_f64());
    }

    /// Records one finished HTTP API request.
    pub fn record_http(&self, labels: &HttpLabels, elapsed: Duration) {
        self.http.get_or_create(labels).inc();
        self.http_seconds.get_or_create(labels).observe(elapsed.as_secs_f64());
    }

    /// Records one token validation: `result` is `valid` or the error
    /// table's reason.
    pub fn record_validation(&self, source: &'static str, result: &'static str) {
        if result == "valid"
            && let Some((_, slot)) = self.valid_handles.iter().find(|(known, _)| *known == source)
        {
            slot.get_or_init(|| self.validations.get_or_create_owned(&ValidationLabels { source, result }))
                .inc();
            return;
        }
        self.validations.get_or_create(&ValidationLabels { source, result }).inc();
    }

    /// Counts one login result, e.g. `success`, `mfa_required`,
    /// `invalid_login`, `rate_limited`, `captcha_required`.
    pub fn record_login(&self, outcome: &'static str) {
        self.logins.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Counts the result of one login (gRPC `Login`/`AdminLogin` and the
    /// HTTP dialects alike), labelled by [`login_outcome`].
    pub fn record_login_result(&self, result: &Result<LoginOutcome, Error>) {
        self.record_login(login_outcome(result));
    }

    /// Every metric as a scrape returns it (`OpenMetrics` text).
    ///
    /// # Errors
    /// Formatting failed (it does not, writing into a `String`).
    pub fn encode(&self) -> Result<String, fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

impl crate::domain::Events for Metrics {
    fn account_locked(&self) {
        self.lockouts.inc();
    }
}

/// Figures read at scrape time from their owners.
#[derive(Debug)]
struct Live {
    hasher: Hasher,
    pool: Option<DebugProbe>,
}

struct DebugProbe(PoolProbe);

impl fmt::Debug for DebugProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PoolProbe")
    }
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let gauge = |encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64| {
            let gauge = ConstGauge::new(value);
            let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric)
        };
        let counter = |encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64| {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)
        };
        gauge(
            &mut encoder,
            "password_hash_queue_depth",
            "Password hashes waiting for a hashing thread",
            i64::try_from(self.hasher.queue_depth()).unwrap_or(i64::MAX),
        )?;
        counter(
            &mut encoder,
            "password_hash_rejections",
            "Password hashes refused at once because the queue was full (answered RESOURCE_EXHAUSTED)",
            self.hasher.rejection_count(),
        )?;
        counter(
            &mut encoder,
            "password_verifications",
            "Password verifications run (logins, password changes)",
            self.hasher.verification_count(),
        )?;
        if let Some(pool) = self.pool.as_ref().and_then(|probe| (probe.0)()) {
            gauge(
                &mut encoder,
                "db_pool_connections_in_use",
                "Database connections checked out of the pool",
                i64::from(pool.open.saturating_sub(pool.idle)),
            )?;
            gauge(
                &mut encoder,
                "db_pool_connections_idle",
                "Open database connections waiting in the pool",
                i64::from(pool.idle),
            )?;
            gauge(
                &mut encoder,
                "db_pool_connections_max",
                "The most connections the pool opens (database_max_connections)",
                i64::from(pool.max),
            )?;
        }
        Ok(())
    }
}

// === the HTTP endpoint ===

/// Serves scrapes on `listener` until `shutdown` resolves.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, shutdown: impl Future<Output = ()>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors and the like: keep serving.
                tracing::warn!(error = %err, "metrics endpoint: accept failed");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else { break };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |request| {
                let metrics = Arc::clone(&metrics);
                async move { Ok::<_, Infallible>(answer(&metrics, &request)) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, %peer, "metrics endpoint: connection ended with an error");
            }
        });
    }
}

/// Binds `address` for [`serve`].
///
/// # Errors
/// The address cannot be bound.
pub async fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(address).await
}

/// The response to one request to the metrics endpoint.
fn answer(metrics: &Metrics, request: &Request<Incoming>) -> Response<Body> {
    if request.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "not found; metrics are at /metrics\n");
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        response.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match metrics.encode() {
        Ok(text) => {
            let body = if request.method() == Method::HEAD { String::new() } else { text };
            let mut response = Response::new(Body::from(body));
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(CONTENT_TYPE));
            response
        }
        Err(err) => {
            tracing::error!(error = %err, "metrics endpoint: encoding failed");
            plain(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n")
        }
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::from(text));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// The metrics label of a login's result.
#[must_use]
pub fn login_outcome(result: &Result<LoginOutcome, Error>) -> &'static str {
    match result {
        Ok(LoginOutcome::Session(_)) => "success",
        Ok(LoginOutcome::Mfa(_)) => "mfa_required",
        Err(Error::Unauthenticated(failure)) => failure.label(),
        Err(Error::RateLimited { .. }) => "rate_limited",
        Err(Error::InvalidArgument { .. }) => "invalid_argument",
        Err(Error::Forbidden { .. }) => "forbidden",
        Err(_) => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::password::HasherConfig;

    fn metrics() -> Arc<Metrics> {
        let hasher = Hasher::new(HasherConfig {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
            threads: 1,
            queue_depth: 1,
            priority: crate::domain::password::HashPriority::Normal,
        })
        .unwrap();
        let pool: PoolProbe = Arc::new(|| Some(PoolUse { open: 3, idle: 1, max: 5 }));
        Metrics::new(hasher, Some(pool), [("portcullis.v1.AuthService".to_owned(), "Login".to_owned())])
    }

    #[test]
    fn only_served_methods_are_labels() {
        let metrics = metrics();
        assert_eq!(
            metrics.method("/portcullis.v1.AuthService/Login"),
            ("portcullis.v1.AuthService", "Login")
        );
        assert_eq!(metrics.method("/portcullis.v1.AuthService/Nope"), ("unknown", "unknown"));
        assert_eq!(metrics.method("/Not A Label\n{}"), ("unknown", "unknown"));
        metrics.record_login("success");
        metrics.record_validation("validate_token", "valid");
        metrics.record_validation("validate_token", "UNAUTHORIZED");
        let text = metrics.encode().unwrap();
        assert!(text.contains("portcullis_logins_total{outcome=\"success\"} 1"), "{text}");
        assert!(text.contains("result=\"valid\"} 1"), "{text}");
        assert!(text.contains("result=\"UNAUTHORIZED\"} 1"), "{text}");
    }

    #[test]
    fn live_figures_are_read_at_scrape_time() {
        let text = metrics().encode().unwrap();
        assert!(text.contains("portcullis_password_hash_queue_depth 0"), "{text}");
        assert!(text.contains("portcullis_password_hash_rejections_total 0"), "{text}");
        assert!(text.contains("portcullis_db_pool_connections_in_use 2"), "{text}");
        assert!(text.contains("portcullis_db_pool_connections_idle 1"), "{text}");
        assert!(text.contains("portcullis_db_pool_connections_max 5"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
