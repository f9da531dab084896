//! Captcha at login, through the real server, against a fake `siteverify`
//! server the test starts on loopback (real HTTP requests): the `always`,
//! `after_failures` and `off` policies, each vendor, bad input, a vendor that
//! times out or answers garbage (fail closed), `bypass_captcha`, and the
//! `captcha.failed` audit row.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use portcullis::{
    config::{CaptchaPolicyName, Config},
    domain::Role,
    proto::v1::{self as pb, audit_service_client::AuditServiceClient},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};
use tonic::{Code, Request, Status, metadata::MetadataValue};
use tonic_types::StatusExt;

use crate::support::{
    ADMIN_PASSWORD, Backend, TestApp, USER_PASSWORD, assert_error, assert_invalid, bearer, count_rows,
    missing_scope,
};

crate::db_tests!(
    always_requires_a_captcha_before_the_password,
    always_verifies_with_each_vendor_at_its_url_with_its_secret,
    googlev3_checks_the_score_and_the_action,
    after_failures_counts_the_accounts_failures,
    after_failures_counts_the_client_ips_failures,
    after_failures_does_not_tell_known_from_unknown_emails,
    after_failures_ignores_an_ip_claimed_by_an_untrusted_caller,
    policy_off_never_asks_the_vendor,
    bad_captcha_input_is_refused_before_the_vendor_is_asked,
    a_vendor_that_times_out_or_answers_garbage_fails_closed,
    bypass_captcha_needs_the_admin_login_scope,
    a_rejected_captcha_writes_one_audit_row,
);

const GOOGLE_SECRET: &str = "google-secret-1";
const HCAPTCHA_SECRET: &str = "hcaptcha-secret-2";
const TURNSTILE_SECRET: &str = "turnstile-secret-3";

/// A vendor token; `+`, `&` and `=` must survive form encoding.
pub(crate) const TOKEN: &str = "widget-token+&=0123456789";

/// A `siteverify` answer every vendor accepts (reCAPTCHA v3: good score,
/// expected action).
pub(crate) const ACCEPT: &str =
    r#"{"success": true, "score": 0.9, "action": "login", "hostname": "example.com"}"#;
/// A `siteverify` answer that rejects the response.
pub(crate) const REJECT: &str = r#"{"success": false, "error-codes": ["invalid-input-response"]}"#;

// === a fake siteverify server on loopback ===

/// How the fake vendor answers the next requests.
#[derive(Clone)]
pub(crate) enum Reply {
    /// HTTP/1.1 with this status and JSON body.
    Http(u16, String),
    /// These bytes, then close: not HTTP at all.
    Raw(&'static [u8]),
    /// Reads the request and never answers.
    Silent,
}

/// One request the fake vendor received.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    content_type: String,
    form: HashMap<String, String>,
}

/// A real HTTP server on `127.0.0.1:0` that records every request and
/// answers as told.
pub(crate) struct FakeVendor {
    addr: SocketAddr,
    reply: Arc<Mutex<Reply>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    accept_loop: JoinHandle<()>,
}

impl FakeVendor {
    pub(crate) async fn start(reply: Reply) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let reply = Arc::new(Mutex::new(reply));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let accept_loop = tokio::spawn({
            let reply = Arc::clone(&reply);
            let seen = Arc::clone(&seen);
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let now = reply.lock().unwrap().clone();
                    tokio::spawn(serve(stream, now, Arc::clone(&seen)));
                }
            }
        });
        FakeVendor { addr, reply, seen, accept_loop }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.addr.port())
    }

    pub(crate) fn answer(&self, reply: Reply) {
        *self.reply.lock().unwrap() = reply;
    }

    pub(crate) fn answer_json(&self, body: &str) {
        self.answer(Reply::Http(200, body.to_owned()));
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub(crate) fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn last(&self) -> Seen {
        self.seen().pop().expect("the fake vendor received no request")
    }

    /// Waits (bounded) until the fake has recorded `n` requests.
    async fn wait_for(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.count() < n {
            assert!(Instant::now() < deadline, "the fake vendor saw {} requests, expected {n}", self.count());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for FakeVendor {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

/// Reads one HTTP/1.1 request with a `Content-Length` body, records it, and
/// answers with `reply`.
async fn serve(mut stream: TcpStream, reply: Reply, seen: Arc<Mutex<Vec<Seen>>>) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(read) => buffer.extend_from_slice(&chunk[..read]),
        }
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&buffer[..header_end]).into_owned();
    let mut lines = head.lines();
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_owned();
    let path = request_line.next().unwrap_or_default().to_owned();
    let headers: HashMap<String, String> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let length: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    while buffer.len() < header_end + length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(read) => buffer.extend_from_slice(&chunk[..read]),
        }
    }
    let form = form_urlencoded::parse(&buffer[header_end..header_end + length]).into_owned().collect();
    let content_type = headers.get("content-type").cloned().unwrap_or_default();
    seen.lock().unwrap().push(Seen { method, path, content_type, form });
    match reply {
        Reply::Http(status, body) => {
            let answer = format!(
                "HTTP/1.1 {status} Fake\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(answer.as_bytes()).await;
            let _ = stream.shutdown().await;
        }
        Reply::Raw(bytes) => {
            let _ = stream.write_all(bytes).await;
            let _ = stream.shutdown().await;
        }
        Reply::Silent => {
            // Hold the connection open without answering (until the test's
            // runtime ends).
            std::future::pending::<()>().await;
        }
    }
}

