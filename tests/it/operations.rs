//! Running the service: health, database outages, load shedding, hash
//! upgrades across restarts, graceful shutdown, transport limits, the CLI
//! and configuration errors.

use std::{process::Stdio, time::Duration};

use portcullis::{
    domain::Role,
    proto::v1::{self as pb, validate_token_request::Credential},
};
use tokio::io::AsyncWriteExt as _;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_types::StatusExt as _;

use crate::support::{Backend, TestApp, TestDb, USER_PASSWORD, assert_error, test_config};

crate::db_tests!(
    health_reports_serving_for_every_service,
    full_hash_queue_answers_resource_exhausted_at_once,
    password_hash_is_upgraded_when_parameters_change,
    graceful_shutdown_lets_calls_in_flight_finish,
    oversized_messages_are_refused,
);

async fn health(app: &TestApp, service: &str) -> i32 {
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", app.addr)).unwrap().connect_lazy();
    HealthClient::new(channel)
        .check(HealthCheckRequest { service: service.into() })
        .await
        .unwrap()
        .into_inner()
        .status
}

async fn health_reports_serving_for_every_service(backend: Backend) {
    let app = TestApp::start(&backend).await;
    for service in ["", "portcullis.v1.AuthService", "portcullis.v1.UserService"] {
        assert_eq!(health(&app, service).await, ServingStatus::Serving as i32, "{service:?}");
    }
    app.stop().await;
}

/// PostgreSQL only: the database can be taken away from under the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_is_unavailable_never_valid() {
    let Some(backend) = Backend::postgres() else {
        return;
    };
    let app = TestApp::start(&backend).await;
    app.create_user("olga@example.com", USER_PASSWORD, Role::User).await;
    let uncached = app.login("olga@example.com", USER_PASSWORD).await.token;

    app.db.drop_database().await;

    let status = app.validate(&uncached).await.unwrap_err();
    assert_error(&status, Code::Unavailable, "UNAVAILABLE");
    let login = app
        .auth()
        .login(pb::LoginRequest {
            email: "olga@example.com".into(),
            password: USER_PASSWORD.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_error(&login, Code::Unavailable, "UNAVAILABLE");
    // The probe runs every 100 ms in tests; wait for it to notice.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while health(&app, "").await != ServingStatus::NotServing as i32 {
        assert!(tokio::time::Instant::now() < deadline, "health never reported NOT_SERVING");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Unready, but alive: a liveness probe must not restart the replica.
    assert_eq!(health(&app, "liveness").await, ServingStatus::Serving as i32);
    app.stop().await;
}

async fn full_hash_queue_answers_resource_exhausted_at_once(backend: Backend) {
    let app = TestApp::start_with(&backend, |c| {
        c.hash_threads = 1;
        c.hash_queue_depth = 0;
        c.argon2_memory_kib = 64 * 1024;
        c.argon2_iterations = 3;
    })
    .await;
    app.create_user("pat@example.com", USER_PASSWORD, Role::User).await;
    let mut calls = Vec::new();
    for _ in 0..8 {
        let mut auth = app.auth();
        calls.push(tokio::spawn(async move {
            auth.login(pb::LoginRequest {
                email: "pat@example.com".into(),
                password: USER_PASSWORD.into(),
                ..Default::default()
            })
            .await
        }));
    }
    let mut shed = 0;
    let mut served = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => served += 1,
            Err(status) => {
                assert_error(&status, Code::ResourceExhausted, "RATE_LIMITED");
                assert!(status.get_details_retry_info().and_then(|r| r.retry_delay).is_some());
                assert!(status.metadata().get("retry-after").is_some());
                shed += 1;
            }
        }
    }
    assert!(served >= 1, "nothing was served");
    assert!(shed >= 1, "nothing was shed");
    assert_eq!(app.domain.hasher().rejection_count(), shed);
    app.stop().await;
}

async fn stored_hash(db: &TestDb, email: &str) -> String {
    use sea_orm::{ConnectionTrait, Database, Statement};
    let conn = Database::connect(&db.url).await.unwrap();
    let row = conn
        .query_one_raw(Statement::from_sql_and_values(
            conn.get_database_backend(),
            match conn.get_database_backend() {
                sea_orm::DatabaseBackend::Postgres => "SELECT password_hash FROM users WHERE email = $1",
                _ => "SELECT password_hash FROM users WHERE email = ?",
            },
            [email.into()],
        ))
        .await
        .unwrap()
        .unwrap();
    let hash: String = row.try_get("", "password_hash").unwrap();
    conn.close().await.unwrap();
    hash
}

