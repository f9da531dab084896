//! The real grpcurl against the real server: reflection lists the services,
//! a JSON login returns a token that ValidateToken accepts, and errors carry
//! readable `ErrorInfo` details.

use std::path::PathBuf;

use portcullis::domain::Role;
use tokio::process::Command;

use crate::support::{Backend, TestApp, USER_PASSWORD};

async fn run(grpcurl: &PathBuf, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(grpcurl).args(args).output().await.unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_services_and_logs_in_with_json() {
    let Some(grpcurl) = crate::support::tool("grpcurl") else { return };
    let app = TestApp::start(&Backend::Sqlite).await;
    app.create_user("grace@example.com", USER_PASSWORD, Role::User).await;
    let addr = app.addr.to_string();

    let (ok, listed, stderr) = run(&grpcurl, &["-plaintext", &addr, "list"]).await;
    assert!(ok, "{stderr}");
    for service in ["portcullis.v1.AuthService", "portcullis.v1.UserService", "grpc.health.v1.Health"] {
        assert!(listed.lines().any(|line| line == service), "{service} not in {listed}");
    }

    let body = format!(r#"{{"email": "Grace@Example.com", "password": "{USER_PASSWORD}"}}"#);
    let (ok, login, stderr) =
        run(&grpcurl, &["-plaintext", "-d", &body, &addr, "portcullis.v1.AuthService/Login"]).await;
    assert!(ok, "{stderr}");
    let login: serde_json::Value = serde_json::from_str(&login).unwrap();
    let token = login["session"]["token"].as_str().expect("a session token").to_owned();
    let principal = app.validate(&token).await.unwrap();
    assert_eq!(principal.email, "grace@example.com");

    // ValidateToken through grpcurl with the HTTP form.
    let body = format!(r#"{{"http": {{"headers": {{"X-API-Key": "{token}"}}}}}}"#);
    let (ok, validated, stderr) =
        run(&grpcurl, &["-plaintext", "-d", &body, &addr, "portcullis.v1.AuthService/ValidateToken"]).await;
    assert!(ok, "{stderr}");
    assert!(validated.contains("grace@example.com"), "{validated}");

    // An error shows its ErrorInfo reason, decoded through reflection.
    let (ok, _, error) = run(
        &grpcurl,
        &[
            "-plaintext",
            "-d",
            r#"{"token": "pcs_sess_nope"}"#,
            &addr,
            "portcullis.v1.AuthService/ValidateToken",
        ],
    )
    .await;
    assert!(!ok);
    assert!(error.contains("Unauthenticated"), "{error}");
    let compact: String = error.chars().filter(|c| !c.is_whitespace()).collect();
    assert!(compact.contains(r#""reason":"UNAUTHORIZED""#), "{error}");
    assert!(compact.contains(r#""domain":"portcullis""#), "{error}");
    app.stop().await;
}
