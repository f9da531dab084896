//! Abuse protection through the real server: rate limits with `RetryInfo`,
//! lockout that grows and expires, the parallel-guess race, enumeration
//! resistance, client-IP trust, and Rehive's `AdminLogin`.

use std::time::Duration as StdDuration;

use chrono::Duration;
use portcullis::{config::Config, domain::Role, proto::v1 as pb};
use tonic::{Code, Request, Status};
use tonic_types::StatusExt as _;

use crate::support::{ADMIN_PASSWORD, Backend, TestApp, USER_PASSWORD, assert_error, bearer};

crate::db_tests!(
    per_pair_limit_answers_rate_limited_with_retry_info,
    per_account_limit_holds_across_client_ips,
    per_ip_limit_holds_across_accounts_but_not_for_admin_login,
    lockout_grows_with_repeats_and_ends_by_itself,
    parallel_wrong_passwords_verify_at_most_the_threshold,
    unknown_wrong_locked_and_disabled_answer_alike_with_equal_work,
    client_ip_is_believed_only_from_trusted_callers,
    admin_login_needs_the_scope_and_keeps_lockout_and_mfa,
);

fn login_request(email: &str, password: &str, ip: &str) -> pb::LoginRequest {
    pb::LoginRequest {
        email: email.into(),
        password: password.into(),
        client: Some(pb::ClientInfo { ip: ip.into(), ..Default::default() }),
        ..Default::default()
    }
}

async fn try_login(app: &TestApp, email: &str, password: &str, ip: &str) -> Result<(), Status> {
    app.auth().login(login_request(email, password, ip)).await.map(|_| ())
}

#[track_caller]
fn assert_rate_limited(status: &Status) {
    assert_error(status, Code::ResourceExhausted, "RATE_LIMITED");
    let delay = status.get_details_retry_info().and_then(|r| r.retry_delay).expect("RetryInfo");
    assert!(delay > StdDuration::ZERO && delay <= StdDuration::from_mins(1), "{delay:?}");
    let header = status.metadata().get("retry-after").expect("retry-after").to_str().unwrap();
    assert_eq!(header.parse::<u64>().unwrap(), delay.as_secs().max(1));
}

/// Limits on, everything else as in the other tests; the loopback peer is
/// trusted so each test can speak for several client IPs.
fn limits(ip: u32, account: u32, pair: u32) -> impl FnOnce(&mut Config) {
    move |c: &mut Config| {
        c.rate_limit_ip = ip;
        c.rate_limit_account = account;
        c.rate_limit_pair = pair;
        c.trusted_peers = vec!["127.0.0.1/32".parse().unwrap()];
    }
}

async fn per_pair_limit_answers_rate_limited_with_retry_info(backend: Backend) {
    let app = TestApp::start_with(&backend, limits(0, 0, 2)).await;
    app.create_user("ann@example.com", USER_PASSWORD, Role::User).await;
    for _ in 0..2 {
        let status = try_login(&app, "ann@example.com", "wrong password", "198.51.100.1").await.unwrap_err();
        assert_error(&status, Code::Unauthenticated, "UNAUTHORIZED");
    }
    // Third from the same pair: refused before the password, even the right one.
    let before = app.domain.hasher().hash_work_count();
    let status = try_login(&app, "ann@example.com", USER_PASSWORD, "198.51.100.1").await.unwrap_err();
    assert_rate_limited(&status);
    assert_eq!(app.domain.hasher().hash_work_count(), before, "a limited request hashed a password");
    // Another IP, or another account, is another pair.
    try_login(&app, "ann@example.com", USER_PASSWORD, "198.51.100.2").await.unwrap();
    // The window ends with the clock.
    app.clock.advance(Duration::minutes(1));
    try_login(&app, "ann@example.com", USER_PASSWORD, "198.51.100.1").await.unwrap();
    app.stop().await;
}

