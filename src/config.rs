//! The one typed configuration: defaults, then an optional TOML file, then
//! `PORTCULLIS_*` environment variables (and `DATABASE_URL`).
//!
//! Every setting has a default that works on one machine; the README's table
//! lists them. Secrets in here never reach `Debug` output.

use std::{net::SocketAddr, path::Path, time::Duration};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Serialize};

/// Service configuration.
#[allow(clippy::struct_excessive_bools, reason = "a configuration is a list of switches")]
#[derive(Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the gRPC server listens on.
    pub listen_addr: SocketAddr,
    /// Database URL: `sqlite://FILE?mode=rwc` or `postgres://…`.
    pub database_url: String,
    /// Most database connections held open.
    pub database_max_connections: u32,
    /// Connections of their own for the validator's cache-miss reads, on
    /// top of the pool (no check-out, no test on return); unset: one per
    /// core, 4 to 8, at most half of `database_max_connections`; 0: none.
    pub database_read_connections: Option<u32>,
    /// Longest wait for a database connection (and for a new one to open);
    /// then the call answers UNAVAILABLE. Short, so an outage fails fast.
    #[serde(with = "humantime_serde")]
    pub database_timeout: Duration,
    /// Apply pending migrations when `serve` starts (turn off where a job
    /// runs `portcullis migrate` once per release).
    pub migrate_on_start: bool,
    /// First part of every token and key: `<prefix>_<kind>_<secret><checksum>`.
    pub token_prefix: String,
    /// Default session lifetime (S4E: 24 hours).
    #[serde(with = "humantime_serde")]
    pub session_lifetime: Duration,
    /// Latest a session can be refreshed to, counted from its login.
    #[serde(with = "humantime_serde")]
    pub session_absolute_lifetime: Duration,
    /// How long a refreshed-away token keeps working (lost responses).
    #[serde(with = "humantime_serde")]
    pub refresh_grace: Duration,
    /// Cookie that carries a session token in browsers.
    pub session_cookie_name: String,
    /// Whether the session cookie is `Secure` (sent over HTTPS only). Turn
    /// off only for `http://localhost` development: start-up refuses it on
    /// an address other than loopback.
    pub session_cookie_secure: bool,
    /// Origins (`https://app.example.com`) whose pages may call the HTTP API
    /// with the session cookie: CORS with credentials is allowed for them,
    /// and a state-changing request authenticated only by the cookie must
    /// come from one of them.
    pub allowed_origins: Vec<String>,
    /// Serve the S4E dialect of the HTTP API (`<s4e_prefix>/auth/…`,
    /// `<s4e_prefix>/api-keys`).
    pub s4e_api: bool,
    /// Where the S4E dialect lives.
    pub s4e_prefix: String,
    /// Serve the Rehive dialect of the HTTP API (`/3/auth/login/`, …).
    pub rehive_api: bool,
    /// Serve forward auth for nginx `auth_request`, Traefik `ForwardAuth`
    /// and Caddy `forward_auth`.
    pub forward_auth: bool,
    /// Where forward auth answers.
    pub forward_auth_path: String,
    /// Query parameter that may carry a token.
    pub token_query_param: String,
    /// argon2id memory cost in KiB (OWASP: 19 MiB).
    pub argon2_memory_kib: u32,
    /// argon2id passes (OWASP: 2).
    pub argon2_iterations: u32,
    /// argon2id lanes (OWASP: 1).
    pub argon2_parallelism: u32,
    /// Password hashes computed at once; 0 means one per CPU core.
    pub hash_threads: usize,
    /// Password hashes that may wait for a thread; more are refused with
    /// `RESOURCE_EXHAUSTED` at once.
    pub hash_queue_depth: usize,
    /// Hashing threads run at the lowest scheduling priority (`SCHED_IDLE`
    /// on Linux), so hashing only gets CPU that request work leaves.
    pub hash_low_priority: bool,
    /// How long a validated token stays in the in-memory cache. Revocation on
    /// this replica clears it at once; this bounds how long another replica
    /// may keep a revoked token.
    #[serde(with = "humantime_serde")]
    pub token_cache_ttl: Duration,
    /// How long an unknown token is remembered as unknown.
    #[serde(with = "humantime_serde")]
    pub token_negative_cache_ttl: Duration,
    /// Most valid tokens held in the cache; unknown tokens are held apart,
    /// at most a quarter as many.
    pub token_cache_capacity: u64,
    /// Largest gRPC request message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Time limit for one request.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Most client connections served at once; more wait in the kernel's
    /// accept queue until one closes.
    pub max_connections: usize,
    /// Time limit for a client's TLS handshake.
    #[serde(with = "humantime_serde")]
    pub tls_handshake_timeout: Duration,
    /// A connection with no request in flight for this long is closed
    /// (HTTP/2: GOAWAY, then closed once its last stream ends); a connection
    /// that never sends a request is closed after it too.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How often an HTTP/2 connection is pinged to find dead peers.
    #[serde(with = "humantime_serde")]
    pub http2_keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed.
    #[serde(with = "humantime_serde")]
    pub http2_keepalive_timeout: Duration,
    /// After SIGTERM: how long health says NOT_SERVING while calls are still
    /// served, so load balancers stop sending before the listener closes.
    #[serde(with = "humantime_serde")]
    pub shutdown_drain: Duration,
    /// After the drain: how long calls in flight may take before their
    /// connections are closed. Keep drain + timeout below the kubelet's
    /// grace period (30 s).
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// One `info` log line per finished call (method, status, milliseconds,
    /// request id).
    pub log_requests: bool,
    /// How often the health service asks the database whether it answers.
    #[serde(with = "humantime_serde")]
    pub health_probe_interval: Duration,
    /// Peers (CIDR ranges) whose `client.ip` is believed, e.g. the API
    /// gateway. Callers authenticated with an API key are trusted too.
    pub trusted_peers: Vec<ipnet::IpNet>,
    /// Attempts per client IP per `rate_limit_ip_window` on `Login`, `VerifyMfa`,
    /// `SendMfaCode` and `RefreshSession` (0 turns the limit off).
    pub rate_limit_ip: u32,
    /// The per-IP window.
    #[serde(with = "humantime_serde")]
    pub rate_limit_ip_window: Duration,
    /// Attempts per account (normalised email) per window.
    pub rate_limit_account: u32,
    /// The per-account window.
    #[serde(with = "humantime_serde")]
    pub rate_limit_account_window: Duration,
    /// Attempts per (account, client IP) per window.
    pub rate_limit_pair: u32,
    /// The per-pair window.
    #[serde(with = "humantime_serde")]
    pub rate_limit_pair_window: Duration,
    /// Failed attempts (passwords and codes together) that lock an account.
    pub lockout_threshold: u32,
    /// The first lock's length; each further lock doubles it.
    #[serde(with = "humantime_serde")]
    pub lockout_duration: Duration,
    /// The longest lock.
    #[serde(with = "humantime_serde")]
    pub lockout_max_duration: Duration,
    /// When a login needs a captcha: `off`, `always`, or `after_failures`.
    pub captcha_policy: CaptchaPolicyName,
    /// With `after_failures`: recent failures of the account or client IP
    /// after which a captcha is needed.
    pub captcha_after_failures: u32,
    /// How often aggregated invalid-token counts are written to the audit log.
    #[serde(with = "humantime_serde")]
    pub audit_flush_interval: Duration,
    /// Master key for secrets at rest (TOTP secrets, code digests): 32 bytes,
    /// base64. Required with PostgreSQL; with SQLite a key file is made
    /// beside the database when neither this nor `mfa_key_file` is set.
    pub mfa_key: String,
    /// File holding the master key (base64), instead of `mfa_key`.
    pub mfa_key_file: Option<std::path::PathBuf>,
    /// Issuer shown in authenticator apps.
    pub mfa_issuer: String,
    /// How long a pending (password-only) login waits for its second factor.
    #[serde(with = "humantime_serde")]
    pub mfa_pending_lifetime: Duration,
    /// How long an emailed code is valid.
    #[serde(with = "humantime_serde")]
    pub email_code_lifetime: Duration,
    /// How one-time codes are emailed: `off`, `smtp`, or `log` (development
    /// only: writes codes to the log).
    pub mail_transport: MailTransport,
    /// SMTP server host.
    pub smtp_host: String,
    /// SMTP server port.
    pub smtp_port: u16,
    /// `starttls`, `tls` (implicit TLS) or `none` (loopback testing only).
    pub smtp_tls: SmtpTls,
    /// SMTP user name; empty for no authentication.
    pub smtp_username: String,
    /// SMTP password.
    pub smtp_password: String,
    /// Sender address, e.g. `portcullis <no-reply@example.com>`.
    pub smtp_from: String,
    /// Time limit for one request to a captcha vendor's verification
    /// endpoint (connecting included); past it the captcha is not accepted.
    #[serde(with = "humantime_serde")]
    pub captcha_timeout: Duration,
    /// Google reCAPTCHA v3 secret key; empty disables the `googlev3` vendor.
    pub captcha_googlev3_secret: String,
    /// Google reCAPTCHA v3 verification endpoint.
    pub captcha_googlev3_url: String,
    /// Lowest reCAPTCHA v3 score (0.0 = bot, 1.0 = human) accepted.
    pub captcha_googlev3_min_score: f64,
    /// Action the reCAPTCHA v3 token must have been issued for; empty skips
    /// the check.
    pub captcha_googlev3_action: String,
    /// hCaptcha secret key; empty disables the `hcaptcha` vendor.
    pub captcha_hcaptcha_secret: String,
    /// hCaptcha verification endpoint.
    pub captcha_hcaptcha_url: String,
    /// Cloudflare Turnstile secret key; empty disables the `turnstile` vendor.
    pub captcha_turnstile_secret: String,
    /// Cloudflare Turnstile verification endpoint.
    pub captcha_turnstile_url: String,
    /// Log filter (`tracing` `EnvFilter` syntax); `RUST_LOG` overrides it.
    pub log_filter: String,
    /// `text` or `json`.
    pub log_format: LogFormat,
    // --- Observability, service mesh and TLS (README: "Observability",
    // "Service mesh", "TLS"); checked by `check_observability`. ---
    /// Address of the Prometheus metrics endpoint (`GET /metrics`, plain
    /// HTTP); unset, the default, serves no metrics.
    pub metrics_addr: Option<SocketAddr>,
    /// PEM certificate chain for the gRPC port; with `tls_key_file` the port
    /// speaks TLS only.
    pub tls_cert_file: Option<std::path::PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<std::path::PathBuf>,
    /// PEM CA certificates that client certificates must chain to: mutual
    /// TLS, a client without such a certificate is refused.
    pub tls_client_ca_file: Option<std::path::PathBuf>,
    /// Envoy external authorization: header that tells the upstream the user id.
    pub envoy_user_id_header: String,
    /// Envoy external authorization: header with the user's role.
    pub envoy_role_header: String,
    /// Envoy external authorization: header with the credential's scopes (space-separated).
    pub envoy_scopes_header: String,
    /// Envoy external authorization: header with the session id (session tokens).
    pub envoy_session_id_header: String,
    /// Envoy external authorization: header with the API key id (API keys).
    pub envoy_key_id_header: String,
}

