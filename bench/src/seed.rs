//! Fills a migrated portcullis database (SQLite or PostgreSQL) with users and
//! active sessions for the load tool, and writes the sessions' tokens to a
//! file (one per line) for the `validate-miss` mode.
//!
//! Tokens are made by the server's own [`TokenFormat`] and only their
//! SHA-256 is stored, as the server does; every user gets the same password
//! (hashed once, with the server's default argon2 parameters, so a login
//! never rewrites it). Rows go in with multi-row `INSERT`s, many statements
//! per transaction: a million sessions take a minute or two, not hours.
//! Values are bound through sea-orm, so timestamps are stored exactly as the
//! server's own writes store them.

use std::{
    io::{BufWriter, Write as _},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use portcullis::domain::{
    AuthMethod, Clock as _, Email, Role, SessionState, SystemClock, UserKind,
    password::{HashPriority, Hasher, HasherConfig, Password},
    token::{TokenFormat, TokenKind},
};
use sea_orm::{
    ConnectOptions, ConnectionTrait as _, Database, DatabaseConnection, DbBackend, Statement,
    TransactionTrait as _, Value,
};
use secrecy::ExposeSecret as _;

/// Columns of each seeded session row, in insertion order.
const SESSION_COLUMNS: &[&str] = &[
    "user_id",
    "token_hash",
    "state",
    "lifetime_secs",
    "created_at",
    "last_seen_at",
    "expires_at",
    "absolute_expires_at",
    "ip",
    "user_agent",
    "device_label",
    "auth_methods",
];

/// Columns of each seeded user row.
const USER_COLUMNS: &[&str] = &["email", "password_hash", "role", "kind", "created_at", "updated_at"];

/// Bound values one statement may carry: below SQLite's limit (32,766).
const MAX_PARAMETERS: usize = 32_000;

/// What to seed.
#[derive(Clone, Debug)]
pub struct SeedOptions {
    /// Database URL (`sqlite://FILE?mode=rwc` or `postgres://…`), already
    /// migrated (`portcullis migrate`).
    pub database_url: String,
    /// Users to create; sessions are spread over them round robin.
    pub users: u64,
    /// Active sessions to create.
    pub sessions: u64,
    /// Email of user `i`: `{}` is replaced by `i` (0-based).
    pub email_pattern: String,
    /// Every user's password.
    pub password: String,
    /// The server's `token_prefix`.
    pub token_prefix: String,
    /// How long the sessions stay valid from now.
    pub session_lifetime: Duration,
    /// Where the tokens go, one per line.
    pub tokens_out: PathBuf,
    /// Rows per `INSERT`.
    pub rows_per_statement: usize,
    /// Rows per transaction.
    pub rows_per_transaction: usize,
}

/// What was seeded.
#[derive(Clone, Copy, Debug)]
pub struct Seeded {
    /// Users created.
    pub users: u64,
    /// Sessions created (and tokens written).
    pub sessions: u64,
    /// Time taken.
    pub elapsed: Duration,
}

/// The email of account `index` under `pattern` (`bench{}@example.com`).
#[must_use]
pub fn email(pattern: &str, index: u64) -> String {
    pattern.replacen("{}", &index.to_string(), 1)
}

/// Seeds the database as `options` say; progress goes to standard error.
///
/// # Errors
/// The database cannot be reached or is not migrated, a write failed, the
/// token file cannot be written, or an option is out of range.
pub async fn seed(options: &SeedOptions) -> anyhow::Result<Seeded> {
    let started = Instant::now();
    if !options.email_pattern.contains("{}") {
        bail!("the email pattern needs a `{{}}` for the account number");
    }
    if options.users == 0 && options.sessions > 0 {
        bail!("sessions need at least one user");
    }
    let mut connect = ConnectOptions::new(options.database_url.clone());
    connect.max_connections(1).sqlx_logging(false);
    let db = Database::connect(connect).await.context("connecting to the database")?;
    let backend = db.get_database_backend();
    if backend == DbBackend::Sqlite {
        // This connection only: the server's own settings are untouched.
        db.execute_unprepared("PRAGMA journal_mode=WAL").await?;
        db.execute_unprepared("PRAGMA synchronous=OFF").await?;
    }
    db.execute_unprepared("SELECT 1 FROM sessions WHERE 1 = 0")
        .await
        .context("no sessions table: run `portcullis migrate` on this database first")?;

    let hasher = Hasher::new(HasherConfig {
        memory_kib: portcullis::config::Config::default().argon2_memory_kib,
        iterations: portcullis::config::Config::default().argon2_iterations,
        parallelism: portcullis::config::Config::default().argon2_parallelism,
        threads: 1,
        queue_depth: 1,
        priority: HashPriority::Normal,
    })?;
    let password_hash = hasher.hash(Password::parse(&options.password, "password")?).await?;
    let now = SystemClock.now();

    let user_ids = insert_users(&db, options, &password_hash, now).await?;
    let sessions = insert_sessions(&db, options, &user_ids, now).await?;
    Ok(Seeded { users: user_ids.len() as u64, sessions, elapsed: started.elapsed() })
}

/// `INSERT INTO table (columns) VALUES (…), (…) …` for `rows` rows, with the
/// backend's placeholders.
fn insert_sql(backend: DbBackend, table: &str, columns: &[&str], rows: usize, returning: &str) -> String {
    let mut sql = format!("INSERT INTO {table} ({}) VALUES ", columns.join(", "));
    let mut parameter = 0;
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for column in 0..columns.len() {
            if column > 0 {
                sql.push_str(", ");
            }
            parameter += 1;
            match backend {
                DbBackend::Postgres => {
                    sql.push('$');
                    sql.push_str(&parameter.to_string());
                }
                _ => sql.push('?'),
            }
        }
        sql.push(')');
    }
    sql.push_str(returning);
    sql
}