async fn per_account_limit_holds_across_client_ips(backend: Backend) {
    let app = TestApp::start_with(&backend, limits(0, 3, 0)).await;
    app.create_user("bea@example.com", USER_PASSWORD, Role::User).await;
    for i in 0..3 {
        let _ = try_login(&app, "bea@example.com", "wrong password", &format!("198.51.100.{i}")).await;
    }
    // Case and spaces do not make another account.
    let status = try_login(&app, "  BEA@example.com ", USER_PASSWORD, "203.0.113.50").await.unwrap_err();
    assert_rate_limited(&status);
    try_login(&app, "admin-free@example.com", USER_PASSWORD, "203.0.113.50").await.unwrap_err();
    app.stop().await;
}

async fn per_ip_limit_holds_across_accounts_but_not_for_admin_login(backend: Backend) {
    let app = TestApp::start_with(&backend, limits(3, 0, 0)).await;
    let admin = app.admin_token().await;
    app.create_user("cal@example.com", USER_PASSWORD, Role::User).await;
    for i in 0..3 {
        let _ = try_login(&app, &format!("nobody{i}@example.com"), USER_PASSWORD, "192.0.2.7").await;
    }
    let status = try_login(&app, "cal@example.com", USER_PASSWORD, "192.0.2.7").await.unwrap_err();
    assert_rate_limited(&status);
    try_login(&app, "cal@example.com", USER_PASSWORD, "192.0.2.8").await.unwrap();
    // AdminLogin is exempt from the per-IP limit.
    let response = app
        .auth()
        .admin_login(bearer(
            &admin,
            pb::AdminLoginRequest {
                email: "cal@example.com".into(),
                password: USER_PASSWORD.into(),
                client: Some(pb::ClientInfo { ip: "192.0.2.7".into(), ..Default::default() }),
                session_lifetime: None,
            },
        ))
        .await
        .unwrap();
    assert!(matches!(response.into_inner().result, Some(pb::admin_login_response::Result::Session(_))));
    app.stop().await;
}

fn lockout(threshold: u32) -> impl FnOnce(&mut Config) {
    move |c: &mut Config| {
        // Hundreds of argon2 hashes on two cores take their time.
        c.request_timeout = StdDuration::from_mins(2);
        c.lockout_threshold = threshold;
        c.lockout_duration = StdDuration::from_mins(5);
        c.hash_queue_depth = 1000;
    }
}

async fn wrong(app: &TestApp, n: usize) {
    for _ in 0..n {
        let status = try_login(app, "dan@example.com", "wrong password", "").await.unwrap_err();
        assert_error(&status, Code::Unauthenticated, "UNAUTHORIZED");
    }
}

async fn lockout_grows_with_repeats_and_ends_by_itself(backend: Backend) {
    let app = TestApp::start_with(&backend, lockout(3)).await;
    app.create_user("dan@example.com", USER_PASSWORD, Role::User).await;
    // A success resets the count.
    wrong(&app, 2).await;
    try_login(&app, "dan@example.com", USER_PASSWORD, "").await.unwrap();
    wrong(&app, 2).await;
    try_login(&app, "dan@example.com", USER_PASSWORD, "").await.unwrap();

    wrong(&app, 3).await;
    // Locked: the right password gets the wrong password's answer.
    let locked = try_login(&app, "dan@example.com", USER_PASSWORD, "").await.unwrap_err();
    assert_error(&locked, Code::Unauthenticated, "UNAUTHORIZED");
    assert_eq!(locked.message(), "invalid email or password");
    app.clock.advance(Duration::minutes(5));
    wrong(&app, 3).await;
    // The second lock lasts twice as long.
    app.clock.advance(Duration::minutes(5));
    assert!(try_login(&app, "dan@example.com", USER_PASSWORD, "").await.is_err());
    app.clock.advance(Duration::minutes(5));
    try_login(&app, "dan@example.com", USER_PASSWORD, "").await.unwrap();
    app.stop().await;
}

