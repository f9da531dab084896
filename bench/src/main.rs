//! The `portcullis-bench` command: `run` drives a server with one workload
//! and prints a report row; `seed` fills a database for it. See the README's
//! "Performance" section, and `scripts/bench`, which runs the whole set.

use std::{
    io::BufRead as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use portcullis_bench::{
    client::Connection,
    load::{self, Arrival, Load, Plan, RunResult},
    procfs::{ProcSample, as_f64},
    seed::{self, SeedOptions},
    stats::{self, Report, TSV_HEADER},
    workload::{EnvoyCheck, Health, Login, Validate, Workload},
};

/// Load generator and database seeder for benchmarking portcullis.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Drive a server with one workload and print its report: offered and
    /// achieved rate, latency percentiles (from each call's intended start),
    /// gRPC codes, and the server's CPU and memory when `--server-pid` is
    /// given. A flag given twice takes its last value.
    #[command(args_override_self = true)]
    Run(Box<RunArgs>),
    /// Fill a migrated database with users and active sessions, and write the
    /// sessions' tokens to a file for `run --mode validate-miss`.
    Seed(SeedArgs),
}

/// What each call is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// `grpc.health.v1.Health/Check`: the per-call baseline.
    Health,
    /// `ValidateToken` with one valid session token: cache hits.
    ValidateHit,
    /// `ValidateToken` with a different token each call, in turn from
    /// `--tokens` (seeded): cache misses while the list is long enough.
    ValidateMiss,
    /// `Login` with the right password, accounts in turn.
    Login,
    /// `envoy.service.auth.v3.Authorization/Check` of a request bearing the
    /// token (`Authorization: Bearer`).
    EnvoyCheck,
    /// `ValidateToken` hits at `--rate` and, at once, logins at
    /// `--login-rate` on their own connections: validation latency and login
    /// latency (split by code) reported apart.
    Mixed,
}

