//! The operator's command line, run as the built binary on the database of a
//! running server (SQLite and PostgreSQL): every change through the rules
//! with its `system:cli` audit row, revocations reaching the running server
//! (PostgreSQL: at once, by notification; SQLite: within `token_cache_ttl`),
//! `--json` for scripts, exit codes, and `--help` everywhere.

use std::{process::Stdio, time::Duration};

use portcullis::domain::Role;
use serde_json::Value;
use tokio::io::AsyncWriteExt as _;
use tonic::Code;

use crate::support::{Backend, TEST_MFA_KEY, TestApp, USER_PASSWORD, assert_error};

crate::db_tests!(
    cli_manages_users_and_reaches_the_running_server,
    cli_manages_keys_and_sessions_and_reads_the_audit_log,
);

/// What a run of the binary left.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    #[track_caller]
    fn ok(&self) -> &Self {
        assert_eq!(self.code, 0, "stdout: {}\nstderr: {}", self.stdout, self.stderr);
        self
    }

    #[track_caller]
    fn json(&self) -> Value {
        self.ok();
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: not JSON: {}", self.stdout))
    }
}

/// Runs `portcullis ARGS` on the server's database, with `stdin` piped in.
async fn cli(app: &TestApp, args: &[&str], stdin: Option<&str>) -> Run {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_portcullis"));
    command
        .args(args)
        .env_remove("PORTCULLIS_TEST_DATABASE_URL")
        .env_remove("DATABASE_URL")
        .env_remove("PORTCULLIS_USER_PASSWORD")
        .env("PORTCULLIS_DATABASE_URL", &app.db.url)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if app.db.url.starts_with("postgres") {
        command.env("PORTCULLIS_MFA_KEY", TEST_MFA_KEY);
    }
    let mut child = command.spawn().unwrap();
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).await.unwrap();
    }
    let output = child.wait_with_output().await.unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A server whose cache would hide a revocation for an hour on PostgreSQL
/// (so only the notification can tell it), and for 300 ms on SQLite (the
/// `token_cache_ttl` the README promises it within).
async fn start(backend: &Backend) -> TestApp {
    let postgres = matches!(backend, Backend::Postgres(_));
    TestApp::start_with(backend, |c| {
        c.token_cache_ttl = if postgres { Duration::from_hours(1) } else { Duration::from_millis(300) };
    })
    .await
}

