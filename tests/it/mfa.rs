//! Second factors through the real server: TOTP enrolment and login, codes
//! used once (also in parallel and after a restart), emailed codes over a
//! real SMTP conversation, recovery codes, attempt limits and expiry.

use chrono::Duration;
use portcullis::{
    config::{Config, MailTransport, SmtpTls},
    domain::Role,
    proto::v1::{self as pb},
};
use tonic::{Code, Status};

use crate::{
    smtp::SmtpSink,
    support::{Backend, TestApp, USER_PASSWORD, assert_error, assert_invalid, bearer, count_rows, epoch},
};

crate::db_tests!(
    totp_enrol_confirm_and_login_with_a_second_factor,
    a_totp_code_is_accepted_once_even_after_a_restart,
    fifty_parallel_verifications_with_one_totp_code_succeed_once,
    fifty_parallel_verifications_with_one_recovery_code_succeed_once,
    emailed_codes_travel_over_smtp_and_complete_only_their_login,
    pending_login_dies_after_five_wrong_codes_and_on_expiry,
    emailed_code_attempts_and_expiry,
    disabling_mfa_needs_password_and_code,
    recovery_codes_regenerate_and_each_works_once,
    an_admin_can_reset_a_users_mfa,
    bad_mfa_input_is_refused_and_counts_nothing,
    email_method_is_unavailable_without_smtp,
);

const EMAIL: &str = "mona@example.com";

pub(crate) fn with_smtp(sink: &SmtpSink) -> impl FnOnce(&mut Config) + '_ {
    move |c: &mut Config| {
        c.mail_transport = MailTransport::Smtp;
        c.smtp_host = "127.0.0.1".into();
        c.smtp_port = sink.port;
        c.smtp_tls = SmtpTls::None;
        c.smtp_from = "portcullis <auth@example.com>".into();
    }
}

/// The TOTP code for `secret` (base32) at the app's current time.
pub(crate) fn totp_code(app: &TestApp, secret: &str) -> String {
    let bytes = totp_rs::Secret::try_from_base32(secret).unwrap();
    let generator = totp_rs::Builder::new().with_secret(bytes).build().unwrap();
    let now = u64::try_from(app.clock.now().timestamp()).unwrap();
    generator.generate(now).to_string()
}

trait Now {
    fn now(&self) -> chrono::DateTime<chrono::Utc>;
}

impl Now for portcullis::domain::ManualClock {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        portcullis::domain::Clock::now(self)
    }
}

