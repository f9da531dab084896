//! Forward auth (`/auth/verify`): called directly as nginx, Traefik and
//! Caddy call it, on SQLite and PostgreSQL; and the real nginx (Debian's,
//! installed by `scripts/tools`) running `deploy/nginx.conf` in front of a
//! recording upstream, asking the real portcullis.

use std::{net::SocketAddr, path::PathBuf, process::Stdio, time::Duration};

use http::{HeaderMap, HeaderValue};
use portcullis::{domain::Role, proto::v1 as pb};
use tokio::process::{Child, Command};

use crate::{
    db_tests,
    http::{HttpResponse as Reply, Upstream, hex, poll, request, request_with_map, s4e_error, try_request},
    keys::create_key,
    support::{Backend, TestApp, USER_PASSWORD, bearer, captured_logs},
};

const VERIFY: &str = "/auth/verify";

fn random_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; N];
    ring::rand::SystemRandom::new().fill(&mut bytes).unwrap();
    bytes
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", hex(&random_bytes::<6>()))
}

/// A denial's `x-portcullis-error` header holds its body, as JSON.
#[track_caller]
fn error_header_is_the_body(reply: &Reply) {
    let header =
        reply.header("x-portcullis-error").unwrap_or_else(|| panic!("no x-portcullis-error: {reply:?}"));
    let header: serde_json::Value = serde_json::from_str(header).unwrap();
    let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(header, body);
}

/// A user with a session, and API keys holding `assets:read` and
/// `assets:write`.
struct Cast {
    admin: String,
    user_id: i64,
    session: pb::IssuedSession,
    reader: pb::CreateApiKeyResponse,
    writer: pb::CreateApiKeyResponse,
}

impl Cast {
    async fn new(app: &TestApp) -> Self {
        let admin = app.admin_token().await;
        let user_id = app.create_user("erin@example.com", USER_PASSWORD, Role::User).await;
        let session = app.login("erin@example.com", USER_PASSWORD).await;
        let reader = create_key(app, &admin, user_id, &["assets:read"]).await.unwrap();
        let writer = create_key(app, &admin, user_id, &["assets:write"]).await.unwrap();
        Self { admin, user_id, session, reader, writer }
    }

    fn key_id(key: &pb::CreateApiKeyResponse) -> String {
        key.api_key.as_ref().unwrap().id.to_string()
    }
}

db_tests!(
    every_credential_form_passes_with_the_identity_headers,
    required_scopes_come_from_the_own_query,
    a_revocation_is_seen_on_the_very_next_call,
    ambiguous_and_bad_input_are_refused_with_the_s4e_body,
    nginx_asks_portcullis_about_every_request,
);

