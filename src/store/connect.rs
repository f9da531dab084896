//! Opening the database: the pool with short timeouts, errors a person can
//! act on, SQLite files only their owner can read, and the lock that lets
//! one PostgreSQL migration run at a time.
//!
//! The pool's own error for an unreachable database is "pool timed out"
//! after retrying until its timeout; so before the pool, one connection is
//! opened directly, and its error (refused, no such database,
//! authentication failed, cannot open the file) is the one reported, in one
//! line, at once.

use std::{
    path::{Path, PathBuf},
    str::FromStr as _,
    time::Duration,
};

use sea_orm::{
    DatabaseConnection, DbErr, SqlxPostgresConnector, SqlxSqliteConnector,
    sqlx::{
        self, ConnectOptions as _, Connection as _,
        postgres::{PgConnectOptions, PgConnection, PgPoolOptions},
        sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions},
    },
};

/// The pool's size and how long a call waits for a connection.
#[derive(Clone, Copy, Debug)]
pub struct PoolSettings {
    /// Most connections held open.
    pub max_connections: u32,
    /// PostgreSQL: longest wait for a connection, and for a new connection
    /// to open; then the call fails with `Unavailable`.
    pub timeout: Duration,
    /// SQLite: longest wait for a connection. Opening one is opening a
    /// local file, so a wait is only writers taking turns on it (SQLite
    /// writes one at a time); a burst of logins must queue, not fail. The
    /// server passes its `request_timeout`.
    pub sqlite_wait: Duration,
    /// Dedicated connections for the validator's reads (`None`: as many
    /// as [`reader_count`](super::readers::reader_count) says).
    pub readers: Option<u32>,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_connections: 10,
            timeout: Duration::from_millis(500),
            sqlite_wait: Duration::from_secs(10),
            readers: None,
        }
    }
}

/// A PostgreSQL connection idle this long is pinged before it is used.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(10);

/// Why the database could not be opened: one line that names it and the
/// cause once.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConnectError(String);

/// Opens the pool for `url`.
pub(super) async fn open(url: &str, settings: PoolSettings) -> Result<DatabaseConnection, ConnectError> {
    if url.starts_with("sqlite:") {
        open_sqlite(url, settings).await
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        open_postgres(url, settings).await
    } else {
        Err(ConnectError(format!(
            "database_url: `{}` is neither `sqlite:` nor `postgres:`",
            url.split(':').next().unwrap_or_default()
        )))
    }
}

async fn open_postgres(url: &str, settings: PoolSettings) -> Result<DatabaseConnection, ConnectError> {
    let options = PgConnectOptions::from_str(url)
        .map_err(|e| ConnectError(format!("database_url: not a usable PostgreSQL URL: {}", one_line(&e))))?
        .disable_statement_logging();
    let target = format!("{}:{}", options.get_host(), options.get_port());
    // One direct attempt: its error says what is wrong.
    match tokio::time::timeout(settings.timeout, PgConnection::connect_with(&options)).await {
        Ok(Ok(connection)) => {
            let _ = connection.close().await;
        }
        Ok(Err(err)) => return Err(postgres_error(&target, &options, &err)),
        Err(_) => {
            return Err(ConnectError(format!(
                "cannot connect to PostgreSQL at {target}: no answer within {} ms (database_timeout)",
                settings.timeout.as_millis()
            )));
        }
    }
    let pool = PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .min_connections(1)
        .acquire_timeout(settings.timeout)
        // sqlx pings every connection before handing it out: a round trip
        // per query. Only one idle for a while is asked; a connection that
        // broke meanwhile fails its query, and the pool drops it.
        .test_before_acquire(false)
        .before_acquire(|connection, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IF_IDLE_FOR {
                    connection.ping().await?;
                }
                Ok(true)
            })
        })
        .connect_with(options.clone())
        .await
        .map_err(|err| postgres_error(&target, &options, &err))?;
    Ok(SqlxPostgresConnector::from_sqlx_postgres_pool(pool))
}

/// What went wrong with PostgreSQL, said for a person.
fn postgres_error(target: &str, options: &PgConnectOptions, err: &sqlx::Error) -> ConnectError {
    let database = options.get_database().unwrap_or(options.get_username());
    let message = match err {
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            format!(
                "cannot connect to PostgreSQL at {target}: connection refused (is it running, on this port?)"
            )
        }
        sqlx::Error::Io(io) => format!("cannot connect to PostgreSQL at {target}: {io}"),
        sqlx::Error::Tls(tls) => format!("cannot connect to PostgreSQL at {target}: TLS: {}", one_line(tls)),
        sqlx::Error::PoolTimedOut => format!("cannot connect to PostgreSQL at {target}: no answer in time"),
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some("3D000") => {
                format!("PostgreSQL at {target}: database \"{database}\" does not exist (create it first)")
            }
            Some("28P01" | "28000") => format!(
                "PostgreSQL at {target}: authentication failed for user \"{}\" (check the user and password in database_url)",
                options.get_username()
            ),
            Some(code) => format!("PostgreSQL at {target}: {} (SQLSTATE {code})", db.message()),
            None => format!("PostgreSQL at {target}: {}", db.message()),
        },
        other => format!("cannot connect to PostgreSQL at {target}: {}", one_line(other)),
    };
    ConnectError(message)
}