// === helpers ===

/// Points every vendor at `fake` (`/google`, `/hcaptcha`, `/turnstile`), each
/// with its own secret, and sets the policy.
pub(crate) fn use_fake(config: &mut Config, fake: &FakeVendor, policy: CaptchaPolicyName) {
    config.captcha_policy = policy;
    config.captcha_googlev3_secret = GOOGLE_SECRET.into();
    config.captcha_googlev3_url = fake.url("/google/siteverify");
    config.captcha_hcaptcha_secret = HCAPTCHA_SECRET.into();
    config.captcha_hcaptcha_url = fake.url("/hcaptcha/siteverify");
    config.captcha_turnstile_secret = TURNSTILE_SECRET.into();
    config.captcha_turnstile_url = fake.url("/turnstile/siteverify");
}

fn captcha(vendor: pb::CaptchaVendor, response: &str) -> pb::Captcha {
    pb::Captcha { response: response.into(), vendor: vendor as i32 }
}

fn hcaptcha() -> pb::Captcha {
    captcha(pb::CaptchaVendor::Hcaptcha, TOKEN)
}

fn request(email: &str, password: &str, captcha: Option<pb::Captcha>) -> pb::LoginRequest {
    pb::LoginRequest { email: email.into(), password: password.into(), captcha, ..Default::default() }
}

/// The same request, claiming the end user's IP in `client.ip`.
fn from_ip(ip: &str, mut request: pb::LoginRequest) -> pb::LoginRequest {
    request.client = Some(pb::ClientInfo { ip: ip.into(), ..Default::default() });
    request
}

async fn login(
    app: &TestApp,
    request: impl tonic::IntoRequest<pb::LoginRequest>,
) -> Result<pb::IssuedSession, Status> {
    let response = app.auth().login(request).await?.into_inner();
    match response.result {
        Some(pb::login_response::Result::Session(session)) => Ok(session),
        other => panic!("expected a session, got {other:?}"),
    }
}

/// Logs in with a captcha while `fake` accepts it, and returns the token.
async fn login_with_captcha(app: &TestApp, fake: &FakeVendor, email: &str, password: &str) -> String {
    fake.answer_json(ACCEPT);
    login(app, request(email, password, Some(hcaptcha()))).await.unwrap().token
}

/// What an answer must not change: sessions, audit rows, hashing work.
#[derive(Debug, PartialEq, Eq)]
struct Written {
    sessions: i64,
    audit_events: i64,
    hash_work: u64,
}

async fn written(app: &TestApp) -> Written {
    Written {
        sessions: count_rows(&app.db, "sessions").await,
        audit_events: count_rows(&app.db, "audit_events").await,
        hash_work: app.domain.hasher().hash_work_count(),
    }
}

fn hash_work(app: &TestApp) -> u64 {
    app.domain.hasher().hash_work_count()
}

async fn audit_events(app: &TestApp, admin: &str, action: &str) -> Vec<pb::AuditEvent> {
    let mut client = AuditServiceClient::connect(format!("http://{}", app.addr)).await.unwrap();
    client
        .list_audit_events(bearer(
            admin,
            pb::ListAuditEventsRequest { action: action.into(), page_size: 500, ..Default::default() },
        ))
        .await
        .unwrap()
        .into_inner()
        .events
}

fn trust_loopback(config: &mut Config) {
    config.trusted_peers = vec!["127.0.0.0/8".parse().unwrap()];
}

// === policy `always` ===

