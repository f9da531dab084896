//! The one place that wires every layer — store → domain → the gRPC routes
//! and the HTTP router → the request stack → the listener — and owns every
//! background task (health prober, audit flusher, metrics endpoint), which
//! it starts after every fallible step and drains when the server stops.
//!
//! Stopping, on the first shutdown signal: health turns NOT_SERVING at once
//! (Watch streams see it); calls are still served for `shutdown_drain`, so
//! load balancers stop sending; then the listener closes, connections are
//! asked to finish and open streams end; calls in flight get until
//! `shutdown_timeout`, after which their connections are dropped; last, the
//! background tasks stop and flush. A second signal skips the waiting.

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic_health::ServingStatus;

use crate::{
    config::{CaptchaPolicyName, Config},
    domain::{
        CaptchaPolicy, CaptchaSettings, Clock, Domain, MfaSettings, Settings, Validator,
        limits::{Limit, LimitSettings, LockPolicy},
        password::{HashPriority, Hasher, HasherConfig},
        ports::Store,
        seal::Sealer,
        token::TokenFormat,
        validate::{CacheConfig, ValidatorTasks},
    },
    grpc, health,
    mail::Mailer,
    metrics::{self, Metrics},
    request, server,
    store::{PoolSettings, SqlStore},
};

/// A wired portcullis: the rules over a migrated database.
pub struct App {
    domain: Arc<Domain>,
    config: Config,
    metrics: Arc<Metrics>,
    /// The metrics endpoint's socket, when bound before `serve`.
    metrics_listener: Option<TcpListener>,
    /// The validator's background work (last-seen writer, revocation
    /// follower), started by `serve`.
    validator_tasks: ValidatorTasks,
    /// The database's state as calls see it, for health.
    database_up: tokio::sync::watch::Receiver<bool>,
}

impl App {
    /// Connects to the database, migrates it when configured to, and wires
    /// the rules with `clock`. Every setting that can be refused without the
    /// database is checked before it is opened, so a configuration that
    /// cannot start neither creates nor migrates one.
    ///
    /// # Errors
    /// The database cannot be reached or migrated, or the configuration is
    /// not usable.
    pub async fn build(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        // What can be refused without the database is refused first: no
        // migration runs, no file is made, for a configuration that cannot start.
        config.check()?;
        config.check_mfa_key()?;
        let tokens = TokenFormat::new(&config.token_prefix);
        let hasher = Hasher::new(HasherConfig {
            memory_kib: config.argon2_memory_kib,
            iterations: config.argon2_iterations,
            parallelism: config.argon2_parallelism,
            threads: config.hash_threads,
            queue_depth: config.hash_queue_depth,
            priority: if config.hash_low_priority { HashPriority::Lowest } else { HashPriority::Normal },
        })?;
        let settings = Settings::from_config(&config)?;
        let mailer = Mailer::from_config(&config)?;
        let limits = limit_settings(&config)?;
        let captcha = CaptchaSettings {
            policy: match config.captcha_policy {
                CaptchaPolicyName::Off => CaptchaPolicy::Off,
                CaptchaPolicyName::Always => CaptchaPolicy::Always,
                CaptchaPolicyName::AfterFailures => {
                    CaptchaPolicy::AfterFailures(config.captcha_after_failures)
                }
            },
            verifier: crate::captcha::Verifier::from_config(&config)?,
        };
        if captcha.policy != CaptchaPolicy::Off && !captcha.verifier.any_enabled() {
            return Err(crate::config::ConfigError::from_message(format!(
                "captcha_policy: `{:?}` needs at least one vendor secret (captcha_googlev3_secret, \
                 captcha_hcaptcha_secret or captcha_turnstile_secret)",
                config.captcha_policy
            ))
            .into());
        }
        // Boxed: the futures of connecting and migrating are large, and this
        // one holds the checked settings across them.
        // The error says which database and why, in one line.
        let database = Box::pin(SqlStore::connect_with(
            &config.database_url,
            PoolSettings {
                max_connections: config.database_max_connections,
                timeout: config.database_timeout,
                sqlite_wait: config.request_timeout,
                readers: config.database_read_connections,
            },
        ))
        .await?;
        let database_up = database.database_up();
        if config.migrate_on_start {
            Box::pin(database.migrate()).await.context("migrating the database")?;
        }
        let store: Arc<dyn Store> = Arc::new(database.clone());
        let (validator, validator_tasks) = Validator::new(
            Arc::clone(&store),
            tokens.clone(),
            CacheConfig {
                ttl: config.token_cache_ttl,
                negative_ttl: config.token_negative_cache_ttl,
                capacity: config.token_cache_capacity,
            },
        );
        // Made on first start (SQLite), beside the database, once it opened.
        let master = config.load_mfa_key()?;
        let mfa = MfaSettings {
            sealer: Sealer::new(&master)?,
            mailer,
            issuer: config.mfa_issuer.clone(),
            pending_lifetime: chrono::Duration::from_std(config.mfa_pending_lifetime)?,
            email_code_lifetime: chrono::Duration::from_std(config.email_code_lifetime)?,
        };
        let pool: metrics::PoolProbe = Arc::new(move || {
            let (open, idle, max) = database.pool_use();
            Some(metrics::PoolUse { open, idle, max })
        });
        let metrics = Metrics::new(hasher.clone(), Some(pool), grpc::served_methods());
        let events: Arc<dyn crate::domain::Events> = Arc::clone(&metrics) as _;
        let domain = Arc::new(
            Domain::new(store, clock, hasher, tokens, validator, settings, mfa, limits, captcha)
                .with_events(events),
        );
        Ok(Self { domain, config, metrics, metrics_listener: None, validator_tasks, database_up })
    }

