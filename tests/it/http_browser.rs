//! A real browser against the HTTP API: headless Chromium, driven by
//! chromedriver over `WebDriver` (plain HTTP from this test), loads small pages
//! the test serves from other loopback origins. A page of the allowed origin
//! logs in through the S4E endpoint with `fetch(…, {credentials: "include"})`,
//! gets the `HttpOnly` cookie (its script cannot read it), asks
//! `GET /api/user/auth/session` with it, logs out and is refused after. A
//! page of an origin not in `allowed_origins` is refused: it cannot read any
//! answer (CORS), and its cookie-only logout is refused by the server (CSRF).
//! Assertions are on the DOM the pages write.
//!
//! Needs `chromium` and `chromedriver` (Debian `chromium`, `chromium-driver`,
//! installed by `scripts/tools`): skipped without them, failed in CI.

use std::{process::Stdio, time::Duration};

use portcullis::domain::Role;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::TcpListener,
    process::{Child, Command},
    task::JoinHandle,
};
use tonic::Code;

use crate::support::{Backend, TestApp, USER_PASSWORD, assert_error};

crate::db_tests!(a_browser_lives_on_the_cookie_and_other_origins_are_refused);

const EMAIL: &str = "web@example.com";

/// The page: runs `step` against the API at `api` (both from its query),
/// writes what it saw as JSON into `#result`, then adds `#done`.
const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>portcullis browser test</title></head>
<body><pre id="result"></pre>
<script>
const query = new URLSearchParams(location.search);
const api = query.get("api");
async function call(method, path, body) {
  const options = { method, credentials: "include", headers: {} };
  if (body !== undefined) {
    options.headers["content-type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  try {
    const response = await fetch(api + path, options);
    let json = null;
    try { json = await response.json(); } catch (e) {}
    return { status: response.status, body: json };
  } catch (e) {
    return { refused: String(e) };
  }
}
async function run() {
  const out = {};
  const login = { email: "EMAIL", password: "PASSWORD", captcha_response: "", bypass_captcha: false, vendor: "turnstile" };
  switch (query.get("step")) {
    case "login":
      out.login = await call("POST", "/api/user/auth/login", login);
      out.cookies = document.cookie;
      out.session = await call("GET", "/api/user/auth/session");
      break;
    case "logout":
      out.session = await call("GET", "/api/user/auth/session");
      out.logout = await call("POST", "/api/user/auth/logout");
      out.cookies = document.cookie;
      out.after = await call("GET", "/api/user/auth/session");
      break;
    case "foreign":
      out.login = await call("POST", "/api/user/auth/login", login);
      out.session = await call("GET", "/api/user/auth/session");
      // A "simple" request: no preflight, the cookie goes along (same site).
      try {
        await fetch(api + "/api/user/auth/logout", { method: "POST", credentials: "include", mode: "no-cors" });
        out.logout = "sent";
      } catch (e) {
        out.logout = String(e);
      }
      break;
  }
  document.getElementById("result").textContent = JSON.stringify(out);
  const done = document.createElement("div");
  done.id = "done";
  document.body.appendChild(done);
}
run();
</script></body></html>
"#;

/// Serves [`PAGE`] for every request on a loopback port.
struct PageServer {
    origin: String,
    task: JoinHandle<()>,
}

impl PageServer {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let page = PAGE.replace("EMAIL", EMAIL).replace("PASSWORD", USER_PASSWORD);
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let page = page.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buffer = [0u8; 2048];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buffer).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buffer[..n]),
                        }
                    }
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\n\
                         cache-control: no-store\r\nconnection: close\r\n\r\n",
                        page.len()
                    );
                    let _ = stream.write_all(head.as_bytes()).await;
                    let _ = stream.write_all(page.as_bytes()).await;
                });
            }
        });
        Self { origin, task }
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// chromedriver and one headless Chromium session.
struct Browser {
    driver: Child,
    base: String,
    http: reqwest::Client,
    /// The browser's fresh profile, removed with it.
    profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver on a free port and a fresh headless Chromium;
    /// `None` (skip) where they are not installed, outside CI.
    async fn start() -> Option<Self> {
        let Ok(mut driver) = Command::new("chromedriver")
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
        else {
            crate::support::skip("chromedriver is not installed here (scripts/tools installs it as root)");
            return None;
        };
        // "ChromeDriver was started successfully on port 36089."
        let mut lines = BufReader::new(driver.stdout.take().unwrap()).lines();
        let port = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(rest) = line.split("on port ").nth(1)
                    && line.contains("started successfully")
                {
                    return rest.trim_end_matches('.').parse::<u16>().unwrap();
                }
            }
            panic!("chromedriver stopped before saying its port");
        })
        .await
        .expect("chromedriver starts");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let profile = tempfile::tempdir().unwrap();
        let binary = ["/usr/lib/chromium/chromium", "/usr/bin/chromium"]
            .into_iter()
            .find(|path| std::path::Path::new(path).exists())
            .unwrap_or("chromium");
        let mut browser = Self {
            driver,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            profile,
        };
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            &format!("--user-data-dir={}", browser.profile.path().display()),
        ];
        let session = browser
            .command(
                reqwest::Method::POST,
                "/session",
                &json!({"capabilities": {"alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {"binary": binary, "args": args},
                }}}),
            )
            .await;
        let id = session["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {session}")).to_owned();
        browser.base = format!("{}/session/{id}", browser.base);
        browser
            .command(reqwest::Method::POST, "/timeouts", &json!({"implicit": 30_000, "pageLoad": 30_000}))
            .await;
        Some(browser)
    }

    /// One `WebDriver` command; its `value`.
    async fn command(&mut self, method: reqwest::Method, path: &str, body: &Value) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if !body.is_null() {
            request = request.json(body);
        }
        let reply: Value = request.send().await.unwrap().json().await.unwrap();
        let value = reply["value"].clone();
        assert!(value.get("error").is_none(), "WebDriver {path}: {value}");
        value
    }

    /// Opens `url` and waits (bounded) for its script to finish; returns
    /// what it wrote into `#result`.
    async fn run(&mut self, url: &str) -> Value {
        self.command(reqwest::Method::POST, "/url", &json!({ "url": url })).await;
        self.command(reqwest::Method::POST, "/element", &json!({"using": "css selector", "value": "#done"}))
            .await;
        let result = self
            .command(reqwest::Method::POST, "/element", &json!({"using": "css selector", "value": "#result"}))
            .await;
        let element = result.as_object().unwrap().values().next().unwrap().as_str().unwrap().to_owned();
        let text =
            self.command(reqwest::Method::GET, &format!("/element/{element}/text"), &Value::Null).await;
        serde_json::from_str(text.as_str().unwrap()).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    async fn quit(mut self) {
        self.command(reqwest::Method::DELETE, "", &Value::Null).await;
        let _ = self.driver.kill().await;
    }
}

