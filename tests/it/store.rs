//! The store under the validator and the operator: the narrowed cache-miss
//! read still refuses every dead credential, last-seen times are written in
//! batches, the database failing fails fast (and health follows), connect
//! errors say what is wrong, new SQLite files are owner-only, and
//! concurrent migrations on PostgreSQL migrate once.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::{DateTime, Duration as Span, Utc};
use portcullis::{
    domain::{
        AuthFailure, AuthMethod, ClientInfo, Email, Error, KeyEnvironment, ManualClock, NewKey, NewSession,
        NewUser, Role, SessionState, UserKind, UserPatch, Validator,
        ports::Store,
        token::{TokenFormat, TokenKind},
        validate::CacheConfig,
    },
    store::SqlStore,
};
use secrecy::ExposeSecret as _;
use tokio::{net::TcpListener, task::AbortHandle};
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    http::poll,
    login::{audit_rows, counters, login_request, scalar},
    support::{Backend, TestApp, TestDb, USER_PASSWORD, assert_error, epoch, test_config},
};

crate::db_tests!(
    cache_miss_read_refuses_revoked_expired_disabled_and_pending,
    one_flush_writes_many_last_seen_times,
    validations_land_as_one_batch_of_last_seen_times,
);

/// A store on a fresh, migrated database.
async fn store(backend: &Backend) -> (TestDb, Arc<dyn Store>) {
    let db = TestDb::create(backend).await;
    let database = SqlStore::connect(&db.url, 2).await.unwrap();
    database.migrate().await.unwrap();
    (db, Arc::new(database))
}

async fn user(store: &dyn Store, email: &str) -> portcullis::domain::UserId {
    store
        .insert_user(
            NewUser {
                email: Email::parse(email, "email").unwrap(),
                password_hash: Some("$argon2id$not-a-real-hash".into()),
                role: Role::User,
                kind: UserKind::Human,
                session_lifetime: None,
                now: epoch(),
            },
            &|_| Vec::new(),
        )
        .await
        .unwrap()
        .id
}

/// A session of `user` in `state`, expiring an hour after the epoch; its
/// token.
async fn session(
    store: &dyn Store,
    tokens: &TokenFormat,
    user: portcullis::domain::UserId,
    state: SessionState,
) -> (String, portcullis::domain::SessionId) {
    let kind = if state == SessionState::PendingMfa { TokenKind::MfaPending } else { TokenKind::Session };
    let (token, hash) = tokens.generate(kind).unwrap();
    let session = store
        .insert_session(
            NewSession {
                user_id: user,
                token_hash: hash,
                state,
                lifetime: Span::hours(1),
                now: epoch(),
                expires_at: epoch() + Span::hours(1),
                absolute_expires_at: epoch() + Span::days(1),
                client: ClientInfo::default(),
                auth_methods: vec![AuthMethod::Password],
                settles: None,
            },
            &|_| Vec::new(),
        )
        .await
        .unwrap();
    (token.expose_secret().to_owned(), session.id)
}

/// A key of `owner`, expiring when `expires_at` says; its token.
async fn key(
    store: &dyn Store,
    tokens: &TokenFormat,
    owner: portcullis::domain::UserId,
    expires_at: Option<DateTime<Utc>>,
) -> (String, portcullis::domain::KeyId) {
    let (token, hash) = tokens.generate(TokenKind::LiveKey).unwrap();
    let key = store
        .insert_key(
            NewKey {
                owner_id: owner,
                name: "k".into(),
                hash,
                display_prefix: "pcs_live_x".into(),
                environment: KeyEnvironment::Live,
                scopes: vec!["invoices:read".into()],
                now: epoch(),
                expires_at,
                rotated_from_id: None,
            },
            &|_| Vec::new(),
        )
        .await
        .unwrap();
    (token.expose_secret().to_owned(), key.id)
}

const CACHE: CacheConfig =
    CacheConfig { ttl: Duration::from_mins(10), negative_ttl: Duration::from_mins(10), capacity: 1000 };

