//! The baseline server: tonic with only `grpc.health.v1` (tonic-health) and
//! `TCP_NODELAY` on accepted sockets, nothing else. What portcullis's own
//! health check and `ValidateToken` are compared with, on the same core, to
//! see what portcullis's request layers cost per call.

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Parser;
use tonic::transport::{Server, server::TcpIncoming};

/// A bare tonic server answering only `grpc.health.v1.Health` (SERVING).
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:50061")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The whole server ("") reports SERVING from the start.
    let (_reporter, health) = tonic_health::server::health_reporter();
    let incoming = TcpIncoming::bind(cli.listen)
        .with_context(|| format!("binding {}", cli.listen))?
        .with_nodelay(Some(true));
    eprintln!("bare-health listening on {}", incoming.local_addr()?);
    Server::builder()
        .add_service(health)
        .serve_with_incoming_shutdown(incoming, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("serving")
}
