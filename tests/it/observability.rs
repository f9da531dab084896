//! Request ids, traces and metrics: ids kept, made or replaced and returned
//! on every answer; the real binary exporting its spans to an OTLP collector
//! the test runs, joined to the caller's trace and free of secrets; the
//! Prometheus endpoint scraped and its counts checked.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value},
    trace::v1::Span,
};
use portcullis::{
    domain::Role,
    proto::v1::{self as pb, auth_service_client::AuthServiceClient, validate_token_request::Credential},
};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::TcpListener,
    process::Command,
};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Code, Request, metadata::MetadataValue};

use crate::{
    db_tests,
    http::{hex, poll, request, try_request},
    support::{Backend, TEST_MFA_KEY, TestApp, TestDb, USER_PASSWORD, assert_error, captured_logs},
};

fn unique(prefix: &str) -> String {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 6];
    ring::rand::SystemRandom::new().fill(&mut bytes).unwrap();
    format!("{prefix}-{}", hex(&bytes))
}

/// A raw-token `ValidateToken` request with `x-request-id` set to `id`
/// (any bytes, as a proxy might send them).
fn validate_with_id(token: &str, id: Option<&[u8]>) -> Request<pb::ValidateTokenRequest> {
    let mut request = Request::new(pb::ValidateTokenRequest {
        credential: Some(Credential::Token(token.into())),
        required_scopes: vec![],
    });
    if let Some(id) = id {
        let value = MetadataValue::try_from(id).expect("a header value");
        request.metadata_mut().insert("x-request-id", value);
    }
    request
}

fn id_of(metadata: &tonic::metadata::MetadataMap) -> String {
    metadata.get("x-request-id").expect("x-request-id in the answer").to_str().unwrap().to_owned()
}

/// A generated id: a UUID (8-4-4-4-12 lower-case hex).
#[track_caller]
fn assert_generated(id: &str) {
    let parts: Vec<_> = id.split('-').map(str::len).collect();
    assert_eq!(parts, [8, 4, 4, 4, 12], "not a generated id: {id:?}");
    assert!(id.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()), "{id:?}");
}

db_tests!(request_ids_are_kept_made_or_replaced_and_always_returned);

async fn request_ids_are_kept_made_or_replaced_and_always_returned(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let admin = app.admin_token().await;

    // Kept and returned, on success and on error.
    let kept = unique("caller-id");
    let response = app.auth().validate_token(validate_with_id(&admin, Some(kept.as_bytes()))).await.unwrap();
    assert_eq!(id_of(response.metadata()), kept);
    let failed = unique("failing-call");
    let status = app
        .auth()
        .validate_token(validate_with_id("pcs_sess_nonsense", Some(failed.as_bytes())))
        .await
        .unwrap_err();
    assert_error(&status, Code::Unauthenticated, "UNAUTHORIZED");
    assert_eq!(id_of(status.metadata()), failed);
    // The longest acceptable id is kept too.
    let longest = "L".repeat(128);
    let response =
        app.auth().validate_token(validate_with_id(&admin, Some(longest.as_bytes()))).await.unwrap();
    assert_eq!(id_of(response.metadata()), longest);

    // Made when absent; each call its own.
    let first = id_of(app.auth().validate_token(validate_with_id(&admin, None)).await.unwrap().metadata());
    let second = id_of(app.auth().validate_token(validate_with_id(&admin, None)).await.unwrap().metadata());
    assert_generated(&first);
    assert_generated(&second);
    assert_ne!(first, second);

    // Replaced, never echoed: too long, 10 KiB, spaces, control characters,
    // bytes beyond ASCII.
    let ten_kib = "r".repeat(10 * 1024);
    let just_too_long = "x".repeat(129);
    let bad: [&[u8]; 5] =
        [just_too_long.as_bytes(), ten_kib.as_bytes(), b"two words", b"tab\there", "caf\u{e9}".as_bytes()];
    for id in bad {
        let response = app.auth().validate_token(validate_with_id(&admin, Some(id))).await.unwrap();
        let returned = id_of(response.metadata());
        assert_generated(&returned);
        let status = app.auth().validate_token(validate_with_id("pcs_sess_bad", Some(id))).await.unwrap_err();
        assert_generated(&id_of(status.metadata()));
    }
    let logs = captured_logs();
    assert!(!logs.contains(&ten_kib), "a refused id reached the log");

    // Every log line inside an RPC names its request id; these calls' did.
    for line in logs.lines().filter(|line| line.contains(" rpc{")) {
        assert!(line.contains("request_id="), "a log line of an RPC without its request id: {line}");
    }
    for id in [&kept, &failed] {
        assert!(
            logs.lines()
                .any(|line| line.contains(&format!("request_id={id}")) && line.contains("rpc finished")),
            "no log line of the call {id}: {}",
            logs.lines().filter(|l| l.contains(id.as_str())).collect::<Vec<_>>().join("\n")
        );
    }
    app.stop().await;
}