async fn every_credential_form_passes_with_the_identity_headers(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let cast = Cast::new(&app).await;
    let token = &cast.session.token;
    let session_id = cast.session.session_id.to_string();
    let user_id = cast.user_id.to_string();

    let bearer_header = format!("Bearer {token}");
    let token_header = format!("Token {token}");
    let cookie = format!("theme=dark; portcullis_session={token}");
    let in_uri = format!("/app/page?x=1&token={token}");
    let forms: [(&str, &str); 6] = [
        ("authorization", &bearer_header),
        ("authorization", &token_header),
        ("x-api-key", token),
        ("cookie", &cookie),
        // Traefik and Caddy name the original target so; nginx so.
        ("x-forwarded-uri", &in_uri),
        ("x-original-uri", &in_uri),
    ];
    for (name, value) in forms {
        let request_id = unique("fwd");
        let reply = request(app.addr, "GET", VERIFY, &[(name, value), ("x-request-id", &request_id)]).await;
        assert_eq!(reply.status, 200, "{name}: {reply:?}");
        assert_eq!(reply.body, "", "{name}");
        assert_eq!(reply.header("x-portcullis-user-id"), Some(user_id.as_str()), "{name}");
        assert_eq!(reply.header("x-portcullis-role"), Some("user"), "{name}");
        assert_eq!(reply.header("x-portcullis-session-id"), Some(session_id.as_str()), "{name}");
        assert_eq!(reply.header("x-portcullis-key-id"), None, "{name}");
        assert_eq!(reply.header("x-portcullis-scopes"), None, "a session of role user holds no scopes");
        assert_eq!(reply.header("x-request-id"), Some(request_id.as_str()), "{name}");
    }

    // An API key: its id and scopes, no session id.
    let reply = request(app.addr, "GET", VERIFY, &[("x-api-key", &cast.reader.key)]).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("x-portcullis-key-id"), Some(Cast::key_id(&cast.reader).as_str()));
    assert_eq!(reply.header("x-portcullis-scopes"), Some("assets:read"));
    assert_eq!(reply.header("x-portcullis-session-id"), None);
    assert!(reply.header("x-request-id").is_some_and(|id| !id.is_empty()), "an id is made: {reply:?}");

    // Any method a proxy may use, with the original in x-forwarded-method.
    for method in ["HEAD", "POST", "PUT", "DELETE", "OPTIONS"] {
        let reply = request(
            app.addr,
            method,
            VERIFY,
            &[("authorization", &bearer_header), ("x-forwarded-method", "PATCH")],
        )
        .await;
        assert_eq!(reply.status, 200, "{method}: {reply:?}");
        assert_eq!(reply.header("x-portcullis-user-id"), Some(user_id.as_str()), "{method}");
    }
    let reply = request(app.addr, "HEAD", VERIFY, &[]).await;
    assert_eq!((reply.status, reply.body.as_str()), (401, ""), "{reply:?}");

    // The token is read from the original target only, never from the
    // forward-auth request's own query.
    let reply = request(app.addr, "GET", &format!("{VERIFY}?token={token}"), &[]).await;
    s4e_error(&reply, 401, "unauthorized");
    // No token reached the log.
    assert!(!captured_logs().contains(token.as_str()), "a token reached the log");
    app.stop().await;
}

async fn required_scopes_come_from_the_own_query(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let cast = Cast::new(&app).await;
    let both = create_key(&app, &cast.admin, cast.user_id, &["assets:read", "billing:*"]).await.unwrap();
    let addr = app.addr;
    let verify = |scopes: &str, key: &str| {
        let target = format!("{VERIFY}?scopes={scopes}");
        let key = key.to_owned();
        async move { request(addr, "GET", &target, &[("x-api-key", &key)]).await }
    };

    assert_eq!(verify("assets:read", &cast.reader.key).await.status, 200);
    // Comma- and space-separated, repeated, with wildcards held.
    for scopes in [
        "assets:read,billing:write",
        "assets:read+billing:write",
        "assets:read%20billing:read&scopes=billing:x",
    ] {
        let reply = verify(scopes, &both.key).await;
        assert_eq!(reply.status, 200, "{scopes}: {reply:?}");
        assert_eq!(reply.header("x-portcullis-scopes"), Some("assets:read billing:*"));
    }

    // A missing scope: 403 naming it, no challenge.
    let reply = verify("assets:read", &cast.writer.key).await;
    let body = s4e_error(&reply, 403, "forbidden");
    assert!(body["error"]["message"].as_str().unwrap().contains("assets:read"), "{body}");
    assert_eq!(reply.header("www-authenticate"), None);
    error_header_is_the_body(&reply);
    let reply = verify("assets:read,billing:read", &cast.reader.key).await;
    let body = s4e_error(&reply, 403, "forbidden");
    assert!(body["error"]["message"].as_str().unwrap().contains("billing:read"), "{body}");

    // A session of role user holds no scopes; an admin's holds them all.
    let bearer_header = format!("Bearer {}", cast.session.token);
    let reply = request(
        app.addr,
        "GET",
        &format!("{VERIFY}?scopes=assets:read"),
        &[("authorization", &bearer_header)],
    )
    .await;
    s4e_error(&reply, 403, "forbidden");
    let admin = format!("Bearer {}", cast.admin);
    let reply =
        request(app.addr, "GET", &format!("{VERIFY}?scopes=assets:read"), &[("authorization", &admin)]).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("x-portcullis-role"), Some("admin"));

    // A malformed scope is the route's mistake: 400 naming `scopes`, with
    // or without a credential.
    for scopes in ["Assets:Read", "assets", "assets:read,,write", "a:re*d"] {
        let reply = verify(scopes, &cast.reader.key).await;
        let body = s4e_error(&reply, 400, "invalid_argument");
        assert_eq!(body["error"]["field"], "scopes", "{scopes}: {body}");
        error_header_is_the_body(&reply);
    }
    let reply = request(app.addr, "GET", &format!("{VERIFY}?scopes=Nope"), &[]).await;
    s4e_error(&reply, 400, "invalid_argument");
    app.stop().await;
}

