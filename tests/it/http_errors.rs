//! Failures through the HTTP API: every row of the error table HTTP can
//! give answers its status and S4E code; the same failure through gRPC and
//! HTTP carries the same reason (table-driven); bad input of every kind the
//! issue lists gets the envelope, the right status, no panic and nothing
//! written.

use std::{collections::BTreeSet, time::Duration as StdDuration};

use chrono::Duration;
use portcullis::{
    config::CaptchaPolicyName,
    domain::Role,
    errors::{self, Class},
    proto::v1 as pb,
};
use reqwest::Method;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use tonic::{Request, Status};
use tonic_types::StatusExt as _;

use crate::{
    captcha::{FakeVendor, REJECT, Reply as VendorReply, use_fake},
    http_api::{Api, Reply, S4E_LOGIN, assert_s4e_error, cookie, new_key, s4e_login, send, whoami},
    mfa::{enable_email, user_with_totp, with_smtp},
    smtp::SmtpSink,
    support::{ADMIN_PASSWORD, Backend, TestApp, USER_PASSWORD, bearer, count_rows},
};

crate::db_tests!(
    every_row_http_can_give_answers_its_status_and_code,
    grpc_and_http_carry_the_same_reason_for_the_same_failure,
    bad_input_gets_the_envelope_and_writes_nothing,
);

/// Rows HTTP cannot give: gRPC's own "no such method", user creation (not
/// in the HTTP API), and a bug.
const NOT_OVER_HTTP: [&str; 3] = ["UNIMPLEMENTED", "ALREADY_EXISTS", "INTERNAL"];

/// Asserts `reply` is `class` in the S4E envelope and notes it as seen.
#[track_caller]
fn expect(seen: &mut BTreeSet<&'static str>, reply: &Reply, class: Class) {
    assert_s4e_error(reply, class.http.as_u16(), class.s4e);
    if class.http == http::StatusCode::TOO_MANY_REQUESTS {
        assert!(reply.header("retry-after").is_some(), "{reply:?}");
    }
    if class.http == http::StatusCode::UNAUTHORIZED {
        assert!(reply.header("www-authenticate").is_some(), "{reply:?}");
    }
    seen.insert(class.reason);
}

/// A port nothing listens on.
async fn closed_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

