//! The one place that wires every layer: store → domain → gRPC services,
//! health, reflection, transport limits, graceful shutdown.

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context as _;
use envoy_types::ext_authz::v3::pb::AuthorizationServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    config::{CaptchaPolicyName, Config},
    domain::{
        CaptchaPolicy, CaptchaSettings, Clock, Domain, MfaSettings, Settings, SystemClock, Validator,
        limits::{Limit, LimitSettings, LockPolicy},
        password::{Hasher, HasherConfig},
        ports::Store,
        seal::Sealer,
        token::TokenFormat,
        validate::CacheConfig,
    },
    grpc::{AuditService, AuthService, EnvoyAuthorization, IdentityHeaders, KeyService, UserService},
    mail::Mailer,
    metrics::{self, Metrics},
    proto::{
        self,
        v1::{
            audit_service_server::AuditServiceServer, auth_service_server::AuthServiceServer,
            key_service_server::KeyServiceServer, user_service_server::UserServiceServer,
        },
    },
    request::RequestLayer,
    store::SqlStore,
};

/// A wired portcullis: the rules over a migrated database.
pub struct App {
    domain: Arc<Domain>,
    config: Config,
    metrics: Arc<Metrics>,
    /// The metrics endpoint's socket, when bound before `serve`.
    metrics_listener: Option<TcpListener>,
}

impl App {
    /// Connects to the database, migrates it when configured to, and wires
    /// the rules with `clock`.
    ///
    /// # Errors
    /// The database cannot be reached or migrated, or the configuration is
    /// not usable.
    pub async fn build(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        config.check()?;
        let database = SqlStore::connect(&config.database_url, config.database_max_connections)
            .await
            .context("connecting to the database (database_url)")?;
        if config.migrate_on_start {
            database.migrate().await.context("migrating the database")?;
        }
        let store: Arc<dyn Store> = Arc::new(database.clone());
        let tokens = TokenFormat::new(&config.token_prefix);
        let hasher = Hasher::new(HasherConfig {
            memory_kib: config.argon2_memory_kib,
            iterations: config.argon2_iterations,
            parallelism: config.argon2_parallelism,
            threads: config.hash_threads,
            queue_depth: config.hash_queue_depth,
        })?;
        let (validator, validator_tasks) = Validator::new(
            Arc::clone(&store),
            tokens.clone(),
            CacheConfig {
                ttl: config.token_cache_ttl,
                negative_ttl: config.token_negative_cache_ttl,
                capacity: config.token_cache_capacity,
            },
        );
        let settings = Settings::from_config(&config)?;
        let master = config.load_mfa_key()?;
        let mfa = MfaSettings {
            sealer: Sealer::new(&master)?,
            mailer: Mailer::from_config(&config)?,
            issuer: config.mfa_issuer.clone(),
            pending_lifetime: chrono::Duration::from_std(config.mfa_pending_lifetime)?,
            email_code_lifetime: chrono::Duration::from_std(config.email_code_lifetime)?,
        };
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
            anyhow::bail!(
                "captcha_policy: `{:?}` needs at least one vendor secret (captcha_googlev3_secret, \
                 captcha_hcaptcha_secret or captcha_turnstile_secret)",
                config.captcha_policy
            );
        }
        let domain =
            Arc::new(Domain::new(store, clock, hasher, tokens, validator, settings, mfa, limits, captcha));
        let pool: metrics::PoolProbe = Arc::new(move || {
            let (open, idle, max) = database.pool_use();
            Some(metrics::PoolUse { open, idle, max })
        });
        let metrics = Metrics::new(domain.hasher().clone(), Some(pool));
        // The validator's background work, once nothing can fail any more.
        // The last-seen writer ends (writing what is queued) when the
        // validator is dropped; the revocation follower runs with the process.
        tokio::spawn(validator_tasks.last_seen.run(std::future::pending()));
        if let Some(follower) = validator_tasks.revocations {
            tokio::spawn(follower.run(std::future::pending()));
        }
        Ok(Self { domain, config, metrics, metrics_listener: None })
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

