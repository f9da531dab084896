//! The `portcullis` command line: the server (`serve`, `migrate`) and the
//! operator's tools, which work on the database directly — for bootstrap,
//! scripts and break-glass (an admin who lost the only admin password).
//!
//! Every command has `--help`; `--json` prints what a script needs on
//! standard output; the exit code says how it failed ([`failure`]). Checks
//! that need no database (arguments, a password's length, the
//! configuration) run before the database is opened, so a mistake changes
//! nothing, not even by creating a database file. Changes go through the
//! rules (`domain`), never raw SQL: each writes its audit row with the actor
//! `system:cli`, and a revocation reaches running servers — at once on
//! PostgreSQL (the notification the servers' own revocations send), within
//! `token_cache_ttl` on SQLite.

mod failure;
mod serve;
mod show;

use std::{io::BufRead as _, path::PathBuf, process::ExitCode, sync::Arc};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use secrecy::ExposeSecret as _;
use serde_json::{Value, json};

use crate::{
    app::App,
    config::Config,
    domain::{
        AuditFilter, Ctx, Email, KeyEnvironment, KeyId, NewUserInput, Role, SessionId, SystemClock, User,
        UserKind, UserPatch, password::Password,
    },
    telemetry,
};
pub use failure::{Kind, UserError};

const SQLITE_REVOCATION_NOTE: &str = "\
A revocation made here reaches running servers at once on PostgreSQL (the same \
notification their own revocations send). On SQLite there is no notification: a running \
server sees it within token_cache_ttl (default 10s), when its cached answer expires.";