async fn open_sqlite(url: &str, settings: PoolSettings) -> Result<DatabaseConnection, ConnectError> {
    let options = SqliteConnectOptions::from_str(url)
        .map_err(|e| ConnectError(format!("database_url: not a usable SQLite URL: {}", one_line(&e))))?
        .journal_mode(SqliteJournalMode::Wal)
        .disable_statement_logging();
    let file = options.get_filename().to_owned();
    let in_memory = file.as_os_str() == ":memory:" || url.contains("mode=memory");
    let shown = std::path::absolute(&file).unwrap_or_else(|_| file.clone());
    if !in_memory {
        prepare_sqlite_file(&shown, url_creates(url))?;
    }
    let pool = SqlitePoolOptions::new()
        .max_connections(settings.max_connections)
        .min_connections(1)
        .acquire_timeout(settings.sqlite_wait.max(settings.timeout))
        // A ping would cost a hand-off to the connection's thread and back
        // per query; a file does not go away like a server.
        .test_before_acquire(false)
        .connect_with(options)
        .await
        .map_err(|err| {
            ConnectError(format!("cannot open SQLite database {}: {}", shown.display(), one_line(&err)))
        })?;
    Ok(SqlxSqliteConnector::from_sqlx_sqlite_pool(pool))
}

/// Whether the URL asks for the file to be made when missing (`mode=rwc`).
fn url_creates(url: &str) -> bool {
    url.split_once('?').is_some_and(|(_, query)| query.split('&').any(|pair| pair == "mode=rwc"))
}

/// Checks the file (with a useful message) and, when the URL asks for it
/// and the file is missing, creates it empty and readable by its owner only
/// (0600): SQLite gives its `-wal` and `-shm` files the database's mode.
fn prepare_sqlite_file(path: &Path, create: bool) -> Result<(), ConnectError> {
    if path.exists() {
        return Ok(());
    }
    let parent = path.parent().map_or_else(PathBuf::new, Path::to_path_buf);
    if !parent.as_os_str().is_empty() && !parent.is_dir() {
        return Err(ConnectError(format!(
            "cannot open SQLite database {}: the folder {} does not exist",
            path.display(),
            parent.display()
        )));
    }
    if !create {
        return Err(ConnectError(format!(
            "cannot open SQLite database {}: no such file (add ?mode=rwc to database_url to create it)",
            path.display()
        )));
    }
    let mut open = std::fs::OpenOptions::new();
    open.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
    match open.open(path) {
        Ok(_) => Ok(()),
        // Made by someone else meanwhile: theirs to own.
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(err) => Err(ConnectError(format!("cannot create SQLite database {}: {err}", path.display()))),
    }
}

/// An error's message on one line.
fn one_line(err: &dyn std::fmt::Display) -> String {
    err.to_string().split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The advisory lock id that serialises migrations ("portcull" in ASCII).
const MIGRATION_LOCK: i64 = 0x706F_7274_6375_6C6C;

/// Runs `migrate` while holding a PostgreSQL advisory lock on a connection
/// of its own (not the pool's: the pool may have a single connection, which
/// the migration needs). The lock ends with that connection, also if the
/// process dies.
pub(super) async fn with_migration_lock(
    db: &DatabaseConnection,
    migrate: impl Future<Output = Result<(), DbErr>>,
) -> Result<(), DbErr> {
    let options = db.get_postgres_connection_pool().connect_options();
    let mut lock = PgConnection::connect_with(&options).await.map_err(|e| DbErr::Conn(sqlx_runtime(e)))?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut lock)
        .await
        .map_err(|e| DbErr::Exec(sqlx_runtime(e)))?;
    let migrated = migrate.await;
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)").bind(MIGRATION_LOCK).execute(&mut lock).await;
    let _ = lock.close().await;
    migrated
}

fn sqlx_runtime(err: sqlx::Error) -> sea_orm::RuntimeErr {
    sea_orm::RuntimeErr::SqlxError(std::sync::Arc::new(err))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rwc_is_read_from_the_query() {
        assert!(url_creates("sqlite://a.db?mode=rwc"));
        assert!(url_creates("sqlite://a.db?cache=shared&mode=rwc"));
        assert!(!url_creates("sqlite://a.db"));
        assert!(!url_creates("sqlite://a.db?mode=rw"));
    }
}