async fn parallel_wrong_passwords_verify_at_most_the_threshold(backend: Backend) {
    let app = TestApp::start_with(&backend, lockout(10)).await;
    app.create_user("eve@example.com", USER_PASSWORD, Role::User).await;
    for i in 0..3 {
        app.create_user(&format!("other{i}@example.com"), USER_PASSWORD, Role::User).await;
    }
    let before = app.domain.hasher().verification_count();
    let mut calls = Vec::new();
    for i in 0..200 {
        let mut auth = app.auth();
        calls.push(tokio::spawn(async move {
            auth.login(login_request("eve@example.com", &format!("wrong password {i}"), "")).await
        }));
    }
    // Meanwhile other accounts log in fine.
    for i in 0..3 {
        try_login(&app, &format!("other{i}@example.com"), USER_PASSWORD, "").await.unwrap();
    }
    for call in calls {
        let status = call.await.unwrap().unwrap_err();
        assert_error(&status, Code::Unauthenticated, "UNAUTHORIZED");
    }
    let others = 3;
    let verified = app.domain.hasher().verification_count() - before - others;
    assert!(verified <= 10, "{verified} password verifications for a threshold of 10");
    assert!(verified >= 1);
    // And the account is locked now.
    assert!(try_login(&app, "eve@example.com", USER_PASSWORD, "").await.is_err());
    app.stop().await;
}

async fn unknown_wrong_locked_and_disabled_answer_alike_with_equal_work(backend: Backend) {
    let app = TestApp::start_with(&backend, lockout(2)).await;
    let admin = app.admin_token().await;
    app.create_user("known@example.com", USER_PASSWORD, Role::User).await;
    app.create_user("locked@example.com", USER_PASSWORD, Role::User).await;
    let disabled = app.create_user("disabled@example.com", USER_PASSWORD, Role::User).await;
    app.users()
        .update_user(bearer(
            &admin,
            pb::UpdateUserRequest {
                user: Some(pb::User { id: disabled, disabled: true, ..Default::default() }),
                update_mask: Some(prost_types::FieldMask { paths: vec!["disabled".into()] }),
            },
        ))
        .await
        .unwrap();
    for _ in 0..2 {
        let _ = try_login(&app, "locked@example.com", "wrong password", "").await;
    }
    let cases = [
        ("nobody@example.com", USER_PASSWORD),
        ("known@example.com", "wrong password"),
        ("locked@example.com", USER_PASSWORD),
        ("disabled@example.com", USER_PASSWORD),
    ];
    let mut answers = Vec::new();
    for (email, password) in cases {
        let before = app.domain.hasher().hash_work_count();
        let mut request = Request::new(login_request(email, password, ""));
        request.metadata_mut().insert("x-request-id", "same-id".parse().unwrap());
        let status = app.auth().login(request).await.unwrap_err();
        assert_eq!(app.domain.hasher().hash_work_count() - before, 1, "{email}: hashing work differs");
        let mut metadata: Vec<(String, String)> = status
            .metadata()
            .iter()
            .filter_map(|entry| match entry {
                tonic::metadata::KeyAndValueRef::Ascii(k, v) if k.as_str() != "date" => {
                    Some((k.to_string(), v.to_str().unwrap().to_owned()))
                }
                _ => None,
            })
            .collect();
        metadata.sort();
        answers.push((status.code(), status.message().to_owned(), status.details().to_vec(), metadata));
    }
    for answer in &answers[1..] {
        assert_eq!(answer, &answers[0]);
    }
    let _ = ADMIN_PASSWORD;
    app.stop().await;
}