/// Rows per statement for a table of `columns`, within the options and the
/// parameter limit.
fn batch_rows(options: &SeedOptions, columns: usize) -> usize {
    options.rows_per_statement.clamp(1, MAX_PARAMETERS / columns)
}

async fn insert_users(
    db: &DatabaseConnection,
    options: &SeedOptions,
    password_hash: &str,
    now: DateTime<Utc>,
) -> anyhow::Result<Vec<i64>> {
    let backend = db.get_database_backend();
    let per_statement = batch_rows(options, USER_COLUMNS.len());
    let mut ids = Vec::with_capacity(usize::try_from(options.users)?);
    let txn = db.begin().await?;
    let mut next = 0;
    while next < options.users {
        let rows = usize::try_from((options.users - next).min(per_statement as u64))?;
        let mut values = Vec::with_capacity(rows * USER_COLUMNS.len());
        for i in next..next + rows as u64 {
            let email = Email::parse(&email(&options.email_pattern, i), "email")?;
            values.extend([
                Value::from(email.as_str()),
                Value::from(password_hash),
                Value::from(Role::User.as_str()),
                Value::from(UserKind::Human.as_str()),
                Value::from(now),
                Value::from(now),
            ]);
        }
        let sql = insert_sql(backend, "users", USER_COLUMNS, rows, " RETURNING id");
        for row in txn.query_all_raw(Statement::from_sql_and_values(backend, sql, values)).await? {
            ids.push(row.try_get::<i64>("", "id")?);
        }
        next += rows as u64;
    }
    txn.commit().await?;
    eprintln!("seeded {} users", ids.len());
    Ok(ids)
}

async fn insert_sessions(
    db: &DatabaseConnection,
    options: &SeedOptions,
    user_ids: &[i64],
    now: DateTime<Utc>,
) -> anyhow::Result<u64> {
    let backend = db.get_database_backend();
    let format = TokenFormat::new(&options.token_prefix);
    let lifetime = chrono::Duration::from_std(options.session_lifetime)?;
    let expires_at = now + lifetime;
    let absolute_expires_at = now + lifetime.max(chrono::Duration::days(30));
    let state = SessionState::Active.as_str();
    let methods = AuthMethod::join(&[AuthMethod::Password]);
    let per_statement = batch_rows(options, SESSION_COLUMNS.len());
    let full_sql = insert_sql(backend, "sessions", SESSION_COLUMNS, per_statement, "");
    let file = std::fs::File::create(&options.tokens_out)
        .with_context(|| format!("creating {}", options.tokens_out.display()))?;
    let mut tokens = BufWriter::with_capacity(1 << 20, file);

    let mut done = 0_u64;
    let mut txn = db.begin().await?;
    let mut in_txn = 0;
    let report_every = (options.sessions / 10).max(1);
    while done < options.sessions {
        let rows = usize::try_from((options.sessions - done).min(per_statement as u64))?;
        let mut values = Vec::with_capacity(rows * SESSION_COLUMNS.len());
        for i in done..done + rows as u64 {
            let (token, hash) = format.generate(TokenKind::Session)?;
            tokens.write_all(token.expose_secret().as_bytes())?;
            tokens.write_all(b"\n")?;
            let user_id = user_ids[usize::try_from(i % user_ids.len() as u64)?];
            values.extend([
                Value::from(user_id),
                Value::from(hash.0.to_vec()),
                Value::from(state),
                Value::from(lifetime.num_seconds()),
                Value::from(now),
                Value::from(now),
                Value::from(expires_at),
                Value::from(absolute_expires_at),
                Value::from("127.0.0.1"),
                Value::from("portcullis-bench"),
                Value::from("bench"),
                Value::from(methods.as_str()),
            ]);
        }
        let sql = if rows == per_statement {
            full_sql.clone()
        } else {
            insert_sql(backend, "sessions", SESSION_COLUMNS, rows, "")
        };
        txn.execute_raw(Statement::from_sql_and_values(backend, sql, values)).await?;
        let before = done;
        done += rows as u64;
        in_txn += rows;
        if in_txn >= options.rows_per_transaction {
            txn.commit().await?;
            txn = db.begin().await?;
            in_txn = 0;
        }
        if before / report_every != done / report_every {
            eprintln!("seeded {done} of {} sessions", options.sessions);
        }
    }
    txn.commit().await?;
    tokens.flush().with_context(|| format!("writing {}", options.tokens_out.display()))?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_follow_the_backend() {
        assert_eq!(
            insert_sql(DbBackend::Sqlite, "t", &["a", "b"], 2, ""),
            "INSERT INTO t (a, b) VALUES (?, ?), (?, ?)"
        );
        assert_eq!(
            insert_sql(DbBackend::Postgres, "t", &["a", "b"], 2, " RETURNING id"),
            "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4) RETURNING id"
        );
    }

    #[test]
    fn emails_number_the_accounts() {
        assert_eq!(email("bench{}@example.com", 42), "bench42@example.com");
    }
}
