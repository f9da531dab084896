//! Who may call what: a normal user manages only itself, the admin manages
//! everyone, a caller without a (valid) credential gets nothing, and
//! `ValidateToken`'s required scopes and `bypass_captcha` follow the scopes
//! a credential holds.

use portcullis::{
    domain::{
        Role,
        token::{TokenFormat, TokenKind},
    },
    proto::v1::{self as pb, validate_token_request::Credential},
};
use secrecy::ExposeSecret;
use tonic::{Code, Request, Status, metadata::MetadataValue};

use crate::support::{
    ADMIN_PASSWORD, Backend, TestApp, USER_PASSWORD, assert_error, bearer, count_rows, missing_scope,
};

crate::db_tests!(
    normal_user_is_forbidden_from_managing_other_users_and_sessions,
    normal_user_revoking_another_users_session_gets_not_found,
    normal_user_may_read_itself_and_manage_its_own_sessions,
    management_calls_without_a_credential_are_unauthenticated,
    management_calls_with_a_garbage_or_dead_credential_are_unauthenticated,
    admin_may_manage_any_user_and_session,
    a_role_change_applies_to_existing_sessions_at_once,
    validate_token_required_scopes_follow_the_credentials_scopes,
    login_with_bypass_captcha_needs_the_admin_login_scope,
);

const ADMIN_EMAIL: &str = "admin@example.com";
const ALICE: &str = "alice@example.com";
const USERS_READ: &str = "portcullis:users:read";
const USERS_WRITE: &str = "portcullis:users:write";
const SESSIONS_READ: &str = "portcullis:sessions:read";
const SESSIONS_WRITE: &str = "portcullis:sessions:write";
const ADMIN_LOGIN: &str = "portcullis:admin_login";
/// An id no user or session has.
const UNKNOWN_ID: i64 = 987_654_321;

/// An admin and a normal user, each logged in once.
struct Cast {
    admin_id: i64,
    admin: pb::IssuedSession,
    user_id: i64,
    user: pb::IssuedSession,
}

async fn cast(app: &TestApp) -> Cast {
    let admin_id = app.create_user(ADMIN_EMAIL, ADMIN_PASSWORD, Role::Admin).await;
    let user_id = app.create_user(ALICE, USER_PASSWORD, Role::User).await;
    Cast {
        admin_id,
        admin: app.login(ADMIN_EMAIL, ADMIN_PASSWORD).await,
        user_id,
        user: app.login(ALICE, USER_PASSWORD).await,
    }
}

/// Asserts `PERMISSION_DENIED` / `FORBIDDEN` naming `scope` as missing.
#[track_caller]
fn assert_forbidden(status: &Status, scope: &str) {
    assert_error(status, Code::PermissionDenied, "FORBIDDEN");
    assert_eq!(missing_scope(status).as_deref(), Some(scope), "wrong missing_scope in {status:?}");
}

/// `message` with `credential` as its bearer token, or with no credential.
fn request<T>(credential: Option<&str>, message: T) -> Request<T> {
    match credential {
        Some(token) => bearer(token, message),
        None => Request::new(message),
    }
}

fn disable_mask() -> prost_types::FieldMask {
    prost_types::FieldMask { paths: vec!["disabled".into()] }
}

/// A call's result without its response.
fn ok<T>(result: Result<T, Status>) -> Result<(), Status> {
    result.map(|_| ())
}

