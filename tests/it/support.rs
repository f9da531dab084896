//! `TestApp`: a real portcullis on a loopback port, over a fresh database,
//! with a clock the test moves. `db_tests!` runs a test on both databases.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use portcullis::{
    app::App,
    config::Config,
    domain::{Domain, ManualClock, NewUserInput, Role},
    proto::v1::{
        self as pb, auth_service_client::AuthServiceClient, key_service_client::KeyServiceClient,
        user_service_client::UserServiceClient,
    },
};
use sea_orm::{ConnectionTrait, Database};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{
    Code, Request, Status,
    metadata::MetadataValue,
    transport::{Channel, Endpoint},
};
use tonic_types::StatusExt;

/// Runs each named `async fn(Backend)` as two tests: `<name>::sqlite` and
/// `<name>::postgres`.
#[macro_export]
macro_rules! db_tests {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::support::Backend::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(backend) = $crate::support::Backend::postgres() {
                    super::$name(backend).await;
                }
            }
        }
    )*};
}

/// Which database a test runs on.
#[derive(Clone, Debug)]
pub enum Backend {
    Sqlite,
    /// The server URL of a PostgreSQL where the test may create databases.
    Postgres(String),
}

/// Where the PostgreSQL runs look when `PORTCULLIS_TEST_DATABASE_URL` is not
/// set: the local server every machine of ours runs (as `scripts/test`).
const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

impl Backend {
    /// PostgreSQL from `PORTCULLIS_TEST_DATABASE_URL`, else the local server
    /// (started the way `scripts/test` starts it, when it is installed but
    /// stopped). Unreachable: a failure in CI; elsewhere the test says
    /// SKIPPED on the terminal (not only in captured output) and passes.
    pub fn postgres() -> Option<Self> {
        let url = match std::env::var("PORTCULLIS_TEST_DATABASE_URL") {
            Ok(url) if !url.is_empty() => url,
            _ => DEFAULT_POSTGRES_URL.to_owned(),
        };
        if postgres_reachable(&url) {
            return Some(Backend::Postgres(url));
        }
        skip(&format!("PostgreSQL is not reachable at {url}"));
        None
    }
}

/// Skips the running test for `why`: a failure in CI (where everything
/// must run); elsewhere one SKIPPED line on the terminal (not only in the
/// captured output), with the count of skips so far, and the test passes.
pub fn skip(why: &str) {
    assert!(std::env::var_os("CI").is_none(), "{why}: in CI this must run, not be skipped");
    let skipped = SKIPPED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    let test = std::thread::current().name().unwrap_or("a test").to_owned();
    // Straight to the terminal: the harness captures `eprintln!`.
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("SKIPPED {test}: {why} ({skipped} skipped so far)\n").as_bytes(),
    );
}

/// Tests skipped in this process.
static SKIPPED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A tool `scripts/tools` installs (run once per process): its path in
/// `.tools/venv/bin`, or `None` where it cannot be had on this platform, in
/// which case the calling test has been skipped with the reason
/// `scripts/tools` recorded in `.tools/unavailable/<name>`.
pub fn tool(name: &str) -> Option<std::path::PathBuf> {
    static INSTALLED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    INSTALLED.get_or_init(|| {
        let status = std::process::Command::new("bash").arg(root.join("scripts/tools")).status();
        assert!(status.is_ok_and(|status| status.success()), "scripts/tools failed");
    });
    if let Ok(why) = std::fs::read_to_string(root.join(".tools/unavailable").join(name)) {
        skip(&format!("{name} is not available here: {}", why.trim()));
        return None;
    }
    Some(root.join(".tools/venv/bin").join(name))
}

/// Whether a TCP connection to `url`'s server opens, starting the local
/// cluster if it does not (as `scripts/test` does). Decided once per
/// process.
fn postgres_reachable(url: &str) -> bool {
    static REACHABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *REACHABLE.get_or_init(|| reach_postgres(url))
}

