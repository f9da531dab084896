//! The audit log through the real server: one row per action with the
//! caller's request id, written with the change or not at all, floods
//! aggregated, and the listing's filters and bad input.

use chrono::Duration;
use portcullis::{domain::Role, proto::v1 as pb};
use tonic::{Code, Request};

use crate::support::{
    Backend, TestApp, USER_PASSWORD, assert_error, assert_invalid, bearer, count_rows, epoch,
};

crate::db_tests!(
    every_action_writes_one_row_with_the_callers_request_id,
    a_failed_change_leaves_neither_change_nor_audit_row,
    an_invalid_token_flood_adds_a_bounded_number_of_rows,
    audit_listing_needs_the_scope_filters_and_refuses_bad_input,
    filtering_on_an_unknown_action_is_refused_naming_the_valid_ones,
);

/// `message` with `x-request-id: id` (and a bearer when given).
fn with_id<T>(id: &str, token: Option<&str>, message: T) -> Request<T> {
    let mut request = match token {
        Some(token) => bearer(token, message),
        None => Request::new(message),
    };
    request.metadata_mut().insert("x-request-id", id.parse().unwrap());
    request
}

async fn rows(app: &TestApp, admin: &str, id: &str) -> Vec<pb::AuditEvent> {
    let mut events = app
        .audit()
        .list_audit_events(bearer(
            admin,
            pb::ListAuditEventsRequest { request_id: id.into(), ..Default::default() },
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    events.reverse();
    events
}

#[track_caller]
fn assert_one(events: &[pb::AuditEvent], action: &str, outcome: &str) {
    let matching: Vec<_> = events.iter().filter(|e| e.action == action).collect();
    assert_eq!(matching.len(), 1, "expected one {action} row in {events:?}");
    assert_eq!(matching[0].outcome, outcome, "{events:?}");
}

fn login(email: &str, password: &str) -> pb::LoginRequest {
    pb::LoginRequest { email: email.into(), password: password.into(), ..Default::default() }
}

async fn every_action_writes_one_row_with_the_callers_request_id(backend: Backend) {
    let app = TestApp::start_with(&backend, |c| c.lockout_threshold = 3).await;
    let admin = app.admin_token().await;
    let auth = || app.auth();
    let users = || app.users();
    let keys = || app.keys();

    users()
        .create_user(with_id(
            "r-create-user",
            Some(&admin),
            pb::CreateUserRequest {
                email: "hal@example.com".into(),
                password: USER_PASSWORD.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let hal = app.login("hal@example.com", USER_PASSWORD).await;
    let hal_id = hal.user.as_ref().unwrap().id;
    auth().login(with_id("r-login", None, login("hal@example.com", USER_PASSWORD))).await.unwrap();
    let _ = auth().login(with_id("r-login-failed", None, login("hal@example.com", "wrong password"))).await;
    let _ =
        auth().login(with_id("r-login-unknown", None, login("nobody@example.com", "wrong password"))).await;
    let refreshed = auth()
        .refresh_session(with_id("r-refresh", None, pb::RefreshSessionRequest { token: hal.token.clone() }))
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    app.clock.advance(Duration::minutes(1));
    let _ = auth()
        .refresh_session(with_id("r-reuse", None, pb::RefreshSessionRequest { token: hal.token.clone() }))
        .await;
    let second = app.login("hal@example.com", USER_PASSWORD).await;
    auth()
        .logout(with_id("r-logout", None, pb::LogoutRequest { token: second.token.clone() }))
        .await
        .unwrap();
    let third = app.login("hal@example.com", USER_PASSWORD).await;
    auth()
        .revoke_session(with_id(
            "r-revoke-session",
            Some(&admin),
            pb::RevokeSessionRequest { session_id: third.session_id },
        ))
        .await
        .unwrap();
    auth()
        .revoke_sessions(with_id(
            "r-revoke-sessions",
            Some(&admin),
            pb::RevokeSessionsRequest { user_id: hal_id, keep_current: false },
        ))
        .await
        .unwrap();
    users()
        .update_user(with_id(
            "r-update-user",
            Some(&admin),
            pb::UpdateUserRequest {
                user: Some(pb::User { id: hal_id, role: pb::Role::User as i32, ..Default::default() }),
                update_mask: Some(prost_types::FieldMask { paths: vec!["role".into()] }),
            },
        ))
        .await
        .unwrap();
    users()
        .set_password(with_id(
            "r-set-password",
            Some(&admin),
            pb::SetPasswordRequest { user_id: hal_id, new_password: "new password 1".into() },
        ))
        .await
        .unwrap();
    let hal_session = app.login("hal@example.com", "new password 1").await.token;
    users()
        .change_password(with_id(
            "r-change-password",
            Some(&hal_session),
            pb::ChangePasswordRequest {
                current_password: "new password 1".into(),
                new_password: USER_PASSWORD.into(),
            },
        ))
        .await
        .unwrap();
    let created = keys()
        .create_api_key(with_id(
            "r-key-create",
            Some(&admin),
            pb::CreateApiKeyRequest { name: "k".into(), ..Default::default() },
        ))
        .await
        .unwrap()
        .into_inner();
    let key_id = created.api_key.unwrap().id;
    let rotated = keys()
        .rotate_api_key(with_id(
            "r-key-rotate",
            Some(&admin),
            pb::RotateApiKeyRequest { key_id, overlap: None },
        ))
        .await
        .unwrap()
        .into_inner();
    keys()
        .revoke_api_key(with_id(
            "r-key-revoke",
            Some(&admin),
            pb::RevokeApiKeyRequest { key_id: rotated.api_key.unwrap().id },
        ))
        .await
        .unwrap();
    // MFA on, then a success and a failure.
    let enrolled =
        users().enroll_totp(bearer(&hal_session, pb::EnrollTotpRequest {})).await.unwrap().into_inner();
    let secret = totp_rs::Secret::try_from_base32(&enrolled.secret).unwrap();
    let generator = totp_rs::Builder::new().with_secret(secret).build().unwrap();
    let code_now = |app: &TestApp| {
        let now = portcullis::domain::Clock::now(&app.clock);
        generator.generate(u64::try_from(now.timestamp()).unwrap()).to_string()
    };
    users()
        .confirm_totp(with_id(
            "r-mfa-enable",
            Some(&hal_session),
            pb::ConfirmTotpRequest { code: code_now(&app) },
        ))
        .await
        .unwrap();
    app.clock.advance(Duration::seconds(30));
    let pending = |app: &TestApp| {
        let mut auth = app.auth();
        async move {
            match auth.login(login("hal@example.com", USER_PASSWORD)).await.unwrap().into_inner().result {
                Some(pb::login_response::Result::Mfa(m)) => m.mfa_token,
                other => panic!("{other:?}"),
            }
        }
    };
    let token = pending(&app).await;
    let _ = auth()
        .verify_mfa(with_id(
            "r-mfa-failed",
            None,
            pb::VerifyMfaRequest {
                mfa_token: token.clone(),
                code: "000000".into(),
                method: pb::MfaMethod::Totp as i32,
            },
        ))
        .await;
    auth()
        .verify_mfa(with_id(
            "r-mfa-ok",
            None,
            pb::VerifyMfaRequest {
                mfa_token: token,
                code: code_now(&app),
                method: pb::MfaMethod::Totp as i32,
            },
        ))
        .await
        .unwrap();
    // A lockout: the third wrong password locks (threshold 3).
    for i in 0..3 {
        let _ = auth()
            .login(with_id(&format!("r-lock-{i}"), None, login("hal@example.com", "wrong password")))
            .await;
    }

    let expect: &[(&str, &str, &str)] = &[
        ("r-create-user", "user.created", "success"),
        ("r-login", "login.succeeded", "success"),
        ("r-login-failed", "login.failed", "failure"),
        ("r-login-unknown", "login.failed", "failure"),
        ("r-refresh", "session.refreshed", "success"),
        ("r-reuse", "session.refresh_reuse", "failure"),
        ("r-logout", "session.logout", "success"),
        ("r-revoke-session", "session.revoked", "success"),
        ("r-revoke-sessions", "sessions.revoked", "success"),
        ("r-update-user", "user.updated", "success"),
        ("r-set-password", "user.password_set", "success"),
        ("r-change-password", "user.password_changed", "success"),
        ("r-key-create", "key.created", "success"),
        ("r-key-rotate", "key.rotated", "success"),
        ("r-key-revoke", "key.revoked", "success"),
        ("r-mfa-enable", "mfa.enabled", "success"),
        ("r-mfa-failed", "mfa.failed", "failure"),
        ("r-mfa-ok", "mfa.succeeded", "success"),
    ];
    for (id, action, outcome) in expect {
        let events = rows(&app, &admin, id).await;
        assert_eq!(events.len(), 1, "{id}: {events:?}");
        assert_one(&events, action, outcome);
        assert_eq!(events[0].request_id, *id);
        assert_eq!(events[0].client_ip, "127.0.0.1", "{id}");
    }
    let lock = rows(&app, &admin, "r-lock-2").await;
    assert_eq!(lock.len(), 2, "{lock:?}");
    assert_one(&lock, "login.failed", "failure");
    assert_one(&lock, "account.locked", "failure");
    assert_eq!(lock[1].subject, format!("user:{hal_id}"));
    let unknown = rows(&app, &admin, "r-login-unknown").await;
    assert_eq!(unknown[0].subject, "email:nobody@example.com");
    assert_eq!(unknown[0].detail, "unknown email");
    // No secret in any row.
    let everything = app
        .audit()
        .list_audit_events(bearer(
            &admin,
            pb::ListAuditEventsRequest { page_size: 500, ..Default::default() },
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    let text = format!("{everything:?}");
    for secret in [USER_PASSWORD, "new password 1", &hal.token, &refreshed.token, &created.key, &rotated.key]
    {
        assert!(!text.contains(secret), "a secret is in the audit log");
    }
    let _ = epoch();
    app.stop().await;
}

async fn a_failed_change_leaves_neither_change_nor_audit_row(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let admin = app.admin_token().await;
    app.create_user("ivy@example.com", USER_PASSWORD, Role::User).await;
    let users_before = count_rows(&app.db, "users").await;
    let audit_before = count_rows(&app.db, "audit_events").await;
    // The insert fails on the unique email inside the transaction that would
    // also have written the audit row.
    let status = app
        .users()
        .create_user(with_id(
            "r-duplicate",
            Some(&admin),
            pb::CreateUserRequest {
                email: " IVY@example.com".into(),
                password: USER_PASSWORD.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_error(&status, Code::AlreadyExists, "ALREADY_EXISTS");
    assert_eq!(count_rows(&app.db, "users").await, users_before);
    assert_eq!(count_rows(&app.db, "audit_events").await, audit_before);
    assert!(rows(&app, &admin, "r-duplicate").await.is_empty());
    app.stop().await;
}

async fn an_invalid_token_flood_adds_a_bounded_number_of_rows(backend: Backend) {
    let app =
        TestApp::start_with(&backend, |c| c.audit_flush_interval = std::time::Duration::from_millis(200))
            .await;
    let admin = app.admin_token().await;
    let before = count_rows(&app.db, "audit_events").await;
    let total = 10_000;
    let workers = 50;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let mut auth = app.auth();
        tasks.push(tokio::spawn(async move {
            for i in 0..total / workers {
                let status = auth
                    .validate_token(pb::ValidateTokenRequest {
                        credential: Some(pb::validate_token_request::Credential::Token(format!(
                            "pcs_sess_junk{w}x{i}"
                        ))),
                        required_scopes: vec![],
                    })
                    .await
                    .unwrap_err();
                assert_eq!(status.code(), Code::Unauthenticated);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let db_url = app.db.url.clone();
    let _ = db_url;
    // Stopping flushes what is left.
    let app = app.restart_with(|_| {}).await;
    let added = count_rows(&app.db, "audit_events").await - before;
    let flood = app
        .audit()
        .list_audit_events(bearer(
            &admin,
            pb::ListAuditEventsRequest {
                action: "token.invalid".into(),
                page_size: 500,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    let counted: i64 = flood.iter().map(|e| e.count).sum();
    assert_eq!(counted, i64::from(total), "every invalid token is counted");
    assert!(added <= 200, "{added} audit rows for a flood of {total}");
    assert!(flood.iter().all(|e| e.subject == "ip:127.0.0.1" && e.detail == "invalid"), "{flood:?}");
    app.stop().await;
}

async fn audit_listing_needs_the_scope_filters_and_refuses_bad_input(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let admin = app.admin_token().await;
    app.create_user("joy@example.com", USER_PASSWORD, Role::User).await;
    let joy = app.login("joy@example.com", USER_PASSWORD).await.token;
    let refused =
        app.audit().list_audit_events(bearer(&joy, pb::ListAuditEventsRequest::default())).await.unwrap_err();
    assert_error(&refused, Code::PermissionDenied, "FORBIDDEN");
    assert_eq!(crate::support::missing_scope(&refused).as_deref(), Some("portcullis:audit:read"));

    for _ in 0..3 {
        let _ = app.auth().login(login("joy@example.com", "wrong password")).await;
    }
    app.clock.advance(Duration::hours(1));
    let _ = app.auth().login(login("joy@example.com", "wrong password")).await;
    let list = |request: pb::ListAuditEventsRequest| {
        let (mut audit, admin) = (app.audit(), admin.clone());
        async move { audit.list_audit_events(bearer(&admin, request)).await }
    };
    let failures = list(pb::ListAuditEventsRequest {
        action: "login.failed".into(),
        outcome: "failure".into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .events;
    assert_eq!(failures.len(), 4);
    assert!(failures.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    let later = list(pb::ListAuditEventsRequest {
        action: "login.failed".into(),
        start_time: Some(prost_types::Timestamp {
            seconds: (epoch() + Duration::minutes(30)).timestamp(),
            nanos: 0,
        }),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .events;
    assert_eq!(later.len(), 1);
    let by_actor = list(pb::ListAuditEventsRequest {
        actor: "anonymous".into(),
        subject: failures[0].subject.clone(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .events;
    assert_eq!(by_actor.len(), 4);
    // Pages.
    let first =
        list(pb::ListAuditEventsRequest { page_size: 2, ..Default::default() }).await.unwrap().into_inner();
    assert_eq!(first.events.len(), 2);
    let second = list(pb::ListAuditEventsRequest {
        page_size: 2,
        page_token: first.next_page_token,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner();
    assert!(second.events[0].id < first.events[1].id);

    let inverted = list(pb::ListAuditEventsRequest {
        start_time: Some(prost_types::Timestamp { seconds: epoch().timestamp() + 10, nanos: 0 }),
        end_time: Some(prost_types::Timestamp { seconds: epoch().timestamp(), nanos: 0 }),
        ..Default::default()
    })
    .await
    .unwrap_err();
    assert_invalid(&inverted, "end_time");
    let bad_token = list(pb::ListAuditEventsRequest { page_token: "garbage".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_invalid(&bad_token, "page_token");
    let bad_outcome =
        list(pb::ListAuditEventsRequest { outcome: "maybe".into(), ..Default::default() }).await.unwrap_err();
    assert_invalid(&bad_outcome, "outcome");
    app.stop().await;
}

async fn filtering_on_an_unknown_action_is_refused_naming_the_valid_ones(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let admin = app.admin_token().await;
    // Every action of the catalogue is a valid filter.
    for action in portcullis::domain::Action::ALL {
        app.audit()
            .list_audit_events(bearer(
                &admin,
                pb::ListAuditEventsRequest { action: action.as_str().into(), ..Default::default() },
            ))
            .await
            .unwrap_or_else(|status| panic!("{action:?} refused: {status:?}"));
    }
    // A near miss would silently match nothing: it is refused, with the list.
    let refused = app
        .audit()
        .list_audit_events(bearer(
            &admin,
            pb::ListAuditEventsRequest { action: "login.failure".into(), ..Default::default() },
        ))
        .await
        .unwrap_err();
    assert_invalid(&refused, "action");
    for named in ["login.failure", "login.succeeded", "login.failed", "account.locked", "token.invalid"] {
        assert!(refused.message().contains(named), "{named} not in {:?}", refused.message());
    }
    app.stop().await;
}
