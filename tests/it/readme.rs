//! The README, executed: the shell blocks of its walkthroughs (grpcurl, API
//! keys, two-factor login, the audit log) run in order, as a newcomer would
//! paste them, against the real binary started the way the walkthrough says
//! (`cargo run --release -- serve`, default settings, `./portcullis.db` in a
//! fresh folder) and the real grpcurl. A README that drifts from the product
//! fails here.
//!
//! How a block is read:
//! - A command is a line that is not a comment, with the lines its trailing
//!   `\` continues. Each runs in bash with the variables of the ones before.
//! - `cargo run --release -- ARGS` runs the built binary; `… serve` starts it
//!   in the background (in "another terminal"), on a free port that replaces
//!   `127.0.0.1:50051` in every later command.
//! - The comment lines right after a command are its expected output. One
//!   starting `# ERROR:` means the command must fail, with the `Code:` and
//!   `Message:` it states; otherwise it must succeed. Every `"name": value`
//!   stated in it (a string, a number or a list) must appear in the output;
//!   a string ending in `…` states its beginning, a list holding `…` nothing.
//! - A placeholder line `NAME=value   # …` is filled in: `paste the "field"`
//!   takes that field from the latest output holding it (the first item of
//!   a list), `the code your app shows now` / `the app's next code` is the
//!   TOTP code of the secret in the latest `otpauth://` URI printed.
//! - A block right after `<!-- not run by tests/it/readme.rs: REASON -->`
//!   is skipped (it needs what the test does not have, e.g. SMTP).

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use portcullis::domain::{Clock as _, SystemClock};
use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    process::{Child, Command},
};

/// The README sections whose shell blocks run, in order.
const SECTIONS: [&str; 4] = [
    "## A walkthrough with grpcurl",
    "## API keys with grpcurl",
    "## Two-factor login with grpcurl",
    "## Abuse protection and the audit log",
];

const SKIP_MARKER: &str = "<!-- not run by tests/it/readme.rs:";

/// The address the README's commands use.
const README_ADDR: &str = "127.0.0.1:50051";

/// One command of a block and the comment lines after it.
#[derive(Debug)]
struct Step {
    section: &'static str,
    command: String,
    expected: Vec<String>,
}

/// The runnable shell blocks of `section`, in order.
fn blocks(readme: &str, section: &str) -> Vec<String> {
    let start = readme.find(&format!("\n{section}\n")).unwrap_or_else(|| panic!("README has no `{section}`"));
    let body = &readme[start + section.len() + 2..];
    let end = body.find("\n## ").unwrap_or(body.len());
    let body = &body[..end];
    let mut blocks = Vec::new();
    let mut skip_next = false;
    let mut lines = body.lines();
    while let Some(line) = lines.next() {
        if line.starts_with(SKIP_MARKER) {
            skip_next = true;
        } else if line.trim_start() == "```sh" {
            let block: Vec<&str> = lines.by_ref().take_while(|l| l.trim_start() != "```").collect();
            if !std::mem::take(&mut skip_next) {
                blocks.push(block.join("\n"));
            }
        }
    }
    blocks
}

/// A block's commands, each with the comment lines right after it (up to a
/// blank line or a numbered step's heading, "# 3. Log in.").
fn steps(section: &'static str, block: &str) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    let mut collecting = false;
    let mut lines = block.lines();
    while let Some(line) = lines.next() {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            collecting = false;
        } else if let Some(prose) = trimmed.strip_prefix('#') {
            let prose = prose.trim_start();
            let heading = prose
                .split_once('.')
                .is_some_and(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
            collecting &= !heading;
            if collecting && let Some(last) = steps.last_mut() {
                last.expected.push(trimmed.to_owned());
            }
        } else {
            let mut command = line.to_owned();
            while command.ends_with('\\') {
                let Some(next) = lines.next() else { break };
                command.push('\n');
                command.push_str(next);
            }
            steps.push(Step { section, command, expected: Vec::new() });
            collecting = true;
        }
    }
    steps
}

/// The `"name": value` pairs a comment states (values: strings, numbers,
/// lists), compacted (no whitespace).
fn stated_pairs(comment: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let bytes: Vec<char> = comment.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != '"' {
            i += 1;
            continue;
        }
        let Some(close) = bytes[i + 1..].iter().position(|c| *c == '"').map(|p| p + i + 1) else { break };
        let name: String = bytes[i + 1..close].iter().collect();
        let mut j = close + 1;
        while j < bytes.len() && bytes[j] == ' ' {
            j += 1;
        }
        if j >= bytes.len() || bytes[j] != ':' {
            i = close + 1;
            continue;
        }
        j += 1;
        while j < bytes.len() && bytes[j] == ' ' {
            j += 1;
        }
        let value_end = match bytes.get(j) {
            Some('"') => bytes[j + 1..].iter().position(|c| *c == '"').map(|p| p + j + 2),
            Some('[') => bytes[j..].iter().position(|c| *c == ']').map(|p| p + j + 1),
            Some(c) if c.is_ascii_digit() => {
                Some(bytes[j..].iter().position(|c| !c.is_ascii_digit()).map_or(bytes.len(), |p| p + j))
            }
            _ => None,
        };
        match value_end {
            Some(end) => {
                let value: String = bytes[j..end].iter().filter(|c| !c.is_whitespace()).collect();
                pairs.push((name, value));
                i = end;
            }
            None => i = j,
        }
    }
    pairs
}