db_tests!(a_call_over_its_time_limit_answers_deadline_exceeded_with_its_id);

async fn a_call_over_its_time_limit_answers_deadline_exceeded_with_its_id(backend: Backend) {
    // One millisecond is far less than an argon2id hash (19 MiB) takes.
    let app = TestApp::start_with(&backend, |config| {
        config.request_timeout = Duration::from_millis(1);
        config.metrics_addr = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    })
    .await;
    let id = unique("slow-login");
    let mut login = Request::new(pb::LoginRequest {
        email: "nobody@example.com".into(),
        password: USER_PASSWORD.into(),
        ..Default::default()
    });
    login.metadata_mut().insert("x-request-id", id.parse().unwrap());
    let status = app.auth().login(login).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(id_of(status.metadata()), id);
    let scraped = scrape(app.metrics_addr.unwrap()).await;
    assert_eq!(
        scraped.value(
            "portcullis_grpc_server_handled_total",
            &[("grpc_method", "Login"), ("grpc_code", "DEADLINE_EXCEEDED")]
        ),
        Some(1.0)
    );
    app.stop().await;
}

db_tests!(a_call_the_client_abandons_is_still_counted);

async fn a_call_the_client_abandons_is_still_counted(backend: Backend) {
    let app = TestApp::start_with(&backend, |config| {
        config.metrics_addr = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    })
    .await;
    let mut login = Request::new(pb::LoginRequest {
        email: "nobody@example.com".into(),
        password: USER_PASSWORD.into(),
        ..Default::default()
    });
    login.set_timeout(Duration::from_millis(1));
    let status = app.auth().login(login).await.unwrap_err();
    // tonic's client gives up on its own (CANCELLED) or hears the server's answer.
    assert!(matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled), "{status:?}");
    // The server records the call when it lets go of it, just after: as
    // CANCELLED when the client hung up first, DEADLINE_EXCEEDED when the
    // client's deadline (`grpc-timeout`) ran out on the server first.
    poll("the abandoned login to be counted", Duration::from_secs(30), || async {
        let scraped = scrape(app.metrics_addr.unwrap()).await;
        let login = |code| {
            scraped
                .value(
                    "portcullis_grpc_server_handled_total",
                    &[("grpc_method", "Login"), ("grpc_code", code)],
                )
                .unwrap_or(0.0)
        };
        let total = scraped.value("portcullis_grpc_server_handled_total", &[("grpc_method", "Login")]);
        let abandoned = login("CANCELLED") + login("DEADLINE_EXCEEDED");
        (total == Some(1.0) && (abandoned - 1.0).abs() < 0.5).then_some(())
    })
    .await;
    app.stop().await;
}

// === metrics ===

/// A parsed scrape: (name, labels, value) for every sample.
struct Scrape(Vec<(String, BTreeMap<String, String>, f64)>);

impl Scrape {
    fn parse(text: &str) -> Self {
        let mut samples = Vec::new();
        for line in text.lines().filter(|line| !line.starts_with('#') && !line.is_empty()) {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample line {line:?}"));
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
            let (name, labels) = match series.split_once('{') {
                None => (series.to_owned(), BTreeMap::new()),
                Some((name, rest)) => {
                    let rest = rest.strip_suffix('}').unwrap_or_else(|| panic!("bad labels in {line:?}"));
                    let labels = rest
                        .split("\",")
                        .filter(|pair| !pair.is_empty())
                        .map(|pair| {
                            let (key, value) = pair.split_once("=\"").unwrap_or_else(|| panic!("{line:?}"));
                            (key.to_owned(), value.trim_end_matches('"').to_owned())
                        })
                        .collect();
                    (name.to_owned(), labels)
                }
            };
            samples.push((name, labels, value));
        }
        Self(samples)
    }

