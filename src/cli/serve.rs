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
/// graceful stop), the second on the next one (stop at once). The handlers
/// are installed before this returns, so a signal that comes early is not
/// lost (nor does it kill the process), and stay installed between signals.
fn shutdown_signals() -> (impl Future<Output = ()> + Send, impl Future<Output = ()> + Send) {
    let (tx, rx) = tokio::sync::watch::channel(0u32);
    let mut signals = Signals::install();
    tokio::spawn(async move {
        loop {
            signals.next().await;
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

/// SIGTERM and SIGINT, installed once.
struct Signals {
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Self {
                terminate: signal(SignalKind::terminate()).ok(),
                interrupt: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Resolves on the next SIGTERM or SIGINT.
    async fn next(&mut self) {
        #[cfg(unix)]
        {
            tokio::select! {
                () = recv(self.terminate.as_mut()) => {},
                () = recv(self.interrupt.as_mut()) => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The next delivery of `signal`; never, when it could not be installed.
#[cfg(unix)]
async fn recv(signal: Option<&mut tokio::signal::unix::Signal>) {
    match signal {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}