async fn always_requires_a_captcha_before_the_password(backend: Backend) {
    let fake = FakeVendor::start(Reply::Http(200, REJECT.into())).await;
    let app = TestApp::start_with(&backend, |c| use_fake(c, &fake, CaptchaPolicyName::Always)).await;
    app.create_user("alice@example.com", USER_PASSWORD, Role::User).await;
    let before = written(&app).await;

    // Without a captcha: refused before the password is looked at, right or
    // wrong, known or unknown email.
    for (email, password) in [
        ("alice@example.com", USER_PASSWORD),
        ("alice@example.com", "wrong password 000"),
        ("nobody@example.com", USER_PASSWORD),
    ] {
        let status = login(&app, request(email, password, None)).await.unwrap_err();
        assert_error(&status, Code::Unauthenticated, "CAPTCHA_REQUIRED");
    }
    assert_eq!(written(&app).await, before, "a missing captcha hashed or wrote something");
    assert_eq!(fake.count(), 0, "nothing to verify, yet the vendor was asked");

    // A captcha the vendor rejects: CAPTCHA_INVALID, still no hashing.
    let status =
        login(&app, request("alice@example.com", USER_PASSWORD, Some(hcaptcha()))).await.unwrap_err();
    assert_error(&status, Code::Unauthenticated, "CAPTCHA_INVALID");
    assert!(!status.message().contains(TOKEN) && !status.message().contains(HCAPTCHA_SECRET), "{status:?}");
    assert_eq!(hash_work(&app), before.hash_work, "the password was hashed despite a rejected captcha");
    assert_eq!(count_rows(&app.db, "sessions").await, before.sessions);
    assert_eq!(fake.count(), 1);

    // A captcha the vendor accepts: a session.
    fake.answer_json(ACCEPT);
    let verifications = app.domain.hasher().verification_count();
    let session = login(&app, request("alice@example.com", USER_PASSWORD, Some(hcaptcha()))).await.unwrap();
    assert_eq!(app.validate(&session.token).await.unwrap().email, "alice@example.com");
    assert_eq!(app.domain.hasher().verification_count(), verifications + 1);
    assert_eq!(count_rows(&app.db, "sessions").await, before.sessions + 1);

    // The vendor got a form-encoded POST with the token, the secret and the
    // end user's IP.
    assert_eq!(fake.count(), 2);
    let seen = fake.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path, "/hcaptcha/siteverify");
    assert_eq!(seen.content_type, "application/x-www-form-urlencoded");
    assert_eq!(seen.form.get("response").map(String::as_str), Some(TOKEN));
    assert_eq!(seen.form.get("secret").map(String::as_str), Some(HCAPTCHA_SECRET));
    assert_eq!(seen.form.get("remoteip").map(String::as_str), Some("127.0.0.1"));

    // A good captcha does not make a wrong password right.
    let status =
        login(&app, request("alice@example.com", "wrong password 000", Some(hcaptcha()))).await.unwrap_err();
    assert_error(&status, Code::Unauthenticated, "UNAUTHORIZED");
    app.stop().await;
}

async fn always_verifies_with_each_vendor_at_its_url_with_its_secret(backend: Backend) {
    let fake = FakeVendor::start(Reply::Http(200, ACCEPT.into())).await;
    let app = TestApp::start_with(&backend, |c| use_fake(c, &fake, CaptchaPolicyName::Always)).await;
    app.create_user("bob@example.com", USER_PASSWORD, Role::User).await;
    let vendors = [
        (pb::CaptchaVendor::Googlev3, "/google/siteverify", GOOGLE_SECRET),
        (pb::CaptchaVendor::Hcaptcha, "/hcaptcha/siteverify", HCAPTCHA_SECRET),
        (pb::CaptchaVendor::Turnstile, "/turnstile/siteverify", TURNSTILE_SECRET),
    ];
    for (vendor, path, secret) in vendors {
        // Accepted.
        fake.answer_json(ACCEPT);
        let response = format!("{TOKEN}-{}", vendor.as_str_name());
        let session =
            login(&app, request("bob@example.com", USER_PASSWORD, Some(captcha(vendor, &response)))).await;
        let session = session.unwrap_or_else(|s| panic!("{vendor:?}: {s:?}"));
        app.validate(&session.token).await.unwrap();
        let seen = fake.last();
        assert_eq!(seen.path, path, "{vendor:?}");
        assert_eq!(seen.form.get("secret").map(String::as_str), Some(secret), "{vendor:?}");
        assert_eq!(seen.form.get("response"), Some(&response), "{vendor:?}");
        assert_eq!(seen.form.get("remoteip").map(String::as_str), Some("127.0.0.1"), "{vendor:?}");

        // Rejected by the same vendor.
        fake.answer_json(REJECT);
        let work = hash_work(&app);
        let status = login(&app, request("bob@example.com", USER_PASSWORD, Some(captcha(vendor, &response))))
            .await
            .unwrap_err();
        assert_error(&status, Code::Unauthenticated, "CAPTCHA_INVALID");
        assert_eq!(hash_work(&app), work, "{vendor:?}: hashed despite a rejected captcha");
        assert_eq!(fake.last().path, path);
    }
    assert_eq!(fake.count(), 6);
    app.stop().await;
}