/// Makes every management call once with `credential` (or none), aimed at
/// the admin where a call names a target, and returns each call's result.
async fn call_every_management_rpc(
    app: &TestApp,
    credential: Option<&str>,
    target: &Cast,
) -> Vec<(&'static str, Result<(), Status>)> {
    let mut users = app.users();
    let mut auth = app.auth();
    vec![
        (
            "CreateUser",
            ok(users
                .create_user(request(
                    credential,
                    pb::CreateUserRequest {
                        email: "mallory@example.com".into(),
                        password: USER_PASSWORD.into(),
                        role: pb::Role::Admin as i32,
                        ..Default::default()
                    },
                ))
                .await),
        ),
        (
            "GetUser",
            ok(users.get_user(request(credential, pb::GetUserRequest { user_id: target.admin_id })).await),
        ),
        ("ListUsers", ok(users.list_users(request(credential, pb::ListUsersRequest::default())).await)),
        (
            "UpdateUser",
            ok(users
                .update_user(request(
                    credential,
                    pb::UpdateUserRequest {
                        user: Some(pb::User { id: target.admin_id, disabled: true, ..Default::default() }),
                        update_mask: Some(disable_mask()),
                    },
                ))
                .await),
        ),
        (
            "ChangePassword",
            ok(users
                .change_password(request(
                    credential,
                    pb::ChangePasswordRequest {
                        current_password: ADMIN_PASSWORD.into(),
                        new_password: "taken over password".into(),
                    },
                ))
                .await),
        ),
        (
            "SetPassword",
            ok(users
                .set_password(request(
                    credential,
                    pb::SetPasswordRequest {
                        user_id: target.admin_id,
                        new_password: "taken over password".into(),
                    },
                ))
                .await),
        ),
        (
            "ListSessions",
            ok(auth
                .list_sessions(request(
                    credential,
                    pb::ListSessionsRequest { user_id: target.admin_id, ..Default::default() },
                ))
                .await),
        ),
        (
            "RevokeSession",
            ok(auth
                .revoke_session(request(
                    credential,
                    pb::RevokeSessionRequest { session_id: target.admin.session_id },
                ))
                .await),
        ),
        (
            "RevokeSessions",
            ok(auth
                .revoke_sessions(request(
                    credential,
                    pb::RevokeSessionsRequest { user_id: target.admin_id, keep_current: false },
                ))
                .await),
        ),
    ]
}

/// Asserts that the admin is exactly as `cast` left it: its session valid,
/// still an admin, not disabled, its password unchanged.
async fn assert_admin_untouched(app: &TestApp, cast: &Cast) {
    let principal = app.validate(&cast.admin.token).await.unwrap();
    assert_eq!(principal.user_id, cast.admin_id);
    assert_eq!(principal.role, pb::Role::Admin as i32);
    let user = app
        .users()
        .get_user(bearer(&cast.admin.token, pb::GetUserRequest { user_id: 0 }))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert!(!user.disabled, "the admin was disabled");
    app.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
}