/// portcullis: authentication for internal services, over gRPC and HTTP.
#[derive(Parser)]
#[command(version, about, after_help = failure::EXIT_CODES)]
struct Cli {
    /// TOML configuration file; settings there are overridden by
    /// `PORTCULLIS_*` environment variables.
    #[arg(long, short, global = true, env = "PORTCULLIS_CONFIG")]
    config: Option<PathBuf>,
    /// Print results as JSON on standard output (for scripts).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (migrating the database first unless
    /// `migrate_on_start` is off). Stops gracefully on SIGTERM or Ctrl-C.
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Users: create, list, inspect, reset a password, disable, enable,
    /// reset second factors, change roles.
    #[command(subcommand, after_help = failure::EXIT_CODES)]
    User(UserCommand),
    /// API keys: create, list, revoke, rotate.
    #[command(subcommand, after_help = failure::EXIT_CODES)]
    Key(KeyCommand),
    /// Sessions: list a user's, revoke one or all of a user's.
    #[command(subcommand, after_help = failure::EXIT_CODES)]
    Session(SessionCommand),
    /// The audit log.
    #[command(subcommand, after_help = failure::EXIT_CODES)]
    Audit(AuditCommand),
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user, e.g. the first admin of a fresh deployment. The
    /// password is read from `PORTCULLIS_USER_PASSWORD`, from standard input
    /// with `--password-stdin`, or asked for on the terminal.
    Create {
        /// The user's email address.
        #[arg(long)]
        email: String,
        /// The user's role.
        #[arg(long, value_enum, default_value_t = CliRole::User)]
        role: CliRole,
        /// Read the password from the first line of standard input (for
        /// scripts, and where there is no terminal).
        #[arg(long)]
        password_stdin: bool,
        /// Create a service account: no password, never logs in, owns API
        /// keys for a program.
        #[arg(long)]
        service: bool,
    },
    /// List every user.
    List,
    /// Show one user.
    Get {
        /// The user: its id or its email.
        user: String,
    },
    /// Set a user's password (the way back for a lost admin password); ends
    /// all its sessions. The password is read as for `user create`.
    #[command(after_help = SQLITE_REVOCATION_NOTE)]
    SetPassword {
        /// The user: its id or its email.
        user: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Disable a user: it cannot log in, and its sessions and keys stop
    /// working.
    #[command(after_help = SQLITE_REVOCATION_NOTE)]
    Disable {
        /// The user: its id or its email.
        user: String,
    },
    /// Enable a disabled user again.
    Enable {
        /// The user: its id or its email.
        user: String,
    },
    /// Turn every second factor of a user off (a lost phone); ends all its
    /// sessions.
    #[command(after_help = SQLITE_REVOCATION_NOTE)]
    ResetMfa {
        /// The user: its id or its email.
        user: String,
    },
    /// Change a user's role.
    SetRole {
        /// The user: its id or its email.
        user: String,
        /// The new role.
        #[arg(value_enum)]
        role: CliRole,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Create an API key and print it once. Only its hash is stored.
    Create {
        /// The key's owner (often a service account): its email or id.
        #[arg(long)]
        owner: String,
        /// A name for the key.
        #[arg(long)]
        name: String,
        /// A scope to grant (repeat for several), e.g. `--scope assets:read`.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Live or test key.
        #[arg(long, value_enum, default_value_t = CliEnvironment::Live)]
        env: CliEnvironment,
    },
    /// List keys: one owner's, or everyone's (newest first per owner).
    List {
        /// Only this owner's keys: its email or id.
        #[arg(long)]
        owner: Option<String>,
    },
    /// Revoke a key at once. Revoking a revoked key changes nothing.
    #[command(after_help = SQLITE_REVOCATION_NOTE)]
    Revoke {
        /// The key's id.
        id: i64,
    },
    /// Replace a key with a new one, printed once; the old key keeps
    /// working for the overlap, then stops.
    #[command(after_help = SQLITE_REVOCATION_NOTE)]
    Rotate {
        /// The key's id.
        id: i64,
        /// How long the old key keeps working: `0s` (stops now) to `7days`.
        #[arg(long, default_value = "0s", value_parser = parse_duration)]
        overlap: std::time::Duration,
    },
}

#[derive(Subcommand)]
enum SessionCommand {
    /// List a user's active sessions, newest first.
    List {
        /// The user: its id or its email.
        user: String,
    },
    /// Revoke one session, or every session of a user.
    #[command(after_help = SQLITE_REVOCATION_NOTE)]
    Revoke {
        /// The session's id.
        #[arg(required_unless_present = "user", conflicts_with = "user")]
        id: Option<i64>,
        /// Revoke every session of this user instead: its id or its email.
        #[arg(long)]
        user: Option<String>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// List audit events, newest first, with the filters of
    /// `AuditService.ListAuditEvents` (all exact, all optional).
    List(AuditArgs),
}

#[derive(Args)]
struct AuditArgs {
    /// Subject, e.g. `user:2`, `key:1`, `session:5`.
    #[arg(long)]
    subject: Option<String>,
    /// Actor, e.g. `user:1`, `key:3`, `anonymous`, `system:cli`.
    #[arg(long)]
    actor: Option<String>,
    /// Action, one of the catalogue (e.g. `login.failed`; an unknown one is
    /// refused with the list).
    #[arg(long)]
    action: Option<String>,
    /// `success` or `failure`.
    #[arg(long)]
    outcome: Option<String>,
    /// At or after this time (RFC 3339, e.g. `2026-11-24T00:00:00Z`).
    #[arg(long, value_parser = parse_time)]
    start_time: Option<chrono::DateTime<chrono::Utc>>,
    /// Before this time (RFC 3339).
    #[arg(long, value_parser = parse_time)]
    end_time: Option<chrono::DateTime<chrono::Utc>>,
    /// The request's `x-request-id`.
    #[arg(long)]
    request_id: Option<String>,
    /// Most events to print (1 to 500).
    #[arg(long, default_value_t = 50)]
    page_size: i32,
    /// Continue after an earlier page (its token is printed on standard
    /// error).
    #[arg(long, default_value = "")]
    page_token: String,
}

#[derive(Clone, Copy, ValueEnum)]
enum CliEnvironment {
    Live,
    Test,
}

#[derive(Clone, Copy, ValueEnum)]
enum CliRole {
    User,
    Admin,
}

impl From<CliRole> for Role {
    fn from(role: CliRole) -> Self {
        match role {
            CliRole::User => Role::User,
            CliRole::Admin => Role::Admin,
        }
    }
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime_serde::re::humantime::parse_duration(text)
        .map_err(|e| format!("{e} (write it like 0s, 30m, 1h, 7days)"))
}

fn parse_time(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| format!("{e} (write it like 2026-11-24T00:00:00Z)"))
}

/// Runs the command line and returns the process's exit code.
#[must_use]
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => return failure::report(&anyhow::Error::new(err).context("starting the runtime")),
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => failure::report(&err),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let Cli { config, json, command } = cli;
    // Input that needs no configuration is checked first of all.
    let password = match &command {
        Command::User(UserCommand::Create { email, password_stdin, service, .. }) => {
            Email::parse(email, "email")?;
            if *service { None } else { Some(read_password(*password_stdin)?) }
        }
        Command::User(UserCommand::SetPassword { password_stdin, .. }) => {
            Some(read_password(*password_stdin)?)
        }
        _ => None,
    };
    let mut config = Config::load(config.as_deref())?;
    // The operator's tools print their results; the server's start-up chatter
    // (migrations, mail and captcha availability) stays out of the way unless
    // a log filter was asked for.
    if !matches!(command, Command::Serve) && config.log_filter == Config::default().log_filter {
        "warn".clone_into(&mut config.log_filter);
    }
    // Held to the end: dropping it sends the traces still queued.
    let _telemetry = telemetry::init(&config)?;
    match command {
        Command::Serve => serve::run(config).await,
        Command::Migrate => {
            let store = crate::store::SqlStore::connect(&config.database_url, 1)
                .await
                .context("connecting to the database (database_url)")?;
            store.migrate().await.context("migrating the database")?;
            eprintln!("migrations applied");
            Ok(())
        }
        Command::User(command) => {
            let app = App::build(config, Arc::new(SystemClock)).await?;
            user(&app, command, password.as_deref().unwrap_or_default(), json).await
        }
        Command::Key(command) => key(&App::build(config, Arc::new(SystemClock)).await?, command, json).await,
        Command::Session(command) => {
            session(&App::build(config, Arc::new(SystemClock)).await?, command, json).await
        }
        Command::Audit(AuditCommand::List(args)) => {
            audit(&App::build(config, Arc::new(SystemClock)).await?, args, json).await
        }
    }
}

/// The operator's context: actor `system:cli`, and one request id for the
/// rows this run writes (`audit list --request-id` finds them together).
fn operator() -> Ctx {
    Ctx {
        request_id: format!("cli-{}", uuid::Uuid::new_v4()),
        user_agent: concat!("portcullis-cli/", env!("CARGO_PKG_VERSION")).to_owned(),
        ..Ctx::system()
    }
}

/// Prints `value` as JSON when asked to, else `text`.
fn print(json: bool, value: &Value, text: &str) {
    if json {
        println!("{value}");
    } else {
        println!("{text}");
    }
}

async fn user(app: &App, command: UserCommand, password: &str, json: bool) -> anyhow::Result<()> {
    let domain = app.domain();
    let ctx = operator();
    match command {
        UserCommand::Create { email, role, service, .. } => {
            let role = Role::from(role);
            let user = domain
                .create_user_unchecked(
                    &ctx,
                    NewUserInput {
                        email,
                        password: password.to_owned(),
                        role,
                        kind: if service { UserKind::Service } else { UserKind::Human },
                        session_lifetime: None,
                    },
                )
                .await?;
            let text =
                format!("created user {} <{}> with role {}", user.id, user.email.as_str(), role.as_str());
            print(json, &show::user_json(&user), &text);
        }
        UserCommand::List => {
            let users = all_users(app).await?;
            let value = Value::Array(users.iter().map(show::user_json).collect());
            let text: Vec<String> = users.iter().map(show::user_line).collect();
            print(json, &value, &text.join("\n"));
        }
        UserCommand::Get { user } => {
            let user = domain.find_user_unchecked(&user).await?;
            print(json, &show::user_json(&user), &show::user_line(&user));
        }
        UserCommand::SetPassword { user, .. } => {
            let user = domain.find_user_unchecked(&user).await?;
            let revoked = domain.set_password_unchecked(&ctx, user.id, password).await?;
            let text = format!(
                "set the password of user {} <{}>; revoked {revoked} session(s)",
                user.id,
                user.email.as_str()
            );
            print(json, &json!({"user": show::user_json(&user), "revoked_sessions": revoked}), &text);
        }
        UserCommand::Disable { user } => patch_user(app, &user, disabled(true), "disabled", json).await?,
        UserCommand::Enable { user } => patch_user(app, &user, disabled(false), "enabled", json).await?,
        UserCommand::SetRole { user, role } => {
            let patch = UserPatch { role: Some(role.into()), ..UserPatch::default() };
            patch_user(app, &user, patch, "changed the role of", json).await?;
        }
        UserCommand::ResetMfa { user } => {
            let user = domain.find_user_unchecked(&user).await?;
            let revoked = domain.reset_mfa_unchecked(&ctx, user.id).await?;
            let user = domain.find_user_unchecked(&user.id.to_string()).await?;
            let text = format!(
                "turned every second factor of user {} <{}> off; revoked {revoked} session(s)",
                user.id,
                user.email.as_str()
            );
            print(json, &json!({"user": show::user_json(&user), "revoked_sessions": revoked}), &text);
        }
    }
    Ok(())
}

/// Every user, by ascending id.
async fn all_users(app: &App) -> anyhow::Result<Vec<User>> {
    let mut users = Vec::new();
    let mut token = String::new();
    loop {
        let page = app.domain().list_users_unchecked(500, &token).await?;
        users.extend(page.items);
        match page.next_page_token {
            Some(next) => token = next,
            None => return Ok(users),
        }
    }
}

fn disabled(disabled: bool) -> UserPatch {
    UserPatch { disabled: Some(disabled), ..UserPatch::default() }
}

async fn patch_user(app: &App, who: &str, patch: UserPatch, done: &str, json: bool) -> anyhow::Result<()> {
    let domain = app.domain();
    let user = domain.find_user_unchecked(who).await?;
    let user = domain.update_user_unchecked(&operator(), user.id, patch).await?;
    let text = format!("{done} user {} <{}> (role {})", user.id, user.email.as_str(), user.role.as_str());
    print(json, &show::user_json(&user), &text);
    Ok(())
}

async fn key(app: &App, command: KeyCommand, json: bool) -> anyhow::Result<()> {
    let domain = app.domain();
    let ctx = operator();
    let now = domain.now();
    match command {
        KeyCommand::Create { owner, name, scopes, env } => {
            let owner = domain.find_user_unchecked(&owner).await?;
            let environment = match env {
                CliEnvironment::Live => KeyEnvironment::Live,
                CliEnvironment::Test => KeyEnvironment::Test,
            };
            let issued =
                domain.create_key_unchecked(&ctx, owner.email.as_str(), &name, scopes, environment).await?;
            let key = issued.key.expose_secret();
            if json {
                println!("{}", json!({"key": key, "api_key": show::key_json(&issued.api_key, now)}));
            } else {
                eprintln!(
                    "created API key {} ({}…) for {}; it is shown once:",
                    issued.api_key.id,
                    issued.api_key.display_prefix,
                    owner.email.as_str()
                );
                println!("{key}");
            }
        }
        KeyCommand::List { owner } => {
            let owners = if let Some(owner) = owner {
                vec![domain.find_user_unchecked(&owner).await?]
            } else {
                all_users(app).await?
            };
            let mut keys = Vec::new();
            for owner in owners {
                let mut token = String::new();
                loop {
                    let page = domain.list_keys_unchecked(owner.id, 500, &token).await?;
                    keys.extend(page.items);
                    match page.next_page_token {
                        Some(next) => token = next,
                        None => break,
                    }
                }
            }
            let value = Value::Array(keys.iter().map(|k| show::key_json(k, now)).collect());
            let text: Vec<String> = keys.iter().map(|k| show::key_line(k, now)).collect();
            print(json, &value, &text.join("\n"));
        }
        KeyCommand::Revoke { id } => {
            let key = domain.revoke_key_unchecked(&ctx, KeyId::new(id)).await?;
            print(json, &show::key_json(&key, domain.now()), &format!("revoked API key {id}"));
        }
        KeyCommand::Rotate { id, overlap } => {
            let overlap = chrono::Duration::from_std(overlap)
                .map_err(|_| UserError::input("--overlap: at most 7 days"))?;
            let (issued, previous) = domain.rotate_key_unchecked(&ctx, KeyId::new(id), overlap).await?;
            let key = issued.key.expose_secret();
            if json {
                println!(
                    "{}",
                    json!({
                        "key": key,
                        "api_key": show::key_json(&issued.api_key, now),
                        "previous": show::key_json(&previous, now),
                    })
                );
            } else {
                eprintln!(
                    "rotated API key {id} into {} ({}…); key {id} stops at {}; the new key is shown once:",
                    issued.api_key.id,
                    issued.api_key.display_prefix,
                    previous.revoked_at.map_or_else(|| "-".to_owned(), |at| at.to_rfc3339())
                );
                println!("{key}");
            }
        }
    }
    Ok(())
}

async fn session(app: &App, command: SessionCommand, json: bool) -> anyhow::Result<()> {
    let domain = app.domain();
    let ctx = operator();
    match command {
        SessionCommand::List { user } => {
            let user = domain.find_user_unchecked(&user).await?;
            let mut sessions = Vec::new();
            let mut token = String::new();
            loop {
                let page = domain.list_sessions_unchecked(user.id, 500, &token).await?;
                sessions.extend(page.items.into_iter().map(|(session, _)| session));
                match page.next_page_token {
                    Some(next) => token = next,
                    None => break,
                }
            }
            let value = Value::Array(sessions.iter().map(show::session_json).collect());
            let text: Vec<String> = sessions.iter().map(show::session_line).collect();
            print(json, &value, &text.join("\n"));
        }
        SessionCommand::Revoke { id: Some(id), .. } => {
            let changed = domain.revoke_session_unchecked(&ctx, SessionId::new(id)).await?;
            let text = if changed {
                format!("revoked session {id}")
            } else {
                format!("session {id} was not active; nothing changed")
            };
            print(json, &json!({"session_id": id, "revoked": changed}), &text);
        }
        SessionCommand::Revoke { id: None, user } => {
            let Some(user) = user else {
                return Err(UserError::input("name a session id, or --user").into());
            };
            let user = domain.find_user_unchecked(&user).await?;
            let count = domain.revoke_sessions_unchecked(&ctx, user.id).await?;
            let text = format!("revoked {count} session(s) of user {} <{}>", user.id, user.email.as_str());
            print(json, &json!({"user_id": user.id.get(), "revoked_sessions": count}), &text);
        }
    }
    Ok(())
}

async fn audit(app: &App, args: AuditArgs, json: bool) -> anyhow::Result<()> {
    let AuditArgs {
        subject,
        actor,
        action,
        outcome,
        start_time,
        end_time,
        request_id,
        page_size,
        page_token,
    } = args;
    if !(1..=500).contains(&page_size) {
        return Err(UserError::input("--page-size: from 1 to 500").into());
    }
    let filter =
        AuditFilter { subject, actor, action, outcome, start: start_time, end: end_time, request_id };
    let page = app.domain().list_audit_events_unchecked(filter, page_size, &page_token).await?;
    let value = Value::Array(page.items.iter().map(show::audit_json).collect());
    let text: Vec<String> = page.items.iter().map(show::audit_line).collect();
    print(json, &value, &text.join("\n"));
    if let Some(next) = page.next_page_token {
        eprintln!("more events: add --page-token {next}");
    }
    Ok(())
}

/// A password: from `PORTCULLIS_USER_PASSWORD`, standard input, or the
/// terminal; checked (length, form) before anything else happens.
fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    let password = if let Ok(password) = std::env::var("PORTCULLIS_USER_PASSWORD") {
        password
    } else if from_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).context("reading the password from standard input")?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    } else {
        let no_terminal = |_| {
            UserError::input(
                "no terminal to ask for the password on: pipe it in with --password-stdin \
                 (e.g. `echo \"$PASSWORD\" | portcullis user create … --password-stdin`) \
                 or set PORTCULLIS_USER_PASSWORD",
            )
        };
        let first = rpassword::prompt_password("Password: ").map_err(no_terminal)?;
        let second = rpassword::prompt_password("Repeat password: ").map_err(no_terminal)?;
        if first != second {
            return Err(UserError::input("the passwords do not match").into());
        }
        first
    };
    Password::parse(&password, "password")?;
    Ok(password)
}
