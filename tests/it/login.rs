//! The login path's accounting: lockout counts failures, not attempts in
//! flight; a login refused for want of hashing room counts nothing; hostile
//! bytes are refused before any database work, so every attempt keeps its
//! audit row; a client that goes away mid-login does not skip its record;
//! sessions record the client the request context decided; and (ignored,
//! run by hand or `scripts/test`) hashing memory stays bounded.

use std::time::Duration as StdDuration;

use portcullis::{config::Config, domain::Role, proto::v1 as pb};
use sea_orm::{ConnectionTrait, Database};
use tonic::{Code, Status};

use crate::{
    http::poll,
    http_api::{Api, assert_s4e_error, send},
    support::{Backend, TestApp, TestDb, USER_PASSWORD, assert_error, assert_invalid, bearer},
};

crate::db_tests!(
    parallel_correct_logins_to_one_account_all_succeed,
    correct_logins_in_flight_never_lock_an_account,
    a_login_refused_for_want_of_hashing_room_counts_nothing,
    nul_and_control_bytes_are_refused_before_the_database_and_every_attempt_is_audited,
    a_client_that_goes_away_mid_login_still_has_its_attempt_recorded,
    sessions_record_the_client_the_request_context_decided,
);

const ANN: &str = "ann@example.com";

pub(crate) fn login_request(email: &str, password: &str) -> pb::LoginRequest {
    pb::LoginRequest { email: email.into(), password: password.into(), ..Default::default() }
}

async fn try_login(app: &TestApp, request: pb::LoginRequest) -> Result<pb::LoginResponse, Status> {
    app.auth().login(request).await.map(tonic::Response::into_inner)
}

/// One number from the test database.
pub(crate) async fn scalar(db: &TestDb, sql: &str) -> i64 {
    let conn = Database::connect(&db.url).await.unwrap();
    let row = conn
        .query_one_raw(sea_orm::Statement::from_string(conn.get_database_backend(), sql.to_owned()))
        .await
        .unwrap()
        .unwrap();
    let n: i64 = row.try_get_by_index(0).unwrap();
    conn.close().await.unwrap();
    n
}

/// (failed attempts, attempts in flight, locked) of `email`'s account.
pub(crate) async fn counters(db: &TestDb, email: &str) -> (i64, i64, bool) {
    let of = |column: &str| format!("SELECT CAST({column} AS BIGINT) FROM users WHERE email = '{email}'");
    (
        scalar(db, &of("failed_attempts")).await,
        scalar(db, &of("attempts_in_flight")).await,
        scalar(
            db,
            &format!("SELECT COUNT(*) FROM users WHERE email = '{email}' AND locked_until IS NOT NULL"),
        )
        .await
            == 1,
    )
}

pub(crate) async fn audit_rows(db: &TestDb, action: &str) -> i64 {
    scalar(db, &format!("SELECT COUNT(*) FROM audit_events WHERE action = '{action}'")).await
}

/// Lockout at `threshold`, room for many hashes, time for them on two cores.
fn lockout(threshold: u32) -> impl FnOnce(&mut Config) {
    move |c: &mut Config| {
        c.request_timeout = StdDuration::from_mins(2);
        c.lockout_threshold = threshold;
        c.hash_queue_depth = 1000;
    }
}

async fn parallel_correct_logins_to_one_account_all_succeed(backend: Backend) {
    let app = TestApp::start_with(&backend, lockout(10)).await;
    app.create_user(ANN, USER_PASSWORD, Role::User).await;
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let mut auth = app.auth();
            tokio::spawn(async move { auth.login(login_request(ANN, USER_PASSWORD)).await })
        })
        .collect();
    let mut refused = Vec::new();
    for call in calls {
        if let Err(status) = call.await.unwrap() {
            refused.push(status);
        }
    }
    assert!(refused.is_empty(), "{} of 50 correct logins refused: {:?}", refused.len(), refused.first());
    assert_eq!(audit_rows(&app.db, "login.succeeded").await, 50);
    assert_eq!(audit_rows(&app.db, "login.failed").await, 0);
    assert_eq!(counters(&app.db, ANN).await, (0, 0, false));
    app.stop().await;
}

