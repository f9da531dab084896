//! Login, validation in every credential form, refresh with grace and reuse
//! detection, expiry, logout, and session management.

use std::collections::HashMap;

use chrono::Duration;
use portcullis::{
    domain::Role,
    proto::v1::{self as pb, validate_token_request::Credential},
};
use prost_types::Timestamp;
use tonic::Code;

use crate::support::{ADMIN_PASSWORD, Backend, TestApp, TestDb, USER_PASSWORD, assert_error, bearer, epoch};

crate::db_tests!(
    login_validate_refresh_logout_flow,
    every_credential_form_validates,
    session_expires_with_the_clock,
    per_user_and_requested_lifetimes_apply,
    refresh_within_grace_issues_another_token,
    refresh_reuse_after_grace_revokes_the_session,
    refresh_stops_at_the_absolute_lifetime,
    several_sessions_revoke_one_and_all_others,
    password_change_revokes_other_sessions,
    admin_password_reset_revokes_all_sessions,
    disabling_a_user_stops_its_tokens_at_once,
    unknown_email_wrong_password_and_disabled_answer_alike,
    role_change_reaches_cached_tokens,
    users_are_listed_in_pages,
    last_seen_is_recorded_off_the_hot_path,
    the_last_seen_writer_writes_what_is_queued_when_stopped_or_dropped,
);

fn seconds(at: Option<&Timestamp>) -> i64 {
    at.unwrap().seconds
}

