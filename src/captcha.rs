//! Server-side captcha verification: asks a vendor's `siteverify` endpoint
//! whether a captcha response that a client sent is genuine.
//!
//! Owns the outgoing HTTP client and the vendors' secrets. It knows nothing of
//! gRPC, the database or login policy: whether a login needs a captcha is the
//! login rule's decision; this module only answers "accepted or not, and why".
//!
//! It fails closed: an unknown or unconfigured vendor, a malformed response, a
//! vendor that cannot be reached, times out, or answers anything but a
//! well-formed "success" is never an accepted captcha.

use std::{fmt, net::IpAddr, str::FromStr, time::Duration};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::config::{Config, ConfigError};

/// Longest captcha response accepted, in bytes. Real tokens are at most about
/// 2 KiB (Turnstile documents 2048 characters); anything longer is refused
/// before it is sent anywhere.
pub const MAX_RESPONSE_BYTES: usize = 4096;

/// Largest vendor answer read. A real one is a few hundred bytes; a bigger one
/// is not a `siteverify` answer, and reading it unbounded would let a broken
/// or hostile endpoint fill memory.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Most vendor error codes quoted in a rejection.
const MAX_ERROR_CODES: usize = 4;

/// Longest piece of vendor-supplied text (an error code, an action) quoted in
/// an error message.
const MAX_QUOTED_CHARS: usize = 64;

// === Vendor ===

/// Which vendor produced a captcha response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vendor {
    /// Google reCAPTCHA v3: a score between 0.0 (bot) and 1.0 (human), and the
    /// action the token was issued for.
    GoogleV3,
    /// hCaptcha.
    HCaptcha,
    /// Cloudflare Turnstile.
    Turnstile,
}

impl Vendor {
    /// Every vendor, in the order they are documented.
    pub const ALL: [Vendor; 3] = [Vendor::GoogleV3, Vendor::HCaptcha, Vendor::Turnstile];

    /// The vendor's name in requests and settings: `googlev3`, `hcaptcha` or
    /// `turnstile`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Vendor::GoogleV3 => "googlev3",
            Vendor::HCaptcha => "hcaptcha",
            Vendor::Turnstile => "turnstile",
        }
    }
}

impl fmt::Display for Vendor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A captcha vendor name that is not `googlev3`, `hcaptcha` or `turnstile`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown captcha vendor {0:?}: expected googlev3, hcaptcha or turnstile")]
pub struct UnknownVendor(String);

impl FromStr for Vendor {
    type Err = UnknownVendor;

    /// Parses a vendor name exactly as [`Vendor::name`] spells it.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Vendor::ALL
            .into_iter()
            .find(|vendor| vendor.name() == name)
            // The name comes from a client: quote only a bounded, printable part.
            .ok_or_else(|| UnknownVendor(quote(name)))
    }
}

// === CaptchaError ===

/// Why a captcha was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum CaptchaError {
    /// The vendor is not configured on this server (no secret set).
    #[error("captcha vendor {0} is not enabled on this server")]
    VendorNotEnabled(Vendor),
    /// The response is empty or longer than [`MAX_RESPONSE_BYTES`] (checked
    /// before any network call).
    #[error("malformed captcha response: {0}")]
    Malformed(&'static str),
    /// The vendor said no (success=false, or score below threshold, or wrong
    /// action for googlev3); the text says why, never echoing the response
    /// token.
    #[error("captcha rejected: {0}")]
    Rejected(String),
    /// The vendor could not be asked or answered garbage (timeout, connection
    /// refused, non-2xx, non-JSON): fail closed.
    #[error("captcha verification unavailable: {0}")]
    Unavailable(String),
}

// === Verifier ===

