//! The one place that wires every layer: store → domain → gRPC services,
//! health, reflection, transport limits, graceful shutdown.

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    config::Config,
    domain::{
        Clock, Domain, MfaSettings, Settings, SystemClock, Validator,
        password::{Hasher, HasherConfig},
        seal::Sealer,
        token::TokenFormat,
        validate::CacheConfig,
    },
    grpc::{AuthService, KeyService, UserService},
    mail::Mailer,
    proto::{
        self,
        v1::{
            auth_service_server::AuthServiceServer, key_service_server::KeyServiceServer,
            user_service_server::UserServiceServer,
        },
    },
    store::Store,
};

/// A wired portcullis: the rules over a migrated database.
pub struct App {
    domain: Arc<Domain>,
    config: Config,
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
        let store = Store::connect(&config.database_url, config.database_max_connections)
            .await
            .context("connecting to the database (database_url)")?;
        if config.migrate_on_start {
            store.migrate().await.context("migrating the database")?;
        }
        let tokens = TokenFormat::new(&config.token_prefix);
        let hasher = Hasher::new(HasherConfig {
            memory_kib: config.argon2_memory_kib,
            iterations: config.argon2_iterations,
            parallelism: config.argon2_parallelism,
            threads: config.hash_threads,
            queue_depth: config.hash_queue_depth,
        })?;
        let validator = Validator::new(
            store.clone(),
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
        let domain = Arc::new(Domain::new(store, clock, hasher, tokens, validator, settings, mfa));
        Ok(Self { domain, config })
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
    /// The transport failed.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let Self { domain, config } = self;
        let (health, health_service) = tonic_health::server::health_reporter();
        let probe = tokio::spawn(probe_database(Arc::clone(&domain), health, config.health_probe_interval));

        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // So grpcurl can decode ErrorInfo, BadRequest and RetryInfo details.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        // grpcurl 1.8 still asks the v1alpha reflection service.
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;

        let max = config.max_message_bytes;
        let auth =
            AuthServiceServer::new(AuthService::new(Arc::clone(&domain))).max_decoding_message_size(max);
        let users =
            UserServiceServer::new(UserService::new(Arc::clone(&domain))).max_decoding_message_size(max);

        let keys = KeyServiceServer::new(KeyService::new(Arc::clone(&domain))).max_decoding_message_size(max);

        let address = listener.local_addr()?;
        tracing::info!(%address, "portcullis listening");
        let result = Server::builder()
            // Each request gets at most this long; the client sees DEADLINE_EXCEEDED.
            .timeout(config.request_timeout)
            // Bounds the work one connection can queue.
            .max_concurrent_streams(Some(config.max_concurrent_streams))
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(auth)
            .add_service(users)
            .add_service(keys)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
            .await;
        probe.abort();
        tracing::info!("portcullis stopped");
        result.context("gRPC server")
    }
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

/// Reports NOT_SERVING while the database does not answer.
async fn probe_database(domain: Arc<Domain>, health: HealthReporter, every: Duration) {
    let services = ["", "portcullis.v1.AuthService", "portcullis.v1.UserService"];
    let mut last = None;
    let mut interval = tokio::time::interval(every);
    loop {
        interval.tick().await;
        let status = match domain.store().ping().await {
            Ok(()) => ServingStatus::Serving,
            Err(err) => {
                tracing::warn!(error = %err, "database health probe failed");
                ServingStatus::NotServing
            }
        };
        if last != Some(status) {
            for service in services {
                health.set_service_status(service, status).await;
            }
            last = Some(status);
        }
    }
}