async fn audit_client_ip(app: &TestApp, admin: &str, request_id: &str) -> String {
    let events = app
        .audit()
        .list_audit_events(bearer(
            admin,
            pb::ListAuditEventsRequest { request_id: request_id.into(), ..Default::default() },
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(events.len(), 1, "{events:?}");
    events[0].client_ip.clone()
}

async fn login_with_id(app: &TestApp, id: &str, ip: &str, caller: Option<&str>) {
    let mut request = Request::new(login_request("fay@example.com", "wrong password", ip));
    request.metadata_mut().insert("x-request-id", id.parse().unwrap());
    if let Some(token) = caller {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    let _ = app.auth().login(request).await;
}

async fn client_ip_is_believed_only_from_trusted_callers(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let admin = app.admin_token().await;
    app.create_user("fay@example.com", USER_PASSWORD, Role::User).await;
    // An untrusted caller's forwarded value is ignored: the peer's address counts.
    login_with_id(&app, "ip-untrusted", "203.0.113.9", None).await;
    assert_eq!(audit_client_ip(&app, &admin, "ip-untrusted").await, "127.0.0.1");
    let app = app.restart_with(|c| c.trusted_peers = vec!["127.0.0.0/8".parse().unwrap()]).await;
    let admin = app.login("admin@example.com", ADMIN_PASSWORD).await.token;
    login_with_id(&app, "ip-trusted", "203.0.113.9", None).await;
    assert_eq!(audit_client_ip(&app, &admin, "ip-trusted").await, "203.0.113.9");
    let status =
        app.auth().login(login_request("fay@example.com", USER_PASSWORD, "not-an-ip")).await.unwrap_err();
    crate::support::assert_invalid(&status, "client.ip");
    app.stop().await;
}

async fn admin_login_needs_the_scope_and_keeps_lockout_and_mfa(backend: Backend) {
    let app = TestApp::start_with(&backend, lockout(2)).await;
    let admin = app.admin_token().await;
    let svc = crate::keys::service_account(&app, &admin, "gateway@svc.example.com").await;
    let with_scope = crate::keys::create_key(&app, &admin, svc, &["portcullis:admin_login"]).await.unwrap();
    let without = crate::keys::create_key(&app, &admin, svc, &["portcullis:users:read"]).await.unwrap().key;
    app.create_user("gus@example.com", USER_PASSWORD, Role::User).await;
    let request = |password: &str| pb::AdminLoginRequest {
        email: "gus@example.com".into(),
        password: password.into(),
        client: Some(pb::ClientInfo {
            ip: "198.51.100.77".into(),
            user_agent: "end-user-agent".into(),
            ..Default::default()
        }),
        session_lifetime: None,
    };
    let refused = app.auth().admin_login(bearer(&without, request(USER_PASSWORD))).await.unwrap_err();
    assert_error(&refused, Code::PermissionDenied, "FORBIDDEN");
    let anonymous = app.auth().admin_login(request(USER_PASSWORD)).await.unwrap_err();
    assert_error(&anonymous, Code::Unauthenticated, "UNAUTHORIZED");

    let mut call = bearer(&with_scope.key, request(USER_PASSWORD));
    call.metadata_mut().insert("x-request-id", "admin-login-1".parse().unwrap());
    let response = app.auth().admin_login(call).await.unwrap().into_inner();
    let Some(pb::admin_login_response::Result::Session(session)) = response.result else {
        panic!("no session")
    };
    let principal = app.validate(&session.token).await.unwrap();
    assert_eq!(
        principal.auth_methods,
        vec![pb::AuthMethod::Password as i32, pb::AuthMethod::AdminLogin as i32]
    );
    // The audit row names the calling key and the end user's client.
    let events = app
        .audit()
        .list_audit_events(bearer(
            &admin,
            pb::ListAuditEventsRequest { request_id: "admin-login-1".into(), ..Default::default() },
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].action, "login.succeeded");
    assert_eq!(events[0].actor, format!("key:{}", with_scope.api_key.unwrap().id));
    assert_eq!(events[0].client_ip, "198.51.100.77");
    assert_eq!(events[0].user_agent, "end-user-agent");

    // MFA still applies: a user with TOTP gets a challenge, not a session.
    crate::mfa::user_with_totp(&app, "tia@example.com").await;
    let mfa = app
        .auth()
        .admin_login(bearer(
            &with_scope.key,
            pb::AdminLoginRequest {
                email: "tia@example.com".into(),
                password: USER_PASSWORD.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(mfa.result, Some(pb::admin_login_response::Result::Mfa(_))), "{mfa:?}");

    // Per-account lockout still applies.
    for _ in 0..2 {
        assert!(app.auth().admin_login(bearer(&with_scope.key, request("wrong password"))).await.is_err());
    }
    assert!(app.auth().admin_login(bearer(&with_scope.key, request(USER_PASSWORD))).await.is_err());
    app.stop().await;
}