fn reach_postgres(url: &str) -> bool {
    let address = url
        .split_once("://")
        .and_then(|(_, rest)| rest.rsplit_once('@').map_or(Some(rest), |(_, host)| Some(host)))
        .and_then(|host| host.split(['/', '?']).next())
        .unwrap_or("127.0.0.1:5432")
        .to_owned();
    let connect = || {
        use std::net::ToSocketAddrs as _;
        address.to_socket_addrs().ok().into_iter().flatten().any(|addr| {
            std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)).is_ok()
        })
    };
    if connect() {
        return true;
    }
    let Some(version) = std::fs::read_dir("/etc/postgresql")
        .ok()
        .and_then(|mut dir| dir.next())
        .and_then(std::result::Result::ok)
        .map(|entry| entry.file_name())
    else {
        return false;
    };
    let _ = std::process::Command::new("pg_ctlcluster")
        .arg("--skip-systemctl-redirect")
        .arg(version)
        .args(["main", "start"])
        .status();
    (0..30).any(|_| {
        let up = connect();
        if !up {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
        up
    })
}

/// A fresh database for one test.
pub struct TestDb {
    pub url: String,
    /// For SQLite: the folder holding the file.
    _dir: Option<tempfile::TempDir>,
    /// For PostgreSQL: the server URL and the database name, to drop it.
    postgres: Option<(String, String)>,
}

impl TestDb {
    pub async fn create(backend: &Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}?mode=rwc", dir.path().join("portcullis.db").display());
                Self { url, _dir: Some(dir), postgres: None }
            }
            Backend::Postgres(server) => {
                let name = format!("portcullis_test_{}", random_suffix());
                let admin = Database::connect(server).await.expect("connect to PORTCULLIS_TEST_DATABASE_URL");
                admin.execute_unprepared(&format!("CREATE DATABASE {name}")).await.unwrap();
                admin.close().await.unwrap();
                Self { url: with_database(server, &name), _dir: None, postgres: Some((server.clone(), name)) }
            }
        }
    }

    /// The same database, for a second server (a replica); dropping this
    /// handle drops nothing.
    pub fn shared(&self) -> Self {
        Self { url: self.url.clone(), _dir: None, postgres: None }
    }

    /// Drops a PostgreSQL test database (SQLite's folder goes with `Drop`).
    pub async fn drop_database(&self) {
        if let Some((server, name)) = &self.postgres {
            let admin = Database::connect(server).await.unwrap();
            admin.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await.unwrap();
            admin.close().await.unwrap();
        }
    }
}