/// When a login needs a captcha.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaptchaPolicyName {
    /// Never.
    Off,
    /// Always (admin logins and permitted bypasses excepted).
    Always,
    /// After `captcha_after_failures` recent failures.
    AfterFailures,
}

/// How one-time codes are emailed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MailTransport {
    /// No email; the email method is unavailable.
    Off,
    /// SMTP.
    Smtp,
    /// Write codes to the log (development only, unsafe).
    Log,
}

/// TLS towards the SMTP server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Upgrade with STARTTLS (port 587).
    Starttls,
    /// Implicit TLS (port 465).
    Tls,
    /// No TLS: loopback test servers only.
    None,
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            database_url: "sqlite://portcullis.db?mode=rwc".into(),
            database_max_connections: 10,
            database_read_connections: None,
            database_timeout: Duration::from_millis(500),
            migrate_on_start: true,
            token_prefix: "pcs".into(),
            session_lifetime: Duration::from_hours(24),
            session_absolute_lifetime: Duration::from_hours(30 * 24),
            refresh_grace: Duration::from_secs(30),
            session_cookie_name: "portcullis_session".into(),
            session_cookie_secure: true,
            allowed_origins: Vec::new(),
            s4e_api: true,
            s4e_prefix: "/api/user".into(),
            rehive_api: true,
            forward_auth: true,
            forward_auth_path: "/auth/verify".into(),
            token_query_param: "token".into(),
            argon2_memory_kib: 19 * 1024,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            hash_threads: 0,
            hash_queue_depth: 64,
            hash_low_priority: true,
            token_cache_ttl: Duration::from_secs(10),
            token_negative_cache_ttl: Duration::from_secs(5),
            token_cache_capacity: 100_000,
            max_message_bytes: 64 * 1024,
            max_concurrent_streams: 256,
            request_timeout: Duration::from_secs(10),
            max_connections: 4096,
            tls_handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_mins(5),
            http2_keepalive_interval: Duration::from_secs(30),
            http2_keepalive_timeout: Duration::from_secs(10),
            shutdown_drain: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(20),
            log_requests: true,
            health_probe_interval: Duration::from_secs(5),
            trusted_peers: Vec::new(),
            rate_limit_ip: 60,
            rate_limit_ip_window: Duration::from_mins(1),
            rate_limit_account: 20,
            rate_limit_account_window: Duration::from_mins(1),
            rate_limit_pair: 10,
            rate_limit_pair_window: Duration::from_mins(1),
            lockout_threshold: 10,
            lockout_duration: Duration::from_mins(5),
            lockout_max_duration: Duration::from_hours(24),
            captcha_policy: CaptchaPolicyName::Off,
            captcha_after_failures: 3,
            audit_flush_interval: Duration::from_mins(1),
            mfa_key: String::new(),
            mfa_key_file: None,
            mfa_issuer: "portcullis".into(),
            mfa_pending_lifetime: Duration::from_mins(5),
            email_code_lifetime: Duration::from_mins(10),
            mail_transport: MailTransport::Off,
            smtp_host: String::new(),
            smtp_port: 587,
            smtp_tls: SmtpTls::Starttls,
            smtp_username: String::new(),
            smtp_password: String::new(),
            smtp_from: "portcullis <no-reply@localhost>".into(),
            captcha_timeout: Duration::from_secs(5),
            captcha_googlev3_secret: String::new(),
            captcha_googlev3_url: "https://www.google.com/recaptcha/api/siteverify".into(),
            captcha_googlev3_min_score: 0.5,
            captcha_googlev3_action: "login".into(),
            captcha_hcaptcha_secret: String::new(),
            captcha_hcaptcha_url: "https://api.hcaptcha.com/siteverify".into(),
            captcha_turnstile_secret: String::new(),
            captcha_turnstile_url: "https://challenges.cloudflare.com/turnstile/v0/siteverify".into(),
            log_filter: "info".into(),
            log_format: LogFormat::Text,
            metrics_addr: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            envoy_user_id_header: "x-portcullis-user-id".into(),
            envoy_role_header: "x-portcullis-role".into(),
            envoy_scopes_header: "x-portcullis-scopes".into(),
            envoy_session_id_header: "x-portcullis-session-id".into(),
            envoy_key_id_header: "x-portcullis-key-id".into(),
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The database URL may hold a password.
        f.debug_struct("Config")
            .field("listen_addr", &self.listen_addr)
            .field("database_url", &redact_url(&self.database_url))
            .field("token_prefix", &self.token_prefix)
            .field("session_lifetime", &self.session_lifetime)
            .field("session_absolute_lifetime", &self.session_absolute_lifetime)
            .field("refresh_grace", &self.refresh_grace)
            .field("mfa_key", &if self.mfa_key.is_empty() { "" } else { "<redacted>" })
            .field("mail_transport", &self.mail_transport)
            .field("smtp_host", &self.smtp_host)
            .field("smtp_password", &if self.smtp_password.is_empty() { "" } else { "<redacted>" })
            .finish_non_exhaustive()
    }
}

