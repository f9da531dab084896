//! `portcullis serve`: bind, build, serve until a signal.

use std::{future::Future, sync::Arc};

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::{app::App, config::Config, domain::SystemClock};

/// Runs the server until SIGTERM or Ctrl-C (a second signal stops at once).
pub async fn run(config: Config) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listen_addr)
        .await
        .with_context(|| format!("binding listen_addr {}", config.listen_addr))?;
    let (first, second) = shutdown_signals();
    App::build(config, Arc::new(SystemClock)).await?.serve_with(listener, first, second).await
}

/// Two futures: the first resolves on the first SIGTERM or SIGINT (a
/// graceful stop), the second on the next one (stop at once).
fn shutdown_signals() -> (impl Future<Output = ()> + Send, impl Future<Output = ()> + Send) {
    let (tx, rx) = tokio::sync::watch::channel(0u32);
    tokio::spawn(async move {
        loop {
            signal().await;
            let count = *tx.borrow() + 1;
            if count == 1 {
                tracing::info!("shutdown signal received; draining (a second signal stops at once)");
            } else {
                tracing::warn!("second shutdown signal: stopping at once");
            }
            if tx.send(count).is_err() {
                return;
            }
        }
    });
    let mut first = rx.clone();
    let mut second = rx;
    (
        async move {
            let _ = first.wait_for(|count| *count >= 1).await;
        },
        async move {
            let _ = second.wait_for(|count| *count >= 2).await;
        },
    )
}

/// Resolves on SIGTERM or SIGINT.
async fn signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {},
        () = terminate => {},
    }
}