async fn googlev3_checks_the_score_and_the_action(backend: Backend) {
    let fake = FakeVendor::start(Reply::Http(200, ACCEPT.into())).await;
    let app = TestApp::start_with(&backend, |c| {
        use_fake(c, &fake, CaptchaPolicyName::Always);
        c.captcha_googlev3_min_score = 0.5;
        c.captcha_googlev3_action = "login".into();
    })
    .await;
    app.create_user("carol@example.com", USER_PASSWORD, Role::User).await;
    let google = || Some(captcha(pb::CaptchaVendor::Googlev3, TOKEN));
    let before = written(&app).await;

    for answer in [
        // A low score: probably a bot.
        r#"{"success": true, "score": 0.2, "action": "login"}"#,
        // A token issued for another action.
        r#"{"success": true, "score": 0.9, "action": "signup"}"#,
        // No score: not a reCAPTCHA v3 token.
        r#"{"success": true, "action": "login"}"#,
        // Not accepted at all.
        r#"{"success": false, "error-codes": ["timeout-or-duplicate"]}"#,
    ] {
        fake.answer_json(answer);
        let status = login(&app, request("carol@example.com", USER_PASSWORD, google())).await.unwrap_err();
        assert_error(&status, Code::Unauthenticated, "CAPTCHA_INVALID");
        assert_eq!(fake.last().path, "/google/siteverify");
    }
    assert_eq!(fake.count(), 4);
    assert_eq!(hash_work(&app), before.hash_work);
    assert_eq!(count_rows(&app.db, "sessions").await, before.sessions);

    // The threshold itself passes.
    fake.answer_json(r#"{"success": true, "score": 0.5, "action": "login"}"#);
    let session = login(&app, request("carol@example.com", USER_PASSWORD, google())).await.unwrap();
    app.validate(&session.token).await.unwrap();
    assert_eq!(fake.last().form.get("secret").map(String::as_str), Some(GOOGLE_SECRET));
    app.stop().await;
}

// === policy `after_failures` ===

async fn after_failures_counts_the_accounts_failures(backend: Backend) {
    let fake = FakeVendor::start(Reply::Http(200, ACCEPT.into())).await;
    // Loopback is a trusted peer, so each attempt can come from its own IP
    // and only the account's count can reach the threshold.
    let app = TestApp::start_with(&backend, |c| {
        use_fake(c, &fake, CaptchaPolicyName::AfterFailures);
        c.captcha_after_failures = 2;
        trust_loopback(c);
    })
    .await;
    app.create_user("dave@example.com", USER_PASSWORD, Role::User).await;
    app.create_user("erin@example.com", USER_PASSWORD, Role::User).await;
    let dave = |ip: &str, password: &str, captcha: Option<pb::Captcha>| {
        from_ip(ip, request("dave@example.com", password, captcha))
    };

    // No failures yet: no captcha needed.
    login(&app, dave("203.0.113.1", USER_PASSWORD, None)).await.unwrap();
    // Two wrong passwords, from two IPs: each checked as a password.
    for ip in ["203.0.113.2", "203.0.113.3"] {
        let status = login(&app, dave(ip, "wrong password 000", None)).await.unwrap_err();
        assert_error(&status, Code::Unauthenticated, "UNAUTHORIZED");
    }
    assert_eq!(fake.count(), 0, "no captcha was needed, yet the vendor was asked");

    // The account has 2 failures: a captcha is needed, from a fresh IP too,
    // before any hashing.
    let before = written(&app).await;
    let status = login(&app, dave("203.0.113.4", USER_PASSWORD, None)).await.unwrap_err();
    assert_error(&status, Code::Unauthenticated, "CAPTCHA_REQUIRED");
    assert_eq!(written(&app).await, before, "a missing captcha hashed or wrote something");

    // Another account from that IP is not affected.
    login(&app, from_ip("203.0.113.4", request("erin@example.com", USER_PASSWORD, None))).await.unwrap();

    // A rejected captcha does not pass either.
    fake.answer_json(REJECT);
    let work = hash_work(&app);
    let status = login(&app, dave("203.0.113.4", USER_PASSWORD, Some(hcaptcha()))).await.unwrap_err();
    assert_error(&status, Code::Unauthenticated, "CAPTCHA_INVALID");
    assert_eq!(hash_work(&app), work);

    // With a good captcha it works; the vendor got the end user's IP.
    fake.answer_json(ACCEPT);
    let session = login(&app, dave("203.0.113.4", USER_PASSWORD, Some(hcaptcha()))).await.unwrap();
    app.validate(&session.token).await.unwrap();
    let seen = fake.last();
    assert_eq!(seen.form.get("remoteip").map(String::as_str), Some("203.0.113.4"));
    assert_eq!(seen.form.get("response").map(String::as_str), Some(TOKEN));

    // The success reset the account's count.
    let asked = fake.count();
    login(&app, dave("203.0.113.5", USER_PASSWORD, None)).await.unwrap();
    assert_eq!(fake.count(), asked);
    app.stop().await;
}

async fn after_failures_counts_the_client_ips_failures(backend: Backend) {
    let fake = FakeVendor::start(Reply::Http(200, ACCEPT.into())).await;
    let app = TestApp::start_with(&backend, |c| {
        use_fake(c, &fake, CaptchaPolicyName::AfterFailures);
        c.captcha_after_failures = 2;
        trust_loopback(c);
    })
    .await;
    app.create_user("frank@example.com", USER_PASSWORD, Role::User).await;
    let bad_ip = "198.51.100.66";
    let good_ip = "198.51.100.7";

    // Two failures from one IP, each for a different unknown email.
    for email in ["ghost1@example.com", "ghost2@example.com"] {
        let status = login(&app, from_ip(bad_ip, request(email, USER_PASSWORD, None))).await.unwrap_err();
        assert_error(&status, Code::Unauthenticated, "UNAUTHORIZED");
    }
    assert_eq!(fake.count(), 0);

    // Now any email from that IP needs a captcha: an account that never
    // failed, and another unknown one.
    let before = written(&app).await;
    for email in ["frank@example.com", "ghost3@example.com"] {
        let status = login(&app, from_ip(bad_ip, request(email, USER_PASSWORD, None))).await.unwrap_err();
        assert_error(&status, Code::Unauthenticated, "CAPTCHA_REQUIRED");
    }
    assert_eq!(written(&app).await, before, "a missing captcha hashed or wrote something");

    // From another IP the same account needs none.
    login(&app, from_ip(good_ip, request("frank@example.com", USER_PASSWORD, None))).await.unwrap();
    assert_eq!(fake.count(), 0);

    // From the failing IP with a good captcha it works.
    let session = login(&app, from_ip(bad_ip, request("frank@example.com", USER_PASSWORD, Some(hcaptcha()))))
        .await
        .unwrap();
    app.validate(&session.token).await.unwrap();
    assert_eq!(fake.last().form.get("remoteip").map(String::as_str), Some(bad_ip));

    // One success from the IP does not clear its failures...
    let status =
        login(&app, from_ip(bad_ip, request("frank@example.com", USER_PASSWORD, None))).await.unwrap_err();
    assert_error(&status, Code::Unauthenticated, "CAPTCHA_REQUIRED");
    // ...but they are forgotten once they are no longer recent (an hour).
    app.clock.advance(chrono::Duration::minutes(61));
    let asked = fake.count();
    login(&app, from_ip(bad_ip, request("frank@example.com", USER_PASSWORD, None))).await.unwrap();
    assert_eq!(fake.count(), asked);
    app.stop().await;
}

async fn after_failures_does_not_tell_known_from_unknown_emails(backend: Backend) {
    // Enumeration resistance: after N failures for an email, the answer is
    // the same whether an account has that email or not.
    let fake = FakeVendor::start(Reply::Http(200, ACCEPT.into())).await;
    let app = TestApp::start_with(&backend, |c| {
        use_fake(c, &fake, CaptchaPolicyName::AfterFailures);
        c.captcha_after_failures = 2;
        trust_loopback(c);
    })
    .await;
    app.create_user("mallory@example.com", USER_PASSWORD, Role::User).await;
    // Two wrong passwords for each email, every attempt from its own IP.
    let attempts = [
        ("mallory@example.com", "203.0.113.21"),
        ("mallory@example.com", "203.0.113.22"),
        ("nobody@example.com", "203.0.113.23"),
        ("nobody@example.com", "203.0.113.24"),
    ];
    for (email, ip) in attempts {
        let status = login(&app, from_ip(ip, request(email, "wrong password 000", None))).await.unwrap_err();
        assert_error(&status, Code::Unauthenticated, "UNAUTHORIZED");
    }
    // The same wrong password again, from a fresh IP: the same answer.
    let mut answers = Vec::new();
    for email in ["mallory@example.com", "nobody@example.com"] {
        let request = from_ip("198.51.100.30", request(email, "wrong password 000", None));
        let status = login(&app, request).await.unwrap_err();
        let reason = status.get_details_error_info().map(|info| info.reason);
        answers.push((status.code(), status.message().to_owned(), reason, status.details().to_vec()));
    }
    assert_eq!(
        answers[0], answers[1],
        "a known and an unknown email with the same failures are told apart \
         (mallory@ exists, nobody@ does not): {:?} vs {:?}",
        answers[0].2, answers[1].2
    );
    app.stop().await;
}

async fn after_failures_ignores_an_ip_claimed_by_an_untrusted_caller(backend: Backend) {
    // Loopback is not trusted: the claimed `client.ip` is ignored, so a bot
    // cannot spread its failures over made-up addresses.
    let fake = FakeVendor::start(Reply::Http(200, ACCEPT.into())).await;
    let app = TestApp::start_with(&backend, |c| {
        use_fake(c, &fake, CaptchaPolicyName::AfterFailures);
        c.captcha_after_failures = 2;
    })
    .await;
    app.create_user("grace@example.com", USER_PASSWORD, Role::User).await;
    for (ip, email) in [("203.0.113.10", "ghost1@example.com"), ("203.0.113.11", "ghost2@example.com")] {
        let status = login(&app, from_ip(ip, request(email, USER_PASSWORD, None))).await.unwrap_err();
        assert_error(&status, Code::Unauthenticated, "UNAUTHORIZED");
    }
    let claimed = from_ip("203.0.113.12", request("grace@example.com", USER_PASSWORD, None));
    let status = login(&app, claimed).await.unwrap_err();
    assert_error(&status, Code::Unauthenticated, "CAPTCHA_REQUIRED");

    let claimed = from_ip("203.0.113.12", request("grace@example.com", USER_PASSWORD, Some(hcaptcha())));
    login(&app, claimed).await.unwrap();
    assert_eq!(fake.last().form.get("remoteip").map(String::as_str), Some("127.0.0.1"));
    app.stop().await;
}

// === policy `off` ===

async fn policy_off_never_asks_the_vendor(backend: Backend) {
    // A vendor that would reject everything, never asked.
    let fake = FakeVendor::start(Reply::Http(200, REJECT.into())).await;
    let app = TestApp::start_with(&backend, |c| use_fake(c, &fake, CaptchaPolicyName::Off)).await;
    app.create_user("heidi@example.com", USER_PASSWORD, Role::User).await;

    login(&app, request("heidi@example.com", USER_PASSWORD, None)).await.unwrap();
    for _ in 0..5 {
        let status = login(&app, request("heidi@example.com", "wrong password 000", None)).await.unwrap_err();
        assert_error(&status, Code::Unauthenticated, "UNAUTHORIZED");
    }
    for email in ["ghost1@example.com", "ghost2@example.com", "ghost3@example.com"] {
        let status = login(&app, request(email, USER_PASSWORD, None)).await.unwrap_err();
        assert_error(&status, Code::Unauthenticated, "UNAUTHORIZED");
    }
    let session = login(&app, request("heidi@example.com", USER_PASSWORD, None)).await.unwrap();
    app.validate(&session.token).await.unwrap();
    // A captcha sent anyway is not verified (the vendor would reject it).
    login(&app, request("heidi@example.com", USER_PASSWORD, Some(hcaptcha()))).await.unwrap();
    assert_eq!(fake.count(), 0, "policy off, yet the vendor was asked: {:?}", fake.seen());
    app.stop().await;
}

// === bad input and failing vendors ===

async fn bad_captcha_input_is_refused_before_the_vendor_is_asked(backend: Backend) {
    let fake = FakeVendor::start(Reply::Http(200, ACCEPT.into())).await;
    // Only hCaptcha is configured.
    let app = TestApp::start_with(&backend, |c| {
        use_fake(c, &fake, CaptchaPolicyName::Always);
        c.captcha_googlev3_secret = String::new();
        c.captcha_turnstile_secret = String::new();
    })
    .await;
    app.create_user("ivan@example.com", USER_PASSWORD, Role::User).await;
    let before = written(&app).await;
    let long = "a".repeat(5000);
    let cases = [
        (pb::Captcha { response: TOKEN.into(), vendor: 99 }, "captcha.vendor"),
        (pb::Captcha { response: TOKEN.into(), vendor: 0 }, "captcha.vendor"),
        (captcha(pb::CaptchaVendor::Googlev3, TOKEN), "captcha.vendor"),
        (captcha(pb::CaptchaVendor::Turnstile, TOKEN), "captcha.vendor"),
        (captcha(pb::CaptchaVendor::Hcaptcha, &long), "captcha.response"),
        (captcha(pb::CaptchaVendor::Hcaptcha, ""), "captcha.response"),
    ];
    for (captcha, field) in cases {
        let shown = format!("vendor {} response of {} bytes", captcha.vendor, captcha.response.len());
        let status =
            login(&app, request("ivan@example.com", USER_PASSWORD, Some(captcha))).await.expect_err(&shown);
        assert_invalid(&status, field);
        assert!(status.message().len() < 200, "{shown}: {status:?}");
        assert_eq!(written(&app).await, before, "{shown}: something was hashed or written");
    }
    assert_eq!(fake.count(), 0, "bad input reached the vendor: {:?}", fake.seen());

    // The configured vendor still works.
    login(&app, request("ivan@example.com", USER_PASSWORD, Some(hcaptcha()))).await.unwrap();
    app.stop().await;
}

async fn a_vendor_that_times_out_or_answers_garbage_fails_closed(backend: Backend) {
    let fake = FakeVendor::start(Reply::Silent).await;
    let app = TestApp::start_with(&backend, |c| {
        use_fake(c, &fake, CaptchaPolicyName::Always);
        c.captcha_timeout = Duration::from_millis(300);
    })
    .await;
    app.create_user("judy@example.com", USER_PASSWORD, Role::User).await;
    let sessions = count_rows(&app.db, "sessions").await;
    let work = hash_work(&app);

    // Never answers: unavailable after the timeout, not after the request's.
    let started = Instant::now();
    let status = login(&app, request("judy@example.com", USER_PASSWORD, Some(hcaptcha()))).await.unwrap_err();
    let elapsed = started.elapsed();
    assert_error(&status, Code::Unavailable, "CAPTCHA_UNAVAILABLE");
    assert!(elapsed >= Duration::from_millis(250) && elapsed < Duration::from_secs(5), "{elapsed:?}");
    fake.wait_for(1).await;

    // Garbage of several kinds.
    let garbage = [
        Reply::Raw(b"garbage\r\n\r\n"),
        Reply::Http(200, "<html>login here</html>".into()),
        Reply::Http(200, r#"{"success": "yes"}"#.into()),
        Reply::Http(500, ACCEPT.into()),
        Reply::Http(302, ACCEPT.into()),
    ];
    for (i, reply) in garbage.into_iter().enumerate() {
        fake.answer(reply);
        let status =
            login(&app, request("judy@example.com", USER_PASSWORD, Some(hcaptcha()))).await.unwrap_err();
        assert_error(&status, Code::Unavailable, "CAPTCHA_UNAVAILABLE");
        assert!(
            !status.message().contains(HCAPTCHA_SECRET) && !status.message().contains(TOKEN),
            "{status:?}"
        );
        fake.wait_for(i + 2).await;
    }
    assert_eq!(count_rows(&app.db, "sessions").await, sessions, "a session was written");
    assert_eq!(hash_work(&app), work, "the password was hashed without a verified captcha");
    app.stop().await;
}

// === bypass_captcha ===

async fn bypass_captcha_needs_the_admin_login_scope(backend: Backend) {
    let fake = FakeVendor::start(Reply::Http(200, ACCEPT.into())).await;
    let app = TestApp::start_with(&backend, |c| use_fake(c, &fake, CaptchaPolicyName::Always)).await;
    app.create_user("admin@example.com", ADMIN_PASSWORD, Role::Admin).await;
    app.create_user("kim@example.com", USER_PASSWORD, Role::User).await;
    let admin = login_with_captcha(&app, &fake, "admin@example.com", ADMIN_PASSWORD).await;
    let user = login_with_captcha(&app, &fake, "kim@example.com", USER_PASSWORD).await;
    let service = service_account(&app, &admin, "backend@example.com").await;
    let admin_login_key = create_key(&app, &admin, service, &["portcullis:admin_login"]).await;
    let other_key = create_key(&app, &admin, service, &["portcullis:users:read"]).await;
    // From here on the vendor would reject: a bypass must not ask it.
    fake.answer_json(REJECT);
    let asked = fake.count();
    let bypass =
        || pb::LoginRequest { bypass_captcha: true, ..request("kim@example.com", USER_PASSWORD, None) };

    // Allowed: an admin session, and a key with the admin-login scope.
    for caller in [&admin, &admin_login_key] {
        let session = login(&app, bearer(caller, bypass())).await.unwrap();
        let principal = app.validate(&session.token).await.unwrap();
        assert_eq!(principal.email, "kim@example.com");
    }
    assert_eq!(fake.count(), asked, "a bypass asked the vendor");

    // Refused: a normal user's session, a key without the scope, nobody.
    let before = written(&app).await;
    for caller in [Some(&user), Some(&other_key), None] {
        let request = match caller {
            Some(token) => bearer(token, bypass()),
            None => Request::new(bypass()),
        };
        let status = login(&app, request).await.unwrap_err();
        assert_error(&status, Code::PermissionDenied, "FORBIDDEN");
        assert_eq!(missing_scope(&status).as_deref(), Some("portcullis:admin_login"), "{status:?}");
    }
    assert_eq!(written(&app).await, before, "a refused bypass hashed or wrote something");

    // An admin credential alone does not skip the captcha: only the flag does.
    let status =
        login(&app, bearer(&admin, request("kim@example.com", USER_PASSWORD, None))).await.unwrap_err();
    assert_error(&status, Code::Unauthenticated, "CAPTCHA_REQUIRED");
    assert_eq!(fake.count(), asked);
    app.stop().await;
}

/// Creates a service account as `admin`.
async fn service_account(app: &TestApp, admin: &str, email: &str) -> i64 {
    let request = pb::CreateUserRequest {
        email: email.into(),
        kind: pb::UserKind::Service as i32,
        ..Default::default()
    };
    app.users().create_user(bearer(admin, request)).await.unwrap().into_inner().user.unwrap().id
}

/// Creates an API key for `owner` with `scopes`, as `admin`; returns the key.
async fn create_key(app: &TestApp, admin: &str, owner: i64, scopes: &[&str]) -> String {
    let request = pb::CreateApiKeyRequest {
        name: "captcha test key".into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        owner_id: owner,
        ..Default::default()
    };
    app.keys().create_api_key(bearer(admin, request)).await.unwrap().into_inner().key
}

// === audit ===

async fn a_rejected_captcha_writes_one_audit_row(backend: Backend) {
    let fake = FakeVendor::start(Reply::Http(200, ACCEPT.into())).await;
    let app = TestApp::start_with(&backend, |c| use_fake(c, &fake, CaptchaPolicyName::Always)).await;
    app.create_user("admin@example.com", ADMIN_PASSWORD, Role::Admin).await;
    app.create_user("leo@example.com", USER_PASSWORD, Role::User).await;
    let admin = login_with_captcha(&app, &fake, "admin@example.com", ADMIN_PASSWORD).await;
    assert!(audit_events(&app, &admin, "captcha.failed").await.is_empty());

    fake.answer_json(REJECT);
    let mut rejected = Request::new(request("leo@example.com", USER_PASSWORD, Some(hcaptcha())));
    rejected.metadata_mut().insert("x-request-id", MetadataValue::from_static("captcha-audit-1"));
    let status = login(&app, rejected).await.unwrap_err();
    assert_error(&status, Code::Unauthenticated, "CAPTCHA_INVALID");

    let events = audit_events(&app, &admin, "captcha.failed").await;
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0];
    assert_eq!(event.action, "captcha.failed");
    assert_eq!(event.outcome, "failure");
    assert_eq!(event.subject, "email:leo@example.com");
    assert_eq!(event.actor, "anonymous");
    assert_eq!(event.client_ip, "127.0.0.1");
    assert_eq!(event.request_id, "captcha-audit-1");
    assert!(event.detail.contains("hcaptcha"), "{event:?}");
    for secret in [TOKEN, HCAPTCHA_SECRET, USER_PASSWORD] {
        assert!(!format!("{event:?}").contains(secret), "the audit row holds a secret: {event:?}");
    }

    // A missing captcha and a good one write no such row.
    let status = login(&app, request("leo@example.com", USER_PASSWORD, None)).await.unwrap_err();
    assert_error(&status, Code::Unauthenticated, "CAPTCHA_REQUIRED");
    login_with_captcha(&app, &fake, "leo@example.com", USER_PASSWORD).await;
    assert_eq!(audit_events(&app, &admin, "captcha.failed").await.len(), 1);
    app.stop().await;
}