/// A configuration that cannot be used; the message names the setting.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(String);

impl Config {
    /// Loads defaults, then `file` (if given), then the environment.
    ///
    /// # Errors
    /// An unreadable file, an unknown key, a value of the wrong type, or a
    /// setting outside its range; the message names the setting.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError(format!("file {} does not exist", file.display())));
            }
            figment = figment.merge(Toml::file(file));
        }
        // Not settings: the config file's path, the test suite's database,
        // the CLI's password, and the service links Kubernetes injects.
        let links = service_links(std::env::vars_os());
        let mut ignored = vec!["CONFIG", "TEST_DATABASE_URL", "USER_PASSWORD"];
        ignored.extend(links.iter().map(String::as_str));
        figment = figment
            .merge(Env::raw().only(&["DATABASE_URL"]))
            .merge(Env::prefixed(ENV_PREFIX).ignore(&ignored));
        let config: Config = figment.extract().map_err(|e| describe(&e))?;
        config.check().map_err(|e| e.with_origin(&figment))?;
        Ok(config)
    }

    /// Checks ranges that types alone do not.
    ///
    /// # Errors
    /// The first setting out of range.
    pub fn check(&self) -> Result<(), ConfigError> {
        let bad = |name: &str, why: &str| Err(ConfigError(format!("{name}: {why}")));
        self.check_observability()?;
        if self.token_prefix.is_empty()
            || self.token_prefix.len() > 16
            || !self.token_prefix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return bad("token_prefix", "must be 1 to 16 lower-case letters or digits");
        }
        if self.session_lifetime < Duration::from_mins(1) {
            return bad("session_lifetime", "must be at least 1 minute");
        }
        if self.session_absolute_lifetime < self.session_lifetime {
            return bad("session_absolute_lifetime", "must be at least session_lifetime");
        }
        if self.refresh_grace > Duration::from_mins(10) {
            return bad("refresh_grace", "must be at most 10 minutes");
        }
        if argon2::Params::new(self.argon2_memory_kib, self.argon2_iterations, self.argon2_parallelism, None)
            .is_err()
        {
            return bad(
                "argon2_memory_kib/argon2_iterations/argon2_parallelism",
                "not valid argon2 parameters (memory must be at least 8 KiB per lane)",
            );
        }
        if self.max_message_bytes < 1024 {
            return bad("max_message_bytes", "must be at least 1024");
        }
        if self.max_connections == 0 {
            return bad("max_connections", "must be at least 1");
        }
        if self.request_timeout < Duration::from_millis(1) {
            return bad("request_timeout", "must be at least 1ms");
        }
        for (name, value) in [
            ("tls_handshake_timeout", self.tls_handshake_timeout),
            ("idle_timeout", self.idle_timeout),
            ("http2_keepalive_interval", self.http2_keepalive_interval),
            ("http2_keepalive_timeout", self.http2_keepalive_timeout),
        ] {
            if value < Duration::from_millis(10) {
                return bad(name, "must be at least 10ms");
            }
        }
        if self.shutdown_drain + self.shutdown_timeout > Duration::from_hours(1) {
            return bad("shutdown_drain/shutdown_timeout", "must add up to at most 1 hour");
        }
        if self.database_max_connections == 0 {
            return bad("database_max_connections", "must be at least 1");
        }
        if self.database_read_connections.is_some_and(|n| n > 64) {
            return bad("database_read_connections", "must be at most 64");
        }
        if self.database_timeout < Duration::from_millis(10) || self.database_timeout > Duration::from_mins(5)
        {
            return bad("database_timeout", "must be between 10ms and 5m");
        }
        if self.mfa_pending_lifetime < Duration::from_secs(30)
            || self.mfa_pending_lifetime > Duration::from_hours(1)
        {
            return bad("mfa_pending_lifetime", "must be between 30 seconds and 1 hour");
        }
        if self.email_code_lifetime < Duration::from_mins(1)
            || self.email_code_lifetime > Duration::from_hours(1)
        {
            return bad("email_code_lifetime", "must be between 1 minute and 1 hour");
        }
        if self.lockout_threshold == 0 || self.lockout_threshold > 1000 {
            return bad("lockout_threshold", "must be between 1 and 1000");
        }
        if self.lockout_duration < Duration::from_secs(1) || self.lockout_max_duration < self.lockout_duration
        {
            return bad(
                "lockout_duration/lockout_max_duration",
                "need 1s <= lockout_duration <= lockout_max_duration",
            );
        }
        for (name, window) in [
            ("rate_limit_ip_window", self.rate_limit_ip_window),
            ("rate_limit_account_window", self.rate_limit_account_window),
            ("rate_limit_pair_window", self.rate_limit_pair_window),
        ] {
            if window < Duration::from_secs(1) || window > Duration::from_hours(24) {
                return bad(name, "must be between 1 second and 24 hours");
            }
        }
        if self.audit_flush_interval < Duration::from_millis(10) {
            return bad("audit_flush_interval", "must be at least 10ms");
        }
        if self.mfa_issuer.is_empty() || self.mfa_issuer.contains(':') {
            return bad("mfa_issuer", "must be non-empty and contain no ':'");
        }
        if self.session_cookie_name.is_empty() || self.token_query_param.is_empty() {
            return bad("session_cookie_name/token_query_param", "must not be empty");
        }
        if !self.session_cookie_name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            return bad("session_cookie_name", "must be letters, digits, '_' or '-'");
        }
        if !self.session_cookie_secure && !self.listen_addr.ip().is_loopback() {
            return bad(
                "session_cookie_secure",
                "may be false only on a loopback listen_addr (http://localhost development)",
            );
        }
        for origin in &self.allowed_origins {
            let valid = (origin.starts_with("https://") || origin.starts_with("http://"))
                && !origin.ends_with('/')
                && origin.bytes().all(|b| b.is_ascii_graphic())
                && http::HeaderValue::from_str(origin).is_ok();
            if !valid {
                return bad(
                    "allowed_origins",
                    &format!(
                        "{origin:?} is not an origin like \"https://app.example.com\" (scheme and host, no path)"
                    ),
                );
            }
        }
        for (name, path) in [("s4e_prefix", &self.s4e_prefix), ("forward_auth_path", &self.forward_auth_path)]
        {
            let valid = path.starts_with('/')
                && path.len() > 1
                && !path.ends_with('/')
                && path.bytes().all(|b| b.is_ascii_alphanumeric() || b"/-_.~".contains(&b));
            if !valid {
                return bad(name, "must be a path like \"/api/user\" (no trailing slash)");
            }
        }
        // NaN fails `contains` too.
        if !(0.0..=1.0).contains(&self.captcha_googlev3_min_score) {
            return bad("captcha_googlev3_min_score", "must be between 0.0 and 1.0");
        }
        if !(Duration::from_millis(100)..=Duration::from_mins(1)).contains(&self.captcha_timeout) {
            return bad("captcha_timeout", "must be between 100 milliseconds and 60 seconds");
        }
        Ok(())
    }

    /// Checks, without touching the database or creating any file, that a
    /// master key for secrets at rest can be had: PostgreSQL needs `mfa_key`
    /// or `mfa_key_file`; a given key must decode; a given file must exist.
    /// Start-up runs it before connecting, so nothing is migrated first.
    ///
    /// # Errors
    /// What [`Config::load_mfa_key`] would refuse for want of a key.
    pub fn check_mfa_key(&self) -> Result<(), ConfigError> {
        if !self.mfa_key.is_empty() {
            return decode_key("mfa_key", &self.mfa_key).map(drop);
        }
        match &self.mfa_key_file {
            Some(path) if !path.exists() => {
                Err(ConfigError(format!("mfa_key_file: {} does not exist", resolved(path).display())))
            }
            Some(_) => Ok(()),
            None if self.is_sqlite() => Ok(()),
            None => Err(ConfigError(
                "mfa_key: required with PostgreSQL (set PORTCULLIS_MFA_KEY to `openssl rand -base64 32`, \
                 or mfa_key_file); every replica needs the same key"
                    .into(),
            )),
        }
    }

    /// The master key for secrets at rest: `mfa_key`, else `mfa_key_file`,
    /// else (SQLite only) a key file beside the database, `<database>.mfa-key`,
    /// made on first start with owner-only permissions. (Before, the default
    /// was `<database>.key`, which a TLS key of the same stem could be: such
    /// an old file is still read, when no new one exists and it holds a
    /// valid key, with a warning to rename it.)
    ///
    /// # Errors
    /// A malformed key, an unreadable file, or PostgreSQL without a key.
    pub fn load_mfa_key(&self) -> Result<zeroize::Zeroizing<[u8; 32]>, ConfigError> {
        use base64::Engine as _;
        if !self.mfa_key.is_empty() {
            return decode_key("mfa_key", &self.mfa_key);
        }
        let path = match (&self.mfa_key_file, self.sqlite_path()) {
            (Some(path), _) => path.clone(),
            (None, Some(database)) => {
                let path = database.with_extension("mfa-key");
                if let Some(key) = legacy_key(&database, &path) {
                    return Ok(key);
                }
                path
            }
            (None, None) if self.is_sqlite() => {
                tracing::warn!(
                    "in-memory SQLite without mfa_key: secrets at rest use a key that dies with the process"
                );
                let mut key = zeroize::Zeroizing::new([0u8; 32]);
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), key.as_mut())
                    .map_err(|_| ConfigError("mfa_key: the random source failed".into()))?;
                return Ok(key);
            }
            (None, None) => {
                return Err(ConfigError(
                    "mfa_key: required with PostgreSQL (set PORTCULLIS_MFA_KEY to `openssl rand -base64 32`, \
                     or mfa_key_file); every replica needs the same key"
                        .into(),
                ));
            }
        };
        let shown = resolved(&path);
        if path.exists() {
            let text = zeroize::Zeroizing::new(
                std::fs::read_to_string(&path)
                    .map_err(|e| ConfigError(format!("mfa_key_file: {}: {e}", shown.display())))?,
            );
            return decode_key(&format!("mfa_key_file: {}", shown.display()), &text);
        }
        if self.mfa_key_file.is_some() {
            return Err(ConfigError(format!("mfa_key_file: {} does not exist", shown.display())));
        }
        let mut key = zeroize::Zeroizing::new([0u8; 32]);
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), key.as_mut())
            .map_err(|_| ConfigError("mfa_key: the random source failed".into()))?;
        let text = zeroize::Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(key.as_ref()));
        write_owner_only(&path, text.as_bytes())
            .map_err(|e| ConfigError(format!("mfa_key_file: cannot create {}: {e}", shown.display())))?;
        tracing::warn!(
            path = %shown.display(),
            "generated a new mfa_key beside the SQLite database; back it up with the database \
             (without it, enrolled TOTP secrets cannot be read)"
        );
        Ok(key)
    }

    /// The SQLite database file, when the URL names one.
    fn sqlite_path(&self) -> Option<std::path::PathBuf> {
        let rest = self.database_url.strip_prefix("sqlite:")?;
        let rest = rest.trim_start_matches("//");
        let path = rest.split('?').next().unwrap_or_default();
        if path.is_empty() || path.contains(":memory:") || path == ":memory" {
            return None;
        }
        Some(std::path::PathBuf::from(path))
    }

    /// True when the database is SQLite.
    #[must_use]
    pub fn is_sqlite(&self) -> bool {
        self.database_url.starts_with("sqlite:")
    }
}