async fn a_revocation_is_seen_on_the_very_next_call(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let cast = Cast::new(&app).await;
    let bearer_header = format!("Bearer {}", cast.session.token);

    // Cached by the first calls, refused by the very next one after.
    for _ in 0..3 {
        assert_eq!(request(app.addr, "GET", VERIFY, &[("authorization", &bearer_header)]).await.status, 200);
        assert_eq!(request(app.addr, "GET", VERIFY, &[("x-api-key", &cast.reader.key)]).await.status, 200);
    }
    app.auth().logout(pb::LogoutRequest { token: cast.session.token.clone() }).await.unwrap();
    let reply = request(app.addr, "GET", VERIFY, &[("authorization", &bearer_header)]).await;
    s4e_error(&reply, 401, "unauthorized");
    assert_eq!(reply.header("www-authenticate"), Some(r#"Bearer realm="portcullis", error="invalid_token""#));

    let key_id = cast.reader.api_key.as_ref().unwrap().id;
    app.keys().revoke_api_key(bearer(&cast.admin, pb::RevokeApiKeyRequest { key_id })).await.unwrap();
    let reply = request(app.addr, "GET", VERIFY, &[("x-api-key", &cast.reader.key)]).await;
    s4e_error(&reply, 401, "unauthorized");
    error_header_is_the_body(&reply);

    // Expiry by the clock: the session's lifetime is over.
    let other = app.login("erin@example.com", USER_PASSWORD).await;
    let bearer_header = format!("Bearer {}", other.token);
    assert_eq!(request(app.addr, "GET", VERIFY, &[("authorization", &bearer_header)]).await.status, 200);
    app.clock.advance(chrono::Duration::days(2));
    let reply = request(app.addr, "GET", VERIFY, &[("authorization", &bearer_header)]).await;
    s4e_error(&reply, 401, "token_expired");
    app.stop().await;
}

async fn ambiguous_and_bad_input_are_refused_with_the_s4e_body(backend: Backend) {
    let app = TestApp::start_with(&backend, |config| {
        config.metrics_addr = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        // The proxy (here, the test on loopback) is believed about the
        // client's address.
        config.trusted_peers = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let cast = Cast::new(&app).await;
    let token = &cast.session.token;
    let bearer_header = format!("Bearer {token}");

    // No credential: 401, a challenge naming no error, the body in the header.
    let reply = request(app.addr, "GET", VERIFY, &[]).await;
    let body = s4e_error(&reply, 401, "unauthorized");
    assert_eq!(reply.header("www-authenticate"), Some(r#"Bearer realm="portcullis""#));
    error_header_is_the_body(&reply);
    assert_eq!(body.as_object().unwrap().len(), 2, "{body}");

    // Two different credentials, in headers or header and original target.
    let in_uri = format!("/x?token={}", cast.reader.key);
    let in_uri_too = format!("/x?token={token}");
    for headers in [
        vec![("authorization", bearer_header.as_str()), ("x-api-key", cast.reader.key.as_str())],
        vec![("authorization", bearer_header.as_str()), ("x-forwarded-uri", in_uri.as_str())],
        vec![("x-forwarded-uri", in_uri_too.as_str()), ("x-original-uri", in_uri.as_str())],
        vec![("x-api-key", cast.reader.key.as_str()), ("x-api-key", cast.writer.key.as_str())],
    ] {
        let reply = request(app.addr, "GET", VERIFY, &headers).await;
        s4e_error(&reply, 401, "unauthorized");
        assert!(reply.header("www-authenticate").unwrap().contains("invalid_token"), "{reply:?}");
    }
    // The same token in several places is one credential.
    let reply = request(
        app.addr,
        "GET",
        VERIFY,
        &[("authorization", &bearer_header), ("x-api-key", token), ("x-original-uri", &in_uri_too)],
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");

    // A mistyped token, another scheme, non-UTF-8 bytes: 401, no panic.
    let reply =
        request(app.addr, "GET", VERIFY, &[("authorization", "Bearer pcs_sess_nottherightlength")]).await;
    s4e_error(&reply, 401, "unauthorized");
    let reply = request(app.addr, "GET", VERIFY, &[("authorization", "Basic dXNlcjpwYXNz")]).await;
    s4e_error(&reply, 401, "unauthorized");
    let mut headers = HeaderMap::new();
    headers.insert("authorization", HeaderValue::from_bytes(b"Bearer pcs_sess_\xff\xfe").unwrap());
    headers.insert("x-forwarded-uri", HeaderValue::from_bytes(b"/caf\xe9?token=%ff").unwrap());
    let reply = request_with_map(app.addr, "GET", VERIFY, headers).await;
    s4e_error(&reply, 401, "unauthorized");
    error_header_is_the_body(&reply);
    // Another app's cookie with odd bytes does not hide ours.
    let mut headers = HeaderMap::new();
    let cookie = format!("other=caf\u{e9}; portcullis_session={token}");
    headers.insert("cookie", HeaderValue::from_bytes(cookie.as_bytes()).unwrap());
    assert_eq!(request_with_map(app.addr, "GET", VERIFY, headers).await.status, 200);
    // 200 cookies.
    let mut many: Vec<String> = (0..200).map(|i| format!("c{i}=v{i}")).collect();
    many.push(format!("portcullis_session={token}"));
    let many = many.join("; ");
    assert_eq!(request(app.addr, "GET", VERIFY, &[("cookie", &many)]).await.status, 200);

    // Oversized: a header, the original target's query, the own query.
    let big = "x".repeat(20 * 1024);
    let reply = request(app.addr, "GET", VERIFY, &[("x-api-key", &big)]).await;
    let body = s4e_error(&reply, 400, "invalid_argument");
    assert_eq!(body["error"]["field"], "headers", "{body}");
    let long_uri = format!("/x?pad={big}");
    let reply = request(app.addr, "GET", VERIFY, &[("x-forwarded-uri", &long_uri)]).await;
    s4e_error(&reply, 400, "invalid_argument");
    let reply = request(app.addr, "GET", &format!("{VERIFY}?pad={big}"), &[]).await;
    let body = s4e_error(&reply, 400, "invalid_argument");
    assert_eq!(body["error"]["field"], "scopes", "{body}");
    error_header_is_the_body(&reply);
    // The server still answers.
    assert_eq!(request(app.addr, "GET", VERIFY, &[("authorization", &bearer_header)]).await.status, 200);

    // Counted under source="forward_auth".
    let metrics = request(app.metrics_addr.unwrap(), "GET", "/metrics", &[]).await.body;
    for (result, count) in [("valid", 4), ("UNAUTHORIZED", 8), ("INVALID_ARGUMENT", 3)] {
        let line = format!(
            "portcullis_token_validations_total{{source=\"forward_auth\",result=\"{result}\"}} {count}"
        );
        assert!(metrics.lines().any(|l| l == line), "no `{line}` in\n{metrics}");
    }

    // Refused credentials are audited in aggregate, per client as the
    // trusted proxy names it.
    for _ in 0..5 {
        let reply = request(
            app.addr,
            "GET",
            VERIFY,
            &[("x-api-key", "pcs_live_junk"), ("x-forwarded-for", "198.51.100.1, 203.0.113.7")],
        )
        .await;
        s4e_error(&reply, 401, "unauthorized");
    }
    app.domain.flush_invalid_tokens().await.unwrap();
    let events = app
        .audit()
        .list_audit_events(bearer(
            &cast.admin,
            pb::ListAuditEventsRequest {
                action: "token.invalid".into(),
                page_size: 100,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    let flood: Vec<_> = events.iter().filter(|e| e.subject == "ip:203.0.113.7").collect();
    assert_eq!(flood.iter().map(|e| e.count).sum::<i64>(), 5, "{events:?}");
    assert!(flood.iter().all(|e| e.detail == "invalid"), "{flood:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_auth_moves_with_its_path_and_can_be_turned_off() {
    let app =
        TestApp::start_with(&Backend::Sqlite, |config| config.forward_auth_path = "/gate/check".into()).await;
    s4e_error(&request(app.addr, "GET", "/gate/check", &[]).await, 401, "unauthorized");
    s4e_error(&request(app.addr, "GET", VERIFY, &[]).await, 404, "not_found");
    let app = app.restart_with(|config| config.forward_auth = false).await;
    s4e_error(&request(app.addr, "GET", "/gate/check", &[]).await, 404, "not_found");
    app.stop().await;
}

// === nginx ===

/// The nginx binary `scripts/tools` installed (Debian's package), or `None`
/// (the test is skipped, failed in CI) with the reason it has none.
fn nginx_binary() -> Option<PathBuf> {
    // Runs `scripts/tools`; nginx is not in the venv but named the same way.
    crate::support::tool("nginx")?;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let stamp = std::fs::read_to_string(root.join(".tools/.nginx-v1")).unwrap_or_default();
    let binary = PathBuf::from(stamp.trim());
    assert!(binary.is_file(), "scripts/tools recorded no nginx binary: {stamp:?}");
    Some(binary)
}

/// `deploy/nginx.conf` (the README's config) with the test's ports, inside
/// a main configuration that keeps nginx in the foreground, in one process,
/// with every file in `dir`.
fn nginx_config(dir: &std::path::Path, port: u16, portcullis: SocketAddr, upstream: SocketAddr) -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut site = std::fs::read_to_string(root.join("deploy/nginx.conf")).unwrap();
    let mut replace = |from: &str, to: &str| {
        assert_eq!(site.matches(from).count(), 1, "deploy/nginx.conf should hold `{from}` once");
        site = site.replace(from, to);
    };
    replace("listen 8000;", &format!("listen 127.0.0.1:{port};"));
    replace("server 127.0.0.1:50051;", &format!("server {portcullis};"));
    replace("server 127.0.0.1:8080;", &format!("server {upstream};"));
    std::fs::write(dir.join("portcullis.conf"), site).unwrap();
    let dir = dir.display();
    format!(
        "daemon off;\n\
         master_process off;\n\
         pid {dir}/nginx.pid;\n\
         error_log {dir}/error.log warn;\n\
         events {{ worker_connections 128; }}\n\
         http {{\n\
         \x20   access_log {dir}/access.log;\n\
         \x20   client_body_temp_path {dir}/client_body;\n\
         \x20   proxy_temp_path {dir}/proxy;\n\
         \x20   fastcgi_temp_path {dir}/fastcgi;\n\
         \x20   uwsgi_temp_path {dir}/uwsgi;\n\
         \x20   scgi_temp_path {dir}/scgi;\n\
         \x20   include {dir}/portcullis.conf;\n\
         }}\n"
    )
}

/// A running nginx, killed on drop.
struct Nginx {
    addr: SocketAddr,
    _child: Child,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// `None` (skipped) where nginx cannot be had here.
    async fn start(portcullis: SocketAddr, upstream: SocketAddr) -> Option<Self> {
        let binary = nginx_binary()?;
        // nginx cannot listen on port 0 and say where: take a free port, and
        // try again should another process take it first.
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let port = {
                let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                probe.local_addr().unwrap().port()
            };
            let config = dir.path().join("nginx.conf");
            std::fs::write(&config, nginx_config(dir.path(), port, portcullis, upstream)).unwrap();
            let check = Command::new(&binary)
                .arg("-t")
                .arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(&config)
                .arg("-e")
                .arg(dir.path().join("error.log"))
                .output()
                .await
                .unwrap();
            assert!(
                check.status.success(),
                "nginx -t refused the config:\n{}",
                String::from_utf8_lossy(&check.stderr)
            );
            let mut child = Command::new(&binary)
                .arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(&config)
                .arg("-e")
                .arg(dir.path().join("error.log"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let error_log = dir.path().join("error.log");
            let ready = poll("nginx to listen", Duration::from_secs(30), || {
                let exited = child.try_wait().unwrap().is_some();
                async move {
                    if exited {
                        return Some(false);
                    }
                    tokio::net::TcpStream::connect(addr).await.ok().map(|_| true)
                }
            })
            .await;
            if ready {
                return Some(Self { addr, _child: child, dir });
            }
            let log = std::fs::read_to_string(&error_log).unwrap_or_default();
            assert!(log.contains("Address already in use"), "nginx stopped; its error log:\n{log}");
        }
        panic!("nginx found no free port in 5 tries");
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

async fn nginx_asks_portcullis_about_every_request(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let upstream = Upstream::start().await;
    let Some(nginx) = Nginx::start(app.addr, upstream.addr).await else { return };
    let cast = Cast::new(&app).await;
    let session = &cast.session;

    // No credential: portcullis's 401 and S4E body, its challenge (once),
    // the request id; nothing upstream.
    let reply = request(nginx.addr, "GET", "/hello", &[]).await;
    let body = s4e_error(&reply, 401, "unauthorized");
    let direct = request(app.addr, "GET", VERIFY, &[]).await;
    assert_eq!(body, serde_json::from_str::<serde_json::Value>(&direct.body).unwrap(), "{reply:?}");
    let challenges: Vec<_> = reply.headers.get_all("www-authenticate").iter().collect();
    assert_eq!(challenges, [r#"Bearer realm="portcullis""#], "{reply:?}\n{}", nginx.error_log());
    assert!(reply.header("x-request-id").is_some_and(|id| !id.is_empty()), "{reply:?}");
    assert!(upstream.seen().is_empty());

    // A session token: the upstream sees who it is, not what the client
    // claimed, and the request id the client sent.
    let request_id = unique("nginx-req");
    let bearer_header = format!("Bearer {}", session.token);
    let reply = request(
        nginx.addr,
        "GET",
        "/hello",
        &[
            ("authorization", &bearer_header),
            ("x-request-id", &request_id),
            ("x-portcullis-user-id", "999"),
            ("x-portcullis-key-id", "5"),
            ("x-portcullis-scopes", "*"),
            ("x-portcullis-role", "admin"),
        ],
    )
    .await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "upstream ok"), "{reply:?}\n{}", nginx.error_log());
    let seen = upstream.seen().pop().expect("the upstream got the request");
    assert_eq!(seen.path, "/hello");
    let header = |name: &str| {
        let values: Vec<_> =
            seen.headers.get_all(name).iter().map(|v| v.to_str().unwrap().to_owned()).collect();
        assert!(values.len() <= 1, "{name} twice: {values:?}");
        values.into_iter().next()
    };
    assert_eq!(header("x-portcullis-user-id"), Some(cast.user_id.to_string()));
    assert_eq!(header("x-portcullis-role").as_deref(), Some("user"));
    assert_eq!(header("x-portcullis-session-id"), Some(session.session_id.to_string()));
    assert_eq!(header("x-portcullis-key-id"), None, "a spoofed key id must not pass");
    assert_eq!(header("x-portcullis-scopes"), None, "a session of role user holds no scopes");
    assert_eq!(header("x-request-id"), Some(request_id.clone()));
    assert!(
        captured_logs().lines().any(|line| line.contains(&request_id) && line.contains("forward auth check")),
        "the portcullis log has no line with {request_id}"
    );

    // The token in the original URI's query, and in the session cookie.
    let reply = request(nginx.addr, "GET", &format!("/hello?x=1&token={}", session.token), &[]).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(upstream.seen().pop().unwrap().path, format!("/hello?x=1&token={}", session.token));
    let cookie = format!("theme=dark; portcullis_session={}", session.token);
    let reply = request(nginx.addr, "GET", "/hello", &[("cookie", &cookie)]).await;
    assert_eq!(reply.status, 200, "{reply:?}");

    // An API key without the route's scope: 403 naming it — also when the
    // path is spelled otherwise.
    let before = upstream.seen().len();
    for path in ["/assets/logo.png", "/%61ssets/logo.png", "//assets/./logo.png"] {
        let reply = request(nginx.addr, "GET", path, &[("x-api-key", &cast.writer.key)]).await;
        let body = s4e_error(&reply, 403, "forbidden");
        assert!(body["error"]["message"].as_str().unwrap().contains("assets:read"), "{path}: {body}");
        assert_eq!(reply.header("www-authenticate"), None, "{path}");
    }
    assert_eq!(upstream.seen().len(), before, "no denied request reached the upstream");

    // With the scope: the upstream sees the key and its scopes, and the id
    // nginx made for the request, which portcullis logged too.
    let reply = request(nginx.addr, "POST", "/assets/logo.png", &[("x-api-key", &cast.reader.key)]).await;
    assert_eq!(reply.status, 200, "{reply:?}\n{}", nginx.error_log());
    let seen = upstream.seen().pop().unwrap();
    assert_eq!(seen.headers.get("x-portcullis-key-id").unwrap(), Cast::key_id(&cast.reader).as_str());
    assert_eq!(seen.headers.get("x-portcullis-scopes").unwrap(), "assets:read");
    assert!(seen.headers.get("x-portcullis-session-id").is_none());
    let generated = seen.headers.get("x-request-id").expect("a request id").to_str().unwrap().to_owned();
    assert!(captured_logs().contains(&generated), "the portcullis log has no line with {generated}");

    // A bad token: 401 with the invalid_token challenge.
    let reply =
        request(nginx.addr, "GET", "/hello", &[("authorization", "Bearer pcs_sess_nottherightlength")]).await;
    s4e_error(&reply, 401, "unauthorized");
    assert_eq!(reply.header("www-authenticate"), Some(r#"Bearer realm="portcullis", error="invalid_token""#));

    // portcullis gone: nginx refuses (fail closed) with 503 in the S4E shape.
    let nginx_addr = nginx.addr;
    app.stop().await;
    let reply = try_request(nginx_addr, "GET", "/hello", &[("authorization", &bearer_header)]).await.unwrap();
    s4e_error(&reply, 503, "unavailable");
    assert_eq!(upstream.seen().len(), before + 1);
    drop(nginx);
}

#[test]
fn the_readme_shows_the_nginx_config_the_test_runs() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let config = std::fs::read_to_string(root.join("deploy/nginx.conf")).unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(
        readme.contains(&format!("```nginx\n{config}```")),
        "README's Forward auth section must show deploy/nginx.conf verbatim"
    );
}