    /// The sum of the samples of `name` whose labels include `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .0
            .iter()
            .filter(|(n, l, _)| {
                n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, value)| *value)
            .collect();
        (!matching.is_empty()).then(|| matching.iter().sum())
    }
}

async fn scrape(addr: SocketAddr) -> Scrape {
    let reply = request(addr, "GET", "/metrics", &[]).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.header("content-type").unwrap().starts_with("application/openmetrics-text"), "{reply:?}");
    assert!(reply.body.ends_with("# EOF\n"), "{}", reply.body);
    Scrape::parse(&reply.body)
}

db_tests!(metrics_count_rpcs_validations_and_hashing);

async fn metrics_count_rpcs_validations_and_hashing(backend: Backend) {
    let app = TestApp::start_with(&backend, |config| {
        config.metrics_addr = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    })
    .await;
    let metrics = app.metrics_addr.expect("metrics are on");
    let before = scrape(metrics).await;
    assert_eq!(before.value("portcullis_grpc_server_handled_total", &[]), None, "nothing counted yet");

    let admin = app.admin_token().await; // one Login
    app.create_user("mia@example.com", USER_PASSWORD, Role::User).await;
    let wrong = app
        .auth()
        .login(pb::LoginRequest {
            email: "mia@example.com".into(),
            password: "not the password".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
    for _ in 0..3 {
        app.validate(&admin).await.unwrap();
    }
    for _ in 0..2 {
        app.validate("pcs_sess_nonsense").await.unwrap_err();
    }
    // A path no service serves is counted without its name.
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let status = grpc
        .unary::<_, pb::LogoutResponse, _>(
            Request::new(pb::LogoutRequest::default()),
            "/no.such.Service/Whatever".parse().unwrap(),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    // An expired session.
    app.clock.advance(chrono::Duration::days(2));
    let expired = app.validate(&admin).await.unwrap_err();
    assert_error(&expired, Code::Unauthenticated, "TOKEN_EXPIRED");

    let scraped = scrape(metrics).await;
    let handled = |method: &str, code: &str| {
        scraped.value(
            "portcullis_grpc_server_handled_total",
            &[("grpc_service", "portcullis.v1.AuthService"), ("grpc_method", method), ("grpc_code", code)],
        )
    };
    assert_eq!(handled("ValidateToken", "OK"), Some(3.0));
    assert_eq!(handled("ValidateToken", "UNAUTHENTICATED"), Some(3.0));
    assert_eq!(handled("Login", "OK"), Some(1.0));
    assert_eq!(handled("Login", "UNAUTHENTICATED"), Some(1.0));
    assert_eq!(
        scraped.value(
            "portcullis_grpc_server_handled_total",
            &[("grpc_service", "grpc.health.v1.Health"), ("grpc_method", "Check"), ("grpc_code", "OK")]
        ),
        Some(1.0)
    );
    assert_eq!(
        scraped.value(
            "portcullis_grpc_server_handled_total",
            &[("grpc_service", "unknown"), ("grpc_method", "unknown"), ("grpc_code", "UNIMPLEMENTED")]
        ),
        Some(1.0)
    );
    assert!(!scraped.0.iter().any(|(_, labels, _)| labels.values().any(|v| v.contains("no.such"))));
    // Latency histograms count the same calls.
    let latency = |code: &str| {
        scraped.value(
            "portcullis_grpc_server_handling_seconds_count",
            &[("grpc_method", "ValidateToken"), ("grpc_code", code)],
        )
    };
    assert_eq!(latency("OK"), Some(3.0));
    assert_eq!(latency("UNAUTHENTICATED"), Some(3.0));
    let le_inf = scraped.value(
        "portcullis_grpc_server_handling_seconds_bucket",
        &[("grpc_method", "ValidateToken"), ("grpc_code", "OK"), ("le", "+Inf")],
    );
    assert_eq!(le_inf, Some(3.0));

    let validations = |result: &str| {
        scraped
            .value("portcullis_token_validations_total", &[("source", "validate_token"), ("result", result)])
    };
    assert_eq!(validations("valid"), Some(3.0));
    assert_eq!(validations("UNAUTHORIZED"), Some(2.0));
    assert_eq!(validations("TOKEN_EXPIRED"), Some(1.0));

    // Two logins checked a real password hash; nothing queued or refused.
    assert_eq!(scraped.value("portcullis_password_verifications_total", &[]), Some(2.0));
    assert_eq!(scraped.value("portcullis_password_hash_queue_depth", &[]), Some(0.0));
    assert_eq!(scraped.value("portcullis_password_hash_rejections_total", &[]), Some(0.0));
    // The pool: the test configuration's five connections at most.
    assert_eq!(scraped.value("portcullis_db_pool_connections_max", &[]), Some(5.0));
    let idle = scraped.value("portcullis_db_pool_connections_idle", &[]).expect("idle connections");
    let in_use = scraped.value("portcullis_db_pool_connections_in_use", &[]).expect("connections in use");
    assert!(idle + in_use >= 1.0 && idle + in_use <= 5.0, "{idle} idle, {in_use} in use");
    app.stop().await;
}

db_tests!(metrics_count_login_results_and_lockouts);

async fn metrics_count_login_results_and_lockouts(backend: Backend) {
    let app = TestApp::start_with(&backend, |config| {
        config.metrics_addr = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        config.lockout_threshold = 2;
    })
    .await;
    app.create_user("lou@example.com", USER_PASSWORD, Role::User).await;
    app.login("lou@example.com", USER_PASSWORD).await;
    for _ in 0..2 {
        let status = app
            .auth()
            .login(pb::LoginRequest {
                email: "lou@example.com".into(),
                password: "not the password".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_error(&status, Code::Unauthenticated, "UNAUTHORIZED");
    }
    let scraped = scrape(app.metrics_addr.unwrap()).await;
    assert_eq!(scraped.value("portcullis_logins_total", &[("outcome", "success")]), Some(1.0));
    assert_eq!(scraped.value("portcullis_logins_total", &[("outcome", "invalid_login")]), Some(2.0));
    assert_eq!(scraped.value("portcullis_logins_total", &[]), Some(3.0));
    assert_eq!(scraped.value("portcullis_lockouts_total", &[]), Some(1.0), "the second failure locks");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_answers_odd_requests_without_falling_over() {
    let app = TestApp::start_with(&Backend::Sqlite, |config| {
        config.metrics_addr = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    })
    .await;
    let metrics = app.metrics_addr.unwrap();
    let long = format!("/{}", "a".repeat(8 * 1024));
    for path in
        ["/", "/metrics/", "//metrics", "/metrics/extra", "/%6detrics", "/metrics%00", "/..%2fmetrics", &long]
    {
        let reply = request(metrics, "GET", path, &[]).await;
        assert_eq!(reply.status, 404, "{path}: {reply:?}");
    }
    let reply = request(metrics, "POST", "/metrics", &[]).await;
    assert_eq!(reply.status, 405, "{reply:?}");
    assert_eq!(reply.header("allow"), Some("GET, HEAD"));
    let reply = request(metrics, "GET", "/metrics?debug=1&x[]=%ff", &[]).await;
    assert_eq!(reply.status, 200, "a query string does not change the answer");
    let reply = request(metrics, "HEAD", "/metrics", &[]).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, ""));

    // Garbage instead of HTTP, and a connection that sends half a request
    // and goes away: the endpoint keeps answering.
    for garbage in [&b"\x16\x03\x01\x00\xff not http\r\n\r\n"[..], b"GET /metrics HTTP/1.1\r\nHost: x\r\n"] {
        let mut stream = tokio::net::TcpStream::connect(metrics).await.unwrap();
        stream.write_all(garbage).await.unwrap();
        drop(stream);
    }
    let reply = try_request(metrics, "GET", "/metrics", &[]).await.expect("still serving");
    assert_eq!(reply.status, 200);
    // And gRPC was never disturbed.
    app.validate("pcs_sess_x").await.unwrap_err();
    app.stop().await;
}

// === traces ===

/// An OTLP/gRPC trace collector on loopback that keeps what it receives.
#[derive(Clone, Default)]
struct Collector {
    received: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.received.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl Collector {
    async fn start() -> (Self, SocketAddr) {
        let collector = Self::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = TraceServiceServer::new(collector.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        (collector, addr)
    }

    /// Every span received so far, with its resource's attributes.
    fn spans(&self) -> Vec<(Vec<KeyValue>, Span)> {
        let received = self.received.lock().unwrap();
        received
            .iter()
            .flat_map(|request| &request.resource_spans)
            .flat_map(|resource_spans| {
                let resource = resource_spans.resource.clone().map(|r| r.attributes).unwrap_or_default();
                resource_spans
                    .scope_spans
                    .iter()
                    .flat_map(|scope| scope.spans.clone())
                    .map(move |span| (resource.clone(), span))
            })
            .collect()
    }

    /// Everything received, encoded as on the wire and as debug text.
    fn everything(&self) -> (Vec<u8>, String) {
        let received = self.received.lock().unwrap();
        let bytes = received.iter().flat_map(Message::encode_to_vec).collect();
        (bytes, format!("{received:?}"))
    }
}

use prost::Message;

fn string_attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| match &kv.value {
        Some(AnyValue { value: Some(any_value::Value::StringValue(s)) }) => Some(s.as_str()),
        _ => None,
    })
}

/// The real binary, serving on a loopback port of its choosing over `db`,
/// exporting to `collector`; its JSON log lines are collected.
struct Served {
    addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    child: tokio::process::Child,
}

fn portcullis(db: &TestDb) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    // Only what this test sets: no OTEL_* or PORTCULLIS_* from outside.
    for (name, _) in std::env::vars() {
        if name.starts_with("OTEL_")
            || name.starts_with("PORTCULLIS_")
            || name == "DATABASE_URL"
            || name == "RUST_LOG"
        {
            command.env_remove(name);
        }
    }
    command.env("PORTCULLIS_DATABASE_URL", &db.url).kill_on_drop(true);
    if !db.url.starts_with("sqlite:") {
        command.env("PORTCULLIS_MFA_KEY", TEST_MFA_KEY);
    }
    command
}

impl Served {
    /// Sends span batches every `batch_delay_ms` (the default is 5 s).
    async fn start(db: &TestDb, collector: SocketAddr, batch_delay_ms: u32) -> Self {
        let mut child = portcullis(db)
            .arg("serve")
            .env("PORTCULLIS_LISTEN_ADDR", "127.0.0.1:0")
            .env("PORTCULLIS_LOG_FORMAT", "json")
            .env("RUST_LOG", "info,portcullis=debug")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector}"))
            .env("OTEL_BSP_SCHEDULE_DELAY", batch_delay_ms.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        tokio::spawn({
            let logs = Arc::clone(&logs);
            async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    logs.lock().unwrap().push(line);
                }
            }
        });
        let addr = poll("the server to listen", Duration::from_mins(1), || async {
            let logs = logs.lock().unwrap();
            logs.iter().find_map(|line| {
                let line: serde_json::Value = serde_json::from_str(line).ok()?;
                (line["fields"]["message"] == "portcullis listening")
                    .then(|| line["fields"]["address"].as_str()?.parse().ok())?
            })
        })
        .await;
        Self { addr, logs, child }
    }
}

db_tests!(validate_token_spans_join_the_callers_trace_over_otlp);

async fn validate_token_spans_join_the_callers_trace_over_otlp(backend: Backend) {
    let db = TestDb::create(&backend).await;
    let (collector, collector_addr) = Collector::start().await;
    let password = "otlp user password 789";
    let mut create = portcullis(&db)
        .args(["user", "create", "--email", "otlp@example.com", "--password-stdin"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    create.stdin.take().unwrap().write_all(format!("{password}\n").as_bytes()).await.unwrap();
    let created = create.wait_with_output().await.unwrap();
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));

    let served = Served::start(&db, collector_addr, 50).await;
    let mut client = AuthServiceClient::connect(format!("http://{}", served.addr)).await.unwrap();
    let login = client
        .login(pb::LoginRequest {
            email: "otlp@example.com".into(),
            password: password.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let Some(pb::login_response::Result::Session(session)) = login.result else { panic!("no session") };

    // The caller's span, as W3C trace context.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    let request_id = unique("traced");
    let mut validate = Request::new(pb::ValidateTokenRequest {
        credential: Some(Credential::Token(session.token.clone())),
        required_scopes: vec![],
    });
    let metadata = validate.metadata_mut();
    metadata.insert("traceparent", format!("00-{trace_id}-{parent_id}-01").parse().unwrap());
    metadata.insert("tracestate", "vendor=opaque".parse().unwrap());
    metadata.insert("x-request-id", request_id.parse().unwrap());
    client.validate_token(validate).await.unwrap();

    // A malformed traceparent starts a new trace.
    let fresh_id = unique("untraced");
    let mut validate = Request::new(pb::ValidateTokenRequest {
        credential: Some(Credential::Token(session.token.clone())),
        required_scopes: vec![],
    });
    validate.metadata_mut().insert("traceparent", "00-not-a-trace-01".parse().unwrap());
    validate.metadata_mut().insert("x-request-id", fresh_id.parse().unwrap());
    client.validate_token(validate).await.unwrap();

    let span_of = |id: &str| {
        let id = id.to_owned();
        let collector = collector.clone();
        move || {
            let found = collector.spans().into_iter().find(|(_, span)| {
                span.name == "portcullis.v1.AuthService/ValidateToken"
                    && string_attribute(&span.attributes, "request_id") == Some(&id)
            });
            async move { found }
        }
    };
    let (resource, span) =
        poll("the ValidateToken span", Duration::from_secs(30), span_of(&request_id)).await;
    assert_eq!(hex(&span.trace_id), trace_id, "the span is in the caller's trace");
    assert_eq!(hex(&span.parent_span_id), parent_id, "the caller's span is its parent");
    assert_eq!(span.trace_state, "vendor=opaque");
    assert_eq!(span.kind, opentelemetry_proto::tonic::trace::v1::span::SpanKind::Server as i32);
    assert_eq!(string_attribute(&span.attributes, "rpc.system"), Some("grpc"));
    assert_eq!(string_attribute(&resource, "service.name"), Some("portcullis"));
    // The handler's own span is the server span's child.
    let child = poll("the handler's span", Duration::from_secs(30), || {
        let found = collector
            .spans()
            .into_iter()
            .find(|(_, s)| s.parent_span_id == span.span_id && s.name == "validate_token");
        async move { found }
    })
    .await;
    assert_eq!(child.1.trace_id, span.trace_id);

    let (_, fresh) = poll("the untraced span", Duration::from_secs(30), span_of(&fresh_id)).await;
    assert_ne!(hex(&fresh.trace_id), trace_id);
    assert_ne!(fresh.trace_id, vec![0; 16]);
    assert!(fresh.parent_span_id.is_empty(), "a malformed traceparent gives no parent");

    // The Login span went out too, and no secret went anywhere.
    poll("the Login span", Duration::from_secs(30), || {
        let found = collector.spans().into_iter().find(|(_, s)| s.name == "portcullis.v1.AuthService/Login");
        async move { found }
    })
    .await;
    let (bytes, text) = collector.everything();
    for secret in [session.token.as_str(), password] {
        assert!(!text.contains(secret), "a secret in the exported spans");
        assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "a secret in the export");
    }

    // Every JSON log line inside an RPC names its request id (in the `rpc`
    // span's fields), and this call has its lines.
    let logs = served.logs.lock().unwrap().clone();
    let mut of_call = 0;
    for line in &logs {
        let Ok(line) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let spans = line["spans"].as_array().cloned().unwrap_or_default();
        for rpc in spans.iter().filter(|span| span["name"] == "rpc") {
            assert!(rpc["request_id"].is_string(), "a log line of an RPC without its request id: {line}");
            of_call += usize::from(rpc["request_id"] == request_id.as_str());
        }
    }
    assert!(of_call > 0, "no log line of the call {request_id}");
    assert!(!logs.iter().any(|line| line.contains(&session.token) || line.contains(password)));
    drop(served);
    db.drop_database().await;
}

#[test]
#[allow(clippy::result_large_err, reason = "figment::Jail's closure returns figment::Error")]
fn observability_settings_come_from_the_environment_and_are_checked() {
    use portcullis::config::Config;
    figment::Jail::expect_with(|jail| {
        jail.set_env("PORTCULLIS_METRICS_ADDR", "0.0.0.0:9090");
        jail.set_env("PORTCULLIS_TLS_CERT_FILE", "/etc/portcullis/tls.crt");
        jail.set_env("PORTCULLIS_TLS_KEY_FILE", "/etc/portcullis/tls.key");
        jail.set_env("PORTCULLIS_ENVOY_USER_ID_HEADER", "x-user");
        let config = Config::load(None).map_err(|e| e.to_string())?;
        assert_eq!(config.metrics_addr, Some(SocketAddr::from(([0, 0, 0, 0], 9090))));
        assert_eq!(config.tls_cert_file.as_deref(), Some(std::path::Path::new("/etc/portcullis/tls.crt")));
        assert_eq!(config.tls_client_ca_file, None);
        assert_eq!(config.envoy_user_id_header, "x-user");
        assert_eq!(config.envoy_role_header, "x-portcullis-role");

        jail.set_env("PORTCULLIS_ENVOY_ROLE_HEADER", "X-Role");
        let err = Config::load(None).unwrap_err().to_string();
        assert!(err.contains("envoy_role_header"), "{err}");
        jail.set_env("PORTCULLIS_ENVOY_ROLE_HEADER", "x-user");
        let err = Config::load(None).unwrap_err().to_string();
        assert!(err.contains("envoy_role_header") && err.contains("differ"), "{err}");
        jail.set_env("PORTCULLIS_ENVOY_ROLE_HEADER", "authorization");
        assert!(Config::load(None).unwrap_err().to_string().contains("envoy_role_header"));
        jail.set_env("PORTCULLIS_ENVOY_ROLE_HEADER", "x-role");
        jail.set_env("PORTCULLIS_METRICS_ADDR", "not an address");
        let err = Config::load(None).unwrap_err().to_string().to_lowercase();
        assert!(err.contains("metrics_addr"), "{err}");
        jail.set_env("PORTCULLIS_METRICS_ADDR", "127.0.0.1:50051");
        let err = Config::load(None).unwrap_err().to_string();
        assert!(err.contains("metrics_addr") && err.contains("listen_addr"), "{err}");
        Ok(())
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_still_queued_are_sent_when_the_server_stops() {
    let db = TestDb::create(&Backend::Sqlite).await;
    let (collector, collector_addr) = Collector::start().await;
    // Batches every hour: only the flush at exit can send this span.
    let mut served = Served::start(&db, collector_addr, 3_600_000).await;
    let request_id = unique("last-words");
    let mut client = AuthServiceClient::connect(format!("http://{}", served.addr)).await.unwrap();
    let mut validate = Request::new(pb::ValidateTokenRequest {
        credential: Some(Credential::Token("pcs_sess_unknown".into())),
        required_scopes: vec![],
    });
    validate.metadata_mut().insert("x-request-id", request_id.parse().unwrap());
    client.validate_token(validate).await.unwrap_err();
    assert!(collector.spans().is_empty(), "nothing is sent before the batch is due");

    let pid = served.child.id().expect("running").to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
    assert!(killed.success());
    let exited = tokio::time::timeout(Duration::from_secs(30), served.child.wait()).await;
    assert!(exited.expect("the server stops on SIGTERM").unwrap().success());
    let span = collector
        .spans()
        .into_iter()
        .find(|(_, span)| string_attribute(&span.attributes, "request_id") == Some(&request_id));
    assert!(span.is_some(), "the queued span was not flushed at exit");
}