async fn every_row_http_can_give_answers_its_status_and_code(backend: Backend) {
    let mut seen = BTreeSet::new();
    let sink = SmtpSink::start().await;
    let app = TestApp::start_with(&backend, |c| {
        with_smtp(&sink)(c);
        c.rate_limit_pair = 2;
        c.allowed_origins = vec!["http://app.example".into()];
    })
    .await;
    let api = Api::new(&app);
    app.create_user("kim@example.com", USER_PASSWORD, Role::User).await;
    let kim = s4e_login(&api, "kim@example.com", USER_PASSWORD).await.token();

    expect(&mut seen, &s4e_login(&api, "kim@example.com", "wrong password 1").await, errors::UNAUTHORIZED);
    let escalate =
        send(api.post("/api/user/api-keys", r#"{"name": "x", "scopes": ["a:b"]}"#).bearer_auth(&kim)).await;
    expect(&mut seen, &escalate, errors::FORBIDDEN);
    let csrf = send(api.post_empty("/api/user/auth/logout").header("cookie", cookie(&kim))).await;
    expect(&mut seen, &csrf, errors::FORBIDDEN);
    let (_, _, _) = user_with_totp(&app, "lea@example.com").await;
    let pending = s4e_login(&api, "lea@example.com", USER_PASSWORD).await.json["data"]["mfa_token"]
        .as_str()
        .unwrap()
        .to_owned();
    expect(&mut seen, &whoami(&api, &pending).await, errors::MFA_REQUIRED);
    let send_code =
        |token: &str| api.post("/api/user/auth/mfa/send", &format!(r#"{{"mfa_token": "{token}"}}"#));
    expect(&mut seen, &send(send_code(&pending)).await, errors::FAILED_PRECONDITION);
    app.create_user("rl@example.com", USER_PASSWORD, Role::User).await;
    for _ in 0..2 {
        s4e_login(&api, "rl@example.com", "wrong password 1").await;
    }
    expect(&mut seen, &s4e_login(&api, "rl@example.com", USER_PASSWORD).await, errors::RATE_LIMITED);
    expect(&mut seen, &send(api.post("/api/user/auth/login", "{not json")).await, errors::INVALID_ARGUMENT);
    let big = format!(r#"{{"email": "{}"}}"#, "a".repeat(100_000));
    expect(&mut seen, &send(api.post("/api/user/auth/login", &big)).await, errors::MESSAGE_TOO_LARGE);
    let form = api
        .request(Method::POST, "/api/user/auth/login")
        .header("content-type", "application/x-www-form-urlencoded");
    expect(&mut seen, &send(form.body("email=a&password=b")).await, errors::UNSUPPORTED_MEDIA_TYPE);
    expect(&mut seen, &send(api.get("/no/such/path")).await, errors::NOT_FOUND);
    let missing = send(api.request(Method::DELETE, "/api/user/api-keys/4242").bearer_auth(&kim)).await;
    expect(&mut seen, &missing, errors::NOT_FOUND);
    let get_login = send(api.get("/api/user/auth/login")).await;
    expect(&mut seen, &get_login, errors::METHOD_NOT_ALLOWED);
    assert_eq!(get_login.header("allow"), Some("POST"));

    // An emailed second factor whose mail server then goes away.
    enable_email(&app, &sink, "max@example.com").await;
    let emailed = s4e_login(&api, "max@example.com", USER_PASSWORD).await.json["data"]["mfa_token"]
        .as_str()
        .unwrap()
        .to_owned();

    // The captcha rows, a timeout, and the mail server gone.
    let rejecting = FakeVendor::start(VendorReply::Http(200, REJECT.into())).await;
    let smtp_port = closed_port().await;
    let app = app
        .restart_with(|c| {
            use_fake(c, &rejecting, CaptchaPolicyName::Always);
            c.smtp_port = smtp_port;
            c.request_timeout = StdDuration::from_millis(500);
            c.rate_limit_pair = 0;
        })
        .await;
    let api = Api::new(&app);
    let sent = send(api.post("/api/user/auth/mfa/send", &format!(r#"{{"mfa_token": "{emailed}"}}"#))).await;
    expect(&mut seen, &sent, errors::UNAVAILABLE);
    let with_captcha = format!(
        r#"{{"email": "kim@example.com", "password": "{USER_PASSWORD}", "captcha_response": "tok", "vendor": "hcaptcha"}}"#
    );
    expect(&mut seen, &s4e_login(&api, "kim@example.com", USER_PASSWORD).await, errors::CAPTCHA_REQUIRED);
    expect(&mut seen, &send(api.post("/api/user/auth/login", &with_captcha)).await, errors::CAPTCHA_INVALID);
    let garbage = FakeVendor::start(VendorReply::Raw(b"garbage")).await;
    let app = app.restart_with(|c| use_fake(c, &garbage, CaptchaPolicyName::Always)).await;
    let api = Api::new(&app);
    expect(
        &mut seen,
        &send(api.post("/api/user/auth/login", &with_captcha)).await,
        errors::CAPTCHA_UNAVAILABLE,
    );
    let silent = FakeVendor::start(VendorReply::Silent).await;
    let app = app.restart_with(|c| use_fake(c, &silent, CaptchaPolicyName::Always)).await;
    let api = Api::new(&app);
    expect(
        &mut seen,
        &send(api.post("/api/user/auth/login", &with_captcha)).await,
        errors::DEADLINE_EXCEEDED,
    );

    // Last, as it moves the clock: an expired session.
    app.clock.advance(Duration::hours(25));
    expect(&mut seen, &whoami(&api, &kim).await, errors::TOKEN_EXPIRED);

    let missed: Vec<_> = errors::TABLE
        .iter()
        .map(|class| class.reason)
        .filter(|reason| !seen.contains(reason) && !NOT_OVER_HTTP.contains(reason))
        .collect();
    assert!(missed.is_empty(), "rows never produced over HTTP: {missed:?}");
    app.stop().await;
}

/// One failure provoked through gRPC and through HTTP.
struct Case {
    what: &'static str,
    grpc: Status,
    http: Reply,
}

fn with_bearer<T>(token: &str, message: T) -> Request<T> {
    bearer(token, message)
}

async fn grpc_and_http_carry_the_same_reason_for_the_same_failure(backend: Backend) {
    let app = TestApp::start_with(&backend, |c| c.rate_limit_pair = 4).await;
    let admin = app.admin_token().await;
    app.create_user("ned@example.com", USER_PASSWORD, Role::User).await;
    let (_, _, _) = user_with_totp(&app, "oda@example.com").await;
    let api = Api::new(&app);
    let ned = app.login("ned@example.com", USER_PASSWORD).await.token;
    let key = new_key(&api, &admin, r#"{"name": "k"}"#).await;
    let login = |email: &str, password: &str| pb::LoginRequest {
        email: email.into(),
        password: password.into(),
        ..Default::default()
    };
    let pending =
        match app.auth().login(login("oda@example.com", USER_PASSWORD)).await.unwrap().into_inner().result {
            Some(pb::login_response::Result::Mfa(challenge)) => challenge.mfa_token,
            other => panic!("expected a challenge: {other:?}"),
        };
    let mut cases = Vec::new();

    cases.push(Case {
        what: "wrong password",
        grpc: app.auth().login(login("ned@example.com", "wrong password 1")).await.unwrap_err(),
        http: s4e_login(&api, "ned@example.com", "wrong password 1").await,
    });
    cases.push(Case {
        what: "malformed email",
        grpc: app.auth().login(login("not-an-email", "whatever 123")).await.unwrap_err(),
        http: s4e_login(&api, "not-an-email", "whatever 123").await,
    });
    cases.push(Case {
        what: "bypass_captcha without the scope",
        grpc: app
            .auth()
            .login(with_bearer(
                &ned,
                pb::LoginRequest { bypass_captcha: true, ..login("ned@example.com", USER_PASSWORD) },
            ))
            .await
            .unwrap_err(),
        http: send(
            api.post(
                "/api/user/auth/login",
                &format!(
                    r#"{{"email": "ned@example.com", "password": "{USER_PASSWORD}", "bypass_captcha": true}}"#
                ),
            )
            .bearer_auth(&ned),
        )
        .await,
    });
    cases.push(Case {
        what: "a pending login's token",
        grpc: app.validate(&pending).await.unwrap_err(),
        http: whoami(&api, &pending).await,
    });
    cases.push(Case {
        what: "a garbage token",
        grpc: app.validate("pcs_sess_garbage").await.unwrap_err(),
        http: whoami(&api, "pcs_sess_garbage").await,
    });
    let mut ambiguous = pb::HttpCredential::default();
    ambiguous.headers.insert("Authorization".into(), format!("Bearer {ned}"));
    ambiguous.headers.insert("Cookie".into(), cookie(&admin));
    cases.push(Case {
        what: "two different tokens",
        grpc: app
            .auth()
            .validate_token(pb::ValidateTokenRequest {
                credential: Some(pb::validate_token_request::Credential::Http(ambiguous)),
                required_scopes: vec![],
            })
            .await
            .unwrap_err(),
        http: send(api.get("/api/user/auth/session").bearer_auth(&ned).header("cookie", cookie(&admin)))
            .await,
    });
    cases.push(Case {
        what: "a key with a scope not held",
        grpc: app
            .keys()
            .create_api_key(with_bearer(
                &ned,
                pb::CreateApiKeyRequest {
                    name: "x".into(),
                    scopes: vec!["a:b".into()],
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err(),
        http: send(api.post("/api/user/api-keys", r#"{"name": "x", "scopes": ["a:b"]}"#).bearer_auth(&ned))
            .await,
    });
    cases.push(Case {
        what: "no such key",
        grpc: app
            .keys()
            .revoke_api_key(with_bearer(&ned, pb::RevokeApiKeyRequest { key_id: 4242 }))
            .await
            .unwrap_err(),
        http: send(api.request(Method::DELETE, "/api/user/api-keys/4242").bearer_auth(&ned)).await,
    });
    cases.push(Case {
        what: "an overlap too long",
        grpc: app
            .keys()
            .rotate_api_key(with_bearer(
                &admin,
                pb::RotateApiKeyRequest {
                    key_id: 1,
                    overlap: Some(prost_types::Duration { seconds: 8 * 86_400, nanos: 0 }),
                },
            ))
            .await
            .unwrap_err(),
        http: send(
            api.post("/api/user/api-keys/1/rotate", r#"{"overlap_seconds": 691200}"#).bearer_auth(&admin),
        )
        .await,
    });
    cases.push(Case {
        what: "no email method",
        grpc: app
            .auth()
            .send_mfa_code(pb::SendMfaCodeRequest { mfa_token: pending.clone() })
            .await
            .unwrap_err(),
        http: send(api.post("/api/user/auth/mfa/send", &format!(r#"{{"mfa_token": "{pending}"}}"#))).await,
    });
    cases.push(Case {
        what: "a wrong code",
        grpc: app
            .auth()
            .verify_mfa(pb::VerifyMfaRequest {
                mfa_token: pending.clone(),
                code: "000000".into(),
                method: pb::MfaMethod::Totp as i32,
            })
            .await
            .unwrap_err(),
        http: send(api.post(
            "/api/user/auth/mfa/verify",
            &format!(r#"{{"mfa_token": "{pending}", "code": "000000", "method": "totp"}}"#),
        ))
        .await,
    });
    cases.push(Case {
        what: "refreshing a garbage token",
        grpc: app
            .auth()
            .refresh_session(pb::RefreshSessionRequest { token: "pcs_sess_x".into() })
            .await
            .unwrap_err(),
        http: send(api.post_empty("/api/user/auth/refresh").bearer_auth("pcs_sess_x")).await,
    });
    cases.push(Case {
        what: "logging out an API key",
        grpc: app.auth().logout(pb::LogoutRequest { token: key.clone() }).await.unwrap_err(),
        http: send(api.post_empty("/api/user/auth/logout").header("x-api-key", &key)).await,
    });
    let mut limited = None;
    for _ in 0..5 {
        let status = app.auth().login(login("ned@example.com", "wrong password 1")).await.unwrap_err();
        if status.code() == tonic::Code::ResourceExhausted {
            limited = Some(status);
            break;
        }
    }
    cases.push(Case {
        what: "too many attempts",
        grpc: limited.expect("the pair limit"),
        http: s4e_login(&api, "ned@example.com", USER_PASSWORD).await,
    });
    let session = app.login("admin@example.com", ADMIN_PASSWORD).await.token;
    app.clock.advance(Duration::hours(25));
    cases.push(Case {
        what: "an expired session",
        grpc: app.validate(&session).await.unwrap_err(),
        http: whoami(&api, &session).await,
    });

    for Case { what, grpc, http } in &cases {
        let info =
            grpc.get_details_error_info().unwrap_or_else(|| panic!("{what}: no ErrorInfo in {grpc:?}"));
        let class = errors::TABLE.iter().find(|class| class.reason == info.reason).unwrap();
        assert_eq!(grpc.code(), class.grpc, "{what}: {grpc:?}");
        assert_eq!(http.status, class.http.as_u16(), "{what}: {http:?} for {}", info.reason);
        assert_eq!(http.code(), class.s4e, "{what}: {http:?} for {}", info.reason);
        assert_eq!(http.json["error"]["message"], grpc.message(), "{what}: the same message");
    }
    let reasons: BTreeSet<_> =
        cases.iter().map(|case| case.grpc.get_details_error_info().unwrap().reason).collect();
    for reason in [
        "UNAUTHORIZED",
        "INVALID_ARGUMENT",
        "FORBIDDEN",
        "MFA_REQUIRED",
        "NOT_FOUND",
        "FAILED_PRECONDITION",
        "RATE_LIMITED",
        "TOKEN_EXPIRED",
    ] {
        assert!(reasons.contains(reason), "no case for {reason}");
    }
    app.stop().await;
}

/// Sends `raw` bytes on a fresh connection and reads the answer whole.
async fn raw(app: &TestApp, raw: &[u8]) -> String {
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream.write_all(raw).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(StdDuration::from_secs(10), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// A bad body: what it is, its content type, the bytes, and the status,
/// S4E code and field named in the answer.
type BadBody = (&'static str, Option<&'static str>, Vec<u8>, u16, &'static str, Option<&'static str>);

/// POSTs `body` on a fresh connection, reading the answer while the body
/// is still being written (the server may answer, and close, first).
async fn raw_post(app: &TestApp, path: &str, headers: &str, body: Vec<u8>) -> String {
    let stream = TcpStream::connect(app.addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{headers}\r\n",
        body.len()
    );
    let writer = tokio::spawn(async move {
        let _ = write.write_all(head.as_bytes()).await;
        let _ = write.write_all(&body).await;
    });
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + StdDuration::from_secs(10);
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline, read.read(&mut buffer)).await {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buffer[..n]);
        let text = String::from_utf8_lossy(&answer);
        if let Some((head, body)) = text.split_once("\r\n\r\n")
            && let Some(length) = head.lines().find_map(|line| {
                line.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_owned)
            })
            && body.len() >= length.trim().parse::<usize>().unwrap()
        {
            break;
        }
    }
    writer.abort();
    String::from_utf8_lossy(&answer).into_owned()
}

async fn bad_input_gets_the_envelope_and_writes_nothing(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let admin = app.admin_token().await;
    let api = Api::new(&app);
    let other = s4e_login(&api, "admin@example.com", ADMIN_PASSWORD).await.token();
    let tables = ["users", "sessions", "api_keys", "audit_events"];
    let mut before = Vec::new();
    for table in tables {
        before.push(count_rows(&app.db, table).await);
    }

    let non_utf8 =
        b"{\"email\": \"admin@example.com\xff\xfe\", \"password\": \"admin password 123\"}".to_vec();
    let bodies: Vec<BadBody> = vec![
        ("not JSON", Some("application/json"), b"email=admin@example.com".to_vec(), 400, "invalid_argument", Some("body")),
        ("form-encoded", Some("application/x-www-form-urlencoded"), b"email=a&password=b".to_vec(), 415, "unsupported_media_type", None),
        ("text", Some("text/plain"), S4E_LOGIN.as_bytes().to_vec(), 415, "unsupported_media_type", None),
        ("no content-type", None, S4E_LOGIN.as_bytes().to_vec(), 415, "unsupported_media_type", None),
        ("wrong type", Some("application/json"), br#"{"email": ["admin@example.com"], "password": "x"}"#.to_vec(), 400, "invalid_argument", Some("email")),
        ("wrong type 2", Some("application/json"), br#"{"email": "a@b.c", "password": "x", "bypass_captcha": "yes"}"#.to_vec(), 400, "invalid_argument", Some("bypass_captcha")),
        ("unknown field", Some("application/json"), br#"{"email": "a@b.c", "password": "x", "role": "admin"}"#.to_vec(), 400, "invalid_argument", Some("body")),
        ("duplicate key", Some("application/json"), br#"{"email": "nobody@example.com", "email": "admin@example.com", "password": "admin password 123"}"#.to_vec(), 400, "invalid_argument", Some("body")),
        ("trailing bytes", Some("application/json"), [S4E_LOGIN.as_bytes(), b" {}"].concat(), 400, "invalid_argument", Some("body")),
        ("an array", Some("application/json"), b"[1, 2]".to_vec(), 400, "invalid_argument", Some("body")),
        ("empty", Some("application/json"), Vec::new(), 400, "invalid_argument", Some("body")),
        ("non-UTF-8", Some("application/json"), non_utf8, 400, "invalid_argument", None),
    ];
    for (what, content_type, body, status, code, field) in bodies {
        for path in ["/api/user/auth/login", "/api/user/api-keys", "/api/user/auth/mfa/verify"] {
            let mut request = api.request(Method::POST, path).bearer_auth(&admin).body(body.clone());
            if let Some(content_type) = content_type {
                request = request.header("content-type", content_type);
            }
            let reply = send(request).await;
            assert_s4e_error(&reply, status, code);
            if let Some(field) = field
                && path.ends_with("login")
            {
                assert_eq!(reply.json["error"]["field"], field, "{what}: {reply:?}");
            }
            assert!(!reply.text.contains("admin password 123"), "{what}: a password echoed: {reply:?}");
        }
        // Rehive's envelope for the same input.
        let mut request = api.request(Method::POST, "/3/auth/login/").body(body.clone());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let reply = send(request).await;
        assert_eq!(reply.status, status, "{what}: {reply:?}");
        assert_eq!(reply.json["status"], "error", "{what}: {reply:?}");
        assert!(reply.json["message"].is_string(), "{what}: {reply:?}");
    }
    // 10 MB: refused by its length, before it is read. (Over a socket that
    // the client is still writing to when the answer comes.)
    let big = vec![b'a'; 10 * 1024 * 1024];
    for path in ["/api/user/auth/login", "/api/user/api-keys", "/3/auth/login/"] {
        let answer = raw_post(&app, path, &format!("authorization: Bearer {admin}\r\n"), big.clone()).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{path}: {answer:?}");
        assert!(
            answer.contains("message_too_large") || answer.contains(r#""status":"error""#),
            "{path}: {answer:?}"
        );
    }

    // A key body that tries to name another owner is refused whole.
    let owner =
        send(api.post("/api/user/api-keys", r#"{"name": "x", "owner_id": 1}"#).bearer_auth(&admin)).await;
    assert_s4e_error(&owner, 400, "invalid_argument");
    // Bodies where none is taken.
    let junk = send(api.post("/api/user/auth/logout", r#"{"token": "x"}"#).bearer_auth(&other)).await;
    assert_s4e_error(&junk, 400, "invalid_argument");
    let form = api
        .request(Method::POST, "/api/user/auth/refresh")
        .bearer_auth(&other)
        .header("content-type", "application/x-www-form-urlencoded");
    assert_s4e_error(&send(form.body("a=b")).await, 415, "unsupported_media_type");

    // Methods and paths.
    for (method, path, allow) in [
        (Method::GET, "/api/user/auth/login", "POST"),
        (Method::PUT, "/api/user/auth/logout", "POST"),
        (Method::DELETE, "/api/user/auth/session", "GET,HEAD"),
        (Method::PATCH, "/api/user/api-keys", "GET,HEAD,POST"),
        (Method::GET, "/3/auth/login/", "POST"),
        (Method::GET, "/3/auth/logout/all", "POST"),
    ] {
        let reply = send(api.request(method.clone(), path)).await;
        assert_s4e_error(&reply, 405, "method_not_allowed");
        assert_eq!(reply.header("allow"), Some(allow), "{method} {path}");
    }
    for path in [
        "/",
        "/api/user",
        "/api/user/auth",
        "/api/user/auth/login/extra",
        "/3/auth",
        "/api/user/%FF",
        "/API/USER/AUTH/LOGIN",
    ] {
        assert_s4e_error(&send(api.get(path)).await, 404, "not_found");
    }
    let bad_id = send(api.post_empty("/api/user/api-keys/%FF%FE/rotate").bearer_auth(&admin)).await;
    assert_s4e_error(&bad_id, 400, "invalid_argument");

    // Credentials: two different tokens, odd cookie headers.
    let two =
        send(api.post_empty("/api/user/auth/logout").bearer_auth(&admin).header("cookie", cookie(&other)))
            .await;
    assert_s4e_error(&two, 401, "unauthorized");
    assert_eq!(whoami(&api, &admin).await.status, 200, "an ambiguous logout ended a session");
    assert_eq!(whoami(&api, &other).await.status, 200, "an ambiguous logout ended a session");
    let tabbed =
        send(api.get("/api/user/auth/session").header("cookie", format!("portcullis_session={admin}\tx")))
            .await;
    assert_s4e_error(&tabbed, 401, "unauthorized");
    let many: Vec<String> = (0..200).map(|i| format!("c{i}=v{i}")).collect();
    let crowd = many.join("; ");
    let with_ours =
        send(api.get("/api/user/auth/session").header("cookie", format!("{crowd}; {}", cookie(&admin))))
            .await;
    assert_eq!(with_ours.status, 200, "{with_ours:?}");
    assert_s4e_error(
        &send(api.get("/api/user/auth/session").header("cookie", crowd)).await,
        401,
        "unauthorized",
    );
    let obs = reqwest::header::HeaderValue::from_bytes(b"portcullis_session=\xff\xfe").unwrap();
    assert_s4e_error(
        &send(api.get("/api/user/auth/session").header("cookie", obs)).await,
        401,
        "unauthorized",
    );
    // Control characters never reach the router: hyper refuses the request
    // line (no envelope can be made for it), and the server keeps serving.
    let refused = raw(
        &app,
        b"GET /api/user/auth/session HTTP/1.1\r\nhost: x\r\ncookie: portcullis_session=a\x01b\r\n\r\n",
    )
    .await;
    assert!(refused.starts_with("HTTP/1.1 400"), "{refused:?}");
    assert_eq!(whoami(&api, &admin).await.status, 200);

    for (table, before) in tables.iter().zip(before) {
        assert_eq!(count_rows(&app.db, table).await, before, "bad input wrote to {table}");
    }
    app.stop().await;
}