#[derive(Args)]
#[allow(clippy::struct_excessive_bools, reason = "independent output switches")]
struct RunArgs {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:50051")]
    target: SocketAddr,
    /// What each call is.
    #[arg(long, value_enum)]
    mode: Mode,
    /// Open loop: calls started per second, whatever the server does.
    #[arg(long, conflicts_with = "closed", required_unless_present = "closed")]
    rate: Option<f64>,
    /// Closed loop: this many calls in flight, back to back (finds capacity).
    #[arg(long)]
    closed: Option<usize>,
    /// Closed loop: stop after this many calls (or at the end of the
    /// duration, whichever comes first).
    #[arg(long, requires = "closed")]
    requests: Option<u64>,
    /// Spacing of open-loop arrivals.
    #[arg(long, value_enum, default_value_t = Arrival::Poisson)]
    arrival: Arrival,
    /// HTTP/2 connections the calls are spread over (round robin).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Size each connection's flow-control window adaptively, with a PING
    /// per burst of received data, as grpc-go and gRPC C-core clients do by
    /// default (tonic's `Channel` does not). The server then writes PING
    /// acknowledgements between responses, which is where a missing
    /// `TCP_NODELAY` shows.
    #[arg(long)]
    adaptive_window: bool,
    /// Measured time, e.g. `10s`.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    duration: Duration,
    /// Unmeasured time before it, e.g. `2s`.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    warmup: Duration,
    /// Client-side time limit per call; later answers count as
    /// `DEADLINE_EXCEEDED`.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    timeout: Duration,
    /// Open loop: calls outstanding at most; arrivals beyond are counted as
    /// `NOT_SENT` rather than queued without end.
    #[arg(long, default_value_t = 20_000)]
    max_in_flight: usize,
    /// The session token for `validate-hit`, `envoy-check` and `mixed`
    /// (default: the first line of `--tokens`).
    #[arg(long, env = "PORTCULLIS_BENCH_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Token file written by `seed` (one token per line).
    #[arg(long)]
    tokens: Option<PathBuf>,
    /// `validate-miss`: file holding the index of the next unused token; read
    /// at start (0 when missing) and advanced after the run, so runs in a row
    /// never reuse a token the server may still have cached.
    #[arg(long)]
    token_cursor: Option<PathBuf>,
    /// `validate-miss`: the server's `token_cache_ttl`. A warning is printed
    /// when a token would come round again within it (a cache hit).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    cache_ttl: Duration,
    /// `login`, `mixed`: accounts to log in to, in turn (emails from
    /// `--email-pattern`, numbered from 0).
    #[arg(long, default_value_t = 1000)]
    accounts: u64,
    /// Email of account `i`; `{}` is replaced by `i`.
    #[arg(long, default_value = "bench{}@example.com")]
    email_pattern: String,
    /// The accounts' password.
    #[arg(long, env = "PORTCULLIS_BENCH_PASSWORD", default_value = "bench password 123")]
    password: String,
    /// `mixed`: logins started per second (open loop, same arrival spacing).
    #[arg(long, required_if_eq("mode", "mixed"))]
    login_rate: Option<f64>,
    /// `mixed`: HTTP/2 connections for the logins.
    #[arg(long, default_value_t = 4)]
    login_connections: usize,
    /// `health`: the service to check (empty: the whole server).
    #[arg(long, default_value = "")]
    health_service: String,
    /// The server's process id: its CPU time per call and CPU share over the
    /// measured window are reported (from `/proc/<pid>/stat`).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Report the server's RSS growth per call (`/proc/<pid>/status` VmRSS):
    /// bytes per cached principal when every call validates a new token.
    #[arg(long, requires = "server_pid")]
    rss_per_call: bool,
    /// Scenario name in the report (default: the mode's name).
    #[arg(long)]
    label: Option<String>,
    /// Print tab-separated rows without a header (for scripts).
    #[arg(long)]
    tsv: bool,
    /// With `--tsv`: print the header row too.
    #[arg(long, requires = "tsv")]
    header: bool,
    /// Add one row per outcome (latency of each gRPC code alone).
    #[arg(long)]
    split_codes: bool,
    /// Seed of the Poisson arrivals (runs are reproducible).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Args)]
struct SeedArgs {
    /// Database URL, migrated first with `portcullis migrate`:
    /// `sqlite://FILE?mode=rwc` or `postgres://user@host/db`.
    #[arg(long, env = "PORTCULLIS_DATABASE_URL", hide_env_values = true)]
    database_url: String,
    /// Active sessions to create (one token each).
    #[arg(long, default_value_t = 1_000_000)]
    sessions: u64,
    /// Users to create; the sessions are spread over them.
    #[arg(long, default_value_t = 1000)]
    users: u64,
    /// Email of user `i`; `{}` is replaced by `i`.
    #[arg(long, default_value = "bench{}@example.com")]
    email_pattern: String,
    /// Every user's password.
    #[arg(long, env = "PORTCULLIS_BENCH_PASSWORD", default_value = "bench password 123")]
    password: String,
    /// The server's `token_prefix`.
    #[arg(long, default_value = "pcs")]
    token_prefix: String,
    /// How long the sessions stay valid, e.g. `24h`.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "24h")]
    session_lifetime: Duration,
    /// File the tokens are written to, one per line.
    #[arg(long)]
    tokens_out: PathBuf,
    /// Rows per INSERT statement (capped by the bound-parameter limit).
    #[arg(long, default_value_t = 1000)]
    rows_per_statement: usize,
    /// Rows per transaction.
    #[arg(long, default_value_t = 100_000)]
    rows_per_transaction: usize,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // One thread for the calls (plus the pacer): the generator takes one
    // core at most, and `scripts/bench` pins it to a core of its own.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => run(*args).await,
            Command::Seed(args) => {
                let seeded = seed::seed(&SeedOptions {
                    database_url: args.database_url,
                    users: args.users,
                    sessions: args.sessions,
                    email_pattern: args.email_pattern,
                    password: args.password,
                    token_prefix: args.token_prefix,
                    session_lifetime: args.session_lifetime,
                    tokens_out: args.tokens_out,
                    rows_per_statement: args.rows_per_statement,
                    rows_per_transaction: args.rows_per_transaction,
                })
                .await?;
                eprintln!(
                    "seeded {} users and {} sessions in {:.1} s",
                    seeded.users,
                    seeded.sessions,
                    seeded.elapsed.as_secs_f64()
                );
                Ok(())
            }
        }
    })
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let load = match (args.rate, args.closed) {
        (Some(rate), _) => Load::Open { rate, arrival: args.arrival, max_in_flight: args.max_in_flight },
        (None, Some(concurrency)) => Load::Closed { concurrency, requests: args.requests },
        (None, None) => anyhow::bail!("give --rate (open loop) or --closed (closed loop)"),
    };
    let label = args.label.clone().unwrap_or_else(|| {
        args.mode.to_possible_value().map_or_else(String::new, |v| v.get_name().to_owned())
    });
    let plan = Plan {
        label,
        load,
        warmup: args.warmup,
        duration: args.duration,
        timeout: args.timeout,
        server_pid: args.server_pid,
        server_shared: false,
        rss_per_call: args.rss_per_call,
        seed: args.seed,
    };
    let connections = Connection::open_many(args.target, args.connections, args.adaptive_window).await?;
    let target = args.target;
    let me = std::process::id();
    let generator_before = ProcSample::read(me)?;

    let rows = if args.mode == Mode::Mixed {
        let Load::Open { .. } = plan.load else { anyhow::bail!("mixed runs open loop: give --rate") };
        let login_rate = args.login_rate.context("mixed needs --login-rate")?;
        let validate: Arc<dyn Workload> =
            Arc::new(Validate::new(&connections, target, Arc::from(vec![hit_token(&args)?]), 0)?);
        let login_connections =
            Connection::open_many(target, args.login_connections, args.adaptive_window).await?;
        let login: Arc<dyn Workload> =
            Arc::new(Login::new(&login_connections, target, emails(&args), args.password)?);
        let validate_plan =
            Plan { label: format!("{} validate", plan.label), server_shared: true, ..plan.clone() };
        let login_plan = Plan {
            label: format!("{} login", plan.label),
            load: Load::Open { rate: login_rate, arrival: args.arrival, max_in_flight: args.max_in_flight },
            server_pid: None,
            rss_per_call: false,
            seed: plan.seed.wrapping_add(1),
            ..plan.clone()
        };
        let (validated, logged_in) =
            tokio::join!(load::run(validate, &validate_plan), load::run(login, &login_plan));
        let (validated, logged_in) = (validated?, logged_in?);
        warn_about(&validated.report);
        let mut rows = validated.report.tsv_rows(args.split_codes);
        rows.extend(logged_in.report.tsv_rows(true));
        rows
    } else {
        let mut cursor = None;
        let workload: Arc<dyn Workload> = match args.mode {
            Mode::Health => Arc::new(Health::new(&connections, target, args.health_service.clone())?),
            Mode::ValidateHit => {
                Arc::new(Validate::new(&connections, target, Arc::from(vec![hit_token(&args)?]), 0)?)
            }
            Mode::ValidateMiss => {
                let path = args.tokens.as_deref().context("validate-miss needs --tokens (from `seed`)")?;
                let tokens = read_tokens(path)?;
                let offset = match &args.token_cursor {
                    Some(file) => read_cursor(file)?,
                    None => 0,
                };
                cursor = Some((offset, tokens.len() as u64));
                Arc::new(Validate::new(&connections, target, tokens, offset)?)
            }
            Mode::Login => Arc::new(Login::new(&connections, target, emails(&args), args.password.clone())?),
            Mode::EnvoyCheck => Arc::new(EnvoyCheck::new(&connections, target, &hit_token(&args)?)?),
            Mode::Mixed => anyhow::bail!("mixed is handled above"),
        };
        let result = load::run(workload, &plan).await?;
        if let Some((offset, tokens)) = cursor {
            after_miss_run(&args, &result, offset, tokens)?;
        }
        warn_about(&result.report);
        result.report.tsv_rows(args.split_codes)
    };

    let generator_after = ProcSample::read(me)?;
    let generator =
        portcullis_bench::procfs::ServerUse::between(&generator_before, &generator_after, 0, false);
    eprintln!("portcullis-bench: the generator used {:.0} % of a core", generator.cpu_share * 100.0);
    if args.tsv {
        if args.header {
            println!("{TSV_HEADER}");
        }
        for row in rows {
            println!("{row}");
        }
    } else {
        let mut all = vec![TSV_HEADER.to_owned()];
        all.extend(rows);
        print!("{}", stats::align(&all));
    }
    Ok(())
}