async fn correct_logins_in_flight_never_lock_an_account(backend: Backend) {
    let app = TestApp::start_with(&backend, lockout(3)).await;
    app.create_user(ANN, USER_PASSWORD, Role::User).await;
    // Two failures: one more would lock. Then many right passwords at once,
    // and one wrong one among them.
    for _ in 0..2 {
        try_login(&app, login_request(ANN, "wrong password")).await.unwrap_err();
    }
    assert_eq!(counters(&app.db, ANN).await, (2, 0, false));
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let mut auth = app.auth();
            tokio::spawn(async move { auth.login(login_request(ANN, USER_PASSWORD)).await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    assert_eq!(counters(&app.db, ANN).await, (0, 0, false));
    assert_eq!(audit_rows(&app.db, "account.locked").await, 0);
    // Failures still lock, and parallel ones stay bounded (abuse.rs: 200
    // guesses, at most the threshold checked).
    let before = app.domain.hasher().verification_count();
    let calls: Vec<_> = (0..30)
        .map(|i| {
            let mut auth = app.auth();
            tokio::spawn(async move { auth.login(login_request(ANN, &format!("wrong password {i}"))).await })
        })
        .collect();
    for call in calls {
        assert_error(&call.await.unwrap().unwrap_err(), Code::Unauthenticated, "UNAUTHORIZED");
    }
    let checked = app.domain.hasher().verification_count() - before;
    assert!((1..=3).contains(&checked), "{checked} passwords checked for a threshold of 3");
    assert!(counters(&app.db, ANN).await.2, "three failures did not lock the account");
    try_login(&app, login_request(ANN, USER_PASSWORD)).await.unwrap_err();
    app.stop().await;
}

async fn a_login_refused_for_want_of_hashing_room_counts_nothing(backend: Backend) {
    let app = TestApp::start_with(&backend, |c| {
        c.hash_threads = 1;
        c.hash_queue_depth = 0;
        c.rate_limit_ip = 100;
        c.rate_limit_account = 100;
        c.rate_limit_pair = 100;
    })
    .await;
    app.create_user(ANN, USER_PASSWORD, Role::User).await;
    let rate_limits = scalar(&app.db, "SELECT COUNT(*) FROM rate_limits").await;
    let audit = scalar(&app.db, "SELECT COUNT(*) FROM audit_events").await;
    // The only room in the queue is taken.
    let room = app.domain.hasher().admit().unwrap();
    for password in [USER_PASSWORD, "wrong password"] {
        let status = try_login(&app, login_request(ANN, password)).await.unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    }
    // Nothing was counted: no rate-limit hit, no attempt, no audit row.
    assert_eq!(scalar(&app.db, "SELECT COUNT(*) FROM rate_limits").await, rate_limits);
    assert_eq!(scalar(&app.db, "SELECT COUNT(*) FROM audit_events").await, audit);
    assert_eq!(counters(&app.db, ANN).await, (0, 0, false));
    drop(room);
    try_login(&app, login_request(ANN, USER_PASSWORD)).await.unwrap();
    assert_eq!(scalar(&app.db, "SELECT COUNT(*) FROM rate_limits").await, rate_limits + 3);
    app.stop().await;
}

async fn nul_and_control_bytes_are_refused_before_the_database_and_every_attempt_is_audited(
    backend: Backend,
) {
    // Lockout at 3: on PostgreSQL a NUL used to fail the audit row while
    // the attempt still counted, so guesses could lock an account unseen.
    let app = TestApp::start_with(&backend, lockout(3)).await;
    let admin = app.admin_token().await;
    app.create_user(ANN, USER_PASSWORD, Role::User).await;
    let audit = scalar(&app.db, "SELECT COUNT(*) FROM audit_events").await;
    let client = |ip: &str, user_agent: &str, device_label: &str| pb::ClientInfo {
        ip: ip.into(),
        user_agent: user_agent.into(),
        device_label: device_label.into(),
    };
    let hostile = [
        (client("127.0.0.1\0", "", ""), "client.ip"),
        (client("", "curl/8\0", ""), "client.user_agent"),
        (client("", "curl/8\n2026-12-03 INFO forged line", ""), "client.user_agent"),
        (client("", "", "laptop\0"), "client.device_label"),
        (client("", "", "\u{1b}[31mred"), "client.device_label"),
    ];
    for password in [USER_PASSWORD, "wrong password"] {
        for (bad, field) in &hostile {
            let request = pb::LoginRequest { client: Some(bad.clone()), ..login_request(ANN, password) };
            assert_invalid(&try_login(&app, request).await.unwrap_err(), field);
            let admin_login = app
                .auth()
                .admin_login(bearer(
                    &admin,
                    pb::AdminLoginRequest {
                        email: ANN.into(),
                        password: password.into(),
                        client: Some(bad.clone()),
                        session_lifetime: None,
                    },
                ))
                .await
                .unwrap_err();
            assert_invalid(&admin_login, field);
        }
        assert_invalid(
            &try_login(&app, login_request("ann\0@example.com", password)).await.unwrap_err(),
            "email",
        );
        let captcha = pb::LoginRequest {
            captcha: Some(pb::Captcha {
                response: "tok\0en".into(),
                vendor: pb::CaptchaVendor::Turnstile.into(),
            }),
            ..login_request(ANN, password)
        };
        assert_invalid(&try_login(&app, captcha).await.unwrap_err(), "captcha.response");
    }
    // Through the HTTP edge too.
    let api = Api::new(&app);
    let reply =
        send(api.post(
            "/api/user/auth/login",
            r#"{"email": "ann\u0000@example.com", "password": "wrong password"}"#,
        ))
        .await;
    assert_s4e_error(&reply, 400, "invalid_argument");
    let reply = send(api.post(
        "/api/user/auth/login",
        r#"{"email": "ann@example.com", "password": "wrong password", "captcha_response": "a\u0000b", "vendor": "turnstile"}"#,
    ))
    .await;
    assert_s4e_error(&reply, 400, "invalid_argument");
    // None of it touched the database: no row, no count.
    assert_eq!(scalar(&app.db, "SELECT COUNT(*) FROM audit_events").await, audit);
    assert_eq!(counters(&app.db, ANN).await, (0, 0, false));

    // Filters of the audit log alike.
    for (field, set) in [
        ("subject", (|f: &mut pb::ListAuditEventsRequest| f.subject = "user:1\0".into()) as fn(&mut _)),
        ("actor", |f| f.actor = "anonymous\0".into()),
        ("action", |f| f.action = "login.failed\0".into()),
        ("outcome", |f| f.outcome = "failure\0".into()),
        ("request_id", |f| f.request_id = "\0".into()),
        ("subject", |f| f.subject = "user:1\r\n".into()),
    ] {
        let mut request = pb::ListAuditEventsRequest::default();
        set(&mut request);
        let status = app.audit().list_audit_events(bearer(&admin, request)).await.unwrap_err();
        assert_invalid(&status, field);
    }

    // Every attempt that was made has its row: three wrong passwords (the
    // third locks), then the right one while locked.
    for _ in 0..3 {
        try_login(&app, login_request(ANN, "wrong password")).await.unwrap_err();
    }
    try_login(&app, login_request(ANN, USER_PASSWORD)).await.unwrap_err();
    assert_eq!(audit_rows(&app.db, "login.failed").await, 4);
    assert_eq!(audit_rows(&app.db, "account.locked").await, 1);
    app.stop().await;
}

async fn a_client_that_goes_away_mid_login_still_has_its_attempt_recorded(backend: Backend) {
    // A hash slow enough to cancel the call while it runs.
    let app = TestApp::start_with(&backend, |c| {
        c.argon2_memory_kib = 8 * 1024;
        c.argon2_iterations = 150;
        c.request_timeout = StdDuration::from_mins(1);
    })
    .await;
    app.create_user(ANN, USER_PASSWORD, Role::User).await;
    let mut auth = app.auth();
    let call = tokio::spawn(async move { auth.login(login_request(ANN, "wrong password")).await });
    // Once the attempt is reserved, its password is being checked: the
    // client goes away.
    let in_flight = format!("SELECT CAST(attempts_in_flight AS BIGINT) FROM users WHERE email = '{ANN}'");
    poll("the attempt's reservation", StdDuration::from_secs(30), || async {
        assert!(!call.is_finished(), "the login ended before it could be cancelled: make its hash slower");
        (scalar(&app.db, &in_flight).await == 1).then_some(())
    })
    .await;
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    // The check finishes and is recorded all the same (its row replaces the
    // provisional one the reservation wrote).
    poll("the attempt's record", StdDuration::from_secs(30), || async {
        (counters(&app.db, ANN).await == (1, 0, false)).then_some(())
    })
    .await;
    assert_eq!(audit_rows(&app.db, "login.failed").await, 1);
    app.stop().await;
}

async fn sessions_record_the_client_the_request_context_decided(backend: Backend) {
    let app = TestApp::start(&backend).await;
    app.create_user(ANN, USER_PASSWORD, Role::User).await;
    let session = |client: Option<pb::ClientInfo>| {
        let app = &app;
        async move {
            let response = try_login(app, pb::LoginRequest { client, ..login_request(ANN, USER_PASSWORD) })
                .await
                .unwrap();
            let Some(pb::login_response::Result::Session(issued)) = response.result else { panic!() };
            let listed = app
                .auth()
                .list_sessions(bearer(&issued.token, pb::ListSessionsRequest::default()))
                .await
                .unwrap()
                .into_inner();
            listed.sessions.into_iter().find(|s| s.id == issued.session_id).unwrap()
        }
    };
    // No client info: the peer, and the request's own user agent.
    let bare = session(None).await;
    assert_eq!(bare.ip, "127.0.0.1");
    assert!(bare.user_agent.contains("tonic"), "{bare:?}");
    // An untrusted caller's claimed IP is not believed; its user agent and
    // device label are kept.
    let claimed = session(Some(pb::ClientInfo {
        ip: "203.0.113.9".into(),
        user_agent: "Firefox/140".into(),
        device_label: "ann's laptop".into(),
    }))
    .await;
    assert_eq!((claimed.ip.as_str(), claimed.user_agent.as_str()), ("127.0.0.1", "Firefox/140"));
    assert_eq!(claimed.device_label, "ann's laptop");
    // The audit row of that login shows the same IP.
    assert_eq!(
        scalar(
            &app.db,
            "SELECT COUNT(*) FROM audit_events WHERE action = 'login.succeeded' AND client_ip <> '127.0.0.1'"
        )
        .await,
        0
    );
    let app = app.restart_with(|c| c.trusted_peers = vec!["127.0.0.1/32".parse().unwrap()]).await;
    // A trusted peer speaks for its client.
    let response = try_login(
        &app,
        pb::LoginRequest {
            client: Some(pb::ClientInfo { ip: "203.0.113.9".into(), ..Default::default() }),
            ..login_request(ANN, USER_PASSWORD)
        },
    )
    .await
    .unwrap();
    let Some(pb::login_response::Result::Session(issued)) = response.result else { panic!() };
    let listed = app
        .auth()
        .list_sessions(bearer(&issued.token, pb::ListSessionsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let trusted = listed.sessions.into_iter().find(|s| s.id == issued.session_id).unwrap();
    assert_eq!(trusted.ip, "203.0.113.9");
    // Through HTTP: the peer and the User-Agent header.
    let reply = send(
        Api::new(&app)
            .post("/api/user/auth/login", r#"{"email": "ann@example.com", "password": "user password 456"}"#)
            .header("user-agent", "Safari/18"),
    )
    .await;
    let token = reply.token();
    let listed = app
        .auth()
        .list_sessions(bearer(&token, pb::ListSessionsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let http = listed.sessions.into_iter().find(|s| s.current).unwrap();
    assert_eq!((http.ip.as_str(), http.user_agent.as_str()), ("127.0.0.1", "Safari/18"));
    app.stop().await;
}

/// Resident memory of this process (the server runs in it), in bytes.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    kib * 1024
}

/// Hashing memory is `hash_threads × argon2_memory` for the life of the
/// process: after 50 parallel logins with two hashing threads, RSS stays
/// below idle + 2 × argon2 memory + 64 MiB. Run alone (RSS is the whole
/// test process's): `cargo test --test it -- --ignored --exact
/// login::hashing_memory_stays_bounded_after_a_burst_of_logins`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measures the process's RSS: run alone"]
async fn hashing_memory_stays_bounded_after_a_burst_of_logins() {
    let app = TestApp::start_with(&Backend::Sqlite, |c| {
        c.hash_threads = 2;
        c.hash_queue_depth = 100;
        c.request_timeout = StdDuration::from_mins(2);
    })
    .await;
    let memory = u64::from(app.config.argon2_memory_kib) * 1024;
    let idle = rss_bytes();
    app.create_user(ANN, USER_PASSWORD, Role::User).await;
    for round in 0..3 {
        let calls: Vec<_> = (0..50)
            .map(|i| {
                let mut auth = app.auth();
                let password =
                    if i % 2 == 0 { USER_PASSWORD.to_owned() } else { format!("wrong {i} password") };
                tokio::spawn(async move { auth.login(login_request(ANN, &password)).await })
            })
            .collect();
        for call in calls {
            let _ = call.await.unwrap();
        }
        let after = rss_bytes();
        let mib = |b: u64| b / (1024 * 1024);
        println!(
            "round {round}: idle {} MiB, after 50 parallel logins {} MiB, bound {} MiB",
            mib(idle),
            mib(after),
            mib(idle + 2 * memory + 64 * 1024 * 1024)
        );
        assert!(after < idle + 2 * memory + 64 * 1024 * 1024, "RSS {} MiB", mib(after));
    }
    app.stop().await;
}