    /// This server's metrics.
    #[must_use]
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Binds `metrics_addr` now (so a caller asking for port 0 learns the
    /// port) and returns its address; `None` when metrics are off. Otherwise
    /// `serve` binds it.
    ///
    /// # Errors
    /// The address cannot be bound.
    pub async fn bind_metrics(&mut self) -> anyhow::Result<Option<std::net::SocketAddr>> {
        let Some(address) = self.config.metrics_addr else { return Ok(None) };
        let listener =
            metrics::bind(address).await.with_context(|| format!("binding metrics_addr {address}"))?;
        let bound = listener.local_addr()?;
        self.metrics_listener = Some(listener);
        Ok(Some(bound))
    }

    /// The rules, for the CLI and tests.
    #[must_use]
    pub fn domain(&self) -> &Arc<Domain> {
        &self.domain
    }

    /// Serves on `listener` until `shutdown` resolves, then stops as the
    /// module docs say.
    ///
    /// # Errors
    /// As [`App::serve_with`].
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        self.serve_with(listener, shutdown, std::future::pending()).await
    }

    /// Serves on `listener` until `shutdown` resolves, then stops as the
    /// module docs say; `force` resolving (a second signal) skips the drain
    /// and the wait for calls in flight.
    ///
    /// # Errors
    /// The TLS files cannot be used, `metrics_addr` cannot be bound, or the
    /// reflection descriptors are broken.
    pub async fn serve_with(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
        force: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let Self { domain, config, metrics, metrics_listener, validator_tasks, database_up } = self;
        // What can fail comes first, before any task is spawned.
        let tls = match (&config.tls_cert_file, &config.tls_key_file) {
            (Some(cert), Some(key)) => {
                Some(server::tls_acceptor(cert, key, config.tls_client_ca_file.as_deref())?)
            }
            _ => None,
        };
        let metrics_listener = match (metrics_listener, config.metrics_addr) {
            (Some(listener), _) => Some(listener),
            (None, Some(address)) => Some(
                metrics::bind(address).await.with_context(|| format!("binding metrics_addr {address}"))?,
            ),
            (None, None) => None,
        };
        let stop = server::Stop::default();
        let (health, health_service) = tonic_health::server::health_reporter();
        let grpc = grpc::router(
            grpc::Routes {
                domain: Arc::clone(&domain),
                metrics: Arc::clone(&metrics),
                health: health_service,
                closed: stop.close.clone(),
            },
            &config,
        )?;
        let http = crate::http::router(
            crate::http::State {
                domain: Arc::clone(&domain),
                metrics: Arc::clone(&metrics),
                settings: Arc::new(crate::http::Settings::from_config(&config)),
            },
            &config,
        );
        let service = request::stack(
            grpc,
            http,
            Arc::clone(&metrics),
            request::Settings { timeout: config.request_timeout, log_calls: config.log_requests },
        );
        let limits = server::Limits {
            max_connections: config.max_connections,
            tls_handshake_timeout: config.tls_handshake_timeout,
            idle_timeout: config.idle_timeout,
            http2_keepalive_interval: config.http2_keepalive_interval,
            http2_keepalive_timeout: config.http2_keepalive_timeout,
            max_concurrent_streams: config.max_concurrent_streams,
        };

        // Background work starts last, after every fallible step. The first
        // health answer is known before the first request is served.
        let tasks = TaskTracker::new();
        let stop_probe = CancellationToken::new();
        let stop_background = CancellationToken::new();
        let first = health::probe_once(&domain, &health, None).await;
        tasks.spawn(health::probe(
            Arc::clone(&domain),
            health.clone(),
            config.health_probe_interval,
            first,
            database_up,
            stop_probe.clone(),
        ));
        tasks.spawn(validator_tasks.last_seen.run(stop_background.clone().cancelled_owned()));
        if let Some(follower) = validator_tasks.revocations {
            tasks.spawn(follower.run(stop_background.clone().cancelled_owned()));
        }
        tasks.spawn(flush_invalid_tokens(
            Arc::clone(&domain),
            config.audit_flush_interval,
            stop_background.clone(),
        ));
        if let Some(listener) = metrics_listener {
            tracing::info!(address = %listener.local_addr()?, "serving metrics at /metrics");
            tasks.spawn(metrics::serve(
                listener,
                Arc::clone(&metrics),
                stop_background.clone().cancelled_owned(),
            ));
        }
        let address = listener.local_addr()?;
        let mut served = tokio::spawn(server::serve(listener, tls.clone(), service, limits, stop.clone()));
        tracing::info!(%address, tls = tls.is_some(), "portcullis listening");

        let mut force = std::pin::pin!(force);
        let mut forced = false;
        tokio::select! {
            () = shutdown => {}
            () = &mut force => forced = true,
        }
        // Health first: load balancers and meshes stop sending.
        stop_probe.cancel();
        health::set_all(&health, ServingStatus::NotServing).await;
        if !forced {
            tracing::info!(drain = ?config.shutdown_drain, "stopping: NOT_SERVING, still serving calls during the drain");
            tokio::select! {
                () = tokio::time::sleep(config.shutdown_drain) => {}
                () = &mut force => forced = true,
            }
        }
        // Then the listener closes and connections finish.
        stop.close.cancel();
        if forced {
            stop.abort.cancel();
        } else {
            tokio::select! {
                _ = &mut served => {}
                () = tokio::time::sleep(config.shutdown_timeout) => {
                    tracing::warn!(timeout = ?config.shutdown_timeout, "calls still in flight after shutdown_timeout; closing their connections");
                    stop.abort.cancel();
                }
                () = &mut force => stop.abort.cancel(),
            }
        }
        if !served.is_finished() {
            let _ = served.await;
        }
        // Last, the background tasks stop and flush.
        stop_background.cancel();
        tasks.close();
        tasks.wait().await;
        tracing::info!("portcullis stopped");
        Ok(())
    }
}