/// `postgres://…/db?x` with its database replaced by `name`.
fn with_database(server: &str, name: &str) -> String {
    let (base, query) = server.split_once('?').map_or((server, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[scheme_end..].find('/').map_or(base.len(), |i| scheme_end + i);
    let mut url = format!("{}/{name}", &base[..path_start]);
    if let Some(query) = query {
        url.push('?');
        url.push_str(query);
    }
    url
}

fn random_suffix() -> String {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut bytes = [0u8; 8];
    SystemRandom::new().fill(&mut bytes).unwrap();
    bytes.iter().fold(String::new(), |mut out, b| {
        use std::fmt::Write as _;
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// A test's start time: fixed, so expiry arithmetic is exact.
pub fn epoch() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap()
}

/// The master key for secrets at rest in PostgreSQL tests.
pub const TEST_MFA_KEY: &str = "cG9ydGN1bGxpcyB0ZXN0IGtleSwgMzIgYnl0ZXMgISE=";

/// The configuration tests run with, over `db`.
pub fn test_config(db: &TestDb) -> Config {
    Config {
        database_url: db.url.clone(),
        database_max_connections: 5,
        health_probe_interval: Duration::from_millis(100),
        // Tests stop servers often: no drain (the drain has its own tests).
        shutdown_drain: Duration::ZERO,
        // PostgreSQL needs the key configured; SQLite makes a key file
        // beside its database (in the test's temporary folder).
        mfa_key: if db.postgres.is_some() { TEST_MFA_KEY.into() } else { String::new() },
        // Tests log in many times from one address; the abuse tests turn
        // the limits on where they test them.
        rate_limit_ip: 0,
        rate_limit_account: 0,
        rate_limit_pair: 0,
        // The test machine's cores are shared with builds: hashing at idle
        // priority would wait on them (the priority has its own unit test).
        hash_low_priority: false,
        ..Config::default()
    }
}

/// A running server.
pub struct TestApp {
    pub addr: SocketAddr,
    pub clock: ManualClock,
    pub domain: Arc<Domain>,
    pub config: Config,
    pub db: TestDb,
    /// The metrics endpoint, when `metrics_addr` is set (e.g. to port 0).
    pub metrics_addr: Option<SocketAddr>,
    channel: Channel,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestApp {
    /// Starts on a fresh database of `backend` with the test configuration.
    pub async fn start(backend: &Backend) -> Self {
        Self::start_with(backend, |_| {}).await
    }

    /// Starts with the test configuration changed by `adjust`.
    pub async fn start_with(backend: &Backend, adjust: impl FnOnce(&mut Config)) -> Self {
        let db = TestDb::create(backend).await;
        let mut config = test_config(&db);
        adjust(&mut config);
        Self::start_on(db, config, ManualClock::new(epoch())).await
    }

    /// Starts on an existing database with `config` and `clock`.
    pub async fn start_on(db: TestDb, config: Config, clock: ManualClock) -> Self {
        capture_logs();
        let mut app = App::build(config.clone(), Arc::new(clock.clone())).await.expect("build app");
        let metrics_addr = app.bind_metrics().await.expect("bind metrics_addr");
        let domain = Arc::clone(app.domain());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(app.serve(listener, async move {
            let _ = rx.await;
        }));
        let channel = Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
        Self {
            addr,
            clock,
            domain,
            config,
            db,
            metrics_addr,
            channel,
            shutdown: Some(tx),
            server: Some(server),
        }
    }

    /// Stops the server and starts a new one on the same database (and the
    /// same clock), with `config` changed by `adjust`.
    ///
    /// Boxed: the future holds a whole `Config` and server start-up.
    pub fn restart_with<'a>(
        mut self,
        adjust: impl FnOnce(&mut Config) + Send + 'a,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Self> + Send + 'a>> {
        Box::pin(async move {
            self.stop_server().await;
            let mut config = self.config.clone();
            adjust(&mut config);
            let clock = self.clock.clone();
            let db =
                std::mem::replace(&mut self.db, TestDb { url: String::new(), _dir: None, postgres: None });
            Self::start_on(db, config, clock).await
        })
    }

    async fn stop_server(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
    }

    /// Sends the server its shutdown signal without waiting for it to stop.
    pub fn signal_stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Waits for a server whose stop was signalled to finish.
    pub async fn stopped(&mut self) {
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
    }

    /// Stops the server, leaving its database (shared with another server).
    pub async fn stop_keeping_database(mut self) {
        self.stop_server().await;
    }

    /// Stops the server and drops its database.
    pub async fn stop(mut self) {
        self.stop_server().await;
        self.db.drop_database().await;
    }

    pub fn auth(&self) -> AuthServiceClient<Channel> {
        AuthServiceClient::new(self.channel.clone())
    }

    pub fn users(&self) -> UserServiceClient<Channel> {
        UserServiceClient::new(self.channel.clone())
    }

    pub fn keys(&self) -> KeyServiceClient<Channel> {
        KeyServiceClient::new(self.channel.clone())
    }

    pub fn audit(&self) -> portcullis::proto::v1::audit_service_client::AuditServiceClient<Channel> {
        portcullis::proto::v1::audit_service_client::AuditServiceClient::new(self.channel.clone())
    }

    /// Creates a user directly through the rules (as the CLI does).
    pub async fn create_user(&self, email: &str, password: &str, role: Role) -> i64 {
        self.domain
            .create_user_unchecked(
                &portcullis::domain::Ctx::system(),
                NewUserInput {
                    email: email.into(),
                    password: password.into(),
                    role,
                    kind: portcullis::domain::UserKind::Human,
                    session_lifetime: None,
                },
            )
            .await
            .unwrap()
            .id
            .get()
    }

    /// Logs in over gRPC and returns the session.
    pub async fn login(&self, email: &str, password: &str) -> pb::IssuedSession {
        let response = self
            .auth()
            .login(pb::LoginRequest { email: email.into(), password: password.into(), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        match response.result {
            Some(pb::login_response::Result::Session(session)) => session,
            other => panic!("expected a session, got {other:?}"),
        }
    }

    /// Creates an admin and returns its session token.
    pub async fn admin_token(&self) -> String {
        self.create_user("admin@example.com", ADMIN_PASSWORD, Role::Admin).await;
        self.login("admin@example.com", ADMIN_PASSWORD).await.token
    }

    /// Validates a raw token.
    pub async fn validate(&self, token: &str) -> Result<pb::Principal, Status> {
        self.auth()
            .validate_token(pb::ValidateTokenRequest {
                credential: Some(pb::validate_token_request::Credential::Token(token.into())),
                required_scopes: vec![],
            })
            .await
            .map(|r| r.into_inner().principal.unwrap())
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub const ADMIN_PASSWORD: &str = "admin password 123";
pub const USER_PASSWORD: &str = "user password 456";

/// `request` with `authorization: Bearer <token>`.
pub fn bearer<T>(token: &str, request: T) -> Request<T> {
    let mut request = Request::new(request);
    let value: MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
    request.metadata_mut().insert("authorization", value);
    request
}

/// Asserts a status's code and `ErrorInfo` reason (domain `portcullis`).
#[track_caller]
pub fn assert_error(status: &Status, code: Code, reason: &str) {
    assert_eq!(status.code(), code, "unexpected status: {status:?}");
    let info = status.get_details_error_info().unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.reason, reason, "unexpected reason in {status:?}");
    assert_eq!(info.domain, "portcullis");
}

/// Asserts `INVALID_ARGUMENT` with a `BadRequest` naming `field`.
#[track_caller]
pub fn assert_invalid(status: &Status, field: &str) {
    assert_error(status, Code::InvalidArgument, "INVALID_ARGUMENT");
    let bad = status.get_details_bad_request().unwrap_or_else(|| panic!("no BadRequest in {status:?}"));
    assert!(
        bad.field_violations.iter().any(|v| v.field == field),
        "BadRequest does not name {field}: {bad:?}"
    );
}

/// The `missing_scope` named in a FORBIDDEN status.
pub fn missing_scope(status: &Status) -> Option<String> {
    status.get_details_error_info()?.metadata.get("missing_scope").cloned()
}

/// Counts the rows of `table` in the test database.
pub async fn count_rows(db: &TestDb, table: &str) -> i64 {
    let conn = Database::connect(&db.url).await.unwrap();
    let row = conn
        .query_one_raw(sea_orm::Statement::from_string(
            conn.get_database_backend(),
            format!("SELECT COUNT(*) AS n FROM {table}"),
        ))
        .await
        .unwrap()
        .unwrap();
    let n: i64 = row.try_get("", "n").unwrap();
    conn.close().await.unwrap();
    n
}

/// Everything every server in this test process logged (debug level and up).
static LOGS: std::sync::OnceLock<Arc<std::sync::Mutex<Vec<u8>>>> = std::sync::OnceLock::new();

/// Installs, once per process, a subscriber that keeps all log output, so
/// tests can check that no secret is ever logged.
fn capture_logs() {
    LOGS.get_or_init(|| {
        let buffer = Arc::new(std::sync::Mutex::new(Vec::new()));
        let writer = {
            let buffer = Arc::clone(&buffer);
            move || LogWriter(Arc::clone(&buffer))
        };
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("debug"))
            .with_ansi(false)
            .with_writer(writer)
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        buffer
    });
}

/// The log output captured so far.
pub fn captured_logs() -> String {
    let buffer = LOGS.get().expect("logs are captured once a server started");
    String::from_utf8_lossy(&buffer.lock().unwrap()).into_owned()
}

struct LogWriter(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
