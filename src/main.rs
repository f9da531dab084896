//! The `portcullis` command: parse arguments, load configuration, call `app`.

use std::{io::BufRead as _, path::PathBuf, sync::Arc};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use portcullis::{
    app::App,
    config::Config,
    domain::{Ctx, KeyEnvironment, KeyId, NewUserInput, Role, SystemClock, UserKind},
    telemetry,
};
use tokio::net::TcpListener;

/// portcullis: authentication for internal services, over gRPC.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file; settings there are overridden by
    /// `PORTCULLIS_*` environment variables.
    #[arg(long, short, global = true, env = "PORTCULLIS_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gRPC server (migrating the database first unless
    /// `migrate_on_start` is off). Stops gracefully on SIGTERM or Ctrl-C.
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Manage users from the command line (for bootstrapping).
    #[command(subcommand)]
    User(UserCommand),
    /// Manage API keys from the command line (for bootstrapping a service
    /// before any admin tooling exists).
    #[command(subcommand)]
    Key(KeyCommand),
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Create an API key and print it once. Only its hash is stored.
    Create {
        /// Email of the key's owner (often a service account).
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
    /// Revoke an API key at once.
    Revoke {
        /// The key's id.
        id: i64,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum CliEnvironment {
    Live,
    Test,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user, e.g. the first admin of a fresh deployment. The password
    /// is read from a prompt, from standard input with `--password-stdin`, or
    /// from `PORTCULLIS_USER_PASSWORD`.
    Create {
        /// The user's email address.
        #[arg(long)]
        email: String,
        /// The user's role.
        #[arg(long, value_enum, default_value_t = CliRole::User)]
        role: CliRole,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
        /// Create a service account: no password, never logs in, owns API
        /// keys for a program.
        #[arg(long)]
        service: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum CliRole {
    User,
    Admin,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref())?;
    // Held to the end: dropping it sends the traces still queued.
    let _telemetry = telemetry::init(&config)?;
    match cli.command {
        Command::Serve => {
            let listener = TcpListener::bind(config.listen_addr)
                .await
                .with_context(|| format!("binding listen_addr {}", config.listen_addr))?;
            let (first, second) = shutdown_signals();
            App::build(config, Arc::new(SystemClock)).await?.serve_with(listener, first, second).await
        }
        Command::Migrate => {
            let store = portcullis::store::SqlStore::connect(&config.database_url, 1).await?;
            store.migrate().await?;
            eprintln!("migrations applied");
            Ok(())
        }
        Command::User(UserCommand::Create { email, role, password_stdin, service }) => {
            let password = if service { String::new() } else { read_password(password_stdin)? };
            let app = App::build(config, Arc::new(SystemClock)).await?;
            let role = match role {
                CliRole::User => Role::User,
                CliRole::Admin => Role::Admin,
            };
            let user = app
                .domain()
                .create_user_unchecked(
                    &Ctx::system(),
                    NewUserInput {
                        email,
                        password,
                        role,
                        kind: if service { UserKind::Service } else { UserKind::Human },
                        session_lifetime: None,
                    },
                )
                .await?;
            println!("created user {} <{}> with role {}", user.id, user.email.as_str(), role.as_str());
            Ok(())
        }
        Command::Key(KeyCommand::Create { owner, name, scopes, env }) => {
            let app = App::build(config, Arc::new(SystemClock)).await?;
            let environment = match env {
                CliEnvironment::Live => KeyEnvironment::Live,
                CliEnvironment::Test => KeyEnvironment::Test,
            };
            let issued =
                app.domain().create_key_unchecked(&Ctx::system(), &owner, &name, scopes, environment).await?;
            eprintln!(
                "created API key {} ({}) for {owner}; it is shown once:",
                issued.api_key.id, issued.api_key.display_prefix
            );
            println!("{}", secrecy::ExposeSecret::expose_secret(&issued.key));
            Ok(())
        }
        Command::Key(KeyCommand::Revoke { id }) => {
            let app = App::build(config, Arc::new(SystemClock)).await?;
            app.domain().revoke_key_unchecked(&Ctx::system(), KeyId::new(id)).await?;
            eprintln!("revoked API key {id}");
            Ok(())
        }
    }
}

/// The new user's password: environment, standard input, or a prompt.
fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    if let Ok(password) = std::env::var("PORTCULLIS_USER_PASSWORD") {
        return Ok(password);
    }
    if from_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_owned());
    }
    let first = rpassword::prompt_password("Password: ")?;
    let second = rpassword::prompt_password("Repeat password: ")?;
    if first != second {
        bail!("the passwords do not match");
    }
    Ok(first)
}

/// Two futures: the first resolves on the first SIGTERM or SIGINT (a
/// graceful stop), the second on the next one (stop at once).
fn shutdown_signals() -> (impl Future<Output = ()> + Send, impl Future<Output = ()> + Send) {
    let (tx, rx) = tokio::sync::watch::channel(0u32);
    tokio::spawn(async move {
        loop {
            signal().await;
            let count = *tx.borrow() + 1;
            if count == 1 {
                tracing::info!("shutdown signal received; draining (a second signal stops at once)");
            } else {
                tracing::warn!("second shutdown signal: stopping at once");
            }
            if tx.send(count).is_err() {
                return;
            }
        }
    });
    let mut first = rx.clone();
    let mut second = rx;
    (
        async move {
            let _ = first.wait_for(|count| *count >= 1).await;
        },
        async move {
            let _ = second.wait_for(|count| *count >= 2).await;
        },
    )
}

/// Resolves on SIGTERM or SIGINT.
async fn signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {},
        () = terminate => {},
    }
}