/// Writes aggregated invalid-token counts to the audit log every `every`,
/// and what is left when `stop` is cancelled.
async fn flush_invalid_tokens(domain: Arc<Domain>, every: Duration, stop: CancellationToken) {
    let mut interval = tokio::time::interval(every);
    loop {
        let stopping = tokio::select! {
            () = stop.cancelled() => true,
            _ = interval.tick() => false,
        };
        if let Err(err) = domain.flush_invalid_tokens().await {
            tracing::warn!(error = %err, "could not write invalid-token counts to the audit log");
        }
        if stopping {
            return;
        }
    }
}

/// The abuse-protection settings, as domain types.
fn limit_settings(config: &Config) -> anyhow::Result<LimitSettings> {
    let limit = |max: u32, window: Duration| -> anyhow::Result<Limit> {
        Ok(Limit { max, window: chrono::Duration::from_std(window)? })
    };
    Ok(LimitSettings {
        per_ip: limit(config.rate_limit_ip, config.rate_limit_ip_window)?,
        per_account: limit(config.rate_limit_account, config.rate_limit_account_window)?,
        per_pair: limit(config.rate_limit_pair, config.rate_limit_pair_window)?,
        lock: LockPolicy {
            threshold: i32::try_from(config.lockout_threshold)?,
            base: chrono::Duration::from_std(config.lockout_duration)?,
            max: chrono::Duration::from_std(config.lockout_max_duration)?,
        },
    })
}