async fn login_validate_refresh_logout_flow(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let admin = app.admin_token().await;

    // Create a user through the API, as an admin would.
    let user = app
        .users()
        .create_user(bearer(
            &admin,
            pb::CreateUserRequest {
                email: "  Alice@Example.com ".into(),
                password: USER_PASSWORD.into(),
                role: pb::Role::User as i32,
                session_lifetime: None,
                kind: pb::UserKind::Human as i32,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(user.email, "alice@example.com");

    let session = app.login("ALICE@example.com", USER_PASSWORD).await;
    assert!(session.token.starts_with("pcs_sess_"), "{}", session.token.len());
    assert_eq!(seconds(session.expire_time.as_ref()), (epoch() + Duration::hours(24)).timestamp());
    assert_eq!(session.user.as_ref().unwrap().id, user.id);

    let principal = app.validate(&session.token).await.unwrap();
    assert_eq!(principal.kind, pb::PrincipalKind::Session as i32);
    assert_eq!(principal.user_id, user.id);
    assert_eq!(principal.email, "alice@example.com");
    assert_eq!(principal.role, pb::Role::User as i32);
    assert_eq!(principal.credential_id, Some(pb::principal::CredentialId::SessionId(session.session_id)));
    assert_eq!(principal.auth_methods, vec![pb::AuthMethod::Password as i32]);
    assert!(principal.scopes.is_empty());

    // Refresh: a new token with a fresh window; the old one works in the grace.
    app.clock.advance(Duration::hours(1));
    let refreshed = app
        .auth()
        .refresh_session(pb::RefreshSessionRequest { token: session.token.clone() })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert_ne!(refreshed.token, session.token);
    assert_eq!(refreshed.session_id, session.session_id);
    assert_eq!(seconds(refreshed.expire_time.as_ref()), (epoch() + Duration::hours(25)).timestamp());
    app.validate(&refreshed.token).await.unwrap();
    app.validate(&session.token).await.unwrap();

    app.clock.advance(Duration::seconds(31));
    let old = app.validate(&session.token).await.unwrap_err();
    assert_error(&old, Code::Unauthenticated, "UNAUTHORIZED");
    app.validate(&refreshed.token).await.unwrap();

    // Logout ends the session.
    app.auth().logout(pb::LogoutRequest { token: refreshed.token.clone() }).await.unwrap();
    let after = app.validate(&refreshed.token).await.unwrap_err();
    assert_error(&after, Code::Unauthenticated, "UNAUTHORIZED");
    // Logging out twice is harmless.
    app.auth().logout(pb::LogoutRequest { token: refreshed.token.clone() }).await.unwrap();
    app.stop().await;
}

async fn every_credential_form_validates(backend: Backend) {
    let app = TestApp::start(&backend).await;
    app.create_user("bob@example.com", USER_PASSWORD, Role::User).await;
    let token = app.login("bob@example.com", USER_PASSWORD).await.token;

    let forms: Vec<(HashMap<String, String>, String)> = vec![
        ([("Authorization".into(), format!("Bearer {token}"))].into(), String::new()),
        ([("authorization".into(), format!("bearer {token}"))].into(), String::new()),
        ([("Authorization".into(), format!("Token {token}"))].into(), String::new()),
        ([("X-API-Key".into(), token.clone())].into(), String::new()),
        ([("x-api-key".into(), token.clone())].into(), String::new()),
        ([("Cookie".into(), format!("theme=dark; portcullis_session={token}"))].into(), String::new()),
        (HashMap::new(), format!("page=2&token={token}")),
        // The same token in two places is not ambiguous.
        ([("Authorization".into(), format!("Bearer {token}"))].into(), format!("token={token}")),
    ];
    for (headers, query) in forms {
        let described = format!("{:?} / query {}", headers.keys().collect::<Vec<_>>(), !query.is_empty());
        let principal = app
            .auth()
            .validate_token(pb::ValidateTokenRequest {
                credential: Some(Credential::Http(pb::HttpCredential { headers, query })),
                required_scopes: vec![],
            })
            .await
            .unwrap_or_else(|status| panic!("{described}: {status:?}"))
            .into_inner()
            .principal
            .unwrap();
        assert_eq!(principal.email, "bob@example.com", "{described}");
    }

    // No credential at all.
    let none = app
        .auth()
        .validate_token(pb::ValidateTokenRequest {
            credential: Some(Credential::Http(pb::HttpCredential {
                headers: [("Accept".into(), "*/*".into())].into(),
                query: "a=b".into(),
            })),
            required_scopes: vec![],
        })
        .await
        .unwrap_err();
    assert_error(&none, Code::Unauthenticated, "UNAUTHORIZED");
    app.stop().await;
}

async fn session_expires_with_the_clock(backend: Backend) {
    let app = TestApp::start(&backend).await;
    app.create_user("carol@example.com", USER_PASSWORD, Role::User).await;
    let session = app.login("carol@example.com", USER_PASSWORD).await;
    app.clock.advance(Duration::hours(24) - Duration::seconds(1));
    app.validate(&session.token).await.unwrap();
    app.clock.advance(Duration::seconds(1));
    let expired = app.validate(&session.token).await.unwrap_err();
    assert_error(&expired, Code::Unauthenticated, "TOKEN_EXPIRED");
    let refresh = app
        .auth()
        .refresh_session(pb::RefreshSessionRequest { token: session.token.clone() })
        .await
        .unwrap_err();
    assert_error(&refresh, Code::Unauthenticated, "TOKEN_EXPIRED");
    app.stop().await;
}

async fn per_user_and_requested_lifetimes_apply(backend: Backend) {
    let app = TestApp::start_with(&backend, |c| {
        c.session_lifetime = std::time::Duration::from_hours(48);
    })
    .await;
    let admin = app.admin_token().await;
    // Rehive-style: this user's sessions last 10 hours.
    app.users()
        .create_user(bearer(
            &admin,
            pb::CreateUserRequest {
                email: "dave@example.com".into(),
                password: USER_PASSWORD.into(),
                role: pb::Role::User as i32,
                session_lifetime: Some(prost_types::Duration { seconds: 10 * 3600, nanos: 0 }),
                kind: pb::UserKind::Human as i32,
            },
        ))
        .await
        .unwrap();
    let session = app.login("dave@example.com", USER_PASSWORD).await;
    assert_eq!(seconds(session.expire_time.as_ref()), (epoch() + Duration::hours(10)).timestamp());

    let login = |hours: i64| pb::LoginRequest {
        email: "dave@example.com".into(),
        password: USER_PASSWORD.into(),
        session_lifetime: Some(prost_types::Duration { seconds: hours * 3600, nanos: 0 }),
        ..Default::default()
    };
    let shorter = app.auth().login(login(1)).await.unwrap().into_inner();
    let Some(pb::login_response::Result::Session(shorter)) = shorter.result else { panic!() };
    assert_eq!(seconds(shorter.expire_time.as_ref()), (epoch() + Duration::hours(1)).timestamp());
    // Asking for more than the user's lifetime gets the user's lifetime.
    let longer = app.auth().login(login(100)).await.unwrap().into_inner();
    let Some(pb::login_response::Result::Session(longer)) = longer.result else { panic!() };
    assert_eq!(seconds(longer.expire_time.as_ref()), (epoch() + Duration::hours(10)).timestamp());
    // The admin has no override: the global 48 hours.
    let admin_session = app.login("admin@example.com", ADMIN_PASSWORD).await;
    assert_eq!(seconds(admin_session.expire_time.as_ref()), (epoch() + Duration::hours(48)).timestamp());

    // Clearing the override returns the user to the default.
    let user_id = session.user.unwrap().id;
    app.users()
        .update_user(bearer(
            &admin,
            pb::UpdateUserRequest {
                user: Some(pb::User { id: user_id, ..Default::default() }),
                update_mask: Some(prost_types::FieldMask { paths: vec!["session_lifetime".into()] }),
            },
        ))
        .await
        .unwrap();
    let default = app.login("dave@example.com", USER_PASSWORD).await;
    assert_eq!(seconds(default.expire_time.as_ref()), (epoch() + Duration::hours(48)).timestamp());
    app.stop().await;
}

async fn refresh(app: &TestApp, token: &str) -> Result<pb::IssuedSession, tonic::Status> {
    app.auth()
        .refresh_session(pb::RefreshSessionRequest { token: token.into() })
        .await
        .map(|r| r.into_inner().session.unwrap())
}

async fn refresh_within_grace_issues_another_token(backend: Backend) {
    let app = TestApp::start(&backend).await;
    app.create_user("erin@example.com", USER_PASSWORD, Role::User).await;
    let first = app.login("erin@example.com", USER_PASSWORD).await;
    let lost = refresh(&app, &first.token).await.unwrap();
    // The response was lost; the client retries with the first token.
    app.clock.advance(Duration::seconds(10));
    let retried = refresh(&app, &first.token).await.unwrap();
    assert_ne!(retried.token, lost.token);
    app.validate(&retried.token).await.unwrap();
    // The token of the lost response is replaced.
    let replaced = app.validate(&lost.token).await.unwrap_err();
    assert_error(&replaced, Code::Unauthenticated, "UNAUTHORIZED");
    // The retry kept the first token's grace; it ends 30 s after the first refresh.
    app.validate(&first.token).await.unwrap();
    app.clock.advance(Duration::seconds(20));
    assert!(app.validate(&first.token).await.is_err());
    app.validate(&retried.token).await.unwrap();
    app.stop().await;
}

async fn refresh_reuse_after_grace_revokes_the_session(backend: Backend) {
    let app = TestApp::start(&backend).await;
    app.create_user("frank@example.com", USER_PASSWORD, Role::User).await;
    let first = app.login("frank@example.com", USER_PASSWORD).await;
    let second = refresh(&app, &first.token).await.unwrap();
    app.validate(&second.token).await.unwrap();
    app.clock.advance(Duration::seconds(31));

    let reuse = refresh(&app, &first.token).await.unwrap_err();
    assert_error(&reuse, Code::Unauthenticated, "UNAUTHORIZED");
    assert!(reuse.message().contains("revoked"), "{}", reuse.message());
    let info = tonic_types::StatusExt::get_details_error_info(&reuse).unwrap();
    assert_eq!(info.metadata.get("session_revoked").map(String::as_str), Some("true"));

    // The thief's or the owner's newer token: both stop at once.
    let revoked = app.validate(&second.token).await.unwrap_err();
    assert_error(&revoked, Code::Unauthenticated, "UNAUTHORIZED");
    assert!(refresh(&app, &second.token).await.is_err());
    app.stop().await;
}

async fn refresh_stops_at_the_absolute_lifetime(backend: Backend) {
    let app = TestApp::start_with(&backend, |c| {
        c.session_absolute_lifetime = std::time::Duration::from_hours(48);
    })
    .await;
    app.create_user("gina@example.com", USER_PASSWORD, Role::User).await;
    let mut token = app.login("gina@example.com", USER_PASSWORD).await.token;
    app.clock.advance(Duration::hours(23));
    let at_23 = refresh(&app, &token).await.unwrap();
    assert_eq!(seconds(at_23.expire_time.as_ref()), (epoch() + Duration::hours(47)).timestamp());
    token = at_23.token;
    app.clock.advance(Duration::hours(23));
    let at_46 = refresh(&app, &token).await.unwrap();
    // Capped at login + 48 h.
    assert_eq!(seconds(at_46.expire_time.as_ref()), (epoch() + Duration::hours(48)).timestamp());
    app.clock.advance(Duration::hours(2));
    let over = app.validate(&at_46.token).await.unwrap_err();
    assert_error(&over, Code::Unauthenticated, "TOKEN_EXPIRED");
    let again = refresh(&app, &at_46.token).await.unwrap_err();
    assert_error(&again, Code::Unauthenticated, "TOKEN_EXPIRED");
    app.stop().await;
}

async fn list_sessions(app: &TestApp, token: &str) -> Vec<pb::Session> {
    app.auth()
        .list_sessions(bearer(token, pb::ListSessionsRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .sessions
}

async fn several_sessions_revoke_one_and_all_others(backend: Backend) {
    let app = TestApp::start(&backend).await;
    app.create_user("hank@example.com", USER_PASSWORD, Role::User).await;
    let mut tokens = Vec::new();
    for device in ["laptop", "phone", "tablet"] {
        let response = app
            .auth()
            .login(pb::LoginRequest {
                email: "hank@example.com".into(),
                password: USER_PASSWORD.into(),
                client: Some(pb::ClientInfo {
                    ip: "203.0.113.7".into(),
                    user_agent: format!("agent/{device}"),
                    device_label: device.into(),
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let Some(pb::login_response::Result::Session(session)) = response.result else { panic!() };
        tokens.push(session);
    }
    let listed = list_sessions(&app, &tokens[0].token).await;
    assert_eq!(listed.len(), 3);
    assert_eq!(listed.iter().filter(|s| s.current).count(), 1);
    let current = listed.iter().find(|s| s.current).unwrap();
    assert_eq!(current.id, tokens[0].session_id);
    assert_eq!(current.device_label, "laptop");
    // The caller is not trusted: its claimed IP is not believed; the session
    // records the peer, as the audit row and the limits do.
    assert_eq!(current.ip, "127.0.0.1");
    assert_eq!(current.user_agent, "agent/laptop");

    // Revoke the phone from the laptop.
    app.auth()
        .revoke_session(bearer(
            &tokens[0].token,
            pb::RevokeSessionRequest { session_id: tokens[1].session_id },
        ))
        .await
        .unwrap();
    assert_error(&app.validate(&tokens[1].token).await.unwrap_err(), Code::Unauthenticated, "UNAUTHORIZED");
    app.validate(&tokens[2].token).await.unwrap();
    assert_eq!(list_sessions(&app, &tokens[0].token).await.len(), 2);

    // Revoke all others.
    let response = app
        .auth()
        .revoke_sessions(bearer(
            &tokens[0].token,
            pb::RevokeSessionsRequest { user_id: 0, keep_current: true },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.revoked_count, 1);
    assert!(app.validate(&tokens[2].token).await.is_err());
    app.validate(&tokens[0].token).await.unwrap();
    let left = list_sessions(&app, &tokens[0].token).await;
    assert_eq!(left.iter().map(|s| s.id).collect::<Vec<_>>(), vec![tokens[0].session_id]);

    // And all, including the caller's own.
    app.auth()
        .revoke_sessions(bearer(
            &tokens[0].token,
            pb::RevokeSessionsRequest { user_id: 0, keep_current: false },
        ))
        .await
        .unwrap();
    assert!(app.validate(&tokens[0].token).await.is_err());
    app.stop().await;
}

async fn password_change_revokes_other_sessions(backend: Backend) {
    let app = TestApp::start(&backend).await;
    app.create_user("ivy@example.com", USER_PASSWORD, Role::User).await;
    let a = app.login("ivy@example.com", USER_PASSWORD).await.token;
    let b = app.login("ivy@example.com", USER_PASSWORD).await.token;
    app.validate(&b).await.unwrap();

    let wrong = app
        .users()
        .change_password(bearer(
            &a,
            pb::ChangePasswordRequest {
                current_password: "not my password".into(),
                new_password: "a new password".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_error(&wrong, Code::Unauthenticated, "UNAUTHORIZED");
    app.validate(&b).await.unwrap();

    let changed = app
        .users()
        .change_password(bearer(
            &a,
            pb::ChangePasswordRequest {
                current_password: USER_PASSWORD.into(),
                new_password: "a new password".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(changed.revoked_sessions, 1);
    app.validate(&a).await.unwrap();
    assert_error(&app.validate(&b).await.unwrap_err(), Code::Unauthenticated, "UNAUTHORIZED");

    let old = app
        .auth()
        .login(pb::LoginRequest {
            email: "ivy@example.com".into(),
            password: USER_PASSWORD.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_error(&old, Code::Unauthenticated, "UNAUTHORIZED");
    app.login("ivy@example.com", "a new password").await;
    app.stop().await;
}

async fn admin_password_reset_revokes_all_sessions(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let admin = app.admin_token().await;
    let id = app.create_user("jack@example.com", USER_PASSWORD, Role::User).await;
    let a = app.login("jack@example.com", USER_PASSWORD).await.token;
    let b = app.login("jack@example.com", USER_PASSWORD).await.token;
    let reset = app
        .users()
        .set_password(bearer(
            &admin,
            pb::SetPasswordRequest { user_id: id, new_password: "reset password 1".into() },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reset.revoked_sessions, 2);
    assert!(app.validate(&a).await.is_err());
    assert!(app.validate(&b).await.is_err());
    app.login("jack@example.com", "reset password 1").await;
    app.validate(&admin).await.unwrap();
    app.stop().await;
}

async fn set_disabled(app: &TestApp, admin: &str, id: i64, disabled: bool) -> pb::User {
    app.users()
        .update_user(bearer(
            admin,
            pb::UpdateUserRequest {
                user: Some(pb::User { id, disabled, ..Default::default() }),
                update_mask: Some(prost_types::FieldMask { paths: vec!["disabled".into()] }),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap()
}

async fn disabling_a_user_stops_its_tokens_at_once(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let admin = app.admin_token().await;
    let id = app.create_user("kim@example.com", USER_PASSWORD, Role::User).await;
    let token = app.login("kim@example.com", USER_PASSWORD).await.token;
    // Warm the cache, then disable: the very next validation must refuse.
    app.validate(&token).await.unwrap();
    app.validate(&token).await.unwrap();
    assert!(set_disabled(&app, &admin, id, true).await.disabled);
    assert_error(&app.validate(&token).await.unwrap_err(), Code::Unauthenticated, "UNAUTHORIZED");

    let login = app
        .auth()
        .login(pb::LoginRequest {
            email: "kim@example.com".into(),
            password: USER_PASSWORD.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_error(&login, Code::Unauthenticated, "UNAUTHORIZED");

    // Enabling again does not revive the revoked sessions; a new login works.
    assert!(!set_disabled(&app, &admin, id, false).await.disabled);
    assert!(app.validate(&token).await.is_err());
    app.login("kim@example.com", USER_PASSWORD).await;
    app.stop().await;
}

async fn unknown_email_wrong_password_and_disabled_answer_alike(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let admin = app.admin_token().await;
    app.create_user("known@example.com", USER_PASSWORD, Role::User).await;
    let disabled = app.create_user("disabled@example.com", USER_PASSWORD, Role::User).await;
    set_disabled(&app, &admin, disabled, true).await;

    let attempts = [
        ("nobody@example.com", USER_PASSWORD),
        ("known@example.com", "the wrong password"),
        ("disabled@example.com", USER_PASSWORD),
    ];
    let mut answers = Vec::new();
    for (email, password) in attempts {
        let before = app.domain.hasher().hash_work_count();
        let status = app
            .auth()
            .login(pb::LoginRequest { email: email.into(), password: password.into(), ..Default::default() })
            .await
            .unwrap_err();
        // Each costs exactly one password verification.
        assert_eq!(app.domain.hasher().hash_work_count() - before, 1, "{email}");
        answers.push((status.code(), status.message().to_owned(), status.details().to_vec()));
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[1], answers[2]);
    assert_eq!(answers[0].0, Code::Unauthenticated);
    app.stop().await;
}

async fn role_change_reaches_cached_tokens(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let admin = app.admin_token().await;
    let id = app.create_user("lee@example.com", USER_PASSWORD, Role::User).await;
    let token = app.login("lee@example.com", USER_PASSWORD).await.token;
    assert_eq!(app.validate(&token).await.unwrap().role, pb::Role::User as i32);
    app.users()
        .update_user(bearer(
            &admin,
            pb::UpdateUserRequest {
                user: Some(pb::User { id, role: pb::Role::Admin as i32, ..Default::default() }),
                update_mask: Some(prost_types::FieldMask { paths: vec!["role".into()] }),
            },
        ))
        .await
        .unwrap();
    let principal = app.validate(&token).await.unwrap();
    assert_eq!(principal.role, pb::Role::Admin as i32);
    assert_eq!(principal.scopes, vec!["*".to_owned()]);
    app.stop().await;
}

async fn users_are_listed_in_pages(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let admin = app.admin_token().await;
    for i in 0..4 {
        app.create_user(&format!("user{i}@example.com"), USER_PASSWORD, Role::User).await;
    }
    let mut emails = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let page = app
            .users()
            .list_users(bearer(&admin, pb::ListUsersRequest { page_size: 2, page_token: page_token.clone() }))
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.users.len() <= 2);
        emails.extend(page.users.into_iter().map(|u| u.email));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(pages, 3);
    assert_eq!(
        emails,
        [
            "admin@example.com",
            "user0@example.com",
            "user1@example.com",
            "user2@example.com",
            "user3@example.com"
        ]
    );
    app.stop().await;
}

async fn last_seen_is_recorded_off_the_hot_path(backend: Backend) {
    let app = TestApp::start(&backend).await;
    app.create_user("mia@example.com", USER_PASSWORD, Role::User).await;
    let token = app.login("mia@example.com", USER_PASSWORD).await.token;
    app.clock.advance(Duration::minutes(5));
    app.validate(&token).await.unwrap();
    let seen_at = (epoch() + Duration::minutes(5)).timestamp();
    // Written by a background task: wait (bounded) for it to land.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let sessions = list_sessions(&app, &token).await;
        if seconds(sessions[0].last_seen_time.as_ref()) == seen_at {
            assert_eq!(seconds(sessions[0].create_time.as_ref()), epoch().timestamp());
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "last-seen never written: {sessions:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    app.stop().await;
}

/// The validator spawns nothing: its last-seen writer runs where it is
/// handed, and writes what was queued before it ends, whether asked to stop
/// or left without a validator.
async fn the_last_seen_writer_writes_what_is_queued_when_stopped_or_dropped(backend: Backend) {
    use std::sync::Arc;

    use portcullis::{
        domain::{
            AuthMethod, ClientInfo, Email, NewSession, NewUser, SessionState, UserKind, Validator,
            ports::Store,
            token::{TokenFormat, TokenKind},
            validate::CacheConfig,
        },
        store::SqlStore,
    };
    use secrecy::ExposeSecret;

    let db = TestDb::create(&backend).await;
    let database = SqlStore::connect(&db.url, 2).await.unwrap();
    database.migrate().await.unwrap();
    let store: Arc<dyn Store> = Arc::new(database);
    let user = store
        .insert_user(
            NewUser {
                email: Email::parse("lee@example.com", "email").unwrap(),
                password_hash: None,
                role: Role::User,
                kind: UserKind::Human,
                session_lifetime: None,
                now: epoch(),
            },
            &|_| Vec::new(),
        )
        .await
        .unwrap();
    let tokens = TokenFormat::new("pcs");
    let (token, hash) = tokens.generate(TokenKind::Session).unwrap();
    let session = store
        .insert_session(
            NewSession {
                user_id: user.id,
                token_hash: hash,
                state: SessionState::Active,
                lifetime: Duration::hours(1),
                now: epoch(),
                expires_at: epoch() + Duration::hours(1),
                absolute_expires_at: epoch() + Duration::days(1),
                client: ClientInfo::default(),
                auth_methods: vec![AuthMethod::Password],
                settles: None,
            },
            &|_| Vec::new(),
        )
        .await
        .unwrap();
    let cache = CacheConfig {
        ttl: std::time::Duration::from_secs(10),
        negative_ttl: std::time::Duration::from_secs(5),
        capacity: 100,
    };
    let last_seen = || async { store.session(session.id).await.unwrap().unwrap().last_seen_at };

    // Asked to stop before it ever ran: what was queued is still written.
    let (validator, tasks) = Validator::new(Arc::clone(&store), tokens.clone(), cache);
    let first = epoch() + Duration::minutes(5);
    validator.validate(token.expose_secret(), &[], first).await.unwrap();
    tasks.last_seen.run(std::future::ready(())).await;
    assert_eq!(last_seen().await, first);

    // Never asked to stop: it writes what was queued and ends with its
    // validator.
    let (validator, tasks) = Validator::new(Arc::clone(&store), tokens, cache);
    let second = epoch() + Duration::minutes(10);
    validator.validate(token.expose_secret(), &[], second).await.unwrap();
    drop(validator);
    tokio::time::timeout(std::time::Duration::from_secs(10), tasks.last_seen.run(std::future::pending()))
        .await
        .expect("the writer outlived its validator");
    assert_eq!(last_seen().await, second);
    db.drop_database().await;
}