    /// Serves gRPC on `listener` until `shutdown` resolves, then stops
    /// accepting and lets calls in flight finish.
    ///
    /// # Errors
    /// The TLS files cannot be used, `metrics_addr` cannot be bound, or the
    /// transport failed.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let Self { domain, config, metrics, metrics_listener } = self;
        // What can fail comes first, before any task is spawned.
        let mut server = Server::builder();
        if let Some(tls) = server_tls(&config)? {
            server = server.tls_config(tls).context("tls_cert_file/tls_key_file/tls_client_ca_file")?;
        }
        let metrics_listener = match (metrics_listener, config.metrics_addr) {
            (Some(listener), _) => Some(listener),
            (None, Some(address)) => Some(
                metrics::bind(address).await.with_context(|| format!("binding metrics_addr {address}"))?,
            ),
            (None, None) => None,
        };
        let (health, health_service) = tonic_health::server::health_reporter();

        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // So grpcurl can decode ErrorInfo, BadRequest and RetryInfo details.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(crate::grpc::envoy::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        // grpcurl 1.8 still asks the v1alpha reflection service.
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(crate::grpc::envoy::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;

        let max = config.max_message_bytes;
        let auth =
            AuthServiceServer::new(AuthService::new(Arc::clone(&domain))).max_decoding_message_size(max);
        let users =
            UserServiceServer::new(UserService::new(Arc::clone(&domain))).max_decoding_message_size(max);

        let keys = KeyServiceServer::new(KeyService::new(Arc::clone(&domain))).max_decoding_message_size(max);
        let audit =
            AuditServiceServer::new(AuditService::new(Arc::clone(&domain))).max_decoding_message_size(max);

        let envoy = AuthorizationServer::new(EnvoyAuthorization::new(
            Arc::clone(&domain),
            IdentityHeaders {
                user_id: config.envoy_user_id_header.clone(),
                role: config.envoy_role_header.clone(),
                scopes: config.envoy_scopes_header.clone(),
                session_id: config.envoy_session_id_header.clone(),
                key_id: config.envoy_key_id_header.clone(),
            },
        ))
        .max_decoding_message_size(max);

        let metrics_server = match metrics_listener {
            Some(listener) => {
                tracing::info!(address = %listener.local_addr()?, "serving metrics at /metrics");
                Some(tokio::spawn(metrics::serve(listener, Arc::clone(&metrics), std::future::pending())))
            }
            None => None,
        };

        // Background work starts last, after every fallible step. The first
        // health answer is known before the first request is served.
        let first = probe_once(&domain, &health, None).await;
        let probe =
            tokio::spawn(probe_database(Arc::clone(&domain), health, config.health_probe_interval, first));
        let flusher = tokio::spawn(flush_invalid_tokens(Arc::clone(&domain), config.audit_flush_interval));

        let address = listener.local_addr()?;
        tracing::info!(%address, tls = config.tls_cert_file.is_some(), "portcullis listening");
        let result = server
            // Request ids, the RPC's span (continuing the caller's trace),
            // the time limit (the client sees DEADLINE_EXCEEDED, with its
            // request id) and the metrics of every call: see `request.rs`.
            .layer(RequestLayer::new(Arc::clone(&metrics), config.request_timeout))
            // Bounds the work one connection can queue.
            .max_concurrent_streams(Some(config.max_concurrent_streams))
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(auth)
            .add_service(users)
            .add_service(keys)
            .add_service(audit)
            .add_service(envoy)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
            .await;
        probe.abort();
        flusher.abort();
        // What the flusher had not written yet.
        if let Err(err) = domain.flush_invalid_tokens().await {
            tracing::warn!(error = %err, "could not write the last invalid-token counts");
        }
        if let Some(metrics_server) = metrics_server {
            metrics_server.abort();
        }
        tracing::info!("portcullis stopped");
        result.context("gRPC server")
    }
}

/// The gRPC port's TLS (and mutual TLS with `tls_client_ca_file`), when
/// `tls_cert_file` and `tls_key_file` are set.
fn server_tls(config: &Config) -> anyhow::Result<Option<ServerTlsConfig>> {
    let (Some(cert), Some(key)) = (&config.tls_cert_file, &config.tls_key_file) else { return Ok(None) };
    let read = |name: &str, path: &std::path::Path| {
        std::fs::read(path).with_context(|| format!("{name} {}: cannot read", path.display()))
    };
    let mut tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(read("tls_cert_file", cert)?, read("tls_key_file", key)?));
    if let Some(ca) = &config.tls_client_ca_file {
        tls = tls.client_ca_root(Certificate::from_pem(read("tls_client_ca_file", ca)?));
    }
    Ok(Some(tls))
}

/// Runs portcullis with the system clock until `shutdown` resolves.
///
/// # Errors
/// As [`App::build`] and [`App::serve`].
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    App::build(config, Arc::new(SystemClock)).await?.serve(listener, shutdown).await
}

/// Writes aggregated invalid-token counts to the audit log every `every`.
async fn flush_invalid_tokens(domain: Arc<Domain>, every: Duration) {
    let mut interval = tokio::time::interval(every);
    loop {
        interval.tick().await;
        if let Err(err) = domain.flush_invalid_tokens().await {
            tracing::warn!(error = %err, "could not write invalid-token counts to the audit log");
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

/// Reports NOT_SERVING while the database does not answer.
async fn probe_database(domain: Arc<Domain>, health: HealthReporter, every: Duration, first: ServingStatus) {
    let mut last = Some(first);
    let mut interval = tokio::time::interval(every);
    interval.tick().await;
    loop {
        interval.tick().await;
        last = Some(probe_once(&domain, &health, last).await);
    }
}

/// The services whose health follows the database's. Envoy can health-check
/// its `ext_authz` cluster by the service's name.
const HEALTH_SERVICES: [&str; 6] = [
    "",
    "portcullis.v1.AuthService",
    "portcullis.v1.UserService",
    "portcullis.v1.KeyService",
    "portcullis.v1.AuditService",
    "envoy.service.auth.v3.Authorization",
];

/// Asks the database once and reports the result when it changed.
async fn probe_once(domain: &Domain, health: &HealthReporter, last: Option<ServingStatus>) -> ServingStatus {
    let status = match domain.store().ping().await {
        Ok(()) => ServingStatus::Serving,
        Err(err) => {
            tracing::warn!(error = %err, "database health probe failed");
            ServingStatus::NotServing
        }
    };
    if last != Some(status) {
        for service in HEALTH_SERVICES {
            health.set_service_status(service, status).await;
        }
    }
    status
}