async fn normal_user_is_forbidden_from_managing_other_users_and_sessions(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let cast = cast(&app).await;
    let token = cast.user.token.as_str();
    let users_before = count_rows(&app.db, "users").await;
    let mut users = app.users();
    let mut auth = app.auth();

    let status = users
        .create_user(bearer(
            token,
            pb::CreateUserRequest {
                email: "bob@example.com".into(),
                password: USER_PASSWORD.into(),
                role: pb::Role::User as i32,
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_forbidden(&status, USERS_WRITE);
    let status = users.list_users(bearer(token, pb::ListUsersRequest::default())).await.unwrap_err();
    assert_forbidden(&status, USERS_READ);
    // Permission comes before existence: an unknown id is FORBIDDEN too.
    for user_id in [cast.admin_id, UNKNOWN_ID] {
        let status = users.get_user(bearer(token, pb::GetUserRequest { user_id })).await.unwrap_err();
        assert_forbidden(&status, USERS_READ);
        let status = users
            .update_user(bearer(
                token,
                pb::UpdateUserRequest {
                    user: Some(pb::User { id: user_id, disabled: true, ..Default::default() }),
                    update_mask: Some(disable_mask()),
                },
            ))
            .await
            .unwrap_err();
        assert_forbidden(&status, USERS_WRITE);
    }
    // Setting a password (the admin reset) is not for anyone's own account
    // either: a user changes its own with ChangePassword.
    for user_id in [cast.admin_id, cast.user_id, UNKNOWN_ID] {
        let status = users
            .set_password(bearer(
                token,
                pb::SetPasswordRequest { user_id, new_password: "taken over password".into() },
            ))
            .await
            .unwrap_err();
        assert_forbidden(&status, USERS_WRITE);
    }
    // No promoting oneself.
    let status = users
        .update_user(bearer(
            token,
            pb::UpdateUserRequest {
                user: Some(pb::User { id: cast.user_id, role: pb::Role::Admin as i32, ..Default::default() }),
                update_mask: Some(prost_types::FieldMask { paths: vec!["role".into()] }),
            },
        ))
        .await
        .unwrap_err();
    assert_forbidden(&status, USERS_WRITE);

    let status = auth
        .list_sessions(bearer(
            token,
            pb::ListSessionsRequest { user_id: cast.admin_id, ..Default::default() },
        ))
        .await
        .unwrap_err();
    assert_forbidden(&status, SESSIONS_READ);
    for keep_current in [false, true] {
        let status = auth
            .revoke_sessions(bearer(
                token,
                pb::RevokeSessionsRequest { user_id: cast.admin_id, keep_current },
            ))
            .await
            .unwrap_err();
        assert_forbidden(&status, SESSIONS_WRITE);
    }

    // Nothing changed.
    assert_eq!(count_rows(&app.db, "users").await, users_before);
    assert_admin_untouched(&app, &cast).await;
    let principal = app.validate(token).await.unwrap();
    assert_eq!(principal.role, pb::Role::User as i32);
    assert!(principal.scopes.is_empty(), "{:?}", principal.scopes);
    app.login(ALICE, USER_PASSWORD).await;
    app.stop().await;
}

async fn normal_user_revoking_another_users_session_gets_not_found(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let cast = cast(&app).await;
    let revoke = |session_id: i64| {
        let mut auth = app.auth();
        let request = bearer(&cast.user.token, pb::RevokeSessionRequest { session_id });
        async move { auth.revoke_session(request).await.unwrap_err() }
    };

    let theirs = revoke(cast.admin.session_id).await;
    assert_error(&theirs, Code::NotFound, "NOT_FOUND");
    // Indistinguishable from a session that does not exist.
    let missing = revoke(UNKNOWN_ID).await;
    assert_error(&missing, Code::NotFound, "NOT_FOUND");
    assert_eq!(theirs.message(), missing.message());
    assert_eq!(theirs.details(), missing.details());

    assert_admin_untouched(&app, &cast).await;
    app.stop().await;
}

async fn normal_user_may_read_itself_and_manage_its_own_sessions(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let cast = cast(&app).await;
    let token = cast.user.token.as_str();
    let mut users = app.users();
    let mut auth = app.auth();

    for user_id in [0, cast.user_id] {
        let user = users
            .get_user(bearer(token, pb::GetUserRequest { user_id }))
            .await
            .unwrap()
            .into_inner()
            .user
            .unwrap();
        assert_eq!(user.id, cast.user_id);
        assert_eq!(user.email, ALICE);
        assert_eq!(user.role, pb::Role::User as i32);
    }

    let second = app.login(ALICE, USER_PASSWORD).await;
    let third = app.login(ALICE, USER_PASSWORD).await;
    for user_id in [0, cast.user_id] {
        let page = auth
            .list_sessions(bearer(token, pb::ListSessionsRequest { user_id, ..Default::default() }))
            .await
            .unwrap()
            .into_inner();
        let mut ids: Vec<i64> = page.sessions.iter().map(|s| s.id).collect();
        ids.sort_unstable();
        let mut expected = vec![cast.user.session_id, second.session_id, third.session_id];
        expected.sort_unstable();
        assert_eq!(ids, expected, "only Alice's own sessions are listed");
        assert!(page.sessions.iter().all(|s| s.user_id == cast.user_id));
        let current: Vec<i64> = page.sessions.iter().filter(|s| s.current).map(|s| s.id).collect();
        assert_eq!(current, vec![cast.user.session_id]);
    }

    // One other session of her own.
    auth.revoke_session(bearer(token, pb::RevokeSessionRequest { session_id: second.session_id }))
        .await
        .unwrap();
    assert_error(&app.validate(&second.token).await.unwrap_err(), Code::Unauthenticated, "UNAUTHORIZED");
    // All her others.
    let revoked = auth
        .revoke_sessions(bearer(token, pb::RevokeSessionsRequest { user_id: 0, keep_current: true }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.revoked_count, 1);
    assert_error(&app.validate(&third.token).await.unwrap_err(), Code::Unauthenticated, "UNAUTHORIZED");
    app.validate(token).await.unwrap();
    // And the one she is using.
    auth.revoke_session(bearer(token, pb::RevokeSessionRequest { session_id: cast.user.session_id }))
        .await
        .unwrap();
    assert_error(&app.validate(token).await.unwrap_err(), Code::Unauthenticated, "UNAUTHORIZED");

    // None of it touched the admin.
    assert_admin_untouched(&app, &cast).await;
    app.stop().await;
}

async fn management_calls_without_a_credential_are_unauthenticated(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let cast = cast(&app).await;
    let users_before = count_rows(&app.db, "users").await;

    for (rpc, result) in call_every_management_rpc(&app, None, &cast).await {
        let status = result.expect_err(rpc);
        assert_error(&status, Code::Unauthenticated, "UNAUTHORIZED");
    }
    // A metadata entry that is not a credential is no credential.
    let mut request = Request::new(pb::ListUsersRequest::default());
    request.metadata_mut().insert("x-request-id", MetadataValue::from_static("abc"));
    let status = app.users().list_users(request).await.unwrap_err();
    assert_error(&status, Code::Unauthenticated, "UNAUTHORIZED");

    assert_eq!(count_rows(&app.db, "users").await, users_before);
    assert_admin_untouched(&app, &cast).await;
    app.stop().await;
}

async fn management_calls_with_a_garbage_or_dead_credential_are_unauthenticated(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let cast = cast(&app).await;
    let users_before = count_rows(&app.db, "users").await;
    // A session that has ended.
    let ended = app.login(ALICE, USER_PASSWORD).await.token;
    app.auth().logout(pb::LogoutRequest { token: ended.clone() }).await.unwrap();
    let api_key_shape =
        TokenFormat::new("pcs").generate(TokenKind::LiveKey).unwrap().0.expose_secret().to_owned();
    let admin = cast.admin.token.as_str();

    for credential in [
        "garbage".to_owned(),
        admin[..admin.len() - 1].to_owned(),
        admin.replacen("pcs_", "s4e_", 1),
        api_key_shape,
        ended,
    ] {
        for (rpc, result) in call_every_management_rpc(&app, Some(&credential), &cast).await {
            let status = result.expect_err(rpc);
            assert_error(&status, Code::Unauthenticated, "UNAUTHORIZED");
            assert!(!status.message().contains(&credential), "{rpc}: {status:?}");
        }
    }

    // A scheme that carries no token, and two different tokens.
    let mut request = Request::new(pb::ListUsersRequest::default());
    request.metadata_mut().insert("authorization", MetadataValue::from_static("Basic YWRtaW46cGFzc3dvcmQ="));
    let status = app.users().list_users(request).await.unwrap_err();
    assert_error(&status, Code::Unauthenticated, "UNAUTHORIZED");
    let mut request = bearer(admin, pb::ListUsersRequest::default());
    request.metadata_mut().insert("x-api-key", cast.user.token.parse().unwrap());
    let status = app.users().list_users(request).await.unwrap_err();
    assert_error(&status, Code::Unauthenticated, "UNAUTHORIZED");

    assert_eq!(count_rows(&app.db, "users").await, users_before);
    assert_admin_untouched(&app, &cast).await;

    // Past its lifetime the admin's own session opens nothing.
    app.clock.advance(chrono::Duration::hours(25));
    for (rpc, result) in call_every_management_rpc(&app, Some(admin), &cast).await {
        let status = result.expect_err(rpc);
        assert_error(&status, Code::Unauthenticated, "TOKEN_EXPIRED");
    }
    assert_eq!(count_rows(&app.db, "users").await, users_before);
    app.stop().await;
}

async fn admin_may_manage_any_user_and_session(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let cast = cast(&app).await;
    let admin = cast.admin.token.as_str();
    let mut users = app.users();
    let mut auth = app.auth();

    let bob = users
        .create_user(bearer(
            admin,
            pb::CreateUserRequest {
                email: "  Bob@Example.com ".into(),
                password: USER_PASSWORD.into(),
                role: pb::Role::User as i32,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(bob.email, "bob@example.com");
    app.login("bob@example.com", USER_PASSWORD).await;

    let listed = users.list_users(bearer(admin, pb::ListUsersRequest::default())).await.unwrap().into_inner();
    let ids: Vec<i64> = listed.users.iter().map(|u| u.id).collect();
    assert_eq!(ids, vec![cast.admin_id, cast.user_id, bob.id]);

    let alice = users
        .get_user(bearer(admin, pb::GetUserRequest { user_id: cast.user_id }))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(alice.email, ALICE);

    let updated = users
        .update_user(bearer(
            admin,
            pb::UpdateUserRequest {
                user: Some(pb::User {
                    id: cast.user_id,
                    session_lifetime: Some(prost_types::Duration { seconds: 10 * 3600, nanos: 0 }),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask { paths: vec!["session_lifetime".into()] }),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(updated.session_lifetime.map(|d| d.seconds), Some(10 * 3600));

    let sessions = auth
        .list_sessions(bearer(admin, pb::ListSessionsRequest { user_id: cast.user_id, ..Default::default() }))
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert_eq!(sessions.iter().map(|s| s.id).collect::<Vec<_>>(), vec![cast.user.session_id]);
    assert!(!sessions[0].current, "the admin's request is not Alice's");

    auth.revoke_session(bearer(admin, pb::RevokeSessionRequest { session_id: cast.user.session_id }))
        .await
        .unwrap();
    assert_error(&app.validate(&cast.user.token).await.unwrap_err(), Code::Unauthenticated, "UNAUTHORIZED");

    let a = app.login(ALICE, USER_PASSWORD).await.token;
    let b = app.login(ALICE, USER_PASSWORD).await.token;
    let revoked = auth
        .revoke_sessions(bearer(
            admin,
            pb::RevokeSessionsRequest { user_id: cast.user_id, keep_current: false },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.revoked_count, 2);
    for token in [&a, &b] {
        assert_error(&app.validate(token).await.unwrap_err(), Code::Unauthenticated, "UNAUTHORIZED");
    }

    let c = app.login(ALICE, USER_PASSWORD).await.token;
    let set = users
        .set_password(bearer(
            admin,
            pb::SetPasswordRequest { user_id: cast.user_id, new_password: "a brand new password".into() },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(set.revoked_sessions, 1);
    assert_error(&app.validate(&c).await.unwrap_err(), Code::Unauthenticated, "UNAUTHORIZED");
    let d = app.login(ALICE, "a brand new password").await.token;

    users
        .update_user(bearer(
            admin,
            pb::UpdateUserRequest {
                user: Some(pb::User { id: cast.user_id, disabled: true, ..Default::default() }),
                update_mask: Some(disable_mask()),
            },
        ))
        .await
        .unwrap();
    let status = app
        .auth()
        .login(pb::LoginRequest {
            email: ALICE.into(),
            password: "a brand new password".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_error(&status, Code::Unauthenticated, "UNAUTHORIZED");
    // Disabling stops the session she already had, at once.
    assert_error(&app.validate(&d).await.unwrap_err(), Code::Unauthenticated, "UNAUTHORIZED");

    // Through all of it, the admin's own session kept working.
    app.validate(admin).await.unwrap();
    app.stop().await;
}

async fn validate_token_required_scopes_follow_the_credentials_scopes(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let cast = cast(&app).await;
    let validate = |token: &str, scopes: &[&str]| {
        let mut auth = app.auth();
        let request = pb::ValidateTokenRequest {
            credential: Some(Credential::Token(token.to_owned())),
            required_scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        };
        async move { auth.validate_token(request).await }
    };
    let user = cast.user.token.as_str();
    let admin = cast.admin.token.as_str();

    validate(user, &[]).await.unwrap();
    for (scopes, missing) in [
        (&["assets:read"][..], "assets:read"),
        (&[USERS_READ][..], USERS_READ),
        (&[ADMIN_LOGIN][..], ADMIN_LOGIN),
    ] {
        let status = validate(user, scopes).await.unwrap_err();
        assert_forbidden(&status, missing);
        assert!(!status.message().contains(user));
    }

    for scopes in [
        &[USERS_READ][..],
        &[USERS_READ, USERS_WRITE, SESSIONS_READ, SESSIONS_WRITE][..],
        &[ADMIN_LOGIN][..],
        &["portcullis:*"][..],
    ] {
        let principal = validate(admin, scopes).await.unwrap().into_inner().principal.unwrap();
        assert_eq!(principal.user_id, cast.admin_id);
    }
    // The admin role holds `*`: it may grant any scope to an API key, so
    // its own session passes any scope check too.
    for scopes in [&["assets:read"][..], &[USERS_READ, "assets:read"][..], &["*"][..]] {
        let principal = validate(admin, scopes).await.unwrap().into_inner().principal.unwrap();
        assert_eq!(principal.scopes, vec!["*".to_owned()]);
    }

    // The same over the HTTP form.
    let status = app
        .auth()
        .validate_token(pb::ValidateTokenRequest {
            credential: Some(Credential::Http(pb::HttpCredential {
                headers: [("authorization".to_owned(), format!("Bearer {user}"))].into(),
                query: String::new(),
            })),
            required_scopes: vec!["assets:read".into()],
        })
        .await
        .unwrap_err();
    assert_forbidden(&status, "assets:read");
    app.stop().await;
}

async fn login_with_bypass_captcha_needs_the_admin_login_scope(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let cast = cast(&app).await;
    let sessions_before = count_rows(&app.db, "sessions").await;
    let verifications_before = app.domain.hasher().verification_count();
    let bypass = || pb::LoginRequest {
        email: ALICE.into(),
        password: USER_PASSWORD.into(),
        bypass_captcha: true,
        ..Default::default()
    };

    let status = app.auth().login(bypass()).await.unwrap_err();
    assert_forbidden(&status, ADMIN_LOGIN);
    let status = app.auth().login(bearer(&cast.user.token, bypass())).await.unwrap_err();
    assert_forbidden(&status, ADMIN_LOGIN);
    let status = app.auth().login(bearer("garbage", bypass())).await.unwrap_err();
    assert_error(&status, Code::Unauthenticated, "UNAUTHORIZED");
    // Refused before the password was even checked, and nothing written.
    assert_eq!(app.domain.hasher().verification_count(), verifications_before);
    assert_eq!(count_rows(&app.db, "sessions").await, sessions_before);

    let response = app.auth().login(bearer(&cast.admin.token, bypass())).await.unwrap().into_inner();
    let Some(pb::login_response::Result::Session(session)) = response.result else {
        panic!("expected a session, got {:?}", response.result);
    };
    assert_eq!(session.user.as_ref().map(|u| u.id), Some(cast.user_id));
    let principal = app.validate(&session.token).await.unwrap();
    assert_eq!(principal.user_id, cast.user_id);
    assert_eq!(principal.role, pb::Role::User as i32);
    assert_eq!(count_rows(&app.db, "sessions").await, sessions_before + 1);
    app.stop().await;
}

async fn a_role_change_applies_to_existing_sessions_at_once(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let cast = cast(&app).await;
    let alice = cast.user.token.as_str();
    let set_role = |role: pb::Role| {
        let mut users = app.users();
        let request = bearer(
            &cast.admin.token,
            pb::UpdateUserRequest {
                user: Some(pb::User { id: cast.user_id, role: role as i32, ..Default::default() }),
                update_mask: Some(prost_types::FieldMask { paths: vec!["role".into()] }),
            },
        );
        async move { users.update_user(request).await.unwrap() }
    };
    let list_users = || {
        let mut users = app.users();
        let request = bearer(alice, pb::ListUsersRequest::default());
        async move { users.list_users(request).await }
    };

    // Her session is validated (and cached) as a normal user's.
    assert_forbidden(&list_users().await.unwrap_err(), USERS_READ);
    set_role(pb::Role::Admin).await;
    assert_eq!(list_users().await.unwrap().into_inner().users.len(), 2);
    let principal = app.validate(alice).await.unwrap();
    assert_eq!(principal.role, pb::Role::Admin as i32);

    // Demoted: the same session loses the scopes on its next call.
    set_role(pb::Role::User).await;
    assert_forbidden(&list_users().await.unwrap_err(), USERS_READ);
    let status = app
        .auth()
        .validate_token(pb::ValidateTokenRequest {
            credential: Some(Credential::Token(alice.to_owned())),
            required_scopes: vec![USERS_READ.into()],
        })
        .await
        .unwrap_err();
    assert_forbidden(&status, USERS_READ);
    app.stop().await;
}