async fn password_hash_is_upgraded_when_parameters_change(backend: Backend) {
    let app = TestApp::start_with(&backend, |c| {
        c.argon2_memory_kib = 1024;
        c.argon2_iterations = 1;
    })
    .await;
    app.create_user("quinn@example.com", USER_PASSWORD, Role::User).await;
    let before = stored_hash(&app.db, "quinn@example.com").await;
    assert!(before.starts_with("$argon2id$") && before.contains("m=1024,t=1,p=1"), "{before}");
    let token = app.login("quinn@example.com", USER_PASSWORD).await.token;
    assert_eq!(stored_hash(&app.db, "quinn@example.com").await, before, "same parameters: no rehash");

    // Restart with the OWASP defaults on the same database.
    let app = app
        .restart_with(|c| {
            c.argon2_memory_kib = 19 * 1024;
            c.argon2_iterations = 2;
        })
        .await;
    app.validate(&token).await.unwrap();
    app.login("quinn@example.com", USER_PASSWORD).await;
    let after = stored_hash(&app.db, "quinn@example.com").await;
    assert!(after.contains("m=19456,t=2,p=1"), "{after}");
    app.login("quinn@example.com", USER_PASSWORD).await;
    app.stop().await;
}

async fn graceful_shutdown_lets_calls_in_flight_finish(backend: Backend) {
    let app = TestApp::start_with(&backend, |c| {
        c.argon2_memory_kib = 64 * 1024;
        c.argon2_iterations = 4;
    })
    .await;
    app.create_user("ruth@example.com", USER_PASSWORD, Role::User).await;
    let before = app.domain.hasher().verification_count();
    let mut auth = app.auth();
    let login = tokio::spawn(async move {
        auth.login(pb::LoginRequest {
            email: "ruth@example.com".into(),
            password: USER_PASSWORD.into(),
            ..Default::default()
        })
        .await
    });
    // Wait until the login is hashing, then ask the server to stop.
    while app.domain.hasher().verification_count() == before {
        tokio::task::yield_now().await;
    }
    let addr = app.addr;
    app.stop().await;
    let response = login.await.unwrap().expect("the call in flight completes");
    assert!(matches!(response.into_inner().result, Some(pb::login_response::Result::Session(_))));
    // And the listener is closed.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

async fn oversized_messages_are_refused(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let status = app
        .auth()
        .validate_token(pb::ValidateTokenRequest {
            credential: Some(Credential::Token("x".repeat(100 * 1024))),
            required_scopes: vec![],
        })
        .await
        .unwrap_err();
    // RESOURCE_EXHAUSTED, as gRPC's status-code guide gives for a message
    // over a configured limit, with the error table's reason.
    assert_error(&status, Code::ResourceExhausted, "MESSAGE_TOO_LARGE");
    assert!(status.message().contains("65536"), "{status:?}");
    // The server still answers normal calls on the same connection.
    let ok = app.validate("pcs_sess_short").await.unwrap_err();
    assert_error(&ok, Code::Unauthenticated, "UNAUTHORIZED");
    app.stop().await;
}

fn portcullis() -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_portcullis"));
    command.env_remove("PORTCULLIS_TEST_DATABASE_URL").env_remove("DATABASE_URL").kill_on_drop(true);
    command
}

#[tokio::test]
async fn cli_creates_the_first_admin_who_can_log_in() {
    let db = TestDb::create(&Backend::Sqlite).await;
    let mut child = portcullis()
        .args(["user", "create", "--email", "First@Example.com", "--role", "admin", "--password-stdin"])
        .env("PORTCULLIS_DATABASE_URL", &db.url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"first admin password\n").await.unwrap();
    let output = child.wait_with_output().await.unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("first@example.com") && stdout.contains("admin"), "{stdout}");
    assert!(!stdout.contains("first admin password"));

    let config = test_config(&db);
    let app =
        TestApp::start_on(db, config, portcullis::domain::ManualClock::new(crate::support::epoch())).await;
    let session = app.login("first@example.com", "first admin password").await;
    assert_eq!(session.user.unwrap().role, pb::Role::Admin as i32);

    // A second user with the same email (after normalisation) is refused.
    let again = portcullis()
        .args(["user", "create", "--email", " FIRST@example.com", "--role", "user"])
        .env("PORTCULLIS_DATABASE_URL", &app.db.url)
        .env("PORTCULLIS_USER_PASSWORD", "another password")
        .output()
        .await
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    app.stop().await;
}

