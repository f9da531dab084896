//! Bad input: every malformed field gets `INVALID_ARGUMENT` naming it (or the
//! S4E code a bad credential deserves), never `INTERNAL`, never a message
//! that echoes the secret sent, and never a write.

use portcullis::{
    domain::{
        Role,
        token::{TokenFormat, TokenKind},
    },
    proto::v1::{self as pb, validate_token_request::Credential},
};
use secrecy::ExposeSecret;
use tonic::{Code, Status};

use crate::support::{
    ADMIN_PASSWORD, Backend, TestApp, USER_PASSWORD, assert_error, assert_invalid, bearer, count_rows,
};

crate::db_tests!(
    login_with_malformed_fields_is_invalid_and_hashes_nothing,
    create_user_with_bad_input_is_refused_and_inserts_no_row,
    password_calls_with_bad_passwords_are_invalid_and_change_nothing,
    validate_token_refuses_tampered_foreign_and_junk_tokens_as_unauthorized,
    validate_token_without_a_token_or_with_a_malformed_scope_is_invalid,
    validate_token_over_http_with_two_different_tokens_is_unauthorized,
    listing_with_a_garbage_page_token_is_invalid,
    update_user_with_a_bad_mask_or_value_is_invalid_and_changes_nothing,
    refresh_and_logout_with_empty_or_garbage_token_are_refused_and_end_no_session,
    calls_on_unknown_user_or_session_ids_are_not_found,
    calls_with_zero_or_negative_ids_are_invalid,
);

const ADMIN_EMAIL: &str = "admin@example.com";
const ALICE: &str = "alice@example.com";

/// A well-formed email of exactly `len` bytes: a 64-byte local part and
/// labels of at most 63 bytes, so only the total length can be at fault.
fn email_of_len(len: usize) -> String {
    let last_label = len - 64 - 1 - 2 * 64 - ".com".len();
    let email =
        format!("{}@{}.{}.{}.com", "a".repeat(64), "b".repeat(63), "c".repeat(63), "d".repeat(last_label));
    assert_eq!(email.len(), len);
    email
}

/// An email one byte over the 254-byte limit, otherwise well formed.
fn overlong_email() -> String {
    email_of_len(255)
}

/// Asserts that a refusal neither says `secret` in its message nor carries
/// it in its details.
#[track_caller]
fn assert_not_echoed(status: &Status, secret: &str) {
    if secret.is_empty() {
        return;
    }
    assert!(
        !status.message().contains(secret),
        "the status message echoes the secret: {:?}",
        status.message()
    );
    let details = String::from_utf8_lossy(status.details());
    assert!(!details.contains(secret), "the status details echo the secret");
}

/// Asserts the S4E `unauthorized` answer: `UNAUTHENTICATED` / `UNAUTHORIZED`.
#[track_caller]
fn assert_unauthorized(status: &Status) {
    assert_error(status, Code::Unauthenticated, "UNAUTHORIZED");
}

/// Creates the admin and returns its id and session token.
async fn admin(app: &TestApp) -> (i64, String) {
    let id = app.create_user(ADMIN_EMAIL, ADMIN_PASSWORD, Role::Admin).await;
    (id, app.login(ADMIN_EMAIL, ADMIN_PASSWORD).await.token)
}

fn duration(seconds: i64, nanos: i32) -> prost_types::Duration {
    prost_types::Duration { seconds, nanos }
}

async fn login(app: &TestApp, request: pb::LoginRequest) -> Status {
    match app.auth().login(request).await {
        Ok(response) => panic!("login accepted: {:?}", response.into_inner()),
        Err(status) => status,
    }
}

