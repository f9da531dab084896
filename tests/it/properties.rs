//! Every parser of outside input, fed arbitrary input (proptest): none
//! panics, and each refusal is a classified error. Then thousands of random
//! protobuf bodies to every method of the running server: none answers
//! INTERNAL or UNKNOWN, none takes it down.

use std::{collections::HashMap, time::Duration};

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis::{
    config::Config,
    domain::{
        AuthFailure, Error,
        credential::{self, Sources},
        scope,
        token::{FormatError, TokenFormat, TokenKind},
    },
    request::{id, timeout::client_timeout},
};
use proptest::prelude::*;
use secrecy::ExposeSecret as _;
use tokio::net::TcpStream;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::support::{Backend, TestApp};

fn sources() -> Sources {
    Sources { cookie_name: "portcullis_session".into(), query_param: "token".into() }
}

/// Any string, weighted towards the bytes that break parsers.
fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[\\x00-\\x1f\\x7f ;=,\"\\\\%_a-zA-Z0-9]{0,80}",
        "(Bearer|Token|bearer|Basic) ?[\\x00-\\x7f]{0,60}",
        "pcs_(sess|mfa|live|test)_[0-9A-Za-z]{0,40}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn token_parsing_never_panics(input in hostile()) {
        let format = TokenFormat::new("pcs");
        match format.parse(&input) {
            Ok(parsed) => prop_assert!(input.starts_with("pcs_"), "{parsed:?}"),
            Err(FormatError::Malformed | FormatError::Checksum) => {}
        }
    }

    #[test]
    fn any_changed_character_breaks_a_token(index in 0usize..38, replacement in "[0-9A-Za-z]") {
        let format = TokenFormat::new("pcs");
        let (token, _) = format.generate(TokenKind::Session).unwrap();
        let token = token.expose_secret().to_owned();
        prop_assert!(format.parse(&token).is_ok());
        let secret_start = "pcs_sess_".len();
        let position = secret_start + index;
        let mut altered = token.clone();
        altered.replace_range(position..=position, &replacement);
        prop_assume!(altered != token);
        prop_assert!(format.parse(&altered).is_err(), "{altered} passed");
    }

    #[test]
    fn finding_a_credential_never_panics(
        headers in proptest::collection::vec(("[a-zA-Z-]{1,20}|authorization|cookie|x-api-key", hostile()), 0..8),
        query in hostile(),
    ) {
        let pairs = headers.iter().map(|(name, value)| (name.as_str(), value.as_str()));
        match credential::find(&sources(), pairs, &query) {
            Ok(token) => prop_assert!(!token.is_empty() && token.trim() == token),
            Err(Error::Unauthenticated(AuthFailure::Missing | AuthFailure::Ambiguous | AuthFailure::InvalidToken)) => {}
            Err(Error::InvalidArgument { field, .. }) => prop_assert!(field == "headers" || field == "query"),
            Err(other) => prop_assert!(false, "unclassified: {other:?}"),
        }
    }

    #[test]
    fn scope_syntax_never_panics(input in hostile(), held in proptest::collection::vec(hostile(), 0..4)) {
        let _ = scope::check_syntax(&input);
        let _ = scope::grants(&held, &input);
    }

    #[test]
    fn request_ids_are_kept_only_when_plain(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Some(kept) = id::accept(&bytes) {
            prop_assert!((1..=128).contains(&kept.len()));
            prop_assert!(kept.bytes().all(|b| (0x21..=0x7e).contains(&b)));
        }
    }

    #[test]
    fn grpc_timeouts_never_panic(value in "[0-9]{0,12}[HMSmun]?|[\\x20-\\x7e]{0,12}") {
        let mut headers = http::HeaderMap::new();
        if let Ok(value) = http::HeaderValue::from_str(&value) {
            headers.insert("grpc-timeout", value);
        }
        let _ = client_timeout(&headers);
    }

    #[test]
    fn traceparents_never_panic(traceparent in hostile(), tracestate in hostile()) {
        let mut request = http::Request::new(());
        if let Ok(value) = http::HeaderValue::from_str(&traceparent) {
            request.headers_mut().insert("traceparent", value);
        }
        if let Ok(value) = http::HeaderValue::from_str(&tracestate) {
            request.headers_mut().insert("tracestate", value);
        }
        let span = tracing::info_span!("rpc");
        portcullis::request::observe::continue_trace(&span, request.headers());
    }

    #[test]
    fn configuration_values_are_refused_by_name(
        setting in prop::sample::select(vec![
            "session_lifetime", "refresh_grace", "token_cache_ttl", "request_timeout",
            "idle_timeout", "lockout_duration", "trusted_peers", "listen_addr",
            "allowed_origins", "s4e_prefix", "hash_threads", "captcha_googlev3_min_score",
        ]),
        value in hostile(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("portcullis.toml");
        let toml_value = toml_string(&value);
        std::fs::write(&file, format!("{setting} = {toml_value}\n")).unwrap();
        if let Err(err) = Config::load(Some(&file)) {
            let message = err.to_string();
            prop_assert!(message.contains(setting) || message.contains("TOML") || message.contains("parse"), "{message}");
        }
    }
}