/// Verifies captcha responses against the configured vendors.
///
/// Cheap to share behind an `Arc`; the HTTP client pools connections.
pub struct Verifier {
    /// rustls, no redirects, a total time limit of `timeout`.
    client: reqwest::Client,
    /// The time limit of one verification request.
    timeout: Duration,
    /// Google reCAPTCHA v3, when its secret is set.
    googlev3: Option<Endpoint>,
    /// Lowest reCAPTCHA v3 score accepted.
    googlev3_min_score: f64,
    /// The action a reCAPTCHA v3 token must carry; `None` skips the check.
    googlev3_action: Option<String>,
    /// hCaptcha, when its secret is set.
    hcaptcha: Option<Endpoint>,
    /// Cloudflare Turnstile, when its secret is set.
    turnstile: Option<Endpoint>,
}

/// One vendor's verification endpoint and the secret that authenticates this
/// server to it.
struct Endpoint {
    url: reqwest::Url,
    secret: SecretString,
}

/// The fields of a `siteverify` answer that matter here; the three vendors
/// share this shape. Other fields are ignored.
#[derive(Deserialize)]
struct Answer {
    success: bool,
    /// reCAPTCHA v3 (and hCaptcha Enterprise) only.
    score: Option<f64>,
    /// reCAPTCHA v3 and Turnstile.
    action: Option<String>,
    #[serde(rename = "error-codes")]
    error_codes: Option<Vec<String>>,
}

