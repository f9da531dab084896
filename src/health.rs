//! What `grpc.health.v1.Health` answers: SERVING while the database answers,
//! NOT_SERVING while it does not, and NOT_SERVING from the moment the server
//! starts to stop (so load balancers and Envoy stop sending before it
//! closes). The service `liveness` says SERVING as long as the process runs.

use std::{sync::Arc, time::Duration};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::domain::Domain;

/// The services whose health follows the database's. Envoy can health-check
/// its `ext_authz` cluster by the service's name.
const SERVICES: [&str; 6] = [
    "",
    "portcullis.v1.AuthService",
    "portcullis.v1.UserService",
    "portcullis.v1.KeyService",
    "portcullis.v1.AuditService",
    "envoy.service.auth.v3.Authorization",
];

/// The service that answers SERVING for as long as the process runs, for
/// liveness probes: a database outage or a drain makes a replica unready,
/// never restarted.
pub const LIVENESS: &str = "liveness";

/// Sets every service's status (all but [`LIVENESS`]).
pub async fn set_all(health: &HealthReporter, status: ServingStatus) {
    for service in SERVICES {
        health.set_service_status(service, status).await;
    }
}

/// Asks the database once and reports the result when it changed from
/// `last`.
pub async fn probe_once(
    domain: &Domain,
    health: &HealthReporter,
    last: Option<ServingStatus>,
) -> ServingStatus {
    if last.is_none() {
        health.set_service_status(LIVENESS, ServingStatus::Serving).await;
    }
    let status = match domain.store().ping().await {
        Ok(()) => ServingStatus::Serving,
        Err(err) => {
            tracing::warn!(error = %err, "database health probe failed");
            ServingStatus::NotServing
        }
    };
    if last != Some(status) {
        set_all(health, status).await;
    }
    status
}

/// Probes the database every `every` until `stop` is cancelled; and
/// between probes follows `database_up` (what calls to the database find),
/// so the first failing call turns health NOT_SERVING at once, and an answer
/// turns it back.
pub async fn probe(
    domain: Arc<Domain>,
    health: HealthReporter,
    every: Duration,
    first: ServingStatus,
    mut database_up: watch::Receiver<bool>,
    stop: CancellationToken,
) {
    let mut last = Some(first);
    let mut interval = tokio::time::interval(every);
    interval.tick().await;
    let mut following = true;
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            changed = database_up.changed(), if following => {
                if changed.is_err() {
                    following = false;
                    continue;
                }
                let status =
                    if *database_up.borrow_and_update() { ServingStatus::Serving } else { ServingStatus::NotServing };
                if last != Some(status) {
                    set_all(&health, status).await;
                    last = Some(status);
                }
            }
            _ = interval.tick() => last = Some(probe_once(&domain, &health, last).await),
        }
    }
}
