//! The listener: accepts connections, speaks HTTP/1.1 and HTTP/2 (TLS
//! optional) through hyper-util, and stops in phases.
//!
//! Every accepted socket gets `TCP_NODELAY` (a response never waits on
//! Nagle's algorithm). What one client can hold is bounded:
//! - at most `max_connections` connections are served at once; further
//!   ones wait in the kernel's accept queue until one closes;
//! - a TLS handshake must finish within `tls_handshake_timeout`;
//! - a connection with no call in flight for `idle_timeout` is closed
//!   gracefully (HTTP/2: GOAWAY, then closed when its last stream ends) — a
//!   connection that never sends a request or an HTTP/2 preface included;
//! - HTTP/2 connections are pinged every `http2_keepalive_interval` and
//!   closed when a ping is not answered within `http2_keepalive_timeout`;
//! - at most `max_concurrent_streams` calls run at once on one connection.
//!
//! Stopping ([`Stop`]) has two steps the app drives: `close` stops
//! accepting and asks every connection to finish gracefully (and ends open
//! streams, see [`EndStreamsLayer`]); `abort` drops whatever is still open.
//! [`serve`] returns once every connection is gone.

use std::{
    convert::Infallible,
    path::Path,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame};
use http_body_util::{Either, Empty};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        self, RootCertStore, ServerConfig,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
        server::WebPkiClientVerifier,
    },
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::transport::server::TcpConnectInfo;
use tower::Service;

/// What one client may hold, and for how long.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Time limit for a TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// A connection with no call in flight this long is closed.
    pub idle_timeout: Duration,
    /// HTTP/2 ping interval.
    pub http2_keepalive_interval: Duration,
    /// HTTP/2 ping answer time limit.
    pub http2_keepalive_timeout: Duration,
    /// Calls at once on one HTTP/2 connection.
    pub max_concurrent_streams: u32,
}

/// The two steps of a stop.
#[derive(Clone, Debug, Default)]
pub struct Stop {
    /// Stop accepting; connections finish gracefully; streams end.
    pub close: CancellationToken,
    /// Drop every connection still open.
    pub abort: CancellationToken,
}

/// How long an idle connection that was asked to close may take to do it.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(10);

/// Serves `service` on `listener` (through `tls` when given) until `stop`
/// says so, and returns once every connection is gone.
pub async fn serve<S, B>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    service: S,
    limits: Limits,
    stop: Stop,
) where
    S: Service<Request<hyper::body::Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let local = listener.local_addr().ok();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.idle_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .keep_alive_interval(Some(limits.http2_keepalive_interval))
        .keep_alive_timeout(limits.http2_keepalive_timeout);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    loop {
        let slot = tokio::select! {
            () = stop.close.cancelled() => break,
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = stop.close.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: wait a moment
                    // rather than spin, and keep serving.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(error = %err, "could not set TCP_NODELAY");
        }
        let connection = Connection {
            info: TcpConnectInfo { local_addr: local, remote_addr: Some(peer) },
            builder: builder.clone(),
            limits,
            stop: stop.clone(),
        };
        let tls = tls.clone();
        let service = service.clone();
        connections.spawn(async move {
            let _slot = slot;
            connection.run(stream, tls, service).await;
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// One accepted connection.
struct Connection {
    info: TcpConnectInfo,
    builder: auto::Builder<TokioExecutor>,
    limits: Limits,
    stop: Stop,
}

impl Connection {
    async fn run<S, B>(self, stream: TcpStream, tls: Option<TlsAcceptor>, service: S)
    where
        S: Service<Request<hyper::body::Incoming>, Response = Response<B>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Some(tls) = tls else {
            return self.http(stream, service).await;
        };
        let handshake = tokio::select! {
            () = self.stop.abort.cancelled() => return,
            handshake = tokio::time::timeout(self.limits.tls_handshake_timeout, tls.accept(stream)) => handshake,
        };
        match handshake {
            Ok(Ok(stream)) => self.http(stream, service).await,
            Ok(Err(err)) => {
                tracing::debug!(peer = ?self.info.remote_addr, error = %err, "TLS handshake failed");
            }
            Err(_) => tracing::debug!(peer = ?self.info.remote_addr, "TLS handshake timed out"),
        }
    }

    async fn http<I, S, B>(self, io: I, service: S)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: Service<Request<hyper::body::Incoming>, Response = Response<B>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let activity = Arc::new(Activity::new());
        // When this connection ends, for whatever reason, calls still in
        // flight on it are dropped: their client is gone.
        let gone = CancellationToken::new();
        let _gone = gone.clone().drop_guard();
        let service = TowerToHyperService::new(Tracked {
            inner: service,
            info: self.info.clone(),
            activity: Arc::clone(&activity),
            gone,
        });
        let connection = self.builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(connection);
        let mut closing: Option<Instant> = None;
        loop {
            let grace =
                closing.map_or(Duration::MAX, |since| IDLE_CLOSE_GRACE.saturating_sub(since.elapsed()));
            tokio::select! {
                served = connection.as_mut() => {
                    if let Err(err) = served {
                        tracing::debug!(peer = ?self.info.remote_addr, error = %err, "connection ended with an error");
                    }
                    return;
                }
                () = self.stop.close.cancelled(), if closing.is_none() => {
                    connection.as_mut().graceful_shutdown();
                    closing = Some(Instant::now());
                }
                () = activity.idle(self.limits.idle_timeout), if closing.is_none() => {
                    tracing::debug!(peer = ?self.info.remote_addr, "closing an idle connection");
                    connection.as_mut().graceful_shutdown();
                    closing = Some(Instant::now());
                }
                // An idle connection asked to close must not linger; a
                // stopping server's connections get until `abort`.
                () = tokio::time::sleep(grace), if closing.is_some() && !self.stop.close.is_cancelled() => return,
                () = self.stop.abort.cancelled() => return,
            }
        }
    }
}

/// When a connection last had a call in flight. Calls only touch atomics:
/// nothing wakes the connection's task per call (it checks on a timer).
struct Activity {
    started: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds from `started` to the last call's start or end.
    last: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self { started: Instant::now(), in_flight: AtomicUsize::new(0), last: AtomicU64::new(0) }
    }

    fn touch(&self) {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Relaxed);
    }

    /// Resolves once no call has been in flight for `timeout`: it sleeps
    /// until the earliest moment that could be so and looks again (every
    /// `timeout` while calls are in flight), so it resolves `timeout` after
    /// the last call ends, as when it was woken at each call.
    async fn idle(&self, timeout: Duration) {
        loop {
            let wait = if self.in_flight.load(Ordering::Acquire) == 0 {
                let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
                let quiet = self.started.elapsed().saturating_sub(last);
                if quiet >= timeout && self.in_flight.load(Ordering::Acquire) == 0 {
                    return;
                }
                timeout.saturating_sub(quiet)
            } else {
                timeout
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// The per-connection service: records the peer for the handlers and the
/// calls in flight for the idle timeout, and drops the calls still in flight
/// when the connection is gone (hyper would otherwise run them to the end
/// for nobody).
#[derive(Clone)]
struct Tracked<S> {
    inner: S,
    info: TcpConnectInfo,
    activity: Arc<Activity>,
    gone: CancellationToken,
}

impl<S, B> Service<Request<hyper::body::Incoming>> for Tracked<S>
where
    S: Service<Request<hyper::body::Incoming>, Response = Response<B>, Error = Infallible>,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
{
    type Response = Response<Either<B, Empty<B::Data>>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<hyper::body::Incoming>) -> Self::Future {
        request.extensions_mut().insert(self.info.clone());
        self.activity.in_flight.fetch_add(1, Ordering::AcqRel);
        self.activity.touch();
        let guard = InFlight(Arc::clone(&self.activity));
        let call = self.inner.call(request);
        let gone = self.gone.clone();
        Box::pin(async move {
            let _guard = guard;
            tokio::select! {
                biased;
                response = call => response.map(|response| response.map(Either::Left)),
                // Nobody will read this answer.
                () = gone.cancelled() => Ok(Response::new(Either::Right(Empty::new()))),
            }
        })
    }
}

/// Ends one call in flight when dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.touch();
    }
}