impl Verifier {
    /// Builds the HTTP client and reads each vendor's settings; a vendor whose
    /// secret is empty is disabled.
    ///
    /// # Errors
    /// A verification URL that is not an absolute `http`/`https` URL (the
    /// message names the setting), or an HTTP client that cannot be built.
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let endpoint = |secret: &str, setting: &str, url: &str| -> Result<Option<Endpoint>, ConfigError> {
            // Parse even when disabled: a typo should stop start-up now, not
            // when the secret is added later.
            let url = parse_url(setting, url)?;
            let secret = secret.trim();
            Ok((!secret.is_empty()).then(|| Endpoint { url, secret: SecretString::from(secret) }))
        };
        let googlev3 =
            endpoint(&config.captcha_googlev3_secret, "captcha_googlev3_url", &config.captcha_googlev3_url)?;
        let hcaptcha =
            endpoint(&config.captcha_hcaptcha_secret, "captcha_hcaptcha_url", &config.captcha_hcaptcha_url)?;
        let turnstile = endpoint(
            &config.captcha_turnstile_secret,
            "captcha_turnstile_url",
            &config.captcha_turnstile_url,
        )?;
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            // Covers connecting, sending and reading the whole answer.
            .timeout(config.captcha_timeout)
            // A redirected POST would become a GET without the form; a real
            // siteverify endpoint never redirects, so a redirect is an error.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ConfigError::from_message(format!("captcha: cannot build the HTTP client: {e}")))?;
        let action = config.captcha_googlev3_action.trim();
        let verifier = Verifier {
            client,
            timeout: config.captcha_timeout,
            googlev3,
            googlev3_min_score: config.captcha_googlev3_min_score,
            googlev3_action: (!action.is_empty()).then(|| action.to_owned()),
            hcaptcha,
            turnstile,
        };
        let enabled: Vec<&str> = verifier.enabled().map(Vendor::name).collect();
        if enabled.is_empty() {
            tracing::info!("captcha is unavailable: no vendor secret is configured");
        } else {
            tracing::info!(vendors = %enabled.join(","), "captcha vendors enabled");
        }
        Ok(verifier)
    }

    /// Whether any vendor is configured.
    #[must_use]
    pub fn any_enabled(&self) -> bool {
        self.enabled().next().is_some()
    }

    /// Whether `vendor` is configured.
    #[must_use]
    pub fn is_enabled(&self, vendor: Vendor) -> bool {
        self.endpoint(vendor).is_some()
    }

    /// The configured vendors.
    pub fn enabled(&self) -> impl Iterator<Item = Vendor> + '_ {
        Vendor::ALL.into_iter().filter(|&vendor| self.is_enabled(vendor))
    }

    /// Verifies `response` with `vendor`'s siteverify endpoint (HTTP POST,
    /// form-encoded `secret`, `response`, and `remoteip` when given), fail
    /// closed.
    ///
    /// # Errors
    /// [`CaptchaError::VendorNotEnabled`] and [`CaptchaError::Malformed`]
    /// without a network call; [`CaptchaError::Rejected`] when the vendor
    /// does not accept the response; [`CaptchaError::Unavailable`] when the
    /// vendor cannot be asked or gives no usable answer.
    pub async fn verify(
        &self,
        vendor: Vendor,
        response: &str,
        remote_ip: Option<IpAddr>,
    ) -> Result<(), CaptchaError> {
        let endpoint = self.endpoint(vendor).ok_or(CaptchaError::VendorNotEnabled(vendor))?;
        check_response(response)?;
        let answer = match self.ask(vendor, endpoint, response, remote_ip).await {
            Ok(answer) => answer,
            Err(why) => {
                // An operator needs to know the vendor is failing; the client
                // only learns that its captcha was not accepted.
                tracing::warn!(%vendor, error = %why, "captcha vendor unavailable; captcha not accepted");
                return Err(CaptchaError::Unavailable(why));
            }
        };
        self.judge(vendor, &answer)
    }

    fn endpoint(&self, vendor: Vendor) -> Option<&Endpoint> {
        match vendor {
            Vendor::GoogleV3 => self.googlev3.as_ref(),
            Vendor::HCaptcha => self.hcaptcha.as_ref(),
            Vendor::Turnstile => self.turnstile.as_ref(),
        }
    }

    /// Posts the form and reads a bounded JSON answer. The error text names
    /// what went wrong, never the secret or the response.
    async fn ask(
        &self,
        vendor: Vendor,
        endpoint: &Endpoint,
        response: &str,
        remote_ip: Option<IpAddr>,
    ) -> Result<Answer, String> {
        let remote_ip = remote_ip.map(|ip| ip.to_string());
        let mut form = vec![("secret", endpoint.secret.expose_secret()), ("response", response)];
        if let Some(ip) = &remote_ip {
            form.push(("remoteip", ip));
        }
        let mut answer = self
            .client
            .post(endpoint.url.clone())
            .form(&form)
            .send()
            .await
            .map_err(|e| self.describe(vendor, e))?;
        let status = answer.status();
        if !status.is_success() {
            return Err(format!("{vendor} answered HTTP {status}"));
        }
        if answer.content_length().is_some_and(|length| length > MAX_ANSWER_BYTES as u64) {
            return Err(format!("{vendor} answered more than {MAX_ANSWER_BYTES} bytes"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = answer.chunk().await.map_err(|e| self.describe(vendor, e))? {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(format!("{vendor} answered more than {MAX_ANSWER_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        let value: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
            // Say where it broke, not what it said.
            format!("{vendor} answered something that is not JSON (line {}, column {})", e.line(), e.column())
        })?;
        // Only an object: serde would also read a struct from an array such
        // as `[true, null, null, null]`.
        if !value.is_object() {
            return Err(format!("{vendor} answered JSON that is not a siteverify answer (not an object)"));
        }
        serde_json::from_value(value).map_err(|e| {
            format!("{vendor} answered JSON that is not a siteverify answer ({})", quote(&e.to_string()))
        })
    }

    /// Reads the vendor's verdict, and for reCAPTCHA v3 its score and action.
    fn judge(&self, vendor: Vendor, answer: &Answer) -> Result<(), CaptchaError> {
        if !answer.success {
            let codes = answer.error_codes.as_deref().unwrap_or_default();
            let codes = if codes.is_empty() {
                String::new()
            } else {
                let quoted: Vec<String> =
                    codes.iter().take(MAX_ERROR_CODES).map(|code| quote(code)).collect();
                format!(" ({})", quoted.join(", "))
            };
            return Err(CaptchaError::Rejected(format!("{vendor} did not accept the response{codes}")));
        }
        if vendor == Vendor::GoogleV3 {
            let Some(score) = answer.score else {
                return Err(CaptchaError::Rejected(
                    "googlev3 answered without a score (not a reCAPTCHA v3 response)".into(),
                ));
            };
            if score.is_nan() || score < self.googlev3_min_score {
                return Err(CaptchaError::Rejected(format!(
                    "googlev3 score {score} is below the minimum {}",
                    self.googlev3_min_score
                )));
            }
            if let Some(expected) = &self.googlev3_action {
                match answer.action.as_deref() {
                    Some(action) if action == expected => {}
                    Some(action) => {
                        return Err(CaptchaError::Rejected(format!(
                            "googlev3 action {:?} is not the expected {expected:?}",
                            quote(action)
                        )));
                    }
                    None => {
                        return Err(CaptchaError::Rejected(format!(
                            "googlev3 answered without an action (expected {expected:?})"
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// Names a transport failure: a timeout, a refused connection, or a
    /// broken answer. Without the URL (the setting names it) and with the
    /// innermost cause, which is the one that says what happened.
    fn describe(&self, vendor: Vendor, error: reqwest::Error) -> String {
        if error.is_timeout() {
            return format!("{vendor} did not answer within {:?}", self.timeout);
        }
        let what = if error.is_connect() { "cannot connect to" } else { "failed talking to" };
        let error = error.without_url();
        let mut cause: &dyn std::error::Error = &error;
        while let Some(source) = cause.source() {
            cause = source;
        }
        format!("{what} {vendor}: {cause}")
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("timeout", &self.timeout)
            .field("googlev3", &self.googlev3)
            .field("googlev3_min_score", &self.googlev3_min_score)
            .field("googlev3_action", &self.googlev3_action)
            .field("hcaptcha", &self.hcaptcha)
            .field("turnstile", &self.turnstile)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint").field("url", &self.url.as_str()).field("secret", &"<redacted>").finish()
    }
}

/// Refuses an empty or oversized response before it goes anywhere.
fn check_response(response: &str) -> Result<(), CaptchaError> {
    if response.is_empty() {
        return Err(CaptchaError::Malformed("empty"));
    }
    if response.len() > MAX_RESPONSE_BYTES {
        return Err(CaptchaError::Malformed("longer than 4096 bytes"));
    }
    Ok(())
}

/// Parses a verification URL; the error names the setting.
fn parse_url(setting: &str, url: &str) -> Result<reqwest::Url, ConfigError> {
    let bad = |why: String| ConfigError::from_message(format!("{setting}: {why}"));
    let parsed = reqwest::Url::parse(url.trim()).map_err(|e| bad(format!("not a URL ({e})")))?;
    if !matches!(parsed.scheme(), "https" | "http") || parsed.host().is_none() {
        return Err(bad("must be an http:// or https:// URL with a host".into()));
    }
    Ok(parsed)
}

/// A bounded, printable copy of text from outside (a vendor or a client), for
/// an error message.
fn quote(text: &str) -> String {
    text.chars()
        .take(MAX_QUOTED_CHARS)
        .map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::{
        collections::HashMap,
        net::{Ipv4Addr, Ipv6Addr, SocketAddr},
        sync::{Arc, Mutex},
        time::Instant,
    };

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpStream},
    };

    use super::*;

    const TOKEN: &str = "client-token-0123456789";

    // === a fake siteverify server on loopback ===

    /// How the fake vendor answers every request.
    #[derive(Clone)]
    enum Reply {
        /// An HTTP/1.1 answer with this status and body.
        Http(u16, String),
        /// These bytes, then close: not HTTP at all.
        Raw(&'static [u8]),
        /// Reads the request and then never answers.
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

    struct FakeVendor {
        addr: SocketAddr,
        seen: Arc<Mutex<Vec<Seen>>>,
    }

    impl FakeVendor {
        async fn start(reply: Reply) -> Self {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
            let addr = listener.local_addr().unwrap();
            let seen = Arc::new(Mutex::new(Vec::new()));
            let recorded = Arc::clone(&seen);
            // Ends with the test's runtime.
            tokio::spawn(async move {
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    tokio::spawn(serve(stream, reply.clone(), Arc::clone(&recorded)));
                }
            });
            FakeVendor { addr, seen }
        }

        fn url(&self, path: &str) -> String {
            format!("http://{}{path}", self.addr)
        }

        fn seen(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }
    }

    async fn serve(mut stream: TcpStream, reply: Reply, seen: Arc<Mutex<Vec<Seen>>>) {
        let mut buffer = Vec::new();
        let header_end = loop {
            let mut chunk = [0u8; 4096];
            let read = stream.read(&mut chunk).await.unwrap();
            if read == 0 {
                return;
            }
            buffer.extend_from_slice(&chunk[..read]);
            if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
        };
        let head = String::from_utf8(buffer[..header_end].to_vec()).unwrap();
        let mut lines = head.lines();
        let mut request_line = lines.next().unwrap().split(' ');
        let method = request_line.next().unwrap().to_owned();
        let path = request_line.next().unwrap().to_owned();
        let headers: HashMap<String, String> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
            .collect();
        let length: usize = headers.get("content-length").map_or(0, |v| v.parse().unwrap());
        while buffer.len() < header_end + length {
            let mut chunk = [0u8; 4096];
            let read = stream.read(&mut chunk).await.unwrap();
            assert_ne!(read, 0, "request body cut short");
            buffer.extend_from_slice(&chunk[..read]);
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
                stream.write_all(answer.as_bytes()).await.unwrap();
                stream.shutdown().await.ok();
            }
            Reply::Raw(bytes) => {
                stream.write_all(bytes).await.unwrap();
                stream.shutdown().await.ok();
            }
            Reply::Silent => {
                // Hold the connection open without answering.
                std::future::pending::<()>().await;
            }
        }
    }

    fn ok(body: &str) -> Reply {
        Reply::Http(200, body.to_owned())
    }

    /// Every vendor enabled, pointed at `vendor` under `/google`, `/hcaptcha`
    /// and `/turnstile`.
    fn config(vendor: &FakeVendor) -> Config {
        Config {
            captcha_timeout: Duration::from_millis(300),
            captcha_googlev3_secret: "google-secret".into(),
            captcha_googlev3_url: vendor.url("/google"),
            captcha_hcaptcha_secret: "hcaptcha-secret".into(),
            captcha_hcaptcha_url: vendor.url("/hcaptcha"),
            captcha_turnstile_secret: "turnstile-secret".into(),
            captcha_turnstile_url: vendor.url("/turnstile"),
            ..Config::default()
        }
    }

    async fn verify_with(reply: Reply, vendor: Vendor) -> Result<(), CaptchaError> {
        let fake = FakeVendor::start(reply).await;
        let verifier = Verifier::from_config(&config(&fake)).unwrap();
        verifier.verify(vendor, TOKEN, None).await
    }

    fn rejected(result: Result<(), CaptchaError>) -> String {
        match result {
            Err(CaptchaError::Rejected(why)) => {
                assert!(!why.contains(TOKEN), "the token is echoed: {why}");
                why
            }
            other => panic!("expected Rejected, got {other:?}"),
        }
    }

    fn unavailable(result: Result<(), CaptchaError>) -> String {
        match result {
            Err(CaptchaError::Unavailable(why)) => {
                assert!(!why.contains(TOKEN) && !why.contains("secret"), "leaks: {why}");
                why
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }

    // === accepted ===

    #[tokio::test]
    async fn each_vendor_accepts_a_good_response_posted_form_encoded_to_its_url() {
        let fake = FakeVendor::start(ok(
            r#"{"success": true, "score": 0.9, "action": "login", "hostname": "example.com", "challenge_ts": "2026-11-24T00:00:00Z"}"#,
        ))
        .await;
        let verifier = Verifier::from_config(&config(&fake)).unwrap();
        let cases = [
            (Vendor::GoogleV3, "/google", "google-secret", IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7))),
            (Vendor::HCaptcha, "/hcaptcha", "hcaptcha-secret", IpAddr::V6(Ipv6Addr::LOCALHOST)),
            (Vendor::Turnstile, "/turnstile", "turnstile-secret", IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1))),
        ];
        for (vendor, path, secret, ip) in cases {
            // `+`, `&` and `=` must survive form encoding.
            let response = format!("{TOKEN}+&={vendor}");
            verifier.verify(vendor, &response, Some(ip)).await.unwrap();
            let seen = fake.seen().pop().unwrap();
            assert_eq!(seen.method, "POST");
            assert_eq!(seen.path, path);
            assert_eq!(seen.content_type, "application/x-www-form-urlencoded");
            assert_eq!(seen.form.get("secret").map(String::as_str), Some(secret));
            assert_eq!(seen.form.get("response"), Some(&response));
            assert_eq!(seen.form.get("remoteip"), Some(&ip.to_string()));
            assert_eq!(seen.form.len(), 3, "{:?}", seen.form.keys());
        }
        assert_eq!(fake.seen().len(), 3);
    }

    #[tokio::test]
    async fn remote_ip_is_left_out_when_unknown() {
        let fake = FakeVendor::start(ok(r#"{"success": true}"#)).await;
        let verifier = Verifier::from_config(&config(&fake)).unwrap();
        verifier.verify(Vendor::Turnstile, TOKEN, None).await.unwrap();
        let seen = fake.seen().pop().unwrap();
        assert!(!seen.form.contains_key("remoteip"), "{:?}", seen.form);
    }

    #[tokio::test]
    async fn a_response_of_exactly_the_limit_is_sent() {
        let fake = FakeVendor::start(ok(r#"{"success": true}"#)).await;
        let verifier = Verifier::from_config(&config(&fake)).unwrap();
        let response = "a".repeat(MAX_RESPONSE_BYTES);
        verifier.verify(Vendor::HCaptcha, &response, None).await.unwrap();
        assert_eq!(fake.seen()[0].form["response"].len(), MAX_RESPONSE_BYTES);
    }

    #[tokio::test]
    async fn googlev3_empty_action_setting_skips_the_action_check() {
        let fake = FakeVendor::start(ok(r#"{"success": true, "score": 0.7, "action": "signup"}"#)).await;
        let verifier =
            Verifier::from_config(&Config { captcha_googlev3_action: String::new(), ..config(&fake) })
                .unwrap();
        verifier.verify(Vendor::GoogleV3, TOKEN, None).await.unwrap();
    }

    // === rejected ===

    #[tokio::test]
    async fn success_false_is_rejected_with_the_vendor_error_codes() {
        for vendor in Vendor::ALL {
            let why = rejected(
                verify_with(ok(r#"{"success": false, "error-codes": ["invalid-input-response"]}"#), vendor)
                    .await,
            );
            assert!(why.contains("invalid-input-response") && why.contains(vendor.name()), "{why}");
        }
        // Without error codes, and with a null list.
        rejected(verify_with(ok(r#"{"success": false}"#), Vendor::HCaptcha).await);
        rejected(verify_with(ok(r#"{"success": false, "error-codes": null}"#), Vendor::Turnstile).await);
    }

    #[tokio::test]
    async fn a_vendor_echoing_the_token_in_error_codes_is_not_quoted_in_full() {
        // Error codes are bounded: even a vendor that echoes a long token
        // does not put it in the message.
        let long = "t".repeat(200);
        let body = format!(r#"{{"success": false, "error-codes": ["{long}", "b", "c", "d", "e"]}}"#);
        let why = rejected(verify_with(ok(&body), Vendor::Turnstile).await);
        assert!(!why.contains(&long) && !why.contains(", e"), "{why}");
    }

    #[tokio::test]
    async fn googlev3_score_below_threshold_is_rejected() {
        let why = rejected(
            verify_with(ok(r#"{"success": true, "score": 0.3, "action": "login"}"#), Vendor::GoogleV3).await,
        );
        assert!(why.contains("0.3") && why.contains("0.5"), "{why}");
        // The threshold itself passes.
        verify_with(ok(r#"{"success": true, "score": 0.5, "action": "login"}"#), Vendor::GoogleV3)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn googlev3_wrong_or_missing_action_is_rejected() {
        let why = rejected(
            verify_with(ok(r#"{"success": true, "score": 0.9, "action": "signup"}"#), Vendor::GoogleV3).await,
        );
        assert!(why.contains("signup") && why.contains("login"), "{why}");
        rejected(verify_with(ok(r#"{"success": true, "score": 0.9}"#), Vendor::GoogleV3).await);
    }

    #[tokio::test]
    async fn googlev3_without_a_score_is_rejected() {
        // A reCAPTCHA v2 token checked with a v3 secret has no score.
        let why =
            rejected(verify_with(ok(r#"{"success": true, "action": "login"}"#), Vendor::GoogleV3).await);
        assert!(why.contains("score"), "{why}");
    }

    // === refused without a network call ===

    #[tokio::test]
    async fn a_vendor_without_a_secret_is_not_enabled_and_not_asked() {
        let fake = FakeVendor::start(ok(r#"{"success": true, "score": 1.0, "action": "login"}"#)).await;
        let verifier = Verifier::from_config(&Config {
            captcha_googlev3_secret: String::new(),
            captcha_turnstile_secret: "  ".into(),
            ..config(&fake)
        })
        .unwrap();
        for vendor in [Vendor::GoogleV3, Vendor::Turnstile] {
            let err = verifier.verify(vendor, TOKEN, None).await.unwrap_err();
            assert!(matches!(err, CaptchaError::VendorNotEnabled(v) if v == vendor), "{err:?}");
            assert!(err.to_string().contains(vendor.name()), "{err}");
        }
        assert!(fake.seen().is_empty());
        assert_eq!(verifier.enabled().collect::<Vec<_>>(), [Vendor::HCaptcha]);
    }

    #[tokio::test]
    async fn an_empty_or_oversized_response_is_malformed_and_not_sent() {
        let fake = FakeVendor::start(ok(r#"{"success": true}"#)).await;
        let verifier = Verifier::from_config(&config(&fake)).unwrap();
        let mebibyte = "a".repeat(1 << 20);
        let just_over = "a".repeat(MAX_RESPONSE_BYTES + 1);
        for response in ["", mebibyte.as_str(), just_over.as_str()] {
            let err = verifier.verify(Vendor::HCaptcha, response, None).await.unwrap_err();
            assert!(matches!(err, CaptchaError::Malformed(_)), "{err:?}");
            assert!(err.to_string().len() < 100, "the message stays short");
        }
        assert!(fake.seen().is_empty());
    }

    // === unavailable: fail closed ===

    #[tokio::test]
    async fn an_endpoint_that_never_answers_is_unavailable_after_the_timeout() {
        let fake = FakeVendor::start(Reply::Silent).await;
        let verifier = Verifier::from_config(&config(&fake)).unwrap();
        let started = Instant::now();
        let result =
            tokio::time::timeout(Duration::from_secs(10), verifier.verify(Vendor::Turnstile, TOKEN, None))
                .await
                .expect("the verifier's own timeout should fire first");
        let elapsed = started.elapsed();
        let why = unavailable(result);
        assert!(why.contains("300ms"), "{why}");
        assert!(elapsed >= Duration::from_millis(250) && elapsed < Duration::from_secs(3), "{elapsed:?}");
        assert_eq!(fake.seen().len(), 1, "the request did reach the endpoint");
    }

    #[tokio::test]
    async fn an_endpoint_answering_garbage_or_an_error_status_is_unavailable() {
        let big = format!(r#"{{"success": true, "pad": "{}"}}"#, "x".repeat(MAX_ANSWER_BYTES));
        let cases = [
            (Reply::Http(500, r#"{"success": true}"#.into()), "500"),
            (Reply::Http(503, String::new()), "503"),
            (Reply::Http(302, r#"{"success": true}"#.into()), "302"),
            (ok("<html>login here</html>"), "not JSON"),
            (ok(""), "not JSON"),
            (ok(r#"{"success": "yes"}"#), "not a siteverify answer"),
            (ok(r#"{"score": 0.9}"#), "not a siteverify answer"),
            (ok("[true, null, null, null]"), "not a siteverify answer"),
            (ok("null"), "not a siteverify answer"),
            (ok(&big), "more than"),
            (Reply::Raw(b"garbage\r\n\r\n"), "hcaptcha"),
        ];
        for (reply, expected) in cases {
            let why = unavailable(verify_with(reply, Vendor::HCaptcha).await);
            assert!(why.contains(expected), "expected {expected:?} in {why:?}");
        }
    }

    #[tokio::test]
    async fn a_refused_connection_is_unavailable() {
        // A port that was just free and has no listener.
        let closed = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap().local_addr().unwrap();
        let verifier = Verifier::from_config(&Config {
            captcha_hcaptcha_secret: "hcaptcha-secret".into(),
            captcha_hcaptcha_url: format!("http://{closed}/siteverify"),
            captcha_timeout: Duration::from_secs(2),
            ..Config::default()
        })
        .unwrap();
        let why = unavailable(verifier.verify(Vendor::HCaptcha, TOKEN, None).await);
        assert!(why.contains("cannot connect to hcaptcha"), "{why}");
    }

    // === configuration ===

    #[tokio::test]
    async fn debug_shows_no_secret() {
        let fake = FakeVendor::start(Reply::Silent).await;
        let verifier = Verifier::from_config(&config(&fake)).unwrap();
        let shown = format!("{verifier:?}");
        assert!(!shown.contains("secret\""), "{shown}");
        for secret in ["google-secret", "hcaptcha-secret", "turnstile-secret"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("<redacted>") && shown.contains("/turnstile"), "{shown}");
    }

    #[test]
    fn any_enabled_follows_the_secrets() {
        let none = Verifier::from_config(&Config::default()).unwrap();
        assert!(!none.any_enabled());
        assert_eq!(none.enabled().count(), 0);
        let one =
            Verifier::from_config(&Config { captcha_turnstile_secret: "s".into(), ..Config::default() })
                .unwrap();
        assert!(one.any_enabled() && one.is_enabled(Vendor::Turnstile) && !one.is_enabled(Vendor::GoogleV3));
    }

    #[test]
    fn a_bad_url_names_the_setting_even_for_a_disabled_vendor() {
        for (config, setting) in [
            (
                Config { captcha_hcaptcha_url: "not a url".into(), ..Config::default() },
                "captcha_hcaptcha_url",
            ),
            (
                Config { captcha_googlev3_url: "ftp://example.com/verify".into(), ..Config::default() },
                "captcha_googlev3_url",
            ),
            (Config { captcha_turnstile_url: String::new(), ..Config::default() }, "captcha_turnstile_url"),
        ] {
            let err = Verifier::from_config(&config).unwrap_err().to_string();
            assert!(err.contains(setting), "{err}");
        }
    }

    #[test]
    fn config_check_bounds_the_score_and_the_timeout() {
        for config in [
            Config { captcha_googlev3_min_score: 1.5, ..Config::default() },
            Config { captcha_googlev3_min_score: -0.1, ..Config::default() },
            Config { captcha_googlev3_min_score: f64::NAN, ..Config::default() },
        ] {
            let err = config.check().unwrap_err().to_string();
            assert!(err.contains("captcha_googlev3_min_score"), "{err}");
        }
        for timeout in [Duration::from_millis(99), Duration::from_secs(61)] {
            let err =
                Config { captcha_timeout: timeout, ..Config::default() }.check().unwrap_err().to_string();
            assert!(err.contains("captcha_timeout"), "{err}");
        }
        for (score, timeout) in [(0.0, Duration::from_millis(100)), (1.0, Duration::from_mins(1))] {
            Config { captcha_googlev3_min_score: score, captcha_timeout: timeout, ..Config::default() }
                .check()
                .unwrap();
        }
    }

    #[test]
    fn vendor_names_parse_and_an_unknown_one_is_named() {
        for vendor in Vendor::ALL {
            assert_eq!(vendor.name().parse::<Vendor>().unwrap(), vendor);
            assert_eq!(vendor.to_string(), vendor.name());
        }
        let err = "recaptcha".parse::<Vendor>().unwrap_err().to_string();
        assert!(err.contains("recaptcha") && err.contains("googlev3"), "{err}");
        let huge = "x".repeat(10_000);
        assert!(huge.parse::<Vendor>().unwrap_err().to_string().len() < 200);
        assert!("GoogleV3".parse::<Vendor>().is_err(), "names are exact");
    }
}