fn failure(result: Result<portcullis::domain::Principal, Error>) -> AuthFailure {
    match result {
        Err(Error::Unauthenticated(why)) => why,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// The cache miss reads a few columns now: each way a credential dies is
/// still refused from that read (a fresh validator, so every call misses).
async fn cache_miss_read_refuses_revoked_expired_disabled_and_pending(backend: Backend) {
    let (db, store) = store(&backend).await;
    let tokens = TokenFormat::new("pcs");
    let now = epoch() + Span::minutes(5);
    let alice = user(store.as_ref(), "alice@example.com").await;
    let bob = user(store.as_ref(), "bob@example.com").await;

    let (live, live_id) = session(store.as_ref(), &tokens, alice, SessionState::Active).await;
    let (revoked, revoked_id) = session(store.as_ref(), &tokens, alice, SessionState::Active).await;
    store.revoke_session(revoked_id, "logout", now, &[]).await.unwrap();
    let (pending, _) = session(store.as_ref(), &tokens, alice, SessionState::PendingMfa).await;
    let (bobs, _) = session(store.as_ref(), &tokens, bob, SessionState::Active).await;
    let (live_key, live_key_id) = key(store.as_ref(), &tokens, alice, None).await;
    let (revoked_key, revoked_key_id) = key(store.as_ref(), &tokens, alice, None).await;
    store.revoke_key(revoked_key_id, now, &[]).await.unwrap();
    let (expired_key, _) = key(store.as_ref(), &tokens, alice, Some(epoch() + Span::minutes(1))).await;
    let (bobs_key, _) = key(store.as_ref(), &tokens, bob, None).await;
    let disabled = UserPatch { role: None, disabled: Some(true), session_lifetime: None };
    store.update_user(bob, &disabled, None, now, &[]).await.unwrap().unwrap();

    let (validator, _tasks) = Validator::new(Arc::clone(&store), tokens.clone(), CACHE);
    let principal = validator.validate(&live, &[], now).await.unwrap();
    assert_eq!(principal.user_id, alice);
    assert_eq!(principal.email.as_str(), "alice@example.com");
    assert_eq!(principal.role, Role::User);
    assert_eq!(principal.auth_methods, vec![AuthMethod::Password]);
    assert_eq!(principal.expires_at, Some(epoch() + Span::hours(1)));
    assert!(matches!(principal.credential, portcullis::domain::CredentialId::Session(id) if id == live_id));
    let principal = validator.validate(&live_key, &["invoices:read".into()], now).await.unwrap();
    assert!(
        matches!(principal.credential, portcullis::domain::CredentialId::ApiKey(id) if id == live_key_id)
    );
    assert_eq!(principal.scopes, vec!["invoices:read".to_owned()]);

    assert_eq!(failure(validator.validate(&revoked, &[], now).await), AuthFailure::InvalidToken);
    assert_eq!(failure(validator.validate(&pending, &[], now).await), AuthFailure::MfaRequired);
    assert_eq!(failure(validator.validate(&bobs, &[], now).await), AuthFailure::InvalidToken);
    assert_eq!(failure(validator.validate(&revoked_key, &[], now).await), AuthFailure::InvalidToken);
    assert_eq!(failure(validator.validate(&expired_key, &[], now).await), AuthFailure::Expired);
    assert_eq!(failure(validator.validate(&bobs_key, &[], now).await), AuthFailure::InvalidToken);
    assert_eq!(validator.lookup_count(), 8, "every first validation read the database");

    // Expired sessions, on a validator whose clock is past their end.
    let (fresh, _tasks) = Validator::new(Arc::clone(&store), tokens.clone(), CACHE);
    let later = epoch() + Span::hours(2);
    assert_eq!(failure(fresh.validate(&live, &[], later).await), AuthFailure::Expired);
    assert_eq!(failure(fresh.validate(&pending, &[], later).await), AuthFailure::Expired);
    db.drop_database().await;
}

/// `touch_sessions` and `touch_keys` write a whole batch at once, never
/// moving a time backwards.
async fn one_flush_writes_many_last_seen_times(backend: Backend) {
    let (db, store) = store(&backend).await;
    let tokens = TokenFormat::new("pcs");
    let alice = user(store.as_ref(), "alice@example.com").await;
    let mut sessions = Vec::new();
    for _ in 0..40 {
        sessions.push(session(store.as_ref(), &tokens, alice, SessionState::Active).await.1);
    }
    let mut keys = Vec::new();
    for _ in 0..5 {
        keys.push(key(store.as_ref(), &tokens, alice, None).await.1);
    }
    let at = |minutes: i64| epoch() + Span::minutes(minutes);
    // One session already seen later than the batch says.
    store.touch_sessions(&[(sessions[0], at(30))]).await.unwrap();

    let mut batch: Vec<_> = sessions.iter().map(|id| (*id, at(10))).collect();
    batch.push((sessions[1], at(12))); // twice in one batch: the later wins
    batch.push((sessions[2], at(8)));
    store.touch_sessions(&batch).await.unwrap();
    let used: Vec<_> = keys.iter().map(|id| (*id, at(11))).collect();
    store.touch_keys(&used).await.unwrap();
    store.touch_keys(&[(keys[0], at(9))]).await.unwrap();
    store.touch_sessions(&[]).await.unwrap();

    for (n, id) in sessions.iter().enumerate() {
        let seen = store.session(*id).await.unwrap().unwrap().last_seen_at;
        let expected = match n {
            0 => at(30),
            1 => at(12),
            _ => at(10),
        };
        assert_eq!(seen, expected, "session {n}");
    }
    for id in &keys {
        assert_eq!(store.key(*id).await.unwrap().unwrap().last_used_at, Some(at(11)));
    }
    db.drop_database().await;
}

/// Validations of many sessions and keys are written by the last-seen
/// writer in one flush.
async fn validations_land_as_one_batch_of_last_seen_times(backend: Backend) {
    let (db, store) = store(&backend).await;
    let tokens = TokenFormat::new("pcs");
    let alice = user(store.as_ref(), "alice@example.com").await;
    let mut sessions = Vec::new();
    for _ in 0..30 {
        sessions.push(session(store.as_ref(), &tokens, alice, SessionState::Active).await);
    }
    let (key_token, key_id) = key(store.as_ref(), &tokens, alice, None).await;
    let (validator, tasks) = Validator::new(Arc::clone(&store), tokens.clone(), CACHE);
    let now = epoch() + Span::minutes(5);
    for (token, _) in &sessions {
        validator.validate(token, &[], now).await.unwrap();
        // A second validation within the minute queues nothing more.
        validator.validate(token, &[], now + Span::seconds(30)).await.unwrap();
    }
    validator.validate(&key_token, &[], now).await.unwrap();
    // Within a minute of the stored time: nothing to write.
    let (recent, recent_id) = session(store.as_ref(), &tokens, alice, SessionState::Active).await;
    validator.validate(&recent, &[], epoch() + Span::seconds(30)).await.unwrap();
    tasks.last_seen.run(std::future::ready(())).await;
    for (_, id) in &sessions {
        assert_eq!(store.session(*id).await.unwrap().unwrap().last_seen_at, now);
    }
    assert_eq!(store.key(key_id).await.unwrap().unwrap().last_used_at, Some(now));
    assert_eq!(store.session(recent_id).await.unwrap().unwrap().last_seen_at, epoch());
    db.drop_database().await;
}

// === The database failing ===

/// A loopback TCP proxy in front of PostgreSQL that a test can cut (every
/// connection closed, new ones refused) and restore on the same port.
struct Proxy {
    addr: std::net::SocketAddr,
    upstream: String,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
}

impl Proxy {
    async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Self { addr: listener.local_addr().unwrap(), upstream, tasks: Arc::default() };
        proxy.serve(listener);
        proxy
    }

    fn serve(&self, listener: TcpListener) {
        let upstream = self.upstream.clone();
        let tasks = Arc::clone(&self.tasks);
        let accept = tokio::spawn({
            let tasks = Arc::clone(&tasks);
            async move {
                loop {
                    let Ok((mut client, _)) = listener.accept().await else { return };
                    let upstream = upstream.clone();
                    let copy = tokio::spawn(async move {
                        if let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    tasks.lock().unwrap().push(copy.abort_handle());
                }
            }
        });
        tasks.lock().unwrap().push(accept.abort_handle());
    }

    /// The database "stops": connections close, new ones are refused.
    fn cut(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    /// The database is back, on the same address.
    async fn restore(&self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }
}

/// A fresh PostgreSQL database, a TCP proxy in front of it, and a test
/// configuration that reaches the database through the proxy; `None` where
/// PostgreSQL is not configured.
async fn postgres_behind_a_proxy() -> Option<(TestDb, Proxy, portcullis::config::Config)> {
    let backend = Backend::postgres()?;
    let db = TestDb::create(&backend).await;
    let (upstream, _) = through(&db.url, None);
    let proxy = Proxy::start(upstream).await;
    let mut config = test_config(&db);
    config.database_url = through(&db.url, Some(proxy.addr)).1;
    Some((db, proxy, config))
}

/// `postgres://user@host:port/db` → (`host:port`, the URL with `via` as its
/// address).
fn through(url: &str, via: Option<std::net::SocketAddr>) -> (String, String) {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (user, rest) = rest.rsplit_once('@').map_or(("", rest), |(u, r)| (u, r));
    let (address, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let at = if user.is_empty() { String::new() } else { format!("{user}@") };
    let replaced = via.map_or_else(|| address.to_owned(), |via| via.to_string());
    (address.to_owned(), format!("{scheme}://{at}{replaced}{path}"))
}

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

/// PostgreSQL "stops" under a running server (its connections close, new
/// ones are refused): the first call that needs it answers UNAVAILABLE
/// within a second, health is NOT_SERVING within one probe interval of that
/// failure, further calls answer UNAVAILABLE at once, a token still in the
/// cache keeps validating (documented), one that is not never does; when
/// the database is back, so is the service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_fails_fast_and_health_follows() {
    let Some((db, proxy, mut config)) = postgres_behind_a_proxy().await else {
        return;
    };
    let probe_interval = Duration::from_secs(2);
    config.health_probe_interval = probe_interval;
    config.token_cache_ttl = Duration::from_mins(10);
    let app = TestApp::start_on(db, config, ManualClock::new(epoch())).await;
    app.create_user("olga@example.com", USER_PASSWORD, Role::User).await;
    let cached = app.login("olga@example.com", USER_PASSWORD).await.token;
    let uncached = app.login("olga@example.com", USER_PASSWORD).await.token;
    app.validate(&cached).await.unwrap();
    assert_eq!(health(&app, "").await, ServingStatus::Serving as i32);

    proxy.cut();
    let failed_at = Instant::now();
    let status = app.validate(&uncached).await.unwrap_err();
    let first = failed_at.elapsed();
    assert_error(&status, Code::Unavailable, "UNAVAILABLE");
    assert!(first < Duration::from_secs(1), "first UNAVAILABLE after {first:?}");
    loop {
        if health(&app, "").await == ServingStatus::NotServing as i32 {
            break;
        }
        assert!(
            failed_at.elapsed() < probe_interval,
            "health still SERVING one probe interval after the failure"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(health(&app, "liveness").await, ServingStatus::Serving as i32);

    // While it is down: fast answers, never "valid" for what the cache
    // does not hold; what it holds keeps validating.
    for _ in 0..20 {
        let started = Instant::now();
        let status = app.validate(&uncached).await.unwrap_err();
        assert_error(&status, Code::Unavailable, "UNAVAILABLE");
        assert!(started.elapsed() < Duration::from_millis(700), "a call waited {:?}", started.elapsed());
        app.validate(&cached).await.expect("a cached token validates while the database is down");
    }
    let mut auth = app.auth();
    let started = Instant::now();
    let login = auth
        .login(portcullis::proto::v1::LoginRequest {
            email: "olga@example.com".into(),
            password: USER_PASSWORD.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_error(&login, Code::Unavailable, "UNAVAILABLE");
    assert!(started.elapsed() < Duration::from_secs(1), "login waited {:?}", started.elapsed());

    // Back: health and validation recover without a restart.
    proxy.restore().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while health(&app, "").await != ServingStatus::Serving as i32 {
        assert!(Instant::now() < deadline, "health never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match app.validate(&uncached).await {
            Ok(_) => break,
            Err(status) => assert_error(&status, Code::Unavailable, "UNAVAILABLE"),
        }
        assert!(Instant::now() < deadline, "validation never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await;
}

/// PostgreSQL fails while a login's password is being checked. Whatever
/// the password and however long the fault lasts, the attempt is never
/// hidden: if its record cannot commit, the call answers UNAVAILABLE and the
/// attempt stays in the audit log as a failure (the provisional row its
/// reservation wrote) and counted in flight; if the fault clears within the
/// retries, the record commits as usual, with one row for the attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_fault_mid_login_never_hides_the_attempt() {
    let Some((db, proxy, mut config)) = postgres_behind_a_proxy().await else {
        return;
    };
    config.health_probe_interval = Duration::from_millis(200);
    // A hash slow enough to cut the database while it runs.
    config.argon2_memory_kib = 8 * 1024;
    config.argon2_iterations = 150;
    config.request_timeout = Duration::from_mins(1);
    let app = TestApp::start_on(db, config, ManualClock::new(epoch())).await;
    let ann = "ann@example.com";
    app.create_user(ann, USER_PASSWORD, Role::User).await;
    let hashing = {
        let started = Instant::now();
        app.login(ann, USER_PASSWORD).await;
        started.elapsed()
    };
    let unrecorded = format!(
        "SELECT COUNT(*) FROM audit_events WHERE action = 'login.failed' AND detail = '{}'",
        portcullis::domain::records::UNRECORDED_ATTEMPT
    );
    let sessions = "SELECT COUNT(*) FROM sessions";

    // The fault outlasts the retries: the call fails, the attempt stays.
    let wrong = login_across_a_fault(&app, &proxy, ann, "wrong password", None).await;
    assert_error(&wrong.unwrap_err(), Code::Unavailable, "UNAVAILABLE");
    assert_eq!(scalar(&app.db, &unrecorded).await, 1, "a wrong password whose record was lost is a failure");
    assert_eq!(counters(&app.db, ann).await, (0, 1, false), "and counted in flight");
    let right = login_across_a_fault(&app, &proxy, ann, USER_PASSWORD, None).await;
    assert_error(&right.unwrap_err(), Code::Unavailable, "UNAVAILABLE");
    assert_eq!(scalar(&app.db, &unrecorded).await, 2, "a right password whose record was lost too");
    assert_eq!(scalar(&app.db, sessions).await, 1, "and it started no session");
    assert_eq!(audit_rows(&app.db, "login.succeeded").await, 1);
    assert_eq!(counters(&app.db, ann).await, (0, 2, false));

    // The fault clears within the retries: each attempt is recorded once.
    let heal = Some(hashing + Duration::from_millis(300));
    let wrong = login_across_a_fault(&app, &proxy, ann, "wrong password", heal).await;
    assert_error(&wrong.unwrap_err(), Code::Unauthenticated, "UNAUTHORIZED");
    assert_eq!(scalar(&app.db, &unrecorded).await, 2, "the provisional row was replaced");
    assert_eq!(audit_rows(&app.db, "login.failed").await, 3);
    assert_eq!(counters(&app.db, ann).await, (1, 2, false));
    login_across_a_fault(&app, &proxy, ann, USER_PASSWORD, heal).await.expect("the login succeeds");
    assert_eq!(scalar(&app.db, sessions).await, 2);
    assert_eq!(audit_rows(&app.db, "login.succeeded").await, 2);
    assert_eq!(audit_rows(&app.db, "login.failed").await, 3, "the success replaced its provisional row");
    assert_eq!(counters(&app.db, ann).await, (0, 2, false), "the success released its own reservation only");
    app.stop().await;
}

/// Logs in, cutting the database once the attempt is reserved (its password
/// is being checked), and bringing it back `heal` later, or after the call
/// ended.
async fn login_across_a_fault(
    app: &TestApp,
    proxy: &Proxy,
    email: &str,
    password: &str,
    heal: Option<Duration>,
) -> Result<portcullis::proto::v1::LoginResponse, tonic::Status> {
    let unsettled = "SELECT COUNT(*) FROM audit_events WHERE detail = $1";
    let unsettled =
        unsettled.replace("$1", &format!("'{}'", portcullis::domain::records::UNRECORDED_ATTEMPT));
    let before = scalar(&app.db, &unsettled).await;
    let mut auth = app.auth();
    let request = login_request(email, password);
    let call = tokio::spawn(async move { auth.login(request).await.map(tonic::Response::into_inner) });
    poll("the attempt's reservation", Duration::from_secs(30), || async {
        assert!(!call.is_finished(), "the login ended before the fault: make its hash slower");
        (scalar(&app.db, &unsettled).await > before).then_some(())
    })
    .await;
    proxy.cut();
    if let Some(after) = heal {
        tokio::time::sleep(after).await;
        proxy.restore().await;
    }
    let result = call.await.unwrap();
    if heal.is_none() {
        proxy.restore().await;
    }
    // The server is back before the next step reads or logs in.
    poll("health after the fault", Duration::from_secs(15), || async {
        (health(app, "").await == ServingStatus::Serving as i32).then_some(())
    })
    .await;
    result
}

/// Several `migrate`s at once on one fresh PostgreSQL database (replicas
/// with `migrate_on_start`, or Jobs): all succeed, each migration applied
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrations_on_postgres_migrate_once() {
    let Some(backend) = Backend::postgres() else {
        return;
    };
    let db = TestDb::create(&backend).await;
    let mut runs = Vec::new();
    for _ in 0..6 {
        let url = db.url.clone();
        runs.push(tokio::spawn(async move {
            let store = SqlStore::connect(&url, 1).await.unwrap();
            store.migrate().await
        }));
    }
    for run in runs {
        run.await.unwrap().expect("a concurrent migrate failed");
    }
    let conn = sea_orm::Database::connect(&db.url).await.unwrap();
    let row = sea_orm::ConnectionTrait::query_one_raw(
        &conn,
        sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT COUNT(*) AS n, COUNT(DISTINCT version) AS d FROM seaql_migrations",
        ),
    )
    .await
    .unwrap()
    .unwrap();
    let (n, d): (i64, i64) = (row.try_get("", "n").unwrap(), row.try_get("", "d").unwrap());
    assert_eq!(n, d, "a migration was recorded twice");
    assert_eq!(
        usize::try_from(n).unwrap(),
        <migration::Migrator as migration::MigratorTrait>::migrations().len()
    );
    conn.close().await.unwrap();
    db.drop_database().await;
}

// === Opening the database ===

fn connect_error(result: Result<SqlStore, portcullis::store::ConnectError>) -> String {
    let message = result.expect_err("connecting should fail").to_string();
    assert!(!message.contains('\n'), "not one line: {message}");
    assert!(!message.contains("at line"), "PostgreSQL's source line leaked: {message}");
    message
}

/// SQLite: a missing file without `mode=rwc` and a missing folder name the
/// resolved path and what to do.
#[tokio::test]
async fn sqlite_connect_errors_name_the_file_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("fresh.db");
    let message = connect_error(SqlStore::connect(&format!("sqlite://{}", missing.display()), 1).await);
    assert!(message.contains(&missing.display().to_string()), "{message}");
    assert!(message.contains("?mode=rwc"), "{message}");
    assert!(!missing.exists(), "the file was made without mode=rwc");

    let no_folder = dir.path().join("nowhere").join("p.db");
    let message =
        connect_error(SqlStore::connect(&format!("sqlite://{}?mode=rwc", no_folder.display()), 1).await);
    assert!(message.contains(&no_folder.display().to_string()), "{message}");
    assert!(message.contains("does not exist"), "{message}");

    // A relative path is shown resolved.
    let message = connect_error(SqlStore::connect("sqlite://surely-not-here-42.db", 1).await);
    let resolved = std::env::current_dir().unwrap().join("surely-not-here-42.db");
    assert!(message.contains(&resolved.display().to_string()), "{message}");
}

/// A new SQLite database and its WAL files are readable by their owner only.
#[cfg(unix)]
#[tokio::test]
async fn new_sqlite_files_are_owner_only() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("portcullis.db");
    let store = SqlStore::connect(&format!("sqlite://{}?mode=rwc", file.display()), 2).await.unwrap();
    store.migrate().await.unwrap();
    for name in ["portcullis.db", "portcullis.db-wal", "portcullis.db-shm"] {
        let path = dir.path().join(name);
        let mode = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{name}: {e}")).permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{name} has mode {:o}", mode & 0o777);
    }
    store.close().await;
}

/// PostgreSQL: a wrong port says "connection refused" at once (not a pool
/// timeout seconds later); a missing database says so, once.
#[tokio::test]
async fn postgres_connect_errors_say_refused_or_missing_at_once() {
    let Some(Backend::Postgres(server)) = Backend::postgres() else {
        return;
    };
    // A port nothing listens on: bind one, then let it go.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (_, wrong_port) = through(&server, Some(free));
    let started = Instant::now();
    let message = connect_error(SqlStore::connect(&wrong_port, 1).await);
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
    assert!(message.contains("connection refused"), "{message}");
    assert!(message.contains(&free.to_string()), "{message}");

    let (base, _) = server.split_once('?').map_or((server.as_str(), ""), |(b, q)| (b, q));
    let scheme_end = base.find("://").unwrap() + 3;
    let path = base[scheme_end..].find('/').map_or(base.len(), |i| scheme_end + i);
    let missing = format!("{}/portcullis_no_such_database", &base[..path]);
    let message = connect_error(SqlStore::connect(&missing, 1).await);
    assert!(message.contains("\"portcullis_no_such_database\" does not exist"), "{message}");
    assert_eq!(message.matches("does not exist").count(), 1, "the cause twice: {message}");
}