// === TLS ===

/// The TLS acceptor for `cert`/`key` (PEM), requiring client certificates
/// from `client_ca` when given (mutual TLS). ALPN offers HTTP/2 and 1.1.
///
/// # Errors
/// A file that cannot be read or parsed; the message names the setting.
pub fn tls_acceptor(cert: &Path, key: &Path, client_ca: Option<&Path>) -> anyhow::Result<TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .with_context(|| format!("tls_cert_file {}: cannot read a PEM certificate chain", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("tls_cert_file {}: no certificate in the file", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("tls_key_file {}: cannot read a PEM private key", key.display()))?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca)
                .with_context(|| format!("tls_client_ca_file {}: cannot read", ca.display()))?
            {
                let cert = cert.with_context(|| format!("tls_client_ca_file {}: not PEM", ca.display()))?;
                roots
                    .add(cert)
                    .with_context(|| format!("tls_client_ca_file {}: not a CA certificate", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .with_context(|| format!("tls_client_ca_file {}: no usable CA", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .context("tls_cert_file/tls_key_file: the key does not match the certificate")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

// === ending streams ===

/// Ends the streaming responses of the services it wraps (health's
/// `Watch`, reflection) when the server closes: each gets its trailers with
/// `UNAVAILABLE` ("server shutting down") instead of running on, so a
/// stopping server is not held open by a client that never hangs up.
#[derive(Clone, Debug)]
pub struct EndStreamsLayer {
    closed: CancellationToken,
}

impl EndStreamsLayer {
    /// Ends streams when `closed` is cancelled.
    #[must_use]
    pub fn new(closed: CancellationToken) -> Self {
        Self { closed }
    }
}

impl<S> tower::Layer<S> for EndStreamsLayer {
    type Service = EndStreams<S>;

    fn layer(&self, inner: S) -> Self::Service {
        EndStreams { inner, closed: self.closed.clone() }
    }
}

/// The service of [`EndStreamsLayer`].
#[derive(Clone, Debug)]
pub struct EndStreams<S> {
    inner: S,
    closed: CancellationToken,
}

impl<S, R, B> Service<R> for EndStreams<S>
where
    S: Service<R, Response = Response<B>>,
    S::Future: Send + 'static,
    B: Body<Data = axum::body::Bytes> + Send + Unpin + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response<axum::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let call = self.inner.call(request);
        let closed = self.closed.clone();
        Box::pin(async move {
            let response = call.await?;
            Ok(response.map(|body| {
                axum::body::Body::new(UntilClosed {
                    inner: body,
                    closed: Box::pin(closed.cancelled_owned()),
                    ended: false,
                })
            }))
        })
    }
}

/// A response body that ends with `UNAVAILABLE` trailers once the server
/// closes.
struct UntilClosed<B> {
    inner: B,
    closed: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    ended: bool,
}

impl<B> Body for UntilClosed<B>
where
    B: Body<Data = axum::body::Bytes> + Unpin,
{
    type Data = axum::body::Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if self.closed.as_mut().poll(cx).is_ready() {
            self.ended = true;
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from(tonic::Code::Unavailable as i32));
            trailers.insert("grpc-message", HeaderValue::from_static("server%20shutting%20down"));
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }
}