// === Observability, service mesh and TLS ===

impl Config {
    /// Checks the metrics, TLS and Envoy settings.
    fn check_observability(&self) -> Result<(), ConfigError> {
        let bad = |name: &str, why: &str| Err(ConfigError(format!("{name}: {why}")));
        if self.metrics_addr.is_some_and(|m| m.port() != 0 && m == self.listen_addr) {
            return bad("metrics_addr", "must differ from listen_addr");
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return bad("tls_cert_file/tls_key_file", "set both or neither");
        }
        if self.tls_client_ca_file.is_some() && self.tls_cert_file.is_none() {
            return bad("tls_client_ca_file", "needs tls_cert_file and tls_key_file (mutual TLS is TLS)");
        }
        let headers = [
            ("envoy_user_id_header", &self.envoy_user_id_header),
            ("envoy_role_header", &self.envoy_role_header),
            ("envoy_scopes_header", &self.envoy_scopes_header),
            ("envoy_session_id_header", &self.envoy_session_id_header),
            ("envoy_key_id_header", &self.envoy_key_id_header),
        ];
        for (i, (name, value)) in headers.iter().enumerate() {
            if value.is_empty()
                || value.len() > 64
                || !value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return bad(name, "must be 1 to 64 lower-case letters, digits or '-'");
            }
            if ["authorization", "cookie", "x-api-key", "x-request-id", "host", "content-length"]
                .contains(&value.as_str())
            {
                return bad(name, "must not name a header the request already uses");
            }
            if headers[..i].iter().any(|(_, other)| other == value) {
                return bad(name, "must differ from the other envoy_*_header settings");
            }
        }
        Ok(())
    }
}