/// Checks `output` against the values `expected` states.
fn check_output(step: &Step, ok: bool, stdout: &str, stderr: &str) {
    let context = || format!("[{}] {}\nstdout: {stdout}\nstderr: {stderr}", step.section, step.command);
    let comment =
        step.expected.iter().map(|l| l.trim_start_matches('#').trim()).collect::<Vec<_>>().join(" ");
    let wants_error = comment.starts_with("ERROR:");
    if wants_error {
        assert!(!ok, "the README says this fails, but it succeeded:\n{}", context());
        for (label, next) in [("Code:", "Message:"), ("Message:", "Details:")] {
            let Some(at) = comment.find(label) else { continue };
            let rest = &comment[at + label.len()..];
            let stated = rest.split(next).next().unwrap_or(rest).split('…').next().unwrap_or_default();
            let stated = stated.trim().trim_end_matches("  ").trim();
            if !stated.is_empty() {
                assert!(
                    stderr.contains(&format!("{label} {stated}")),
                    "the README states `{label} {stated}`:\n{}",
                    context()
                );
            }
        }
    } else {
        assert!(ok, "the README's command failed:\n{}", context());
    }
    let actual: String = format!("{stdout}{stderr}").chars().filter(|c| !c.is_whitespace()).collect();
    for (name, value) in stated_pairs(&comment) {
        if value.starts_with('[') && value.contains('…') {
            continue;
        }
        let wanted = match value.strip_suffix("…\"").or_else(|| value.strip_suffix('…')) {
            Some(prefix) => format!("\"{name}\":{prefix}"),
            None => format!("\"{name}\":{value}"),
        };
        assert!(actual.contains(&wanted), "the README states {wanted}:\n{}", context());
    }
}

/// The value of `field` in the latest JSON output holding it.
fn latest_field(outputs: &[String], field: &str) -> Option<String> {
    fn find(value: &serde_json::Value, field: &str) -> Option<String> {
        match value {
            serde_json::Value::Object(map) => {
                map.get(field).and_then(first_string).or_else(|| map.values().find_map(|v| find(v, field)))
            }
            serde_json::Value::Array(items) => items.iter().find_map(|v| find(v, field)),
            _ => None,
        }
    }
    fn first_string(value: &serde_json::Value) -> Option<String> {
        match value {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Array(items) => items.first().and_then(first_string),
            _ => None,
        }
    }
    outputs
        .iter()
        .rev()
        .filter_map(|out| serde_json::from_str::<serde_json::Value>(out).ok())
        .find_map(|json| find(&json, field))
}

/// What the test fills into placeholder lines.
#[derive(Default)]
struct Placeholders {
    outputs: Vec<String>,
    /// The TOTP step of the last code handed out.
    last_step: Option<u64>,
}

impl Placeholders {
    /// The line to run instead of `line`, if it is a placeholder.
    fn fill(&mut self, line: &str) -> Option<String> {
        let (assignment, comment) = line.split_once('#')?;
        let (name, _) = assignment.trim().split_once('=')?;
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
            return None;
        }
        let value = if let Some(field) =
            comment.split("paste ").nth(1).and_then(|rest| rest.split('"').nth(1))
        {
            latest_field(&self.outputs, field)
                .unwrap_or_else(|| panic!("no earlier output holds {field:?} for `{line}`"))
        } else if comment.contains("app shows now") || comment.contains("app's next code") {
            let secret = self
                .outputs
                .iter()
                .rev()
                .find_map(|out| {
                    out.split("secret=").nth(1).map(|s| s.split('&').next().unwrap_or(s).to_owned())
                })
                .unwrap_or_else(|| panic!("no otpauth:// URI printed before `{line}`"));
            let now = u64::try_from(SystemClock.now().timestamp()).unwrap() / 30;
            // "Next" is the step after the last code used: the server accepts
            // one step ahead of its clock, so no waiting is needed here.
            let step = if comment.contains("next") { self.last_step.map_or(now + 1, |s| s + 1) } else { now };
            self.last_step = Some(step);
            let generator = totp_rs::Builder::new()
                .with_secret(totp_rs::Secret::try_from_base32(&secret).unwrap())
                .build()
                .unwrap();
            generator.generate(step * 30).to_string()
        } else {
            return None;
        };
        Some(format!("{name}='{value}'"))
    }
}