async fn login_with_malformed_fields_is_invalid_and_hashes_nothing(backend: Backend) {
    let app = TestApp::start(&backend).await;
    // A real account, so a refusal can only come from the malformed field.
    app.create_user(ALICE, USER_PASSWORD, Role::User).await;
    let sessions_before = count_rows(&app.db, "sessions").await;
    let verifications_before = app.domain.hasher().verification_count();
    let valid =
        || pb::LoginRequest { email: ALICE.into(), password: USER_PASSWORD.into(), ..Default::default() };

    for email in [
        String::new(),
        "   ".to_owned(),
        "no-at-sign".to_owned(),
        "a@".to_owned(),
        "@example.com".to_owned(),
        "a b@example.com".to_owned(),
        overlong_email(),
    ] {
        let status = login(&app, pb::LoginRequest { email, ..valid() }).await;
        assert_invalid(&status, "email");
        assert_not_echoed(&status, USER_PASSWORD);
    }

    for password in [
        String::new(),
        "secret7".to_owned(),
        // 7 characters in 13 bytes: characters are what count.
        "\u{e4}\u{e4}\u{e4}\u{e4}\u{e4}\u{e4}a".to_owned(),
        "p".repeat(1025),
        // 1,023 bytes as sent, over 11,000 once NFKC-normalised.
        "\u{fdfa}".repeat(341),
    ] {
        let status = login(&app, pb::LoginRequest { password: password.clone(), ..valid() }).await;
        assert_invalid(&status, "password");
        assert_not_echoed(&status, &password);
    }

    let client = |ip: &str, user_agent: String, device_label: String| pb::LoginRequest {
        client: Some(pb::ClientInfo { ip: ip.into(), user_agent, device_label }),
        ..valid()
    };
    for (request, field) in [
        (client("192.0.2.1", "u".repeat(513), String::new()), "client.user_agent"),
        (client("192.0.2.1", String::new(), "d".repeat(129)), "client.device_label"),
        (client("not-an-ip", String::new(), String::new()), "client.ip"),
        (client("300.1.2.3", String::new(), String::new()), "client.ip"),
        (client("192.0.2.1; DROP TABLE users", String::new(), String::new()), "client.ip"),
        (client(&"1".repeat(65), String::new(), String::new()), "client.ip"),
    ] {
        let status = login(&app, request).await;
        assert_invalid(&status, field);
        assert_not_echoed(&status, USER_PASSWORD);
    }

    for (lifetime, why) in [
        (duration(-1, 0), "negative"),
        (duration(0, -5), "negative nanos"),
        (duration(60, 1_000_000_000), "nanos out of range"),
        (duration(0, 0), "zero"),
        (duration(i64::MAX, 999_999_999), "beyond any date"),
        (duration(i64::MIN, 0), "most negative"),
    ] {
        let status = login(&app, pb::LoginRequest { session_lifetime: Some(lifetime), ..valid() }).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{why}: {status:?}");
        assert_invalid(&status, "session_lifetime");
    }

    // Nothing was hashed, no session was written...
    assert_eq!(
        app.domain.hasher().verification_count(),
        verifications_before,
        "malformed input reached the password hasher"
    );
    assert_eq!(count_rows(&app.db, "sessions").await, sessions_before);
    // (The limits are not off by one: a 254-byte email and a 1,024-byte
    // password are well formed, just not an account.)
    let status = login(
        &app,
        pb::LoginRequest { email: email_of_len(254), password: "p".repeat(1024), ..Default::default() },
    )
    .await;
    assert_error(&status, Code::Unauthenticated, "UNAUTHORIZED");
    // ...and the account itself works: the refusals were about the input.
    app.login(ALICE, USER_PASSWORD).await;
    assert_eq!(count_rows(&app.db, "sessions").await, sessions_before + 1);
    app.stop().await;
}