/// `value` as a TOML basic string.
fn toml_string(value: &str) -> String {
    let mut out = String::from("\"");
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                use std::fmt::Write as _;
                let _ = write!(out, "\\u{:04X}", u32::from(c) & 0xffff);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

// === random bodies against the running server ===

/// A small deterministic generator (xorshift), so a failure is repeatable.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Random bytes, half of them shaped like protobuf fields (a tag, a
    /// length, bytes that are often not UTF-8).
    fn body(&mut self) -> Vec<u8> {
        let len = (self.next() % 96) as usize;
        let mut body = Vec::with_capacity(len + 8);
        if self.next().is_multiple_of(2) {
            while body.len() < len {
                let field = (self.next() % 12 + 1) as u8;
                let wire = [0u8, 2, 2, 2, 5, 1, 3, 7][(self.next() % 8) as usize];
                body.push((field << 3) | wire);
                let chunk = (self.next() % 24) as u8;
                body.push(chunk);
                for _ in 0..chunk {
                    body.push(self.next() as u8);
                }
            }
        } else {
            body.extend((0..len).map(|_| self.next() as u8));
        }
        body
    }
}

fn framed(message: &[u8]) -> Bytes {
    let mut body = Vec::with_capacity(message.len() + 5);
    body.push(0);
    body.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    body.extend_from_slice(message);
    Bytes::from(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bodies_to_every_method_never_answer_internal() {
    let app = TestApp::start_with(&Backend::Sqlite, |c| {
        // Random bodies that happen to decode into a login hash a dummy
        // password: keep that cheap.
        c.argon2_memory_kib = 64;
        c.argon2_iterations = 1;
    })
    .await;
    let tcp = TcpStream::connect(app.addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(connection);
    let methods: Vec<String> = portcullis::grpc::served_methods()
        .into_iter()
        .filter(|(service, _)| !service.starts_with("grpc.reflection") && service != "grpc.health.v1.Health")
        .map(|(service, method)| format!("/{service}/{method}"))
        .collect();
    assert!(methods.len() > 30, "{methods:?}");
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    let mut codes: HashMap<Code, usize> = HashMap::new();
    let mut sent = 0;
    for round in 0..80 {
        let mut calls = Vec::new();
        for path in &methods {
            let body = noise.body();
            let request = http::Request::post(format!("http://localhost{path}"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .header("x-request-id", format!("fuzz-{round}"))
                .body(Full::new(framed(&body)))
                .unwrap();
            let mut sender = sender.clone();
            let path = path.clone();
            calls.push(tokio::spawn(async move {
                let response = sender.send_request(request).await.unwrap();
                let headers = response.headers().clone();
                let collected = response.into_body().collect().await.unwrap();
                let trailers = collected.trailers().cloned().unwrap_or_default();
                let status = tonic::Status::from_header_map(&headers)
                    .or_else(|| tonic::Status::from_header_map(&trailers));
                (path, body, status)
            }));
        }
        for call in calls {
            let (path, body, status) = call.await.unwrap();
            sent += 1;
            let code = status.as_ref().map_or(Code::Ok, tonic::Status::code);
            assert!(
                !matches!(code, Code::Internal | Code::Unknown | Code::Unavailable | Code::DataLoss),
                "{path} answered {status:?} to {body:02x?}"
            );
            if let Some(status) = &status
                && code != Code::Ok
            {
                use tonic_types::StatusExt as _;
                assert!(status.get_details_error_info().is_some(), "{path}: no ErrorInfo in {status:?}");
            }
            *codes.entry(code).or_default() += 1;
        }
    }
    assert!(sent >= 2000, "{sent}");
    assert!(codes.get(&Code::InvalidArgument).copied().unwrap_or(0) > sent / 10, "{codes:?}");
    // Still healthy, still answering.
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", app.addr)).unwrap().connect_lazy();
    let health = HealthClient::new(channel)
        .check(HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status, ServingStatus::Serving as i32);
    tokio::time::timeout(Duration::from_secs(10), app.validate("pcs_sess_x")).await.unwrap().unwrap_err();
    app.stop().await;
}