async fn a_browser_lives_on_the_cookie_and_other_origins_are_refused(backend: Backend) {
    let Some(mut browser) = Browser::start().await else { return };
    let page = PageServer::start().await;
    let foreign = PageServer::start().await;
    let app = TestApp::start_with(&backend, |c| c.allowed_origins = vec![page.origin.clone()]).await;
    app.create_user(EMAIL, USER_PASSWORD, Role::User).await;
    let api = format!("http://127.0.0.1:{}", app.addr.port());

    // The allowed page logs in; the cookie is set but not readable.
    let seen = browser.run(&format!("{}/?step=login&api={api}", page.origin)).await;
    assert_eq!(seen["login"]["status"], 200, "{seen}");
    assert_eq!(seen["login"]["body"]["status"], "success", "{seen}");
    let token = seen["login"]["body"]["data"]["token"].as_str().unwrap().to_owned();
    assert!(!seen["cookies"].as_str().unwrap().contains("portcullis_session"), "{seen}");
    assert_eq!(seen["session"]["status"], 200, "the cookie did not travel: {seen}");
    assert_eq!(seen["session"]["body"]["data"]["user"]["email"], EMAIL, "{seen}");
    assert_eq!(seen["session"]["body"]["data"]["kind"], "session");

    // A page of another origin: no answer readable, its logout refused.
    let seen = browser.run(&format!("{}/?step=foreign&api={api}", foreign.origin)).await;
    assert!(seen["login"]["refused"].is_string(), "{seen}");
    assert!(seen["session"]["refused"].is_string(), "{seen}");
    assert_eq!(seen["logout"], "sent", "{seen}");
    app.validate(&token).await.expect("a foreign page's logout was refused");

    // Back on the allowed page: logout clears the cookie and ends the session.
    let seen = browser.run(&format!("{}/?step=logout&api={api}", page.origin)).await;
    assert_eq!(seen["session"]["status"], 200, "{seen}");
    assert_eq!(seen["logout"]["status"], 200, "{seen}");
    assert_eq!(seen["logout"]["body"]["status"], "success", "{seen}");
    assert_eq!(seen["after"]["status"], 401, "{seen}");
    assert_eq!(seen["after"]["body"]["error"]["code"], "unauthorized", "{seen}");
    assert_error(&app.validate(&token).await.unwrap_err(), Code::Unauthenticated, "UNAUTHORIZED");

    browser.quit().await;
    app.stop().await;
}