/// Waits until the running server refuses `token` (revoked by another
/// process), failing after 5 s.
async fn refused_soon(app: &TestApp, token: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match app.validate(token).await {
            Err(status) => {
                assert_error(&status, Code::Unauthenticated, "UNAUTHORIZED");
                return;
            }
            Ok(_) => assert!(tokio::time::Instant::now() < deadline, "the running server still accepts it"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn cli_manages_users_and_reaches_the_running_server(backend: Backend) {
    let app = start(&backend).await;
    let alice = app.create_user("alice@example.com", USER_PASSWORD, Role::User).await;
    let token = app.login("alice@example.com", USER_PASSWORD).await.token;
    app.validate(&token).await.unwrap();

    let listed = cli(&app, &["user", "list", "--json"], None).await.json();
    assert_eq!(listed[0]["email"], "alice@example.com");
    assert_eq!(listed[0]["id"], alice);
    let by_email = cli(&app, &["user", "get", "ALICE@example.com", "--json"], None).await.json();
    assert_eq!(by_email["id"], alice);
    assert_eq!(by_email["role"], "user");
    assert!(by_email.get("password_hash").is_none());
    let by_id = cli(&app, &["user", "get", &alice.to_string()], None).await;
    assert!(by_id.ok().stdout.contains("alice@example.com"), "{}", by_id.stdout);

    // A too-short password changes nothing; a good one ends every session,
    // and the running server stops accepting the old token.
    let short =
        cli(&app, &["user", "set-password", "alice@example.com", "--password-stdin"], Some("short\n")).await;
    assert_eq!(short.code, 2, "{}", short.stderr);
    assert!(short.stderr.contains("password"), "{}", short.stderr);
    app.validate(&token).await.unwrap();
    let set = cli(
        &app,
        &["user", "set-password", "alice@example.com", "--password-stdin", "--json"],
        Some("a brand new password\n"),
    )
    .await
    .json();
    assert_eq!(set["revoked_sessions"], 1);
    assert!(!set.to_string().contains("brand new"), "the password is never printed");
    refused_soon(&app, &token).await;
    let token = app.login("alice@example.com", "a brand new password").await.token;

    // Disable ends its sessions and logins; enable lets it back in.
    cli(&app, &["user", "disable", "alice@example.com"], None).await.ok();
    refused_soon(&app, &token).await;
    let login = app
        .auth()
        .login(portcullis::proto::v1::LoginRequest {
            email: "alice@example.com".into(),
            password: "a brand new password".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_error(&login, Code::Unauthenticated, "UNAUTHORIZED");
    let enabled = cli(&app, &["user", "enable", &alice.to_string(), "--json"], None).await.json();
    assert_eq!(enabled["disabled"], false);
    app.login("alice@example.com", "a brand new password").await;

    let promoted =
        cli(&app, &["user", "set-role", "alice@example.com", "admin", "--json"], None).await.json();
    assert_eq!(promoted["role"], "admin");
    let reset = cli(&app, &["user", "reset-mfa", "alice@example.com", "--json"], None).await.json();
    assert_eq!(reset["user"]["mfa"], serde_json::json!([]));

    // Mistakes: their exit codes, one line, nothing changed.
    let unknown = cli(&app, &["user", "get", "nobody@example.com"], None).await;
    assert_eq!(unknown.code, 3, "{}", unknown.stderr);
    assert_eq!(unknown.stderr.trim(), "error: user not found");
    let clash = cli(
        &app,
        &["user", "create", "--email", "alice@example.com", "--password-stdin"],
        Some("long enough 1\n"),
    )
    .await;
    assert_eq!(clash.code, 4, "{}", clash.stderr);
    let malformed = cli(&app, &["user", "create", "--email", "not-an-email", "--service"], None).await;
    assert_eq!(malformed.code, 2, "{}", malformed.stderr);
    let no_such_role = cli(&app, &["user", "set-role", "alice@example.com", "root"], None).await;
    assert_eq!(no_such_role.code, 2, "{}", no_such_role.stderr);

    // Every change wrote its row, by the operator.
    let rows = cli(&app, &["audit", "list", "--actor", "system:cli", "--json"], None).await.json();
    let actions: Vec<&str> = rows.as_array().unwrap().iter().map(|r| r["action"].as_str().unwrap()).collect();
    for action in ["user.password_set", "user.updated", "mfa.disabled"] {
        assert!(actions.contains(&action), "no {action} row in {actions:?}");
    }
    assert_eq!(actions.iter().filter(|a| **a == "user.updated").count(), 3, "{actions:?}");
    assert!(rows.as_array().unwrap().iter().all(|r| r["actor"] == "system:cli"));
    // One request id per run, so a run's rows are found together.
    // (Alice herself was made by the test through the rules, not a run.)
    let runs: Vec<&Value> =
        rows.as_array().unwrap().iter().filter(|r| r["action"] != "user.created").collect();
    let ids: std::collections::HashSet<&str> =
        runs.iter().map(|r| r["request_id"].as_str().unwrap()).collect();
    assert!(ids.iter().all(|id| id.starts_with("cli-")), "{ids:?}");
    assert_eq!(ids.len(), runs.len(), "each run its own id: {ids:?}");
    assert!(!rows.to_string().contains("brand new"));
    app.stop().await;
}

async fn cli_manages_keys_and_sessions_and_reads_the_audit_log(backend: Backend) {
    let app = start(&backend).await;
    let bob = app.create_user("bob@example.com", USER_PASSWORD, Role::User).await;
    let first = app.login("bob@example.com", USER_PASSWORD).await;
    let second = app.login("bob@example.com", USER_PASSWORD).await;
    for session in [&first, &second] {
        app.validate(&session.token).await.unwrap();
    }

    // Sessions: listed newest first; one revoked, then all.
    let sessions = cli(&app, &["session", "list", "bob@example.com", "--json"], None).await.json();
    let ids: Vec<i64> = sessions.as_array().unwrap().iter().map(|s| s["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, [second.session_id, first.session_id]);
    assert_eq!(sessions[0]["user_id"], bob);
    let one = cli(&app, &["session", "revoke", &first.session_id.to_string(), "--json"], None).await.json();
    assert_eq!(one["revoked"], true);
    refused_soon(&app, &first.token).await;
    app.validate(&second.token).await.unwrap();
    let again = cli(&app, &["session", "revoke", &first.session_id.to_string(), "--json"], None).await.json();
    assert_eq!(again["revoked"], false, "revoking again changes nothing");
    let all = cli(&app, &["session", "revoke", "--user", "bob@example.com", "--json"], None).await.json();
    assert_eq!(all["revoked_sessions"], 1);
    refused_soon(&app, &second.token).await;
    let neither = cli(&app, &["session", "revoke"], None).await;
    assert_eq!(neither.code, 2, "{}", neither.stderr);

    // Keys: create (shown once), list, rotate, revoke.
    cli(&app, &["user", "create", "--email", "svc@example.com", "--service"], None).await.ok();
    let created = cli(
        &app,
        &["key", "create", "--owner", "svc@example.com", "--name", "worker", "--scope", "jobs:run", "--json"],
        None,
    )
    .await
    .json();
    let old_key = created["key"].as_str().unwrap().to_owned();
    let old_id = created["api_key"]["id"].as_i64().unwrap();
    app.validate(&old_key).await.unwrap();
    let listed = cli(&app, &["key", "list", "--owner", "svc@example.com", "--json"], None).await.json();
    assert_eq!(listed[0]["id"], old_id);
    assert_eq!(listed[0]["scopes"], serde_json::json!(["jobs:run"]));
    assert!(!listed.to_string().contains(&old_key), "a listing never shows the key");
    let everyone = cli(&app, &["key", "list"], None).await;
    assert!(everyone.ok().stdout.contains("worker"), "{}", everyone.stdout);

    let rotated =
        cli(&app, &["key", "rotate", &old_id.to_string(), "--overlap", "0s", "--json"], None).await.json();
    let new_key = rotated["key"].as_str().unwrap().to_owned();
    let new_id = rotated["api_key"]["id"].as_i64().unwrap();
    assert_eq!(rotated["api_key"]["rotated_from_id"], old_id);
    assert_eq!(rotated["previous"]["id"], old_id);
    refused_soon(&app, &old_key).await;
    let principal = app.validate(&new_key).await.unwrap();
    assert_eq!(principal.scopes, ["jobs:run"]);
    let too_long = cli(&app, &["key", "rotate", &new_id.to_string(), "--overlap", "30days"], None).await;
    assert_eq!(too_long.code, 2, "{}", too_long.stderr);
    let revoked = cli(&app, &["key", "revoke", &new_id.to_string(), "--json"], None).await.json();
    assert_eq!(revoked["revoked"], true);
    refused_soon(&app, &new_key).await;
    let missing = cli(&app, &["key", "revoke", "999"], None).await;
    assert_eq!(missing.code, 3, "{}", missing.stderr);

    // The audit log: the operator's rows, filtered as ListAuditEvents filters.
    let rows = cli(&app, &["audit", "list", "--actor", "system:cli", "--json"], None).await.json();
    let actions: Vec<&str> = rows.as_array().unwrap().iter().map(|r| r["action"].as_str().unwrap()).collect();
    for action in
        ["session.revoked", "sessions.revoked", "user.created", "key.created", "key.rotated", "key.revoked"]
    {
        assert!(actions.contains(&action), "no {action} row in {actions:?}");
    }
    assert!(!rows.to_string().contains(&new_key) && !rows.to_string().contains(&old_key));
    let logins = cli(
        &app,
        &["audit", "list", "--action", "login.succeeded", "--subject", &format!("user:{bob}")],
        None,
    )
    .await;
    assert_eq!(logins.ok().stdout.lines().count(), 2, "{}", logins.stdout);
    let page = cli(&app, &["audit", "list", "--page-size", "1"], None).await;
    assert_eq!(page.ok().stdout.lines().count(), 1);
    assert!(page.stderr.contains("--page-token"), "{}", page.stderr);
    let unknown = cli(&app, &["audit", "list", "--action", "login.failure"], None).await;
    assert_eq!(unknown.code, 2, "{}", unknown.stderr);
    assert!(
        unknown.stderr.contains("login.succeeded") && unknown.stderr.contains("token.invalid"),
        "{}",
        unknown.stderr
    );
    let bad_time = cli(&app, &["audit", "list", "--start-time", "yesterday"], None).await;
    assert_eq!(bad_time.code, 2, "{}", bad_time.stderr);
    app.stop().await;
}

/// Every command and subcommand answers `--help`, and the ones that revoke
/// say when a running SQLite server sees it.
#[tokio::test]
async fn every_cli_command_has_help() {
    let commands: &[&[&str]] = &[
        &[],
        &["serve"],
        &["migrate"],
        &["user"],
        &["user", "create"],
        &["user", "list"],
        &["user", "get"],
        &["user", "set-password"],
        &["user", "disable"],
        &["user", "enable"],
        &["user", "reset-mfa"],
        &["user", "set-role"],
        &["key"],
        &["key", "create"],
        &["key", "list"],
        &["key", "revoke"],
        &["key", "rotate"],
        &["session"],
        &["session", "list"],
        &["session", "revoke"],
        &["audit"],
        &["audit", "list"],
    ];
    for command in commands {
        let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(*command)
            .arg("--help")
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{command:?} --help failed");
        assert!(stdout.contains("Usage:"), "{command:?}: {stdout}");
        let revokes = matches!(
            command,
            ["user", "set-password" | "disable" | "reset-mfa"]
                | ["key", "revoke" | "rotate"]
                | ["session", "revoke"]
        );
        if revokes {
            assert!(
                stdout.contains("token_cache_ttl"),
                "{command:?} does not say how SQLite servers learn it"
            );
        }
        if command.len() == 1 && command[0] != "serve" && command[0] != "migrate" {
            assert!(stdout.contains("Exit codes:"), "{command:?} --help lists no exit codes");
        }
    }
}

/// Runs `portcullis ARGS` in `dir` with `env`, nothing on standard input,
/// and `RUST_BACKTRACE=1` (which must not matter for a person's mistake).
async fn cli_in(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .current_dir(dir)
        .env_remove("PORTCULLIS_TEST_DATABASE_URL")
        .env_remove("DATABASE_URL")
        .env_remove("PORTCULLIS_USER_PASSWORD")
        .env("RUST_BACKTRACE", "1")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[track_caller]
fn one_line_without_backtrace(run: &Run) {
    // Log lines (a warning about a key file made) may come first; the error
    // is the last line, and the only one that is not a log line.
    let lines: Vec<&str> = run.stderr.trim().lines().filter(|l| !l.contains(" WARN ")).collect();
    assert_eq!(lines.len(), 1, "not one line: {}", run.stderr);
    assert!(lines[0].starts_with("error: "), "{}", run.stderr);
    assert!(run.stderr.trim().ends_with(lines[0]), "{}", run.stderr);
    assert!(!run.stderr.to_lowercase().contains("backtrace"), "{}", run.stderr);
}

#[tokio::test]
async fn cli_config_errors_name_the_setting_where_it_was_set_and_what_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let bad = cli_in(dir.path(), &["serve"], &[("PORTCULLIS_SESSION_LIFETIME", "forever")]).await;
    assert_eq!(bad.code, 5);
    one_line_without_backtrace(&bad);
    for wanted in ["session_lifetime", "PORTCULLIS_SESSION_LIFETIME", "forever", "30s", "24h"] {
        assert!(bad.stderr.contains(wanted), "{wanted} not in {}", bad.stderr);
    }
    std::fs::write(dir.path().join("portcullis.toml"), "session_lifetime = \"forever\"\n").unwrap();
    let in_file = cli_in(dir.path(), &["-c", "portcullis.toml", "serve"], &[]).await;
    one_line_without_backtrace(&in_file);
    assert!(in_file.stderr.contains("portcullis.toml"), "{}", in_file.stderr);
    assert!(!in_file.stderr.contains("default."), "an internal profile name: {}", in_file.stderr);

    std::fs::write(dir.path().join("typo.toml"), "sesion_lifetime = \"1h\"\n").unwrap();
    let typo = cli_in(dir.path(), &["-c", "typo.toml", "user", "list"], &[]).await;
    one_line_without_backtrace(&typo);
    assert!(typo.stderr.contains("did you mean `session_lifetime`?"), "{}", typo.stderr);
    assert!(!typo.stderr.contains("envoy_key_id_header"), "lists every setting: {}", typo.stderr);
    let variant = cli_in(dir.path(), &["serve"], &[("PORTCULLIS_CAPTCHA_POLICY", "sometimes")]).await;
    one_line_without_backtrace(&variant);
    assert!(variant.stderr.contains("off, always, after_failures"), "{}", variant.stderr);
    let no_vendor = cli_in(dir.path(), &["user", "list"], &[("PORTCULLIS_CAPTCHA_POLICY", "always")]).await;
    assert_eq!(no_vendor.code, 5, "{}", no_vendor.stderr);
    one_line_without_backtrace(&no_vendor);
    assert!(no_vendor.stderr.contains("captcha_turnstile_secret"), "{}", no_vendor.stderr);
    // None of these got as far as the database.
    assert!(!dir.path().join("portcullis.db").exists());

    let missing = cli_in(dir.path(), &["user", "get", "nobody@example.com"], &[]).await;
    assert_eq!(missing.code, 3);
    one_line_without_backtrace(&missing);
}

#[tokio::test]
async fn cli_user_create_checks_the_password_before_the_database_and_needs_no_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("p.db").display());
    let env = [("PORTCULLIS_DATABASE_URL", url.as_str())];
    let short = cli_in(
        dir.path(),
        &["user", "create", "--email", "a@example.com"],
        &[("PORTCULLIS_DATABASE_URL", url.as_str()), ("PORTCULLIS_USER_PASSWORD", "short")],
    )
    .await;
    assert_eq!(short.code, 2);
    one_line_without_backtrace(&short);
    assert!(short.stderr.contains("password") && short.stderr.contains('8'), "{}", short.stderr);
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "a refused password left files: {left:?}");

    // No terminal (a new session has none), no --password-stdin: it says how.
    let output = tokio::process::Command::new("setsid")
        .arg("-w")
        .arg(env!("CARGO_BIN_EXE_portcullis"))
        .args(["user", "create", "--email", "a@example.com"])
        .env_remove("PORTCULLIS_USER_PASSWORD")
        .env("RUST_BACKTRACE", "1")
        .envs(env)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let run = Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    assert_eq!(run.code, 2, "{}", run.stderr);
    one_line_without_backtrace(&run);
    assert!(run.stderr.contains("no terminal") && run.stderr.contains("--password-stdin"), "{}", run.stderr);
    assert!(!run.stderr.contains("os error"), "{}", run.stderr);
    assert!(!dir.path().join("p.db").exists());
}

/// PostgreSQL only: without `mfa_key` the refusal comes before a single
/// migration runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_postgres_without_an_mfa_key_is_refused_before_migrating() {
    use sea_orm::{ConnectionTrait as _, Database};
    let Some(backend) = Backend::postgres() else { return };
    let db = crate::support::TestDb::create(&backend).await;
    let dir = tempfile::tempdir().unwrap();
    for args in [&["user", "list"][..], &["serve"]] {
        let run = cli_in(
            dir.path(),
            args,
            &[("PORTCULLIS_DATABASE_URL", db.url.as_str()), ("PORTCULLIS_LISTEN_ADDR", "127.0.0.1:0")],
        )
        .await;
        assert_eq!(run.code, 5, "{args:?}: {}", run.stderr);
        one_line_without_backtrace(&run);
        assert!(run.stderr.contains("mfa_key") && run.stderr.contains("PostgreSQL"), "{}", run.stderr);
    }
    let conn = Database::connect(&db.url).await.unwrap();
    let row = conn
        .query_one_raw(sea_orm::Statement::from_string(
            conn.get_database_backend(),
            "SELECT COUNT(*) AS n FROM information_schema.tables WHERE table_schema = 'public'",
        ))
        .await
        .unwrap()
        .unwrap();
    let tables: i64 = row.try_get("", "n").unwrap();
    conn.close().await.unwrap();
    assert_eq!(tables, 0, "migrations ran before the refusal");
    db.drop_database().await;
}

/// A database that cannot be opened is exit code 6, in one line saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_a_database_that_cannot_be_opened_exits_6_saying_why() {
    let dir = tempfile::tempdir().unwrap();
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let refused = format!("postgres://postgres@{free}/test");
    let missing_folder = format!("sqlite://{}/no/such/folder/p.db?mode=rwc", dir.path().display());
    let mfa_key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    for (url, said) in [(refused.as_str(), "connection refused"), (missing_folder.as_str(), "folder")] {
        let run = cli_in(
            dir.path(),
            &["user", "list"],
            &[("PORTCULLIS_DATABASE_URL", url), ("PORTCULLIS_MFA_KEY", mfa_key)],
        )
        .await;
        assert_eq!(run.code, 6, "{url}: {}", run.stderr);
        one_line_without_backtrace(&run);
        assert!(run.stderr.contains(said), "{url}: {}", run.stderr);
    }
}