async fn create_user_with_bad_input_is_refused_and_inserts_no_row(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let (_, admin) = admin(&app).await;
    let created = app
        .users()
        .create_user(bearer(
            &admin,
            pb::CreateUserRequest {
                email: "dup@example.com".into(),
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
    assert_eq!(created.email, "dup@example.com");
    let users_before = count_rows(&app.db, "users").await;

    let valid = || pb::CreateUserRequest {
        email: "bob@example.com".into(),
        password: USER_PASSWORD.into(),
        role: pb::Role::User as i32,
        ..Default::default()
    };
    let create = |request: pb::CreateUserRequest| {
        let mut users = app.users();
        let admin = admin.clone();
        async move {
            match users.create_user(bearer(&admin, request)).await {
                Ok(response) => panic!("user created: {:?}", response.into_inner()),
                Err(status) => status,
            }
        }
    };

    for email in [String::new(), "no-at-sign".to_owned(), "a@".to_owned(), overlong_email()] {
        let status = create(pb::CreateUserRequest { email, ..valid() }).await;
        assert_invalid(&status, "email");
        assert_not_echoed(&status, USER_PASSWORD);
    }
    for password in [String::new(), "secret7".to_owned(), "p".repeat(1025)] {
        let status = create(pb::CreateUserRequest { password: password.clone(), ..valid() }).await;
        assert_invalid(&status, "password");
        assert_not_echoed(&status, &password);
    }
    for role in [99, -1, 3] {
        let status = create(pb::CreateUserRequest { role, ..valid() }).await;
        assert_invalid(&status, "role");
    }
    for lifetime in [
        duration(-60, 0),
        duration(30, 0),
        duration(0, -1),
        duration(i64::MAX, 0),
        // Longer than the absolute session lifetime.
        duration(10 * 365 * 24 * 3600, 0),
    ] {
        let status = create(pb::CreateUserRequest { session_lifetime: Some(lifetime), ..valid() }).await;
        assert_invalid(&status, "session_lifetime");
    }
    // The same address, differently typed.
    for email in ["DUP@example.com", "  Dup@Example.COM  ", "\tdup@example.com\n"] {
        let status = create(pb::CreateUserRequest { email: email.into(), ..valid() }).await;
        assert_error(&status, Code::AlreadyExists, "ALREADY_EXISTS");
        assert_not_echoed(&status, USER_PASSWORD);
    }

    assert_eq!(count_rows(&app.db, "users").await, users_before);
    // The original keeps its password: the duplicate did not overwrite it.
    app.login("dup@example.com", USER_PASSWORD).await;

    // The limits are not off by one.
    let user = app
        .users()
        .create_user(bearer(
            &admin,
            pb::CreateUserRequest { email: email_of_len(254), password: "p".repeat(1024), ..valid() },
        ))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(user.email, email_of_len(254));
    assert_eq!(count_rows(&app.db, "users").await, users_before + 1);
    app.stop().await;
}

async fn password_calls_with_bad_passwords_are_invalid_and_change_nothing(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let (_, admin) = admin(&app).await;
    let alice_id = app.create_user(ALICE, USER_PASSWORD, Role::User).await;
    let alice = app.login(ALICE, USER_PASSWORD).await.token;
    let bad_passwords = [String::new(), "secret7".to_owned(), "p".repeat(1025), "\u{fdfa}".repeat(341)];

    for bad in &bad_passwords {
        let status = app
            .users()
            .set_password(bearer(
                &admin,
                pb::SetPasswordRequest { user_id: alice_id, new_password: bad.clone() },
            ))
            .await
            .unwrap_err();
        assert_invalid(&status, "new_password");
        assert_not_echoed(&status, bad);

        let status = app
            .users()
            .change_password(bearer(
                &alice,
                pb::ChangePasswordRequest {
                    current_password: USER_PASSWORD.into(),
                    new_password: bad.clone(),
                },
            ))
            .await
            .unwrap_err();
        assert_invalid(&status, "new_password");
        assert_not_echoed(&status, bad);
        assert_not_echoed(&status, USER_PASSWORD);

        let status = app
            .users()
            .change_password(bearer(
                &alice,
                pb::ChangePasswordRequest {
                    current_password: bad.clone(),
                    new_password: "a brand new password".into(),
                },
            ))
            .await
            .unwrap_err();
        assert_invalid(&status, "current_password");
        assert_not_echoed(&status, bad);
        assert_not_echoed(&status, "a brand new password");
    }
    // A well-formed but wrong current password is S4E's `unauthorized`.
    let status = app
        .users()
        .change_password(bearer(
            &alice,
            pb::ChangePasswordRequest {
                current_password: "not the password".into(),
                new_password: "a brand new password".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_error(&status, Code::Unauthenticated, "UNAUTHORIZED");
    assert_not_echoed(&status, "not the password");
    assert_not_echoed(&status, "a brand new password");

    // The password and the session are as they were.
    app.validate(&alice).await.unwrap();
    app.login(ALICE, USER_PASSWORD).await;
    app.stop().await;
}

async fn validate_token_refuses_tampered_foreign_and_junk_tokens_as_unauthorized(backend: Backend) {
    let app = TestApp::start(&backend).await;
    app.create_user(ALICE, USER_PASSWORD, Role::User).await;
    let token = app.login(ALICE, USER_PASSWORD).await.token;
    assert!(token.starts_with("pcs_sess_"), "unexpected token shape");

    let body_start = "pcs_sess_".len();
    let altered_at = |i: usize| {
        let mut bytes = token.clone().into_bytes();
        bytes[i] = if bytes[i] == b'a' { b'b' } else { b'a' };
        String::from_utf8(bytes).unwrap()
    };
    let format = TokenFormat::new("pcs");
    let generated = |kind| format.generate(kind).unwrap().0.expose_secret().to_owned();

    let mut refused = vec![
        ("truncated by one", token[..token.len() - 1].to_owned()),
        ("one extra character", format!("{token}a")),
        ("secret changed", altered_at(body_start + 3)),
        ("checksum changed", altered_at(token.len() - 1)),
        ("another server's prefix", token.replacen("pcs_", "s4e_", 1)),
        ("upper-cased", token.to_uppercase()),
        ("kind marker changed", token.replacen("_sess_", "_live_", 1)),
        ("live API key shape", generated(TokenKind::LiveKey)),
        ("test API key shape", generated(TokenKind::TestKey)),
        ("session never issued", generated(TokenKind::Session)),
        ("pending MFA never issued", generated(TokenKind::MfaPending)),
        ("10 KiB of junk", "x".repeat(10 * 1024)),
        ("10 KiB after the token", format!("{token}{}", "y".repeat(10 * 1024))),
        ("unicode", "\u{fc}n\u{ef}c\u{f6}d\u{e9} \u{1f510} \u{442}\u{43e}\u{43a}\u{435}\u{43d}".to_owned()),
        ("right-to-left override", format!("\u{202e}{token}")),
        ("NUL inside", format!("{}\0{}", &token[..20], &token[21..])),
        // The right byte length, but the body is not ASCII.
        ("multibyte body", format!("pcs_sess_{}", "\u{e9}".repeat(18))),
        ("prefix only", "pcs_sess_".to_owned()),
        ("Bearer scheme inside", format!("Bearer {token}")),
    ];
    for i in body_start..token.len() {
        refused.push(("each single-character change", altered_at(i)));
    }
    for (why, bad) in &refused {
        let status = match app.validate(bad).await {
            Ok(principal) => panic!("{why}: accepted as {principal:?}"),
            Err(status) => status,
        };
        assert_ne!(status.code(), Code::Internal, "{why}: {status:?}");
        assert_error(&status, Code::Unauthenticated, "UNAUTHORIZED");
        assert_not_echoed(&status, bad);
        assert_not_echoed(&status, &token);
    }

    // The genuine token is untouched by all of that.
    let principal = app.validate(&token).await.unwrap();
    assert_eq!(principal.email, ALICE);
    app.stop().await;
}

async fn validate_token_without_a_token_or_with_a_malformed_scope_is_invalid(backend: Backend) {
    let app = TestApp::start(&backend).await;
    app.create_user(ALICE, USER_PASSWORD, Role::User).await;
    let token = app.login(ALICE, USER_PASSWORD).await.token;
    let validate = |credential: Option<Credential>, required_scopes: Vec<String>| {
        let mut auth = app.auth();
        async move { auth.validate_token(pb::ValidateTokenRequest { credential, required_scopes }).await }
    };

    let status = validate(Some(Credential::Token(String::new())), vec![]).await.unwrap_err();
    assert_invalid(&status, "token");
    let status = validate(None, vec![]).await.unwrap_err();
    assert_invalid(&status, "credential");

    for scope in ["Not A Scope", "", "assets", "assets:", ":read", "Assets:read", "a:*:b"] {
        let status =
            validate(Some(Credential::Token(token.clone())), vec!["assets:read".into(), scope.into()])
                .await
                .unwrap_err();
        assert_invalid(&status, "required_scopes");
        assert_not_echoed(&status, &token);
    }
    let long_scope = format!("assets:{}", "r".repeat(200));
    let status = validate(Some(Credential::Token(token.clone())), vec![long_scope]).await.unwrap_err();
    assert_invalid(&status, "required_scopes");

    // An HTTP request with no credential in it is S4E's `unauthorized`.
    let http = |headers: Vec<(&str, String)>, query: &str| {
        Some(Credential::Http(pb::HttpCredential {
            headers: headers.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            query: query.into(),
        }))
    };
    for (headers, query) in [
        (vec![], ""),
        (vec![("accept", "text/html".to_owned())], "page=2"),
        (vec![("authorization", "Bearer ".to_owned())], ""),
        (vec![("authorization", "Basic dXNlcjpwYXNz".to_owned())], ""),
    ] {
        let status = validate(http(headers, query), vec![]).await.unwrap_err();
        assert_unauthorized(&status);
    }
    // An oversized header or query is refused unread.
    let huge = format!("Bearer {token}{}", " ".repeat(17 * 1024));
    let status = validate(http(vec![("authorization", huge)], ""), vec![]).await.unwrap_err();
    assert_invalid(&status, "headers");
    assert_not_echoed(&status, &token);
    let huge_query = format!("token={token}&pad={}", "z".repeat(17 * 1024));
    let status = validate(http(vec![], &huge_query), vec![]).await.unwrap_err();
    assert_invalid(&status, "query");
    assert_not_echoed(&status, &token);

    // The token itself is fine.
    validate(Some(Credential::Token(token)), vec![]).await.unwrap();
    app.stop().await;
}

async fn validate_token_over_http_with_two_different_tokens_is_unauthorized(backend: Backend) {
    let app = TestApp::start(&backend).await;
    app.create_user(ALICE, USER_PASSWORD, Role::User).await;
    // Two genuine sessions: neither token may silently win.
    let a = app.login(ALICE, USER_PASSWORD).await.token;
    let b = app.login(ALICE, USER_PASSWORD).await.token;
    let validate = |headers: Vec<(&str, String)>, query: String| {
        let mut auth = app.auth();
        let request = pb::ValidateTokenRequest {
            credential: Some(Credential::Http(pb::HttpCredential {
                headers: headers.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
                query,
            })),
            required_scopes: vec![],
        };
        async move { auth.validate_token(request).await }
    };

    for (headers, query) in [
        (vec![("Authorization", format!("Bearer {a}")), ("X-API-Key", b.clone())], String::new()),
        (vec![("authorization", format!("Token {a}"))], format!("token={b}")),
        (vec![("cookie", format!("portcullis_session={a}"))], format!("token={b}")),
        (vec![("x-api-key", a.clone())], format!("token={a}&token={b}")),
        (vec![("x-api-key", a.clone())], format!("token={}", "garbage")),
    ] {
        let status = validate(headers, query).await.unwrap_err();
        assert_unauthorized(&status);
        assert_not_echoed(&status, &a);
        assert_not_echoed(&status, &b);
    }

    // The same token in two places is one credential.
    let principal = validate(
        vec![("Authorization", format!("Bearer {a}")), ("X-API-Key", a.clone())],
        format!("token={a}"),
    )
    .await
    .unwrap()
    .into_inner()
    .principal
    .unwrap();
    assert_eq!(principal.email, ALICE);
    app.stop().await;
}

async fn listing_with_a_garbage_page_token_is_invalid(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let (_, admin) = admin(&app).await;
    for page_token in ["garbage", "42", "p1.", "p1.-3", "p1.x", "p2.5", "p1.0"] {
        let status = app
            .users()
            .list_users(bearer(&admin, pb::ListUsersRequest { page_size: 10, page_token: page_token.into() }))
            .await
            .unwrap_err();
        assert_invalid(&status, "page_token");

        let status = app
            .auth()
            .list_sessions(bearer(
                &admin,
                pb::ListSessionsRequest { user_id: 0, page_size: 10, page_token: page_token.into() },
            ))
            .await
            .unwrap_err();
        assert_invalid(&status, "page_token");
    }
    app.stop().await;
}

async fn update_user_with_a_bad_mask_or_value_is_invalid_and_changes_nothing(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let (_, admin) = admin(&app).await;
    let alice_id = app.create_user(ALICE, USER_PASSWORD, Role::User).await;
    let get_alice = || {
        let mut users = app.users();
        let admin = admin.clone();
        async move {
            users
                .get_user(bearer(&admin, pb::GetUserRequest { user_id: alice_id }))
                .await
                .unwrap()
                .into_inner()
                .user
                .unwrap()
        }
    };
    let before = get_alice().await;
    let changed =
        || pb::User { id: alice_id, role: pb::Role::Admin as i32, disabled: true, ..Default::default() };
    let mask = |paths: &[&str]| {
        Some(prost_types::FieldMask { paths: paths.iter().map(|p| (*p).to_owned()).collect() })
    };
    let update = |user: Option<pb::User>, update_mask: Option<prost_types::FieldMask>| {
        let mut users = app.users();
        let admin = admin.clone();
        async move {
            match users.update_user(bearer(&admin, pb::UpdateUserRequest { user, update_mask })).await {
                Ok(response) => panic!("update accepted: {:?}", response.into_inner()),
                Err(status) => status,
            }
        }
    };

    assert_invalid(&update(Some(changed()), None).await, "update_mask");
    assert_invalid(&update(Some(changed()), mask(&[])).await, "update_mask");
    assert_invalid(&update(Some(changed()), mask(&["email"])).await, "update_mask");
    assert_invalid(&update(Some(changed()), mask(&["id"])).await, "update_mask");
    // One bad path refuses the whole change, not just that path.
    assert_invalid(&update(Some(changed()), mask(&["disabled", "email"])).await, "update_mask");
    assert_invalid(&update(None, mask(&["disabled"])).await, "user");
    for role in [pb::Role::Unspecified as i32, 99] {
        let user = pb::User { role, ..changed() };
        assert_invalid(&update(Some(user), mask(&["disabled", "role"])).await, "user.role");
    }
    // Negative, and well formed but shorter than the one-minute minimum:
    // either way the field at fault is `user.session_lifetime`.
    for lifetime in [duration(-1, 0), duration(30, 0)] {
        let user = pb::User { session_lifetime: Some(lifetime), ..changed() };
        assert_invalid(
            &update(Some(user), mask(&["disabled", "session_lifetime"])).await,
            "user.session_lifetime",
        );
    }

    let after = get_alice().await;
    assert_eq!(after, before, "a refused update changed the user");
    // Alice can still log in: she was not disabled.
    app.login(ALICE, USER_PASSWORD).await;
    app.stop().await;
}

async fn refresh_and_logout_with_empty_or_garbage_token_are_refused_and_end_no_session(backend: Backend) {
    let app = TestApp::start(&backend).await;
    app.create_user(ALICE, USER_PASSWORD, Role::User).await;
    let token = app.login(ALICE, USER_PASSWORD).await.token;
    let sessions_before = count_rows(&app.db, "sessions").await;
    let api_key_shape =
        TokenFormat::new("pcs").generate(TokenKind::LiveKey).unwrap().0.expose_secret().to_owned();

    let status =
        app.auth().refresh_session(pb::RefreshSessionRequest { token: String::new() }).await.unwrap_err();
    assert_invalid(&status, "token");
    for bad in [
        "garbage".to_owned(),
        token[..token.len() - 1].to_owned(),
        token.replacen("pcs_", "s4e_", 1),
        api_key_shape.clone(),
        "\u{1f510}".repeat(100),
    ] {
        let status =
            app.auth().refresh_session(pb::RefreshSessionRequest { token: bad.clone() }).await.unwrap_err();
        assert_unauthorized(&status);
        assert_not_echoed(&status, &bad);
    }

    // Logout with no token at all: neither in the body nor in the metadata.
    let status = app.auth().logout(pb::LogoutRequest { token: String::new() }).await.unwrap_err();
    assert_unauthorized(&status);
    for bad in [
        "garbage".to_owned(),
        token[..token.len() - 1].to_owned(),
        token.replacen("pcs_", "s4e_", 1),
        api_key_shape,
    ] {
        let status = app.auth().logout(pb::LogoutRequest { token: bad.clone() }).await.unwrap_err();
        assert_unauthorized(&status);
        assert_not_echoed(&status, &bad);
        // The same garbage as the caller's bearer token.
        let status =
            app.auth().logout(bearer(&bad, pb::LogoutRequest { token: String::new() })).await.unwrap_err();
        assert_unauthorized(&status);
        assert_not_echoed(&status, &bad);
    }

    // No session was written or ended.
    assert_eq!(count_rows(&app.db, "sessions").await, sessions_before);
    app.validate(&token).await.unwrap();
    app.stop().await;
}

async fn calls_on_unknown_user_or_session_ids_are_not_found(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let (_, admin) = admin(&app).await;
    let users_before = count_rows(&app.db, "users").await;
    let unknown = 987_654_321;

    let status =
        app.users().get_user(bearer(&admin, pb::GetUserRequest { user_id: unknown })).await.unwrap_err();
    assert_error(&status, Code::NotFound, "NOT_FOUND");

    let new_password = "a brand new password";
    let status = app
        .users()
        .set_password(bearer(
            &admin,
            pb::SetPasswordRequest { user_id: unknown, new_password: new_password.into() },
        ))
        .await
        .unwrap_err();
    assert_error(&status, Code::NotFound, "NOT_FOUND");
    assert_not_echoed(&status, new_password);

    let status = app
        .users()
        .update_user(bearer(
            &admin,
            pb::UpdateUserRequest {
                user: Some(pb::User { id: unknown, disabled: true, ..Default::default() }),
                update_mask: Some(prost_types::FieldMask { paths: vec!["disabled".into()] }),
            },
        ))
        .await
        .unwrap_err();
    assert_error(&status, Code::NotFound, "NOT_FOUND");

    let status = app
        .auth()
        .revoke_session(bearer(&admin, pb::RevokeSessionRequest { session_id: unknown }))
        .await
        .unwrap_err();
    assert_error(&status, Code::NotFound, "NOT_FOUND");

    assert_eq!(count_rows(&app.db, "users").await, users_before);
    // The admin's own session survived the revocation attempt.
    app.validate(&admin).await.unwrap();
    app.stop().await;
}

async fn calls_with_zero_or_negative_ids_are_invalid(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let (_, admin) = admin(&app).await;

    let status = app.users().get_user(bearer(&admin, pb::GetUserRequest { user_id: -1 })).await.unwrap_err();
    assert_invalid(&status, "user_id");
    for user_id in [0, -1] {
        let status = app
            .users()
            .set_password(bearer(
                &admin,
                pb::SetPasswordRequest { user_id, new_password: "a brand new password".into() },
            ))
            .await
            .unwrap_err();
        assert_invalid(&status, "user_id");
        let status = app
            .users()
            .update_user(bearer(
                &admin,
                pb::UpdateUserRequest {
                    user: Some(pb::User { id: user_id, disabled: true, ..Default::default() }),
                    update_mask: Some(prost_types::FieldMask { paths: vec!["disabled".into()] }),
                },
            ))
            .await
            .unwrap_err();
        assert_invalid(&status, "user.id");
        let status = app
            .auth()
            .revoke_session(bearer(&admin, pb::RevokeSessionRequest { session_id: user_id }))
            .await
            .unwrap_err();
        assert_invalid(&status, "session_id");
    }
    for user_id in [-1, i64::MIN] {
        let status = app
            .auth()
            .list_sessions(bearer(&admin, pb::ListSessionsRequest { user_id, ..Default::default() }))
            .await
            .unwrap_err();
        assert_invalid(&status, "user_id");
        let status = app
            .auth()
            .revoke_sessions(bearer(&admin, pb::RevokeSessionsRequest { user_id, keep_current: false }))
            .await
            .unwrap_err();
        assert_invalid(&status, "user_id");
    }

    // The admin is untouched: its session still works.
    app.validate(&admin).await.unwrap();
    app.stop().await;
}
