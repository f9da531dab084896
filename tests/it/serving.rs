//! The listener: the drain when the server stops, idle and excess
//! connections, calls abandoned by their client, and the answers the
//! framework gives (undecodable bodies, unknown methods, plain HTTP) — each
//! with its row of the error table.

use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis::{domain::Role, proto::v1 as pb};
use prost::Message as _;
use tokio::{io::AsyncReadExt as _, net::TcpStream};
use tonic::{Code, transport::Endpoint};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_types::StatusExt as _;

use crate::{
    http::request,
    support::{Backend, TestApp, USER_PASSWORD, assert_error},
};

fn channel(app: &TestApp) -> tonic::transport::Channel {
    Endpoint::from_shared(format!("http://{}", app.addr)).unwrap().connect_lazy()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_server_says_not_serving_drains_then_closes() {
    let drain = Duration::from_millis(800);
    let mut app = TestApp::start_with(&Backend::Sqlite, |c| {
        c.shutdown_drain = drain;
        c.shutdown_timeout = Duration::from_secs(10);
    })
    .await;
    app.create_user("sid@example.com", USER_PASSWORD, Role::User).await;
    let token = app.login("sid@example.com", USER_PASSWORD).await.token;
    // A Watch stream, as Envoy and meshes hold one.
    let mut watch = HealthClient::new(channel(&app))
        .watch(HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().status, ServingStatus::Serving as i32);

    let signalled = Instant::now();
    app.signal_stop();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::NotServing as i32,
        "the stream hears NOT_SERVING at once"
    );
    // Alive all the while: a liveness probe must not kill a draining pod.
    let liveness = HealthClient::new(channel(&app))
        .check(HealthCheckRequest { service: "liveness".into() })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(liveness, ServingStatus::Serving as i32);
    // During the drain a new connection is still served.
    app.validate(&token).await.expect("served during the drain");
    let mut fresh = pb::auth_service_client::AuthServiceClient::new(channel(&app));
    fresh
        .validate_token(pb::ValidateTokenRequest {
            credential: Some(pb::validate_token_request::Credential::Token(token.clone())),
            required_scopes: vec![],
        })
        .await
        .expect("a new connection is served during the drain");

    // After the drain the stream is ended by the server …
    let ended = watch.message().await.expect_err("the server ends the stream");
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    assert!(signalled.elapsed() >= drain, "the stream ended before the drain was over");
    // … the server stops, and the listener is closed.
    app.stopped().await;
    assert!(TcpStream::connect(app.addr).await.is_err());
}