// === Kubernetes service links ===

/// The prefix of the settings' environment variables.
const ENV_PREFIX: &str = "PORTCULLIS_";

/// The `PORTCULLIS_*` variables (prefix removed) that are Kubernetes service
/// links rather than settings.
///
/// Kubernetes gives every pod variables for each Service of its namespace
/// (unless `enableServiceLinks: false`); a Service named `portcullis` or
/// `portcullis-…` therefore puts `PORTCULLIS_SERVICE_HOST`,
/// `PORTCULLIS_PORT=tcp://…` and the like into our prefix. Each is skipped
/// only when its name *and* its value have a service link's shape, so a
/// mistyped setting still stops start-up, and `PORTCULLIS_SMTP_PORT=2525` is
/// a setting while a Service `portcullis-smtp`'s `tcp://10.0.0.9:25` is not.
fn service_links(vars: impl Iterator<Item = (std::ffi::OsString, std::ffi::OsString)>) -> Vec<String> {
    vars.filter_map(|(name, value)| {
        let (name, value) = (name.into_string().ok()?, value.into_string().ok()?);
        let rest = name.get(ENV_PREFIX.len()..)?;
        let prefixed = name.get(..ENV_PREFIX.len())?.eq_ignore_ascii_case(ENV_PREFIX);
        (prefixed && is_service_link(&rest.to_ascii_uppercase(), &value)).then(|| rest.to_owned())
    })
    .collect()
}

