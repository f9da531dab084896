//! KeyService: scoped API keys, accepted by ValidateToken in every form and
//! by the management calls; no escalation; rotation and revocation.

use std::collections::HashMap;

use chrono::Duration;
use portcullis::proto::v1::{self as pb, validate_token_request::Credential};
use tonic::{Code, Status};

use crate::support::{
    Backend, TestApp, USER_PASSWORD, assert_error, assert_invalid, bearer, count_rows, epoch, missing_scope,
};

crate::db_tests!(
    service_account_key_validates_in_every_form,
    key_scopes_gate_required_scopes_with_wildcards,
    key_scope_matrix_on_management_calls,
    no_escalation_when_creating_updating_or_rotating_keys,
    rotation_overlap_follows_the_clock,
    revocation_takes_effect_on_the_very_next_validation,
    expired_keys_and_disabled_owners_are_refused,
    bad_key_input_is_refused_and_writes_nothing,
    keys_are_listed_by_owner_in_pages,
    database_holds_no_plaintext_key,
    logs_never_contain_a_key_or_password,
    key_last_use_is_recorded_off_the_hot_path,
);

/// Creates a service account as `admin` and returns its id.
pub async fn service_account(app: &TestApp, admin: &str, email: &str) -> i64 {
    app.users()
        .create_user(bearer(
            admin,
            pb::CreateUserRequest {
                email: email.into(),
                kind: pb::UserKind::Service as i32,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap()
        .id
}

/// Creates a key as `caller`.
pub async fn create_key(
    app: &TestApp,
    caller: &str,
    owner_id: i64,
    scopes: &[&str],
) -> Result<pb::CreateApiKeyResponse, Status> {
    app.keys()
        .create_api_key(bearer(
            caller,
            pb::CreateApiKeyRequest {
                name: "test key".into(),
                scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
                owner_id,
                ..Default::default()
            },
        ))
        .await
        .map(tonic::Response::into_inner)
}

async fn validate_scopes(app: &TestApp, token: &str, required: &[&str]) -> Result<pb::Principal, Status> {
    app.auth()
        .validate_token(pb::ValidateTokenRequest {
            credential: Some(Credential::Token(token.into())),
            required_scopes: required.iter().map(|s| (*s).to_owned()).collect(),
        })
        .await
        .map(|r| r.into_inner().principal.unwrap())
}

async fn service_account_key_validates_in_every_form(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let admin = app.admin_token().await;
    let svc = service_account(&app, &admin, "billing-svc@example.com").await;
    let created = create_key(&app, &admin, svc, &["assets:read", "assets:write"]).await.unwrap();
    let key = created.key.clone();
    let meta = created.api_key.unwrap();
    assert!(key.starts_with("pcs_live_"), "{}", &key[..9]);
    assert_eq!(meta.owner_id, svc);
    assert_eq!(meta.environment, pb::KeyEnvironment::Live as i32);
    assert!(key.starts_with(meta.display_prefix.trim_end_matches('…')));
    assert!(meta.display_prefix.len() < 20);

    let forms: Vec<HashMap<String, String>> = vec![
        [("Authorization".into(), format!("Bearer {key}"))].into(),
        [("X-API-Key".into(), key.clone())].into(),
        [("authorization".into(), format!("Token {key}"))].into(),
    ];
    for headers in forms {
        let principal = app
            .auth()
            .validate_token(pb::ValidateTokenRequest {
                credential: Some(Credential::Http(pb::HttpCredential { headers, query: String::new() })),
                required_scopes: vec!["assets:read".into()],
            })
            .await
            .unwrap()
            .into_inner()
            .principal
            .unwrap();
        assert_eq!(principal.kind, pb::PrincipalKind::ApiKey as i32);
        assert_eq!(principal.credential_id, Some(pb::principal::CredentialId::KeyId(meta.id)));
        assert_eq!(principal.user_id, svc);
        assert_eq!(principal.email, "billing-svc@example.com");
        assert_eq!(principal.scopes, vec!["assets:read".to_owned(), "assets:write".to_owned()]);
        assert!(principal.auth_methods.is_empty());
        assert!(principal.expire_time.is_none());
    }
    let raw = validate_scopes(&app, &key, &[]).await.unwrap();
    assert_eq!(raw.user_id, svc);

    // A test-environment key says so in its string.
    let test_key = app
        .keys()
        .create_api_key(bearer(
            &admin,
            pb::CreateApiKeyRequest {
                name: "ci".into(),
                environment: pb::KeyEnvironment::Test as i32,
                owner_id: svc,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(test_key.key.starts_with("pcs_test_"));
    app.validate(&test_key.key).await.unwrap();

    // A service account never logs in with a password.
    let login = app
        .auth()
        .login(pb::LoginRequest {
            email: "billing-svc@example.com".into(),
            password: USER_PASSWORD.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_error(&login, Code::Unauthenticated, "UNAUTHORIZED");
    // And cannot be given one.
    let with_password = app
        .users()
        .create_user(bearer(
            &admin,
            pb::CreateUserRequest {
                email: "svc2@example.com".into(),
                password: USER_PASSWORD.into(),
                kind: pb::UserKind::Service as i32,
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_invalid(&with_password, "password");
    let set = app
        .users()
        .set_password(bearer(
            &admin,
            pb::SetPasswordRequest { user_id: svc, new_password: USER_PASSWORD.into() },
        ))
        .await
        .unwrap_err();
    assert_invalid(&set, "user_id");
    app.stop().await;
}

async fn key_scopes_gate_required_scopes_with_wildcards(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let admin = app.admin_token().await;
    let svc = service_account(&app, &admin, "svc@example.com").await;
    let wildcard = create_key(&app, &admin, svc, &["assets:*"]).await.unwrap().key;
    validate_scopes(&app, &wildcard, &["assets:read", "assets:write"]).await.unwrap();
    let denied = validate_scopes(&app, &wildcard, &["assets:read", "billing:read"]).await.unwrap_err();
    assert_error(&denied, Code::PermissionDenied, "FORBIDDEN");
    assert_eq!(missing_scope(&denied).as_deref(), Some("billing:read"));

    let exact = create_key(&app, &admin, svc, &["assets:read"]).await.unwrap().key;
    validate_scopes(&app, &exact, &["assets:read"]).await.unwrap();
    let denied = validate_scopes(&app, &exact, &["assets:write"]).await.unwrap_err();
    assert_eq!(missing_scope(&denied).as_deref(), Some("assets:write"));

    let everything = create_key(&app, &admin, svc, &["*"]).await.unwrap().key;
    validate_scopes(&app, &everything, &["anything:at_all", "portcullis:users:write"]).await.unwrap();

    let nothing = create_key(&app, &admin, svc, &[]).await.unwrap().key;
    validate_scopes(&app, &nothing, &[]).await.unwrap();
    assert!(validate_scopes(&app, &nothing, &["assets:read"]).await.is_err());
    app.stop().await;
}

/// The management calls and the scope each needs when aimed at another user.
const MATRIX: &[&str] = &[
    "portcullis:users:read",
    "portcullis:users:write",
    "portcullis:sessions:read",
    "portcullis:sessions:write",
    "portcullis:keys:read",
    "portcullis:keys:write",
];

fn ok<T>(result: Result<tonic::Response<T>, Status>) -> Result<(), Status> {
    result.map(|_| ())
}

async fn call(app: &TestApp, key: &str, needed: &str, target: i64, round: usize) -> Result<(), Status> {
    match needed {
        "portcullis:users:read" => {
            ok(app.users().get_user(bearer(key, pb::GetUserRequest { user_id: target })).await)?;
            ok(app.users().list_users(bearer(key, pb::ListUsersRequest::default())).await)
        }
        "portcullis:users:write" => {
            ok(app
                .users()
                .create_user(bearer(
                    key,
                    pb::CreateUserRequest {
                        email: format!("made{round}@example.com"),
                        password: USER_PASSWORD.into(),
                        ..Default::default()
                    },
                ))
                .await)?;
            ok(app
                .users()
                .update_user(bearer(
                    key,
                    pb::UpdateUserRequest {
                        user: Some(pb::User {
                            id: target,
                            role: pb::Role::User as i32,
                            ..Default::default()
                        }),
                        update_mask: Some(prost_types::FieldMask { paths: vec!["role".into()] }),
                    },
                ))
                .await)?;
            ok(app
                .users()
                .set_password(bearer(
                    key,
                    pb::SetPasswordRequest { user_id: target, new_password: USER_PASSWORD.into() },
                ))
                .await)
        }
        "portcullis:sessions:read" => ok(app
            .auth()
            .list_sessions(bearer(key, pb::ListSessionsRequest { user_id: target, ..Default::default() }))
            .await),
        "portcullis:sessions:write" => ok(app
            .auth()
            .revoke_sessions(bearer(key, pb::RevokeSessionsRequest { user_id: target, keep_current: false }))
            .await),
        "portcullis:keys:read" => ok(app
            .keys()
            .list_api_keys(bearer(key, pb::ListApiKeysRequest { owner_id: target, ..Default::default() }))
            .await),
        "portcullis:keys:write" => ok(app
            .keys()
            .create_api_key(bearer(
                key,
                pb::CreateApiKeyRequest { name: "made".into(), owner_id: target, ..Default::default() },
            ))
            .await),
        other => panic!("no call for {other}"),
    }
}

async fn key_scope_matrix_on_management_calls(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let admin = app.admin_token().await;
    let svc = service_account(&app, &admin, "ops@example.com").await;
    let target = app.create_user("target@example.com", USER_PASSWORD, portcullis::domain::Role::User).await;
    for (round, needed) in MATRIX.iter().enumerate() {
        // Every other management scope, but not this one: refused, naming it.
        let others: Vec<&str> = MATRIX.iter().copied().filter(|s| s != needed).collect();
        let without = create_key(&app, &admin, svc, &others).await.unwrap().key;
        let refused = call(&app, &without, needed, target, round).await.unwrap_err();
        assert_error(&refused, Code::PermissionDenied, "FORBIDDEN");
        assert_eq!(missing_scope(&refused).as_deref(), Some(*needed), "{needed}");

        // Just this one (or its wildcard): allowed.
        let with = create_key(&app, &admin, svc, &[needed]).await.unwrap().key;
        call(&app, &with, needed, target, round + 100).await.unwrap_or_else(|s| panic!("{needed}: {s:?}"));
        let wildcard = create_key(&app, &admin, svc, &["portcullis:*"]).await.unwrap().key;
        call(&app, &wildcard, needed, target, round + 200)
            .await
            .unwrap_or_else(|s| panic!("{needed}: {s:?}"));
    }
    // No credential at all: unauthenticated, before anything else.
    let anonymous = app.users().list_users(pb::ListUsersRequest::default()).await.unwrap_err();
    assert_error(&anonymous, Code::Unauthenticated, "UNAUTHORIZED");
    app.stop().await;
}

async fn no_escalation_when_creating_updating_or_rotating_keys(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let admin = app.admin_token().await;
    let svc = service_account(&app, &admin, "svc@example.com").await;
    let other = service_account(&app, &admin, "other@example.com").await;

    // A user session holds no scopes: it may make scope-less keys for itself only.
    app.create_user("uma@example.com", USER_PASSWORD, portcullis::domain::Role::User).await;
    let user = app.login("uma@example.com", USER_PASSWORD).await.token;
    let refused = create_key(&app, &user, 0, &["assets:read"]).await.unwrap_err();
    assert_error(&refused, Code::PermissionDenied, "FORBIDDEN");
    assert_eq!(missing_scope(&refused).as_deref(), Some("assets:read"));
    let own = create_key(&app, &user, 0, &[]).await.unwrap();
    assert_eq!(own.api_key.unwrap().owner_id, app.validate(&user).await.unwrap().user_id);
    let for_other = create_key(&app, &user, other, &[]).await.unwrap_err();
    assert_eq!(missing_scope(&for_other).as_deref(), Some("portcullis:keys:write"));

    // A key manager that holds assets:read can hand out only that.
    let manager = create_key(&app, &admin, svc, &["portcullis:keys:write", "assets:read"]).await.unwrap().key;
    let granted = create_key(&app, &manager, other, &["assets:read"]).await.unwrap();
    for wider in [&["assets:write"][..], &["assets:*"], &["*"], &["assets:read", "billing:read"]] {
        let refused = create_key(&app, &manager, other, wider).await.unwrap_err();
        assert_error(&refused, Code::PermissionDenied, "FORBIDDEN");
    }
    let granted_id = granted.api_key.unwrap().id;
    let widen = app
        .keys()
        .update_api_key(bearer(
            &manager,
            pb::UpdateApiKeyRequest {
                api_key: Some(pb::ApiKey {
                    id: granted_id,
                    scopes: vec!["billing:read".into()],
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask { paths: vec!["scopes".into()] }),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(missing_scope(&widen).as_deref(), Some("billing:read"));

    // Rotating hands out a fresh secret: only for a caller holding the key's scopes.
    let admin_key = create_key(&app, &admin, other, &["billing:read"]).await.unwrap().api_key.unwrap().id;
    let rotate = app
        .keys()
        .rotate_api_key(bearer(&manager, pb::RotateApiKeyRequest { key_id: admin_key, overlap: None }))
        .await
        .unwrap_err();
    assert_eq!(missing_scope(&rotate).as_deref(), Some("billing:read"));

    // The plain user cannot see or touch other owners' keys: not found.
    for status in [
        app.keys().get_api_key(bearer(&user, pb::GetApiKeyRequest { key_id: granted_id })).await.unwrap_err(),
        app.keys()
            .revoke_api_key(bearer(&user, pb::RevokeApiKeyRequest { key_id: granted_id }))
            .await
            .unwrap_err(),
        app.keys()
            .rotate_api_key(bearer(&user, pb::RotateApiKeyRequest { key_id: granted_id, overlap: None }))
            .await
            .unwrap_err(),
    ] {
        assert_error(&status, Code::NotFound, "NOT_FOUND");
    }
    app.stop().await;
}

async fn rotation_overlap_follows_the_clock(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let admin = app.admin_token().await;
    let svc = service_account(&app, &admin, "svc@example.com").await;
    let first = create_key(&app, &admin, svc, &["assets:read"]).await.unwrap();
    let first_id = first.api_key.unwrap().id;
    app.validate(&first.key).await.unwrap();

    let rotated = app
        .keys()
        .rotate_api_key(bearer(
            &admin,
            pb::RotateApiKeyRequest {
                key_id: first_id,
                overlap: Some(prost_types::Duration { seconds: 3600, nanos: 0 }),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let new_meta = rotated.api_key.unwrap();
    assert_ne!(rotated.key, first.key);
    assert_eq!(new_meta.rotated_from_id, first_id);
    assert_eq!(new_meta.scopes, vec!["assets:read".to_owned()]);
    assert_eq!(
        rotated.previous.unwrap().revoke_time.unwrap().seconds,
        (epoch() + Duration::hours(1)).timestamp()
    );
    app.validate(&rotated.key).await.unwrap();
    app.validate(&first.key).await.unwrap();
    app.clock.advance(Duration::minutes(59));
    app.validate(&first.key).await.unwrap();
    app.clock.advance(Duration::minutes(1));
    assert_error(&app.validate(&first.key).await.unwrap_err(), Code::Unauthenticated, "UNAUTHORIZED");
    app.validate(&rotated.key).await.unwrap();

    // Without an overlap the old key stops at once; a retired key cannot be rotated again.
    let again = app
        .keys()
        .rotate_api_key(bearer(&admin, pb::RotateApiKeyRequest { key_id: new_meta.id, overlap: None }))
        .await
        .unwrap()
        .into_inner();
    assert!(app.validate(&rotated.key).await.is_err());
    app.validate(&again.key).await.unwrap();
    let retired = app
        .keys()
        .rotate_api_key(bearer(&admin, pb::RotateApiKeyRequest { key_id: new_meta.id, overlap: None }))
        .await
        .unwrap_err();
    assert_invalid(&retired, "key_id");
    app.stop().await;
}

async fn revocation_takes_effect_on_the_very_next_validation(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let admin = app.admin_token().await;
    let svc = service_account(&app, &admin, "svc@example.com").await;
    let created = create_key(&app, &admin, svc, &["assets:read"]).await.unwrap();
    let id = created.api_key.unwrap().id;
    // Warm the cache.
    app.validate(&created.key).await.unwrap();
    app.validate(&created.key).await.unwrap();
    let revoked = app
        .keys()
        .revoke_api_key(bearer(&admin, pb::RevokeApiKeyRequest { key_id: id }))
        .await
        .unwrap()
        .into_inner()
        .api_key
        .unwrap();
    assert_eq!(revoked.revoke_time.unwrap().seconds, epoch().timestamp());
    assert_error(&app.validate(&created.key).await.unwrap_err(), Code::Unauthenticated, "UNAUTHORIZED");

    // Revoking again is idempotent: same answer, same revocation time.
    app.clock.advance(Duration::minutes(5));
    let again = app
        .keys()
        .revoke_api_key(bearer(&admin, pb::RevokeApiKeyRequest { key_id: id }))
        .await
        .unwrap()
        .into_inner()
        .api_key
        .unwrap();
    assert_eq!(again.revoke_time, revoked.revoke_time);
    let unknown = app
        .keys()
        .revoke_api_key(bearer(&admin, pb::RevokeApiKeyRequest { key_id: 999_999 }))
        .await
        .unwrap_err();
    assert_error(&unknown, Code::NotFound, "NOT_FOUND");

    // A key can revoke itself.
    let own = create_key(&app, &admin, svc, &[]).await.unwrap();
    app.keys()
        .revoke_api_key(bearer(&own.key, pb::RevokeApiKeyRequest { key_id: own.api_key.unwrap().id }))
        .await
        .unwrap();
    assert!(app.validate(&own.key).await.is_err());
    app.stop().await;
}

async fn expired_keys_and_disabled_owners_are_refused(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let admin = app.admin_token().await;
    let svc = service_account(&app, &admin, "svc@example.com").await;
    let expiring = app
        .keys()
        .create_api_key(bearer(
            &admin,
            pb::CreateApiKeyRequest {
                name: "short".into(),
                owner_id: svc,
                expire_time: Some(prost_types::Timestamp {
                    seconds: (epoch() + Duration::hours(1)).timestamp(),
                    nanos: 0,
                }),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let principal = app.validate(&expiring.key).await.unwrap();
    assert_eq!(principal.expire_time.unwrap().seconds, (epoch() + Duration::hours(1)).timestamp());
    app.clock.advance(Duration::hours(1));
    assert_error(&app.validate(&expiring.key).await.unwrap_err(), Code::Unauthenticated, "TOKEN_EXPIRED");

    let key = create_key(&app, &admin, svc, &[]).await.unwrap().key;
    app.validate(&key).await.unwrap();
    app.users()
        .update_user(bearer(
            &admin,
            pb::UpdateUserRequest {
                user: Some(pb::User { id: svc, disabled: true, ..Default::default() }),
                update_mask: Some(prost_types::FieldMask { paths: vec!["disabled".into()] }),
            },
        ))
        .await
        .unwrap();
    assert_error(&app.validate(&key).await.unwrap_err(), Code::Unauthenticated, "UNAUTHORIZED");
    app.stop().await;
}

async fn bad_key_input_is_refused_and_writes_nothing(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let admin = app.admin_token().await;
    let svc = service_account(&app, &admin, "svc@example.com").await;
    let good = create_key(&app, &admin, svc, &["assets:read"]).await.unwrap();
    let rows = count_rows(&app.db, "api_keys").await;

    let request = |name: &str, scopes: &[&str]| pb::CreateApiKeyRequest {
        name: name.into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        owner_id: svc,
        ..Default::default()
    };
    let too_many: Vec<String> = (0..65).map(|i| format!("s{i}:read")).collect();
    let cases: Vec<(pb::CreateApiKeyRequest, &str)> = vec![
        (request("", &[]), "name"),
        (request("   ", &[]), "name"),
        (request(&"n".repeat(101), &[]), "name"),
        (request("ok", &["Assets:Read"]), "scopes"),
        (request("ok", &["assets"]), "scopes"),
        (request("ok", &["assets:"]), "scopes"),
        (pb::CreateApiKeyRequest { scopes: too_many, ..request("ok", &[]) }, "scopes"),
        (pb::CreateApiKeyRequest { environment: 9, ..request("ok", &[]) }, "environment"),
        (
            pb::CreateApiKeyRequest {
                expire_time: Some(prost_types::Timestamp { seconds: epoch().timestamp() - 1, nanos: 0 }),
                ..request("ok", &[])
            },
            "expire_time",
        ),
        (pb::CreateApiKeyRequest { owner_id: -4, ..request("ok", &[]) }, "owner_id"),
    ];
    for (bad, field) in cases {
        let status = app.keys().create_api_key(bearer(&admin, bad)).await.unwrap_err();
        assert_invalid(&status, field);
    }
    let unknown_owner = app
        .keys()
        .create_api_key(bearer(&admin, pb::CreateApiKeyRequest { owner_id: 424_242, ..request("ok", &[]) }))
        .await
        .unwrap_err();
    assert_error(&unknown_owner, Code::NotFound, "NOT_FOUND");
    assert_eq!(count_rows(&app.db, "api_keys").await, rows, "a refused request wrote a key");

    // Unknown ids, bad masks and page tokens.
    let get = app.keys().get_api_key(bearer(&admin, pb::GetApiKeyRequest { key_id: 777 })).await.unwrap_err();
    assert_error(&get, Code::NotFound, "NOT_FOUND");
    let zero = app.keys().get_api_key(bearer(&admin, pb::GetApiKeyRequest { key_id: 0 })).await.unwrap_err();
    assert_invalid(&zero, "key_id");
    let mask = app
        .keys()
        .update_api_key(bearer(
            &admin,
            pb::UpdateApiKeyRequest {
                api_key: Some(pb::ApiKey { id: good.api_key.as_ref().unwrap().id, ..Default::default() }),
                update_mask: Some(prost_types::FieldMask { paths: vec!["owner_id".into()] }),
            },
        ))
        .await
        .unwrap_err();
    assert_invalid(&mask, "update_mask");
    let page = app
        .keys()
        .list_api_keys(bearer(
            &admin,
            pb::ListApiKeysRequest { owner_id: svc, page_token: "nope".into(), ..Default::default() },
        ))
        .await
        .unwrap_err();
    assert_invalid(&page, "page_token");
    let overlap = app
        .keys()
        .rotate_api_key(bearer(
            &admin,
            pb::RotateApiKeyRequest {
                key_id: good.api_key.as_ref().unwrap().id,
                overlap: Some(prost_types::Duration { seconds: 8 * 24 * 3600, nanos: 0 }),
            },
        ))
        .await
        .unwrap_err();
    assert_invalid(&overlap, "overlap");
    assert_eq!(count_rows(&app.db, "api_keys").await, rows);

    // A key string with a valid prefix and a wrong checksum, truncated, or altered.
    let key = good.key;
    let mut wrong_checksum = key.clone();
    let last = wrong_checksum.pop().unwrap();
    wrong_checksum.push(if last == 'a' { 'b' } else { 'a' });
    for bad in [wrong_checksum, key[..key.len() - 1].to_owned(), key.replacen("pcs_live_", "pcs_test_", 1)] {
        let status = app.validate(&bad).await.unwrap_err();
        assert_error(&status, Code::Unauthenticated, "UNAUTHORIZED");
        assert!(!status.message().contains(&key[9..]));
    }
    app.stop().await;
}

async fn keys_are_listed_by_owner_in_pages(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let admin = app.admin_token().await;
    let svc = service_account(&app, &admin, "svc@example.com").await;
    let other = service_account(&app, &admin, "other@example.com").await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(create_key(&app, &admin, svc, &[]).await.unwrap().api_key.unwrap().id);
    }
    create_key(&app, &admin, other, &[]).await.unwrap();
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = app
            .keys()
            .list_api_keys(bearer(&admin, pb::ListApiKeysRequest { owner_id: svc, page_size: 2, page_token }))
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.api_keys.iter().map(|k| k.id));
        assert!(page.api_keys.iter().all(|k| k.owner_id == svc));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    ids.reverse();
    assert_eq!(seen, ids, "newest first, only the owner's");

    // A key lists its own owner's keys without any scope.
    let own = create_key(&app, &admin, other, &[]).await.unwrap().key;
    let listed =
        app.keys().list_api_keys(bearer(&own, pb::ListApiKeysRequest::default())).await.unwrap().into_inner();
    assert_eq!(listed.api_keys.len(), 2);
    app.stop().await;
}

/// Everything the database holds, as text (bytea as hex, blobs as bytes).
async fn database_dump(app: &TestApp) -> Vec<u8> {
    use sea_orm::{ConnectionTrait, Database, Statement};
    if app.db.url.starts_with("sqlite:") {
        let path = app.db.url.trim_start_matches("sqlite://").split('?').next().unwrap().to_owned();
        let mut bytes = std::fs::read(&path).unwrap();
        if let Ok(wal) = std::fs::read(format!("{path}-wal")) {
            bytes.extend(wal);
        }
        return bytes;
    }
    let conn = Database::connect(&app.db.url).await.unwrap();
    let backend = conn.get_database_backend();
    let tables = conn
        .query_all_raw(Statement::from_string(
            backend,
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'",
        ))
        .await
        .unwrap();
    let mut dump = Vec::new();
    for table in tables {
        let name: String = table.try_get("", "table_name").unwrap();
        let rows = conn
            .query_all_raw(Statement::from_string(
                backend,
                format!("SELECT row_to_json(t)::text AS row FROM {name} t"),
            ))
            .await
            .unwrap();
        for row in rows {
            let text: String = row.try_get("", "row").unwrap();
            dump.extend(text.into_bytes());
        }
    }
    conn.close().await.unwrap();
    dump
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

async fn database_holds_no_plaintext_key(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let admin = app.admin_token().await;
    let svc = service_account(&app, &admin, "svc@example.com").await;
    let mut secrets = vec![admin.clone()];
    for scopes in [&["assets:read"][..], &[], &["*"]] {
        let created = create_key(&app, &admin, svc, scopes).await.unwrap();
        app.validate(&created.key).await.unwrap();
        secrets.push(created.key);
    }
    let rotated = app
        .keys()
        .rotate_api_key(bearer(
            &admin,
            pb::RotateApiKeyRequest {
                key_id: 2,
                overlap: Some(prost_types::Duration { seconds: 60, nanos: 0 }),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    secrets.push(rotated.key);
    let dump = database_dump(&app).await;
    assert!(contains(&dump, "svc@example.com"), "the dump should see ordinary data");
    for secret in &secrets {
        // The secret part (after `pcs_xxxx_`), in full and its first half.
        let body = secret.splitn(3, '_').nth(2).unwrap();
        assert!(!contains(&dump, body), "a token or key is stored in plain text");
        assert!(!contains(&dump, &body[..16]), "part of a token or key is stored in plain text");
    }
    assert!(!contains(&dump, USER_PASSWORD) && !contains(&dump, crate::support::ADMIN_PASSWORD));
    app.stop().await;
}

async fn logs_never_contain_a_key_or_password(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let admin = app.admin_token().await;
    let svc = service_account(&app, &admin, "svc@example.com").await;
    let created = create_key(&app, &admin, svc, &["assets:read"]).await.unwrap();
    let key = created.key;
    // Successful and failing calls of every kind with the key and the admin token.
    app.validate(&key).await.unwrap();
    let _ = validate_scopes(&app, &key, &["billing:read"]).await;
    let _ = app.validate(&format!("{key}x")).await;
    let _ = app.keys().list_api_keys(bearer(&key, pb::ListApiKeysRequest::default())).await;
    let _ = app.users().list_users(bearer(&key, pb::ListUsersRequest::default())).await;
    let rotated = app
        .keys()
        .rotate_api_key(bearer(
            &admin,
            pb::RotateApiKeyRequest { key_id: created.api_key.unwrap().id, overlap: None },
        ))
        .await
        .unwrap()
        .into_inner()
        .key;
    let _ = app.validate(&key).await;
    let _ = app
        .auth()
        .login(pb::LoginRequest {
            email: "admin@example.com".into(),
            password: "wrong password!".into(),
            ..Default::default()
        })
        .await;
    let logs = crate::support::captured_logs();
    assert!(logs.contains("api key created"), "logs were not captured");
    for secret in [
        key.as_str(),
        rotated.as_str(),
        admin.as_str(),
        "wrong password!",
        USER_PASSWORD,
        crate::support::ADMIN_PASSWORD,
    ] {
        let body = secret.rsplit('_').next().unwrap();
        assert!(!logs.contains(body), "a secret reached the logs");
    }
    app.stop().await;
}

async fn key_last_use_is_recorded_off_the_hot_path(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let admin = app.admin_token().await;
    let svc = service_account(&app, &admin, "svc@example.com").await;
    let created = create_key(&app, &admin, svc, &[]).await.unwrap();
    let id = created.api_key.unwrap().id;
    app.clock.advance(Duration::minutes(3));
    for _ in 0..5 {
        app.validate(&created.key).await.unwrap();
    }
    let used_at = (epoch() + Duration::minutes(3)).timestamp();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let key = app
            .keys()
            .get_api_key(bearer(&admin, pb::GetApiKeyRequest { key_id: id }))
            .await
            .unwrap()
            .into_inner()
            .api_key
            .unwrap();
        if key.last_used_time.as_ref().map(|t| t.seconds) == Some(used_at) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "last use never written: {key:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    app.stop().await;
}
