//! HTTP/2 connections for tonic's generated clients: one TCP connection each,
//! `TCP_NODELAY` on, driven by hyper's HTTP/2 client.
//!
//! tonic's `Channel` would work too, but it puts a tower `Buffer` (a task
//! hand-off per call) and reconnect logic in front of the same hyper
//! connection. The load generator shares two cores with the server it
//! measures, so it takes the cheapest path: [`Connection`] is a
//! `tower::Service` over hyper's `SendRequest`, and calls go through the
//! generated clients (`tonic::client::Grpc`), so encoding, decoding and
//! status handling are tonic's own.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
};

use anyhow::Context as _;
use hyper::{body::Incoming, client::conn::http2::SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::body::Body;

/// One HTTP/2 connection; clones share it (HTTP/2 multiplexes their calls).
#[derive(Clone, Debug)]
pub struct Connection {
    send: SendRequest<Body>,
}

impl Connection {
    /// Connects to `addr` (plaintext HTTP/2, prior knowledge) and spawns the
    /// connection's driver on the current tokio runtime. With
    /// `adaptive_window`, the connection sizes its flow-control window from
    /// measured bandwidth-delay, sending a PING with received data, as the
    /// grpc-go and gRPC C-core (Python, C++, …) clients do by default; tonic's
    /// `Channel` does not.
    ///
    /// # Errors
    /// The TCP connection or the HTTP/2 handshake failed.
    pub async fn open(addr: SocketAddr, adaptive_window: bool) -> anyhow::Result<Self> {
        let stream =
            tokio::net::TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true).context("setting TCP_NODELAY")?;
        let (send, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .adaptive_window(adaptive_window)
            .handshake(TokioIo::new(stream))
            .await
            .with_context(|| format!("HTTP/2 handshake with {addr}"))?;
        tokio::spawn(async move {
            // A connection the server closes ends here; its calls fail with
            // UNAVAILABLE and are counted as such.
            if let Err(err) = connection.await {
                eprintln!("portcullis-bench: connection to {addr} ended: {err}");
            }
        });
        Ok(Self { send })
    }

    /// Opens `count` connections to `addr`.
    ///
    /// # Errors
    /// As [`Connection::open`]; `count` is zero.
    pub async fn open_many(
        addr: SocketAddr,
        count: usize,
        adaptive_window: bool,
    ) -> anyhow::Result<Vec<Self>> {
        anyhow::ensure!(count > 0, "at least one connection is needed");
        let mut connections = Vec::with_capacity(count);
        for _ in 0..count {
            connections.push(Self::open(addr, adaptive_window).await?);
        }
        Ok(connections)
    }
}

/// The origin URI tonic's clients put on each request (`http://addr`).
///
/// # Errors
/// Never for a socket address; kept fallible rather than unwrapped.
pub fn origin(addr: SocketAddr) -> anyhow::Result<http::Uri> {
    format!("http://{addr}").parse().context("origin URI")
}

// === impl Connection ===

impl tower_service::Service<http::Request<Body>> for Connection {
    type Response = http::Response<Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.send.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        Box::pin(self.send.send_request(request))
    }
}