/// Whether `NAME=value` is one of the variables Kubernetes makes for a
/// Service, where `NAME` has lost its first part (the Service's name up to
/// the first `-`): `SERVICE_HOST=10.0.0.11`, `SERVICE_PORT=50051`,
/// `SERVICE_PORT_GRPC=50051`, `PORT=tcp://10.0.0.11:50051`,
/// `PORT_50051_TCP=tcp://…`, `PORT_50051_TCP_PROTO=tcp`,
/// `PORT_50051_TCP_PORT=50051`, `PORT_50051_TCP_ADDR=10.0.0.11`, each
/// possibly after the rest of the Service's name (`METRICS_SERVICE_HOST`).
fn is_service_link(name: &str, value: &str) -> bool {
    let parts: Vec<&str> = name.split('_').collect();
    let ip = || value.parse::<std::net::IpAddr>().is_ok();
    let port = |expected: Option<&str>| value.parse::<u16>().is_ok() && expected.is_none_or(|p| p == value);
    let url = || {
        value.split_once("://").is_some_and(|(proto, address)| {
            ["tcp", "udp", "sctp"].contains(&proto) && address.parse::<SocketAddr>().is_ok()
        })
    };
    let proto = |p: &str| ["TCP", "UDP", "SCTP"].contains(&p);
    let number = |n: &str| n.parse::<u16>().is_ok();
    let by_shape = match parts.as_slice() {
        // Longest shapes first: `…_TCP_PORT` also ends in `PORT`.
        [.., "PORT", n, p, "PROTO"] if number(n) && proto(p) => value.eq_ignore_ascii_case(p),
        [.., "PORT", n, p, "PORT"] if number(n) && proto(p) => port(Some(n)),
        [.., "PORT", n, p, "ADDR"] if number(n) && proto(p) => ip(),
        [.., "PORT", n, p] if number(n) && proto(p) => url(),
        [.., "SERVICE", "HOST"] => ip(),
        [.., "PORT"] => url(),
        _ => false,
    };
    // `SERVICE_PORT` and `SERVICE_PORT_<PORT NAME>` (the name may hold `_`).
    by_shape || (parts.windows(2).any(|w| w == ["SERVICE", "PORT"]) && port(None))
}

impl ConfigError {
    /// A configuration error with the given message.
    pub fn from_message(message: impl Into<String>) -> Self {
        Self(message.into())
    }

    /// The same error, saying where its setting (the name its message
    /// starts with) was set: the file or the environment variable.
    #[must_use]
    fn with_origin(self, figment: &Figment) -> Self {
        let Some((name, _)) = self.0.split_once(':') else { return self };
        let Some(origin) = figment.find_metadata(name).map(|metadata| origin(metadata, name)) else {
            return self;
        };
        match origin {
            Some(origin) => Self(format!("{} (set in {origin})", self.0)),
            None => self,
        }
    }
}

/// Where a setting came from, for a person: the environment variable or
/// the file; `None` for the defaults.
fn origin(metadata: &figment::Metadata, setting: &str) -> Option<String> {
    if let Some(figment::Source::File(path)) = &metadata.source {
        return Some(format!("the file {}", path.display()));
    }
    if metadata.name.contains(ENV_PREFIX) {
        return Some(format!("the variable {ENV_PREFIX}{}", setting.to_uppercase()));
    }
    if metadata.name.contains("environment") {
        return Some(format!("the variable {}", setting.to_uppercase()));
    }
    None
}

/// One line for a value figment could not take: the setting (as written in
/// a file, never figment's internal profile name), where it was set, what
/// is wrong, and what is accepted; a near-miss name gets a "did you mean".
fn describe(err: &figment::Error) -> ConfigError {
    use figment::error::Kind;
    let setting = err.path.last().map_or_else(String::new, |key| key.to_lowercase());
    let place = err.metadata.as_ref().and_then(|metadata| origin(metadata, &setting));
    let place = place.map(|place| format!(" (set in {place})")).unwrap_or_default();
    let hint = |expected: &str| {
        if expected.contains("duration") {
            "; write a duration like 30s, 10m, 24h or 30days".to_owned()
        } else if expected.contains("socket address") {
            "; write an address like 127.0.0.1:50051 or 0.0.0.0:50051".to_owned()
        } else {
            String::new()
        }
    };
    let message = match &err.kind {
        Kind::UnknownField(found, known) => {
            let found = found.to_lowercase();
            let guess = known
                .iter()
                .map(|name| (strsim::damerau_levenshtein(&found, name), *name))
                .filter(|(distance, name)| *distance <= 2.max(name.len() / 4))
                .min();
            let suggestion = match guess {
                Some((_, name)) => format!("; did you mean `{name}`?"),
                None => "; the README's Configuration table lists the settings".to_owned(),
            };
            return ConfigError(format!("unknown setting `{found}`{place}{suggestion}"));
        }
        Kind::UnknownVariant(found, accepted) => {
            format!("`{found}` is not accepted{place}; use one of: {}", accepted.join(", "))
        }
        Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => {
            format!("{actual} is not {}{place}{}", article(expected), hint(expected))
        }
        Kind::Message(message) => format!("{message}{place}{}", hint(message)),
        other => format!("{other}{place}"),
    };
    if setting.is_empty() { ConfigError(message) } else { ConfigError(format!("{setting}: {message}")) }
}

/// "a duration", "u32" → "a whole number"; figment's own words otherwise.
fn article(expected: &str) -> String {
    match expected {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number (0 or more)".to_owned(),
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number".to_owned(),
        "f32" | "f64" => "a number".to_owned(),
        "a boolean" | "bool" => "`true` or `false`".to_owned(),
        other => other.to_owned(),
    }
}

