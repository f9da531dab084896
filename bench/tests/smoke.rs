//! Smoke tests of the load tool, a few seconds in all: the open loop against
//! a bare tonic health server, and the seeder plus every portcullis workload
//! against a real portcullis on SQLite (the seeded tokens must validate, the
//! seeded accounts must log in). They check that the tool works, not how
//! fast anything is.

use std::{sync::Arc, time::Duration};

use portcullis::{app::App, config::Config, domain::SystemClock, store::SqlStore};
use portcullis_bench::{
    client::Connection,
    load::{self, Arrival, Load, Plan},
    seed::{self, SeedOptions},
    stats::Offered,
    workload::{EnvoyCheck, Health, Login, Validate, Workload},
};
use tokio::net::TcpListener;

fn plan(label: &str, load: Load, warmup_ms: u64, duration_ms: u64) -> Plan {
    Plan {
        label: label.into(),
        load,
        warmup: Duration::from_millis(warmup_ms),
        duration: Duration::from_millis(duration_ms),
        timeout: Duration::from_secs(5),
        server_pid: Some(std::process::id()),
        server_shared: false,
        rss_per_call: false,
        seed: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_health_counts_every_call() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(
        tonic::transport::Server::builder().add_service(health).serve_with_incoming(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
        ),
    );
    let connections = Connection::open_many(addr, 2, false).await.unwrap();
    let workload: Arc<dyn Workload> = Arc::new(Health::new(&connections, addr, String::new()).unwrap());
    let load = Load::Open { rate: 400.0, arrival: Arrival::Constant, max_in_flight: 1000 };
    let result = load::run(workload, &plan("health", load, 200, 500)).await.unwrap();
    let report = result.report;
    // 400/s for 0.5 s: 200 measured calls, all answered.
    assert_eq!(report.codes(), "OK 200", "{report:?}");
    assert_eq!(report.offered, Offered::Rate(400.0));
    assert!((300.0..=500.0).contains(&report.achieved), "{report:?}");
    assert!(report.latency.p50 > 0.0 && report.latency.max < 1000.0, "{report:?}");
    assert!(report.server.is_some_and(|s| s.cpu_micros_per_call.is_some()));
    assert_eq!(result.issued, 280);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_sessions_validate_and_seeded_accounts_log_in() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("bench.db").display());
    SqlStore::connect(&url, 1).await.unwrap().migrate().await.unwrap();
    let tokens_out = dir.path().join("tokens.txt");
    let seeded = seed::seed(&SeedOptions {
        database_url: url.clone(),
        users: 3,
        sessions: 250,
        email_pattern: "bench{}@example.com".into(),
        password: "bench password 123".into(),
        token_prefix: "pcs".into(),
        session_lifetime: Duration::from_hours(1),
        tokens_out: tokens_out.clone(),
        // Small batches, so several statements and transactions are used.
        rows_per_statement: 40,
        rows_per_transaction: 100,
    })
    .await
    .unwrap();
    assert_eq!((seeded.users, seeded.sessions), (3, 250));
    let tokens: Arc<[String]> =
        std::fs::read_to_string(&tokens_out).unwrap().lines().map(str::to_owned).collect();
    assert_eq!(tokens.len(), 250);

    let config = Config {
        database_url: url,
        rate_limit_ip: 0,
        rate_limit_account: 0,
        rate_limit_pair: 0,
        ..Config::default()
    };
    let app = App::build(config, Arc::new(SystemClock)).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(app.serve(listener, std::future::pending()));
    let connections = Connection::open_many(addr, 2, false).await.unwrap();
    let closed = |requests| Load::Closed { concurrency: 4, requests: Some(requests) };

    // Every seeded token once: all valid.
    let validate: Arc<dyn Workload> = Arc::new(Validate::new(&connections, addr, tokens.clone(), 0).unwrap());
    let result = load::run(validate, &plan("miss", closed(250), 0, 10_000)).await.unwrap();
    assert_eq!(result.report.codes(), "OK 250");
    assert_eq!(result.issued, 250);

    // A token that is not the server's: refused, and counted by its code.
    let junk: Arc<[String]> = Arc::from(vec!["pcs_sess_not-a-token".to_owned()]);
    let refused: Arc<dyn Workload> = Arc::new(Validate::new(&connections, addr, junk, 0).unwrap());
    let result = load::run(refused, &plan("junk", closed(3), 0, 10_000)).await.unwrap();
    assert_eq!(result.report.codes(), "UNAUTHENTICATED 3");

    let envoy: Arc<dyn Workload> = Arc::new(EnvoyCheck::new(&connections, addr, &tokens[0]).unwrap());
    let result = load::run(envoy, &plan("envoy", closed(5), 0, 10_000)).await.unwrap();
    assert_eq!(result.report.codes(), "OK 5");

    let emails: Arc<[String]> = (0..3).map(|i| seed::email("bench{}@example.com", i)).collect();
    let login: Arc<dyn Workload> =
        Arc::new(Login::new(&connections, addr, emails, "bench password 123".into()).unwrap());
    let result = load::run(login, &plan("login", closed(3), 0, 30_000)).await.unwrap();
    assert_eq!(result.report.codes(), "OK 3");
}