async fn login(app: &TestApp, email: &str) -> pb::login_response::Result {
    app.auth()
        .login(pb::LoginRequest { email: email.into(), password: USER_PASSWORD.into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .result
        .unwrap()
}

async fn mfa_login(app: &TestApp, email: &str) -> pb::MfaChallenge {
    match login(app, email).await {
        pb::login_response::Result::Mfa(challenge) => challenge,
        pb::login_response::Result::Session(_) => panic!("expected an MFA challenge"),
    }
}

async fn verify(
    app: &TestApp,
    mfa_token: &str,
    method: pb::MfaMethod,
    code: &str,
) -> Result<pb::IssuedSession, Status> {
    app.auth()
        .verify_mfa(pb::VerifyMfaRequest {
            mfa_token: mfa_token.into(),
            code: code.into(),
            method: method as i32,
        })
        .await
        .map(|r| r.into_inner().session.unwrap())
}

/// A user with TOTP on: its session token, the base32 secret and recovery codes.
pub async fn user_with_totp(app: &TestApp, email: &str) -> (String, String, Vec<String>) {
    app.create_user(email, USER_PASSWORD, Role::User).await;
    let token = app.login(email, USER_PASSWORD).await.token;
    let enrolled =
        app.users().enroll_totp(bearer(&token, pb::EnrollTotpRequest {})).await.unwrap().into_inner();
    let code = totp_code(app, &enrolled.secret);
    let confirmed =
        app.users().confirm_totp(bearer(&token, pb::ConfirmTotpRequest { code })).await.unwrap().into_inner();
    // The confirming code's step is used up: move to the next step.
    app.clock.advance(Duration::seconds(30));
    (token, enrolled.secret, confirmed.recovery_codes)
}

async fn failed_attempts(app: &TestApp, email: &str) -> i64 {
    use sea_orm::{ConnectionTrait, Database, Statement};
    let conn = Database::connect(&app.db.url).await.unwrap();
    let backend = conn.get_database_backend();
    let sql = match backend {
        sea_orm::DatabaseBackend::Postgres => "SELECT failed_attempts AS n FROM users WHERE email = $1",
        _ => "SELECT failed_attempts AS n FROM users WHERE email = ?",
    };
    let row = conn
        .query_one_raw(Statement::from_sql_and_values(backend, sql, [email.into()]))
        .await
        .unwrap()
        .unwrap();
    let n: i32 = row.try_get("", "n").unwrap();
    conn.close().await.unwrap();
    i64::from(n)
}

async fn totp_enrol_confirm_and_login_with_a_second_factor(backend: Backend) {
    let app = TestApp::start(&backend).await;
    app.create_user(EMAIL, USER_PASSWORD, Role::User).await;
    let other_device = app.login(EMAIL, USER_PASSWORD).await.token;
    let token = app.login(EMAIL, USER_PASSWORD).await.token;

    let enrolled =
        app.users().enroll_totp(bearer(&token, pb::EnrollTotpRequest {})).await.unwrap().into_inner();
    assert!(
        enrolled.otpauth_uri.starts_with("otpauth://totp/portcullis:mona%40example.com?"),
        "{}",
        enrolled.otpauth_uri
    );
    assert!(enrolled.otpauth_uri.contains(&format!("secret={}", enrolled.secret)));
    assert!(enrolled.qr_code_png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert_eq!(enrolled.secret.len(), 32, "160-bit secret in base32");
    // Nothing is on until confirmed: login still gives a session.
    assert!(matches!(login(&app, EMAIL).await, pb::login_response::Result::Session(_)));

    let wrong = app
        .users()
        .confirm_totp(bearer(&token, pb::ConfirmTotpRequest { code: "000000".into() }))
        .await
        .unwrap_err();
    assert_error(&wrong, Code::Unauthenticated, "UNAUTHORIZED");
    let confirmed = app
        .users()
        .confirm_totp(bearer(&token, pb::ConfirmTotpRequest { code: totp_code(&app, &enrolled.secret) }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(confirmed.recovery_codes.len(), 10);
    // Turning MFA on revoked the other sessions, not this one.
    assert_error(&app.validate(&other_device).await.unwrap_err(), Code::Unauthenticated, "UNAUTHORIZED");
    app.validate(&token).await.unwrap();
    let me =
        app.users().get_user(bearer(&token, pb::GetUserRequest { user_id: 0 })).await.unwrap().into_inner();
    assert_eq!(
        me.user.unwrap().mfa_methods,
        vec![pb::MfaMethod::Totp as i32, pb::MfaMethod::RecoveryCode as i32]
    );

    app.clock.advance(Duration::seconds(30));
    let challenge = mfa_login(&app, EMAIL).await;
    assert!(challenge.mfa_token.starts_with("pcs_mfa_"));
    assert_eq!(challenge.methods, vec![pb::MfaMethod::Totp as i32, pb::MfaMethod::RecoveryCode as i32]);
    assert_eq!(challenge.expire_time.unwrap().seconds, (app.clock.now() + Duration::minutes(5)).timestamp());

    // The pending token is no session: refused everywhere but the MFA calls.
    let pending = &challenge.mfa_token;
    assert_error(&app.validate(pending).await.unwrap_err(), Code::PermissionDenied, "MFA_REQUIRED");
    let listed =
        app.auth().list_sessions(bearer(pending, pb::ListSessionsRequest::default())).await.unwrap_err();
    assert_error(&listed, Code::PermissionDenied, "MFA_REQUIRED");
    let enrol = app.users().enroll_totp(bearer(pending, pb::EnrollTotpRequest {})).await.unwrap_err();
    assert_error(&enrol, Code::PermissionDenied, "MFA_REQUIRED");
    let refresh =
        app.auth().refresh_session(pb::RefreshSessionRequest { token: pending.clone() }).await.unwrap_err();
    assert_error(&refresh, Code::Unauthenticated, "UNAUTHORIZED");
    let logout = app.auth().logout(pb::LogoutRequest { token: pending.clone() }).await.unwrap_err();
    assert_error(&logout, Code::Unauthenticated, "UNAUTHORIZED");

    let code = totp_code(&app, &enrolled.secret);
    let session = verify(&app, pending, pb::MfaMethod::Totp, &code).await.unwrap();
    assert_ne!(&session.token, pending);
    assert!(session.token.starts_with("pcs_sess_"));
    let principal = app.validate(&session.token).await.unwrap();
    assert_eq!(principal.auth_methods, vec![pb::AuthMethod::Password as i32, pb::AuthMethod::Totp as i32]);
    // Used once: the pending token is dead now.
    let again = verify(&app, pending, pb::MfaMethod::Totp, &code).await.unwrap_err();
    assert_error(&again, Code::Unauthenticated, "UNAUTHORIZED");
    assert_error(&app.validate(pending).await.unwrap_err(), Code::Unauthenticated, "UNAUTHORIZED");

    // The TOTP secret is sealed at rest.
    if app.db.url.starts_with("sqlite:") {
        let path = app.db.url.trim_start_matches("sqlite://").split('?').next().unwrap().to_owned();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend(std::fs::read(format!("{path}-wal")).unwrap_or_default());
        let raw = totp_rs::Secret::try_from_base32(&enrolled.secret).unwrap();
        assert!(!bytes.windows(enrolled.secret.len()).any(|w| w == enrolled.secret.as_bytes()));
        assert!(!bytes.windows(raw.as_ref().len()).any(|w| w == raw.as_ref()));
    }
    app.stop().await;
}

async fn a_totp_code_is_accepted_once_even_after_a_restart(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let (_, secret, _) = user_with_totp(&app, EMAIL).await;
    let code = totp_code(&app, &secret);
    let first = mfa_login(&app, EMAIL).await;
    verify(&app, &first.mfa_token, pb::MfaMethod::Totp, &code).await.unwrap();

    // The same code on a second login, on a restarted server over the same database.
    let app = app.restart_with(|_| {}).await;
    let second = mfa_login(&app, EMAIL).await;
    let replay = verify(&app, &second.mfa_token, pb::MfaMethod::Totp, &code).await.unwrap_err();
    assert_error(&replay, Code::Unauthenticated, "UNAUTHORIZED");
    assert_eq!(replay.message(), "invalid or expired code");
    // A code of the previous step (within skew, but before the accepted one) is refused too.
    app.clock.advance(Duration::seconds(30));
    let generator = totp_rs::Builder::new()
        .with_secret(totp_rs::Secret::try_from_base32(&secret).unwrap())
        .build()
        .unwrap();
    let earlier =
        generator.generate(u64::try_from((app.clock.now() - Duration::seconds(60)).timestamp()).unwrap());
    assert!(verify(&app, &second.mfa_token, pb::MfaMethod::Totp, &earlier.to_string()).await.is_err());
    // The next step's code works.
    verify(&app, &second.mfa_token, pb::MfaMethod::Totp, &totp_code(&app, &secret)).await.unwrap();
    app.stop().await;
}

async fn fifty_parallel_verifications_with_one_totp_code_succeed_once(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let (_, secret, _) = user_with_totp(&app, EMAIL).await;
    let mut pending = Vec::new();
    for _ in 0..50 {
        pending.push(mfa_login(&app, EMAIL).await.mfa_token);
    }
    let code = totp_code(&app, &secret);
    let calls: Vec<_> = pending
        .into_iter()
        .map(|token| {
            let (mut auth, code) = (app.auth(), code.clone());
            tokio::spawn(async move {
                auth.verify_mfa(pb::VerifyMfaRequest {
                    mfa_token: token,
                    code,
                    method: pb::MfaMethod::Totp as i32,
                })
                .await
            })
        })
        .collect();
    let mut successes = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => successes += 1,
            Err(status) => assert_error(&status, Code::Unauthenticated, "UNAUTHORIZED"),
        }
    }
    assert_eq!(successes, 1, "one TOTP code completed {successes} logins");

    // The 49 losers counted as failed attempts and locked the account: wait
    // the lock out. Then fifty parallel tries on one pending login: completed
    // once, five attempts at most.
    app.clock.advance(Duration::minutes(30));
    let one = mfa_login(&app, EMAIL).await.mfa_token;
    let code = totp_code(&app, &secret);
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let (mut auth, token, code) = (app.auth(), one.clone(), code.clone());
            tokio::spawn(async move {
                auth.verify_mfa(pb::VerifyMfaRequest {
                    mfa_token: token,
                    code,
                    method: pb::MfaMethod::Totp as i32,
                })
                .await
            })
        })
        .collect();
    let mut successes = 0;
    for call in calls {
        if call.await.unwrap().is_ok() {
            successes += 1;
        }
    }
    assert_eq!(successes, 1);
    app.stop().await;
}

async fn fifty_parallel_verifications_with_one_recovery_code_succeed_once(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let (_, _, recovery) = user_with_totp(&app, EMAIL).await;
    let mut pending = Vec::new();
    for _ in 0..50 {
        pending.push(mfa_login(&app, EMAIL).await.mfa_token);
    }
    let code = recovery[0].clone();
    let calls: Vec<_> = pending
        .into_iter()
        .map(|token| {
            let (mut auth, code) = (app.auth(), code.clone());
            tokio::spawn(async move {
                auth.verify_mfa(pb::VerifyMfaRequest {
                    mfa_token: token,
                    code,
                    method: pb::MfaMethod::RecoveryCode as i32,
                })
                .await
            })
        })
        .collect();
    let mut winners = Vec::new();
    for call in calls {
        if let Ok(response) = call.await.unwrap() {
            winners.push(response.into_inner().session.unwrap());
        }
    }
    assert_eq!(winners.len(), 1, "one recovery code completed {} logins", winners.len());
    let principal = app.validate(&winners[0].token).await.unwrap();
    assert_eq!(
        principal.auth_methods,
        vec![pb::AuthMethod::Password as i32, pb::AuthMethod::RecoveryCode as i32]
    );
    app.stop().await;
}

pub(crate) async fn enable_email(app: &TestApp, sink: &SmtpSink, email: &str) -> String {
    app.create_user(email, USER_PASSWORD, Role::User).await;
    let token = app.login(email, USER_PASSWORD).await.token;
    app.users().send_email_code(bearer(&token, pb::SendEmailCodeRequest {})).await.unwrap();
    let code = sink.code_for(email).await;
    let confirmed = app
        .users()
        .confirm_email_mfa(bearer(&token, pb::ConfirmEmailMfaRequest { code }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(confirmed.recovery_codes.len(), 10);
    token
}

async fn send_code(app: &TestApp, mfa_token: &str) -> Result<pb::SendMfaCodeResponse, Status> {
    app.auth()
        .send_mfa_code(pb::SendMfaCodeRequest { mfa_token: mfa_token.into() })
        .await
        .map(tonic::Response::into_inner)
}

async fn emailed_codes_travel_over_smtp_and_complete_only_their_login(backend: Backend) {
    let sink = SmtpSink::start().await;
    let app = TestApp::start_with(&backend, with_smtp(&sink)).await;
    enable_email(&app, &sink, EMAIL).await;

    let first = mfa_login(&app, EMAIL).await;
    assert_eq!(first.methods, vec![pb::MfaMethod::Email as i32, pb::MfaMethod::RecoveryCode as i32]);
    let second = mfa_login(&app, EMAIL).await;
    let sent = send_code(&app, &first.mfa_token).await.unwrap();
    assert_eq!(sent.expire_time.unwrap().seconds, (app.clock.now() + Duration::minutes(10)).timestamp());
    let code = sink.code_for(EMAIL).await;

    // A code sent for one pending login cannot complete another.
    let crossed = verify(&app, &second.mfa_token, pb::MfaMethod::Email, &code).await.unwrap_err();
    assert_error(&crossed, Code::Unauthenticated, "UNAUTHORIZED");

    // A newer code replaces the older one.
    send_code(&app, &first.mfa_token).await.unwrap();
    let newer = sink.code_for(EMAIL).await;
    if newer != code {
        assert!(verify(&app, &first.mfa_token, pb::MfaMethod::Email, &code).await.is_err());
    }
    let session = verify(&app, &first.mfa_token, pb::MfaMethod::Email, &newer).await.unwrap();
    let principal = app.validate(&session.token).await.unwrap();
    assert_eq!(
        principal.auth_methods,
        vec![pb::AuthMethod::Password as i32, pb::AuthMethod::EmailCode as i32]
    );
    assert_eq!(sink.waiting().await, 0);
    app.stop().await;
}

async fn pending_login_dies_after_five_wrong_codes_and_on_expiry(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let (_, secret, _) = user_with_totp(&app, EMAIL).await;
    let before = failed_attempts(&app, EMAIL).await;
    let challenge = mfa_login(&app, EMAIL).await;
    let right = totp_code(&app, &secret);
    let wrong = if right == "123456" { "654321" } else { "123456" };
    for _ in 0..5 {
        let status = verify(&app, &challenge.mfa_token, pb::MfaMethod::Totp, wrong).await.unwrap_err();
        assert_error(&status, Code::Unauthenticated, "UNAUTHORIZED");
    }
    assert_eq!(failed_attempts(&app, EMAIL).await, before + 5, "wrong codes count against the account");
    let dead = verify(&app, &challenge.mfa_token, pb::MfaMethod::Totp, &right).await.unwrap_err();
    assert_error(&dead, Code::Unauthenticated, "UNAUTHORIZED");

    // A fresh pending login expires after five minutes.
    let challenge = mfa_login(&app, EMAIL).await;
    app.clock.advance(Duration::minutes(5));
    let expired =
        verify(&app, &challenge.mfa_token, pb::MfaMethod::Totp, &totp_code(&app, &secret)).await.unwrap_err();
    assert_error(&expired, Code::Unauthenticated, "TOKEN_EXPIRED");
    assert_error(
        &app.validate(&challenge.mfa_token).await.unwrap_err(),
        Code::Unauthenticated,
        "TOKEN_EXPIRED",
    );
    // A success resets the account's count.
    let challenge = mfa_login(&app, EMAIL).await;
    verify(&app, &challenge.mfa_token, pb::MfaMethod::Totp, &totp_code(&app, &secret)).await.unwrap();
    assert_eq!(failed_attempts(&app, EMAIL).await, 0);
    app.stop().await;
}

async fn emailed_code_attempts_and_expiry(backend: Backend) {
    let sink = SmtpSink::start().await;
    let app = TestApp::start_with(&backend, with_smtp(&sink)).await;
    app.create_user(EMAIL, USER_PASSWORD, Role::User).await;
    let token = app.login(EMAIL, USER_PASSWORD).await.token;
    let confirm = |code: String| {
        let (mut users, token) = (app.users(), token.clone());
        async move { users.confirm_email_mfa(bearer(&token, pb::ConfirmEmailMfaRequest { code })).await }
    };

    // Five wrong tries kill the code.
    app.users().send_email_code(bearer(&token, pb::SendEmailCodeRequest {})).await.unwrap();
    let code = sink.code_for(EMAIL).await;
    let wrong = if code == "00000000" { "11111111" } else { "00000000" };
    for _ in 0..5 {
        assert_error(&confirm(wrong.into()).await.unwrap_err(), Code::Unauthenticated, "UNAUTHORIZED");
    }
    assert_error(&confirm(code).await.unwrap_err(), Code::Unauthenticated, "UNAUTHORIZED");

    // A code is valid ten minutes.
    app.users().send_email_code(bearer(&token, pb::SendEmailCodeRequest {})).await.unwrap();
    let code = sink.code_for(EMAIL).await;
    app.clock.advance(Duration::minutes(10));
    assert_error(&confirm(code).await.unwrap_err(), Code::Unauthenticated, "UNAUTHORIZED");

    // A fresh one works, once.
    app.users().send_email_code(bearer(&token, pb::SendEmailCodeRequest {})).await.unwrap();
    let code = sink.code_for(EMAIL).await;
    confirm(code.clone()).await.unwrap();
    let twice = confirm(code).await.unwrap_err();
    assert_eq!(twice.code(), Code::FailedPrecondition, "{twice:?}");
    app.stop().await;
}

async fn disabling_mfa_needs_password_and_code(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let (token, secret, _) = user_with_totp(&app, EMAIL).await;
    let other =
        verify(&app, &mfa_login(&app, EMAIL).await.mfa_token, pb::MfaMethod::Totp, &totp_code(&app, &secret))
            .await
            .unwrap()
            .token;
    app.clock.advance(Duration::seconds(30));
    let disable = |password: &str, code: String| {
        let (mut users, token, password) = (app.users(), token.clone(), password.to_owned());
        async move {
            users
                .disable_mfa(bearer(
                    &token,
                    pb::DisableMfaRequest { password, code, method: pb::MfaMethod::Totp as i32 },
                ))
                .await
        }
    };
    let wrong_password = disable("not the password", totp_code(&app, &secret)).await.unwrap_err();
    assert_error(&wrong_password, Code::Unauthenticated, "UNAUTHORIZED");
    let wrong_code = disable(USER_PASSWORD, "000000".into()).await.unwrap_err();
    assert_error(&wrong_code, Code::Unauthenticated, "UNAUTHORIZED");
    assert!(matches!(login(&app, EMAIL).await, pb::login_response::Result::Mfa(_)), "still on");

    app.clock.advance(Duration::seconds(30));
    disable(USER_PASSWORD, totp_code(&app, &secret)).await.unwrap();
    assert!(app.validate(&other).await.is_err(), "other sessions are revoked");
    app.validate(&token).await.unwrap();
    assert!(matches!(login(&app, EMAIL).await, pb::login_response::Result::Session(_)));
    assert_eq!(count_rows(&app.db, "recovery_codes").await, 0);
    assert_eq!(count_rows(&app.db, "totp_secrets").await, 0);
    app.stop().await;
}

async fn recovery_codes_regenerate_and_each_works_once(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let (token, _, old) = user_with_totp(&app, EMAIL).await;
    let fresh = app
        .users()
        .regenerate_recovery_codes(bearer(&token, pb::RegenerateRecoveryCodesRequest {}))
        .await
        .unwrap()
        .into_inner()
        .recovery_codes;
    assert_eq!(fresh.len(), 10);
    assert!(fresh.iter().all(|c| !old.contains(c)));
    let pending = mfa_login(&app, EMAIL).await.mfa_token;
    let dead = verify(&app, &pending, pb::MfaMethod::RecoveryCode, &old[0]).await.unwrap_err();
    assert_error(&dead, Code::Unauthenticated, "UNAUTHORIZED");
    // Case and dashes do not matter.
    verify(&app, &pending, pb::MfaMethod::RecoveryCode, &fresh[0].to_uppercase().replace('-', ""))
        .await
        .unwrap();
    let pending = mfa_login(&app, EMAIL).await.mfa_token;
    assert!(verify(&app, &pending, pb::MfaMethod::RecoveryCode, &fresh[0]).await.is_err(), "used twice");
    verify(&app, &pending, pb::MfaMethod::RecoveryCode, &fresh[1]).await.unwrap();
    app.stop().await;
}

async fn an_admin_can_reset_a_users_mfa(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let admin = app.admin_token().await;
    let (token, _, _) = user_with_totp(&app, EMAIL).await;
    let user_id = app.validate(&token).await.unwrap().user_id;
    let refused = app.users().reset_mfa(bearer(&token, pb::ResetMfaRequest { user_id })).await.unwrap_err();
    assert_error(&refused, Code::PermissionDenied, "FORBIDDEN");
    let reset =
        app.users().reset_mfa(bearer(&admin, pb::ResetMfaRequest { user_id })).await.unwrap().into_inner();
    assert_eq!(reset.revoked_sessions, 1);
    assert!(app.validate(&token).await.is_err());
    assert!(matches!(login(&app, EMAIL).await, pb::login_response::Result::Session(_)));
    app.stop().await;
}

async fn bad_mfa_input_is_refused_and_counts_nothing(backend: Backend) {
    let app = TestApp::start(&backend).await;
    app.create_user("nora@example.com", USER_PASSWORD, Role::User).await;
    let plain = app.login("nora@example.com", USER_PASSWORD).await.token;
    let confirm = app
        .users()
        .confirm_totp(bearer(&plain, pb::ConfirmTotpRequest { code: "123456".into() }))
        .await
        .unwrap_err();
    assert_error(&confirm, Code::FailedPrecondition, "FAILED_PRECONDITION");
    let regenerate = app
        .users()
        .regenerate_recovery_codes(bearer(&plain, pb::RegenerateRecoveryCodesRequest {}))
        .await
        .unwrap_err();
    assert_eq!(regenerate.code(), Code::FailedPrecondition);

    let (_, secret, _) = user_with_totp(&app, EMAIL).await;
    let pending = mfa_login(&app, EMAIL).await.mfa_token;
    let before = failed_attempts(&app, EMAIL).await;
    for (code, method) in [
        ("12345", pb::MfaMethod::Totp as i32),
        ("1234567", pb::MfaMethod::Totp as i32),
        ("12a456", pb::MfaMethod::Totp as i32),
        ("", pb::MfaMethod::Totp as i32),
        ("1234", pb::MfaMethod::Email as i32),
        ("not-a-code", pb::MfaMethod::RecoveryCode as i32),
    ] {
        let status = app
            .auth()
            .verify_mfa(pb::VerifyMfaRequest { mfa_token: pending.clone(), code: code.into(), method })
            .await
            .unwrap_err();
        assert_invalid(&status, "code");
    }
    for method in [0, 99] {
        let status = app
            .auth()
            .verify_mfa(pb::VerifyMfaRequest { mfa_token: pending.clone(), code: "123456".into(), method })
            .await
            .unwrap_err();
        assert_invalid(&status, "method");
    }
    let unenrolled = verify(&app, &pending, pb::MfaMethod::Email, "12345678").await.unwrap_err();
    assert_invalid(&unenrolled, "method");
    let missing = verify(&app, "", pb::MfaMethod::Totp, "123456").await.unwrap_err();
    assert_invalid(&missing, "mfa_token");
    for token in ["garbage", &pending[..pending.len() - 1], &pending.replace("pcs_mfa_", "pcs_sess_")] {
        let status = verify(&app, token, pb::MfaMethod::Totp, "123456").await.unwrap_err();
        assert_error(&status, Code::Unauthenticated, "UNAUTHORIZED");
    }
    // A session token is not a pending login either.
    let session = app.login("nora@example.com", USER_PASSWORD).await.token;
    assert!(verify(&app, &session, pb::MfaMethod::Totp, "123456").await.is_err());
    assert_eq!(failed_attempts(&app, EMAIL).await, before, "bad input counted as an attempt");
    // All five attempts are still there: the right code works after bad input.
    verify(&app, &pending, pb::MfaMethod::Totp, &totp_code(&app, &secret)).await.unwrap();
    app.stop().await;
}

async fn email_method_is_unavailable_without_smtp(backend: Backend) {
    let app = TestApp::start(&backend).await;
    app.create_user(EMAIL, USER_PASSWORD, Role::User).await;
    let token = app.login(EMAIL, USER_PASSWORD).await.token;
    let status = app.users().send_email_code(bearer(&token, pb::SendEmailCodeRequest {})).await.unwrap_err();
    assert_error(&status, Code::FailedPrecondition, "FAILED_PRECONDITION");
    assert!(status.message().contains("mail_transport"), "{}", status.message());
    let _ = epoch();
    app.stop().await;
}