/// Decodes a base64 master key; errors name `name` (the setting, and the
/// file when it came from one).
fn decode_key(name: &str, text: &str) -> Result<zeroize::Zeroizing<[u8; 32]>, ConfigError> {
    use base64::Engine as _;
    let bytes =
        zeroize::Zeroizing::new(base64::engine::general_purpose::STANDARD.decode(text.trim()).map_err(
            |_| ConfigError(format!("{name}: not base64 (a key is the output of `openssl rand -base64 32`)")),
        )?);
    let mut key = zeroize::Zeroizing::new([0u8; 32]);
    if bytes.len() != key.len() {
        return Err(ConfigError(format!("{name}: must be 32 bytes (base64 of `openssl rand -base64 32`)")));
    }
    key.copy_from_slice(&bytes);
    Ok(key)
}

/// The old default key file, `<database>.key`, when the new one (`path`)
/// does not exist yet and the old one holds a valid key (a TLS key of the
/// same stem does not decode, and is left alone).
fn legacy_key(database: &Path, path: &Path) -> Option<zeroize::Zeroizing<[u8; 32]>> {
    let legacy = database.with_extension("key");
    if path.exists() || !legacy.exists() {
        return None;
    }
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(&legacy).ok()?);
    let key = decode_key("mfa_key_file", &text).ok()?;
    tracing::warn!(
        old = %resolved(&legacy).display(),
        new = %resolved(path).display(),
        "reading the MFA key from its old default file; rename it to the new default name"
    );
    Some(key)
}

/// `path` made absolute (for messages), as far as that can be said.
fn resolved(path: &Path) -> std::path::PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

/// Writes a new file readable and writable by its owner only.
fn write_owner_only(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(contents)
}