/// Reads from `stream` until the server closes it (EOF or reset).
async fn closed_by_server(mut stream: TcpStream) -> bool {
    let mut buffer = [0u8; 64];
    loop {
        match tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buffer)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let app = TestApp::start_with(&Backend::Sqlite, |c| c.idle_timeout = Duration::from_millis(300)).await;
    // 300 connections that never send an HTTP/2 preface or a request.
    let mut silent = Vec::new();
    for _ in 0..300 {
        silent.push(TcpStream::connect(app.addr).await.unwrap());
    }
    // An HTTP/2 connection that made a call and then went quiet.
    let tcp = TcpStream::connect(app.addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.unwrap();
    let connection = tokio::spawn(connection);
    let response = sender.send_request(grpc_request("/grpc.health.v1.Health/Check", &[])).await.unwrap();
    assert_eq!(response.status(), 200);
    let _ = response.into_body().collect().await.unwrap();

    let closed = futures_all(silent.into_iter().map(closed_by_server)).await;
    assert!(
        closed.iter().all(|&c| c),
        "{} of 300 silent connections were left open",
        closed.iter().filter(|&&c| !c).count()
    );
    tokio::time::timeout(Duration::from_secs(20), connection)
        .await
        .expect("the idle HTTP/2 connection is closed by the server")
        .unwrap()
        .unwrap();
    // The server itself is fine.
    app.validate("pcs_sess_nothing").await.unwrap_err();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_wait_for_a_free_slot() {
    let idle = Duration::from_millis(400);
    let app = TestApp::start_with(&Backend::Sqlite, |c| {
        c.max_connections = 2;
        c.idle_timeout = idle;
    })
    .await;
    let first = TcpStream::connect(app.addr).await.unwrap();
    let second = TcpStream::connect(app.addr).await.unwrap();
    // Let the server accept both before the third arrives.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(20), app.validate("pcs_sess_nothing"))
        .await
        .expect("the third connection is served once a slot frees")
        .unwrap_err();
    assert_error(&status, Code::Unauthenticated, "UNAUTHORIZED");
    assert!(started.elapsed() >= idle / 2, "the third connection was served while two were held");
    assert!(closed_by_server(first).await && closed_by_server(second).await);
    app.stop().await;
}

/// A unary gRPC request with `message` as its one message.
fn grpc_request(path: &str, message: &[u8]) -> http::Request<Full<Bytes>> {
    let mut body = Vec::with_capacity(message.len() + 5);
    body.push(0);
    body.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    body.extend_from_slice(message);
    http::Request::post(format!("http://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// Sends `message` raw to `path` and returns the call's status.
async fn raw_call(app: &TestApp, path: &str, message: Vec<u8>) -> tonic::Status {
    let tcp = TcpStream::connect(app.addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(connection);
    let response = sender.send_request(grpc_request(path, &message)).await.unwrap();
    let headers = response.headers().clone();
    assert!(headers.contains_key("x-request-id"), "{headers:?}");
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    tonic::Status::from_header_map(&headers)
        .or_else(|| tonic::Status::from_header_map(&trailers))
        .expect("a grpc-status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framework_errors_carry_their_error_info() {
    const VALIDATE: &str = "/portcullis.v1.AuthService/ValidateToken";
    let app = TestApp::start(&Backend::Sqlite).await;
    // Not protobuf at all.
    let status = raw_call(&app, VALIDATE, vec![0xff, 0xff, 0xff, 0x0f, 0x01]).await;
    assert_error(&status, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert!(status.get_details_bad_request().is_some(), "{status:?}");
    // Field 1 (token, a string) holding bytes that are not UTF-8.
    let status = raw_call(&app, VALIDATE, vec![0x0a, 0x02, 0xc3, 0x28]).await;
    assert_error(&status, Code::InvalidArgument, "INVALID_ARGUMENT");
    // A message over max_message_bytes.
    let big = pb::ValidateTokenRequest {
        credential: Some(pb::validate_token_request::Credential::Token("x".repeat(70 * 1024))),
        required_scopes: vec![],
    };
    let status = raw_call(&app, VALIDATE, big.encode_to_vec()).await;
    assert_error(&status, Code::ResourceExhausted, "MESSAGE_TOO_LARGE");
    // No such method, no such service.
    let status = raw_call(&app, "/portcullis.v1.AuthService/Nope", Vec::new()).await;
    assert_error(&status, Code::Unimplemented, "UNIMPLEMENTED");
    let status = raw_call(&app, "/no.Such/Service", Vec::new()).await;
    assert_error(&status, Code::Unimplemented, "UNIMPLEMENTED");
    // A well-formed call still works.
    let status = raw_call(&app, VALIDATE, Vec::new()).await;
    assert_error(&status, Code::InvalidArgument, "INVALID_ARGUMENT");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_gets_the_s4e_envelope_on_the_same_port() {
    let app = TestApp::start(&Backend::Sqlite).await;
    let reply = request(app.addr, "GET", "/no/such/path", &[("x-request-id", "plain-http-1")]).await;
    assert_eq!(reply.status, 404, "{reply:?}");
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(reply.header("x-request-id"), Some("plain-http-1"));
    let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(body["status"], "error");
    assert_eq!(body["error"]["code"], "not_found");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_cut_off_with_their_connection_count_as_cancelled() {
    let app = TestApp::start_with(&Backend::Sqlite, |c| {
        c.metrics_addr = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        c.hash_threads = 1;
        c.argon2_memory_kib = 32 * 1024;
        c.argon2_iterations = 3;
    })
    .await;
    app.create_user("cut@example.com", USER_PASSWORD, Role::User).await;
    let before = app.domain.hasher().hash_work_count();
    // Eight logins multiplexed on one connection, which is then cut.
    let tcp = TcpStream::connect(app.addr).await.unwrap().into_std().unwrap();
    let cut = tcp.try_clone().unwrap();
    let tcp = TcpStream::from_std(tcp).unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.unwrap();
    let connection = tokio::spawn(connection);
    let login = pb::LoginRequest {
        email: "cut@example.com".into(),
        password: USER_PASSWORD.into(),
        ..Default::default()
    };
    let mut calls = Vec::new();
    for _ in 0..8 {
        let mut sender = sender.clone();
        let request = grpc_request("/portcullis.v1.AuthService/Login", &login.encode_to_vec());
        calls.push(tokio::spawn(async move { sender.send_request(request).await }));
    }
    while app.domain.hasher().hash_work_count() == before {
        tokio::task::yield_now().await;
    }
    cut.shutdown(std::net::Shutdown::Both).unwrap();
    connection.abort();
    drop(sender);
    for call in calls {
        let _ = call.await;
    }
    // Every call ends; none as UNKNOWN; the cut ones as CANCELLED.
    let metrics = app.metrics_addr.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (cancelled, unknown) = loop {
        let text = request(metrics, "GET", "/metrics", &[]).await.body;
        let count = |code: &str| -> f64 {
            text.lines()
                .filter(|line| {
                    line.starts_with("portcullis_grpc_server_handled_total{")
                        && line.contains("grpc_method=\"Login\"")
                        && line.contains(&format!("grpc_code=\"{code}\""))
                })
                .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
                .sum()
        };
        let total = ["OK", "CANCELLED", "UNKNOWN", "INTERNAL"].iter().map(|code| count(code)).sum::<f64>();
        if total >= 8.0 || Instant::now() > deadline {
            break (count("CANCELLED"), count("UNKNOWN"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let text = request(metrics, "GET", "/metrics", &[]).await.body;
    let login_lines: Vec<_> =
        text.lines().filter(|l| l.contains("Login") && l.contains("handled_total")).collect();
    assert!(unknown < 0.5, "abandoned calls counted as UNKNOWN: {login_lines:?}");
    assert!(cancelled >= 1.0, "no abandoned call counted as CANCELLED: {login_lines:?}");
    app.stop().await;
}

async fn futures_all<F: Future + Send + 'static>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

/// The real binary serving on a loopback port it chooses, with `env`;
/// returns the child and its address (read from its JSON log).
async fn spawn_binary(
    db: &crate::support::TestDb,
    env: &[(&str, &str)],
) -> (tokio::process::Child, std::net::SocketAddr) {
    use tokio::io::AsyncBufReadExt as _;
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_portcullis"));
    for (name, _) in std::env::vars() {
        if name.starts_with("PORTCULLIS_")
            || name.starts_with("OTEL_")
            || name == "DATABASE_URL"
            || name == "RUST_LOG"
        {
            command.env_remove(name);
        }
    }
    command
        .arg("serve")
        .env("PORTCULLIS_DATABASE_URL", &db.url)
        .env("PORTCULLIS_LISTEN_ADDR", "127.0.0.1:0")
        .env("PORTCULLIS_LOG_FORMAT", "json")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = tokio::time::timeout(Duration::from_mins(1), async {
        while let Ok(Some(line)) = lines.next_line().await {
            let Ok(line) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
            if line["fields"]["message"] == "portcullis listening" {
                return line["fields"]["address"].as_str().and_then(|a| a.parse().ok());
            }
        }
        None
    })
    .await
    .expect("the server starts")
    .expect("the server logs its address");
    // Keep draining its log so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

fn terminate(child: &tokio::process::Child) {
    let pid = child.id().expect("still running").to_string();
    let status = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_watch_streams_and_exits_cleanly() {
    let db = crate::support::TestDb::create(&Backend::Sqlite).await;
    let (mut child, addr) =
        spawn_binary(&db, &[("PORTCULLIS_SHUTDOWN_DRAIN", "300ms"), ("PORTCULLIS_SHUTDOWN_TIMEOUT", "5s")])
            .await;
    let channel = Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().status, ServingStatus::Serving as i32);
    terminate(&child);
    assert_eq!(watch.message().await.unwrap().unwrap().status, ServingStatus::NotServing as i32);
    let ended = watch.message().await.expect_err("the stream is ended by the server");
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    // The client still holds its connection; the server exits anyway.
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the server exits within shutdown_timeout")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_stops_at_once() {
    let db = crate::support::TestDb::create(&Backend::Sqlite).await;
    let (mut child, addr) = spawn_binary(&db, &[("PORTCULLIS_SHUTDOWN_DRAIN", "10m")]).await;
    terminate(&child);
    // Still answering during the (long) drain, NOT_SERVING once the signal
    // is handled …
    let channel = Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
    crate::http::poll("NOT_SERVING during the drain", Duration::from_secs(10), || async {
        let status = HealthClient::new(channel.clone())
            .check(HealthCheckRequest { service: String::new() })
            .await
            .unwrap()
            .into_inner()
            .status;
        (status == ServingStatus::NotServing as i32).then_some(())
    })
    .await;
    // … until the second signal.
    terminate(&child);
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("a second SIGTERM stops the server at once")
        .unwrap();
    assert!(status.success(), "{status:?}");
}