#[tokio::test]
async fn a_bad_setting_stops_start_up_naming_it() {
    let cases = [
        ("PORTCULLIS_SESSION_LIFETIME", "forever", "session_lifetime"),
        ("PORTCULLIS_TOKEN_PREFIX", "Bad_Prefix", "token_prefix"),
        ("PORTCULLIS_LISTEN_ADDR", "not an address", "listen_addr"),
        ("PORTCULLIS_SESSION_LIFETYME", "1h", "session_lifetyme"),
    ];
    for (name, value, named) in cases {
        let output = portcullis()
            .arg("serve")
            .env(name, value)
            .env("PORTCULLIS_DATABASE_URL", "sqlite::memory:")
            .output()
            .await
            .unwrap();
        assert!(!output.status.success(), "{name}={value} started");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.to_lowercase().contains(named), "{name}={value}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_bootstraps_a_service_account_and_its_key() {
    let db = TestDb::create(&Backend::Sqlite).await;
    let created = portcullis()
        .args(["user", "create", "--email", "deploy@svc.example.com", "--service"])
        .env("PORTCULLIS_DATABASE_URL", &db.url)
        .output()
        .await
        .unwrap();
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let key = portcullis()
        .args(["key", "create", "--owner", "deploy@svc.example.com", "--name", "deployer"])
        .args(["--scope", "portcullis:users:read", "--scope", "assets:*"])
        .env("PORTCULLIS_DATABASE_URL", &db.url)
        .output()
        .await
        .unwrap();
    assert!(key.status.success(), "{}", String::from_utf8_lossy(&key.stderr));
    let printed = String::from_utf8_lossy(&key.stdout).trim().to_owned();
    assert!(printed.starts_with("pcs_live_"), "stdout is the key alone: {printed}");

    let config = test_config(&db);
    let app =
        TestApp::start_on(db, config, portcullis::domain::ManualClock::new(crate::support::epoch())).await;
    let principal = app.validate(&printed).await.unwrap();
    assert_eq!(principal.email, "deploy@svc.example.com");
    assert_eq!(principal.scopes, vec!["portcullis:users:read".to_owned(), "assets:*".to_owned()]);
    let key_id = match principal.credential_id {
        Some(pb::principal::CredentialId::KeyId(id)) => id,
        other => panic!("not a key: {other:?}"),
    };

    let revoked = portcullis()
        .args(["key", "revoke", &key_id.to_string()])
        .env("PORTCULLIS_DATABASE_URL", &app.db.url)
        .output()
        .await
        .unwrap();
    assert!(revoked.status.success(), "{}", String::from_utf8_lossy(&revoked.stderr));
    // Another process revoked it: this server's cache entry lives at most
    // token_cache_ttl; an uncached validation sees the revocation at once.
    let fresh = app.restart_with(|_| {}).await;
    assert_error(&fresh.validate(&printed).await.unwrap_err(), Code::Unauthenticated, "UNAUTHORIZED");

    let unknown = portcullis()
        .args(["key", "revoke", "999"])
        .env("PORTCULLIS_DATABASE_URL", &fresh.db.url)
        .output()
        .await
        .unwrap();
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("not found"));
    fresh.stop().await;
}

/// PostgreSQL only: replicas share revocations through LISTEN/NOTIFY, so a
/// token revoked on one is refused by another that had it cached — even with
/// an hour-long cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_on_one_replica_reaches_the_others_cache_at_once() {
    let Some(backend) = Backend::postgres() else { return };
    let a = TestApp::start_with(&backend, |c| c.token_cache_ttl = Duration::from_hours(1)).await;
    let b = TestApp::start_on(a.db.shared(), a.config.clone(), a.clock.clone()).await;
    let admin = a.admin_token().await;
    a.create_user("rita@example.com", USER_PASSWORD, Role::User).await;
    let token = a.login("rita@example.com", USER_PASSWORD).await.token;
    let svc = crate::keys::service_account(&a, &admin, "replica-svc@example.com").await;
    let key = crate::keys::create_key(&a, &admin, svc, &[]).await.unwrap();
    // Replica b caches both.
    for _ in 0..2 {
        b.validate(&token).await.unwrap();
        b.validate(&key.key).await.unwrap();
    }
    a.auth().logout(pb::LogoutRequest { token: token.clone() }).await.unwrap();
    a.keys()
        .revoke_api_key(crate::support::bearer(
            &admin,
            pb::RevokeApiKeyRequest { key_id: key.api_key.as_ref().unwrap().id },
        ))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    for credential in [&token, &key.key] {
        loop {
            if let Err(status) = b.validate(credential).await {
                assert_error(&status, Code::Unauthenticated, "UNAUTHORIZED");
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "replica b still accepts a revoked credential");
            tokio::task::yield_now().await;
        }
    }
    b.stop_keeping_database().await;
    a.stop().await;
}