/// Hides the password in `scheme://user:password@host/…`.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}://{user}:<redacted>{}", &url[..scheme_end], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_database_password() {
        let config =
            Config { database_url: "postgres://app:hunter2@db/portcullis".into(), ..Config::default() };
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("postgres://app:<redacted>@db/portcullis"), "{shown}");
    }

    #[test]
    fn defaults_pass_their_own_checks() {
        Config::default().check().unwrap();
    }

    #[test]
    #[allow(clippy::result_large_err, reason = "figment::Jail's closure returns figment::Error")]
    fn file_then_environment_override_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("portcullis.toml");
        std::fs::write(&file, "token_prefix = \"s4e\"\nsession_lifetime = \"10h\"\n").unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("PORTCULLIS_SESSION_LIFETIME", "2h");
            jail.set_env("DATABASE_URL", "postgres://db/portcullis");
            let config = Config::load(Some(&file)).map_err(|e| e.to_string())?;
            assert_eq!(config.token_prefix, "s4e");
            assert_eq!(config.session_lifetime, Duration::from_hours(2));
            assert_eq!(config.database_url, "postgres://db/portcullis");
            assert_eq!(config.listen_addr, Config::default().listen_addr);
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err, reason = "figment::Jail's closure returns figment::Error")]
    fn a_missing_file_or_unknown_key_is_refused() {
        assert!(Config::load(Some(Path::new("/nonexistent/portcullis.toml"))).is_err());
        figment::Jail::expect_with(|jail| {
            jail.set_env("PORTCULLIS_NO_SUCH_SETTING", "1");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.to_lowercase().contains("no_such_setting"), "{err}");
            Ok(())
        });
    }

    /// What Kubernetes injects for Services `portcullis` (ports `grpc`
    /// 50051 and `metrics` 9090) and `portcullis-smtp` in the same namespace.
    const SERVICE_LINKS: [(&str, &str); 16] = [
        ("PORTCULLIS_SERVICE_HOST", "10.96.12.34"),
        ("PORTCULLIS_SERVICE_PORT", "50051"),
        ("PORTCULLIS_SERVICE_PORT_GRPC", "50051"),
        ("PORTCULLIS_SERVICE_PORT_METRICS", "9090"),
        ("PORTCULLIS_PORT", "tcp://10.96.12.34:50051"),
        ("PORTCULLIS_PORT_50051_TCP", "tcp://10.96.12.34:50051"),
        ("PORTCULLIS_PORT_50051_TCP_PROTO", "tcp"),
        ("PORTCULLIS_PORT_50051_TCP_PORT", "50051"),
        ("PORTCULLIS_PORT_50051_TCP_ADDR", "10.96.12.34"),
        ("PORTCULLIS_PORT_9090_TCP", "tcp://10.96.12.34:9090"),
        ("PORTCULLIS_PORT_9090_TCP_PROTO", "tcp"),
        ("PORTCULLIS_PORT_9090_TCP_PORT", "9090"),
        ("PORTCULLIS_PORT_9090_TCP_ADDR", "10.96.12.34"),
        ("PORTCULLIS_SMTP_SERVICE_HOST", "fd00::25"),
        ("PORTCULLIS_SMTP_PORT", "tcp://[fd00::25]:25"),
        ("PORTCULLIS_SMTP_PORT_25_TCP_ADDR", "fd00::25"),
    ];

    #[test]
    #[allow(clippy::result_large_err, reason = "figment::Jail's closure returns figment::Error")]
    fn kubernetes_service_links_are_not_settings() {
        figment::Jail::expect_with(|jail| {
            for (name, value) in SERVICE_LINKS {
                jail.set_env(name, value);
            }
            jail.set_env("PORTCULLIS_LISTEN_ADDR", "0.0.0.0:50051");
            let config = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(config.listen_addr, SocketAddr::from(([0, 0, 0, 0], 50051)));
            assert_eq!(config.smtp_port, 587, "portcullis-smtp's link is not smtp_port");

            // A setting of a link's name but not its value shape is read.
            jail.set_env("PORTCULLIS_SMTP_PORT", "2525");
            assert_eq!(Config::load(None).map_err(|e| e.to_string())?.smtp_port, 2525);
            // A mistyped setting is still refused, beside the links …
            jail.set_env("PORTCULLIS_SERVICE_HOSTS", "10.96.12.34");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.to_lowercase().contains("service_hosts"), "{err}");
            Ok(())
        });
        // … and so is an unknown setting in the file.
        figment::Jail::expect_with(|jail| {
            for (name, value) in SERVICE_LINKS {
                jail.set_env(name, value);
            }
            jail.create_file("portcullis.toml", "listen_addr = \"0.0.0.0:50051\"\nport = 50051\n")?;
            let err = Config::load(Some(Path::new("portcullis.toml"))).unwrap_err().to_string();
            assert!(err.contains("unknown setting `port`") && err.contains("portcullis.toml"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn service_link_shapes_need_their_values() {
        assert!(is_service_link("PORT", "tcp://10.0.0.1:50051"));
        assert!(is_service_link("PORT", "udp://[::1]:53"));
        assert!(!is_service_link("PORT", "50051"));
        assert!(!is_service_link("SMTP_PORT", "2525"));
        assert!(is_service_link("METRICS_SERVICE_PORT_HTTP_METRICS", "9090"));
        assert!(!is_service_link("SERVICE_HOST", "not an address"));
        assert!(!is_service_link("PORT_50051_TCP_PORT", "50052"));
        assert!(!is_service_link("PORT_50051_TCP_PROTO", "udp"));
        assert!(!is_service_link("LISTEN_ADDR", "0.0.0.0:50051"));
    }

    #[test]
    fn sqlite_makes_an_owner_only_key_file_once() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            database_url: format!("sqlite://{}?mode=rwc", dir.path().join("p.db").display()),
            ..Config::default()
        };
        let first = config.load_mfa_key().unwrap();
        let file = dir.path().join("p.mfa-key");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert_eq!(*config.load_mfa_key().unwrap(), *first, "the same key on the next start");
    }

    #[test]
    fn an_old_default_key_file_is_read_only_when_it_holds_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            database_url: format!("sqlite://{}?mode=rwc", dir.path().join("tls.db").display()),
            ..Config::default()
        };
        // A TLS private key beside `tls.db` is not an MFA key: left alone.
        std::fs::write(dir.path().join("tls.key"), "-----BEGIN PRIVATE KEY-----\nMIIE\n").unwrap();
        let made = config.load_mfa_key().unwrap();
        assert!(dir.path().join("tls.mfa-key").exists());
        assert_eq!(*config.load_mfa_key().unwrap(), *made);
        // An old default key file from before the rename is still read.
        let old = tempfile::tempdir().unwrap();
        std::fs::write(old.path().join("p.key"), "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").unwrap();
        let config = Config {
            database_url: format!("sqlite://{}?mode=rwc", old.path().join("p.db").display()),
            ..Config::default()
        };
        assert_eq!(*config.load_mfa_key().unwrap(), [0u8; 32]);
        assert!(!old.path().join("p.mfa-key").exists(), "no second key is made");
    }

    #[test]
    fn a_bad_key_file_is_named_by_its_resolved_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mfa.key");
        std::fs::write(&file, "not a key at all").unwrap();
        let config = Config { mfa_key_file: Some(file.clone()), ..Config::default() };
        let err = config.load_mfa_key().unwrap_err().to_string();
        assert!(err.contains("mfa_key_file") && err.contains(&file.display().to_string()), "{err}");
        let missing = Config { mfa_key_file: Some("nowhere/mfa.key".into()), ..Config::default() };
        let err = missing.check_mfa_key().unwrap_err().to_string();
        let absolute = std::env::current_dir().unwrap().join("nowhere/mfa.key");
        assert!(err.contains(&absolute.display().to_string()), "{err}");
    }

    #[test]
    fn postgres_without_a_key_is_refused_by_the_check_before_the_database() {
        let config = Config { database_url: "postgres://db/portcullis".into(), ..Config::default() };
        let err = config.check_mfa_key().unwrap_err().to_string();
        assert!(err.contains("mfa_key") && err.contains("PostgreSQL"), "{err}");
        let bad = Config { mfa_key: "c2hvcnQ=".into(), ..config.clone() };
        assert!(bad.check_mfa_key().is_err());
        let good = Config { mfa_key: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into(), ..config };
        good.check_mfa_key().unwrap();
        Config::default().check_mfa_key().unwrap();
    }

    #[test]
    #[allow(clippy::result_large_err, reason = "figment::Jail's closure returns figment::Error")]
    fn figment_errors_name_the_setting_not_the_profile_and_guess_near_misses() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("p.toml", "session_lifetime = \"forever\"\n")?;
            let err = Config::load(Some(Path::new("p.toml"))).unwrap_err().to_string();
            assert!(!err.contains("default."), "{err}");
            assert!(
                err.contains("session_lifetime:") && err.contains("p.toml") && err.contains("24h"),
                "{err}"
            );
            jail.create_file("q.toml", "sesion_lifetime = \"1h\"\n")?;
            let err = Config::load(Some(Path::new("q.toml"))).unwrap_err().to_string();
            assert!(err.contains("did you mean `session_lifetime`?"), "{err}");
            assert!(!err.contains("envoy_key_id_header"), "a typo does not list every setting: {err}");
            jail.set_env("PORTCULLIS_CAPTCHA_POLICY", "sometimes");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(
                err.contains("PORTCULLIS_CAPTCHA_POLICY") && err.contains("off, always, after_failures"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn postgres_without_a_key_stops_start_up() {
        let config = Config { database_url: "postgres://db/portcullis".into(), ..Config::default() };
        let err = config.load_mfa_key().unwrap_err().to_string();
        assert!(err.contains("mfa_key") && err.contains("PostgreSQL"), "{err}");
        let short = Config { mfa_key: "c2hvcnQ=".into(), ..config.clone() };
        assert!(short.load_mfa_key().unwrap_err().to_string().contains("32 bytes"));
        let good = Config { mfa_key: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into(), ..config };
        assert_eq!(*good.load_mfa_key().unwrap(), [0u8; 32]);
    }

    #[test]
    fn bad_prefix_is_named() {
        let config = Config { token_prefix: "Bad_Prefix".into(), ..Config::default() };
        let err = config.check().unwrap_err().to_string();
        assert!(err.contains("token_prefix"), "{err}");
    }
}