/// The README's server, started by its `serve` step.
struct Server {
    child: Child,
    addr: String,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

async fn start_server(binary: &Path, dir: &Path) -> Server {
    let mut child = Command::new(binary)
        .arg("serve")
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG")
        .env("PORTCULLIS_LISTEN_ADDR", "127.0.0.1:0")
        .env("PORTCULLIS_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let addr = tokio::time::timeout(Duration::from_mins(1), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            log.lock().unwrap().push_str(&line);
            log.lock().unwrap().push('\n');
            if line.contains("portcullis listening") {
                let json: serde_json::Value = serde_json::from_str(&line).unwrap();
                return json["fields"]["address"].as_str().unwrap().to_owned();
            }
        }
        panic!("the server stopped before listening:\n{}", log.lock().unwrap());
    })
    .await
    .expect("the server did not start within 60 s");
    // Keep reading its log, so it never blocks on a full pipe.
    let keep = std::sync::Arc::clone(&log);
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            keep.lock().unwrap().push_str(&line);
            keep.lock().unwrap().push('\n');
        }
    });
    Server { child, addr, log }
}

/// Runs `command` in bash in `dir`, with the variables the earlier commands
/// set (kept in `dir/.readme-env`).
async fn run_shell(dir: &Path, binary: &Path, command: &str) -> (bool, String, String) {
    let script = format!(
        "set -a -o pipefail\n\
         [ -f .readme-env ] && . ./.readme-env\n\
         cargo() {{ if [ \"$1 $2 $3\" = 'run --release --' ]; then shift 3; '{binary}' \"$@\"; \
         else echo \"the README runs cargo $*\" >&2; return 99; fi; }}\n\
         {command}\n\
         status=$?\n\
         export -p > .readme-env\n\
         exit $status\n",
        binary = binary.display()
    );
    let output = tokio::time::timeout(
        Duration::from_mins(5),
        Command::new("bash")
            .arg("-c")
            .arg(script)
            .current_dir(dir)
            .env_remove("DATABASE_URL")
            .env_remove("PORTCULLIS_TEST_DATABASE_URL")
            .env_remove("PORTCULLIS_USER_PASSWORD")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("`{command}` ran for 5 minutes"))
    .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_walkthroughs_run_as_written() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_portcullis"));
    // A fresh folder standing for the checkout: the tools the README's first
    // line installs are the project's own (installed here first; where
    // grpcurl cannot be had, the test says SKIPPED, and fails in CI).
    if crate::support::tool("grpcurl").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(root.join("scripts"), dir.path().join("scripts")).unwrap();
    std::os::unix::fs::symlink(root.join(".tools"), dir.path().join(".tools")).unwrap();

    let mut all = Vec::new();
    for section in SECTIONS {
        let found = blocks(&readme, section);
        assert!(!found.is_empty(), "no runnable shell block under `{section}`");
        for block in found {
            all.extend(steps(section, &block));
        }
    }
    let mut server: Option<Server> = None;
    let mut placeholders = Placeholders::default();
    let mut ran = 0;
    for step in &all {
        if step.command.trim() == "cargo run --release -- serve" {
            assert!(server.is_none(), "the README starts the server twice");
            server = Some(start_server(&binary, dir.path()).await);
            continue;
        }
        let addr = server.as_ref().map_or(README_ADDR, |s| s.addr.as_str());
        let command = match placeholders.fill(&step.command) {
            Some(filled) => filled,
            None => step.command.replace(README_ADDR, addr),
        };
        let (ok, stdout, stderr) = run_shell(dir.path(), &binary, &command).await;
        if let Err(panic) = std::panic::catch_unwind(|| check_output(step, ok, &stdout, &stderr)) {
            if let Some(server) = &server {
                eprintln!("server log:\n{}", server.log.lock().unwrap());
            }
            std::panic::resume_unwind(panic);
        }
        placeholders.outputs.push(stdout);
        ran += 1;
    }
    assert!(server.is_some(), "the README never starts the server");
    assert!(ran >= 40, "only {ran} README commands ran: is the extraction broken?");
    if let Some(mut server) = server {
        let _ = server.child.start_kill();
        let _ = server.child.wait().await;
    }
}

#[test]
fn stated_values_are_read_from_comments() {
    let pairs = stated_pairs(
        r#"{"principal": {"kind": "PRINCIPAL_KIND_SESSION", "userId": "1", "scopes": ["*"], "n": 12, "t": "pcs_sess_…", "user": {…}}}"#,
    );
    let names: Vec<&str> = pairs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["kind", "userId", "scopes", "n", "t"]);
    assert_eq!(pairs[2].1, r#"["*"]"#);
    assert_eq!(pairs[4].1, "\"pcs_sess_…\"");
}

#[test]
fn a_stated_value_that_differs_fails_the_check() {
    let step = Step {
        section: "test",
        command: "true".into(),
        expected: vec![r#"# {"scopes": ["portcullis:*"]}"#.into()],
    };
    let result =
        std::panic::catch_unwind(|| check_output(&step, true, "{\n  \"scopes\": [\n    \"*\"\n  ]\n}", ""));
    assert!(result.is_err(), "a wrong stated value passed");
    check_output(
        &Step { expected: vec![r#"# {"scopes": ["*"]}"#.into()], ..step },
        true,
        "{\n  \"scopes\": [\n    \"*\"\n  ]\n}",
        "",
    );
}