/// Warnings about a run that measured the generator more than the server.
fn warn_about(report: &Report) {
    if matches!(report.offered, stats::Offered::Rate(_)) && report.lag.p99 > 1.0 {
        eprintln!(
            "portcullis-bench: warning: {}: the generator sent calls up to {:.1} ms late (p99): it is overloaded",
            report.label, report.lag.p99
        );
    }
    if let (stats::Offered::Closed(_), Some(server)) = (report.offered, &report.server)
        && server.cpu_share < 0.85
    {
        eprintln!(
            "portcullis-bench: warning: {}: the server was busy only {:.0} % of one core: capacity may be the \
             generator's or the connections', not the server's",
            report.label,
            server.cpu_share * 100.0
        );
    }
}

/// Advances the token cursor and warns when tokens came round again within
/// the server's cache lifetime (those calls may have been cache hits).
fn after_miss_run(args: &RunArgs, result: &RunResult, offset: u64, tokens: u64) -> anyhow::Result<()> {
    if let Some(file) = &args.token_cursor {
        let next = (offset + result.issued) % tokens;
        std::fs::write(file, format!("{next}\n")).with_context(|| format!("writing {}", file.display()))?;
    }
    if result.issued > tokens && result.report.achieved > 0.0 {
        let cycle = as_f64(tokens) / result.report.achieved;
        if cycle < args.cache_ttl.as_secs_f64() {
            eprintln!(
                "portcullis-bench: warning: {} tokens came round every {cycle:.1} s, within the cache's {:.0} s: \
                 some calls were cache hits; seed more sessions",
                tokens,
                args.cache_ttl.as_secs_f64()
            );
        }
    }
    Ok(())
}

fn hit_token(args: &RunArgs) -> anyhow::Result<String> {
    if let Some(token) = &args.token {
        return Ok(token.clone());
    }
    let path = args.tokens.as_deref().context("give --token, or --tokens (its first token is used)")?;
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut first = String::new();
    std::io::BufReader::new(file).read_line(&mut first)?;
    let first = first.trim();
    anyhow::ensure!(!first.is_empty(), "{} holds no token", path.display());
    Ok(first.to_owned())
}

fn read_tokens(path: &Path) -> anyhow::Result<Arc<[String]>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let tokens: Arc<[String]> =
        text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect();
    anyhow::ensure!(!tokens.is_empty(), "{} holds no token", path.display());
    Ok(tokens)
}

fn read_cursor(path: &Path) -> anyhow::Result<u64> {
    match std::fs::read_to_string(path) {
        Ok(text) => text.trim().parse().with_context(|| format!("{}: not a token index", path.display())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
    }
}

fn emails(args: &RunArgs) -> Arc<[String]> {
    (0..args.accounts).map(|i| seed::email(&args.email_pattern, i)).collect()
}
