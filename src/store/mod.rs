//! Persistence: [`SqlStore`] implements the domain's seam
//! (`domain::ports::Store`) with sea-orm entities and queries, on SQLite or
//! PostgreSQL. It takes and returns the records of `domain::records`; no
//! sea-orm type leaves this module. Every database failure becomes
//! `Error::Unavailable` (or `AlreadyExists` for a unique-key clash), so a
//! fault is never read as "valid".
//!
//! Knows nothing of policy: the rules decide (how long a lock lasts, how
//! many attempts a code gets, which sessions a change revokes) and the store
//! applies what it is told, atomically. From `domain` it imports only the
//! seam (`ports`), the records (`records`), the ids (`ids`) and the errors
//! (`error`).

mod audit;
mod entity;
mod keys;
mod limits;
mod mfa;
mod sessions;
mod users;

use std::time::Duration;

use async_trait::async_trait;
use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbErr, SqlErr};

use crate::domain::{
    error::{Error, Result},
    ports::{RevocationListener, Store},
};

/// The database, behind the queries portcullis needs.
#[derive(Clone, Debug)]
pub struct SqlStore {
    db: DatabaseConnection,
}

impl SqlStore {
    /// Connects to `url` (SQLite or PostgreSQL) with a pool of at most
    /// `max_connections`.
    ///
    /// # Errors
    /// The database cannot be reached or the URL is not understood.
    pub async fn connect(url: &str, max_connections: u32) -> std::result::Result<Self, DbErr> {
        let mut options = ConnectOptions::new(url.to_owned());
        options
            .max_connections(max_connections)
            .min_connections(1)
            .connect_timeout(Duration::from_secs(5))
            .acquire_timeout(Duration::from_secs(5))
            .sqlx_logging(false);
        let db = Database::connect(options).await?;
        if url.starts_with("sqlite:") {
            // WAL lets readers (ValidateToken) proceed while a login writes.
            db.execute_unprepared("PRAGMA journal_mode=WAL").await?;
        }
        Ok(Self { db })
    }

    /// Applies every pending migration.
    ///
    /// # Errors
    /// A migration failed; nothing of it was applied on PostgreSQL.
    pub async fn migrate(&self) -> std::result::Result<(), DbErr> {
        Migrator::up(&self.db, None).await
    }

    /// Starts a write transaction. On SQLite it takes the write lock at once
    /// (`BEGIN IMMEDIATE`), so concurrent writers wait their turn (up to the
    /// busy timeout) instead of failing when one upgrades a read to a write.
    pub(crate) async fn begin(&self) -> Result<sea_orm::DatabaseTransaction> {
        use sea_orm::{SqliteTransactionMode, TransactionOptions, TransactionTrait as _};
        self.db
            .begin_with_options(TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..TransactionOptions::default()
            })
            .await
            .map_err(unavailable)
    }

    /// The connection pool's use: (open, idle, most), for metrics.
    #[must_use]
    pub fn pool_use(&self) -> (u32, u32, u32) {
        match self.db.get_database_backend() {
            sea_orm::DbBackend::Sqlite => {
                let pool = self.db.get_sqlite_connection_pool();
                (
                    pool.size(),
                    u32::try_from(pool.num_idle()).unwrap_or(u32::MAX),
                    pool.options().get_max_connections(),
                )
            }
            sea_orm::DbBackend::Postgres => {
                let pool = self.db.get_postgres_connection_pool();
                (
                    pool.size(),
                    u32::try_from(pool.num_idle()).unwrap_or(u32::MAX),
                    pool.options().get_max_connections(),
                )
            }
            _ => (0, 0, 0),
        }
    }

    /// Closes the pool.
    pub async fn close(self) {
        let _ = self.db.close().await;
    }
}

#[async_trait]
impl Store for SqlStore {
    async fn ping(&self) -> Result<()> {
        self.db.ping().await.map_err(unavailable)
    }

    /// True on PostgreSQL: replicas share revocations by `NOTIFY`.
    fn is_shared(&self) -> bool {
        self.db.get_database_backend() == sea_orm::DbBackend::Postgres
    }

    async fn announce_revocation(&self, what: &str) -> Result<()> {
        let statement = sea_orm::Statement::from_sql_and_values(
            sea_orm::DbBackend::Postgres,
            "SELECT pg_notify($1, $2)",
            [REVOCATION_CHANNEL.into(), what.into()],
        );
        self.db.execute_raw(statement).await.map_err(unavailable)?;
        Ok(())
    }

    /// PostgreSQL only: `LISTEN` on a connection of its own.
    async fn revocation_listener(&self) -> Result<Box<dyn RevocationListener>> {
        let pool = self.db.get_postgres_connection_pool();
        let mut listener = sea_orm::sqlx::postgres::PgListener::connect_with(pool)
            .await
            .map_err(|e| Error::Unavailable(Box::new(e)))?;
        listener.listen(REVOCATION_CHANNEL).await.map_err(|e| Error::Unavailable(Box::new(e)))?;
        Ok(Box::new(PgRevocations(listener)))
    }
}

/// The NOTIFY channel of revocations.
const REVOCATION_CHANNEL: &str = "portcullis_revocations";

/// Receives the revocations other replicas announce.
struct PgRevocations(sea_orm::sqlx::postgres::PgListener);

#[async_trait]
impl RevocationListener for PgRevocations {
    async fn next(&mut self) -> Result<Option<String>> {
        match self.0.try_recv().await {
            Ok(Some(notification)) => Ok(Some(notification.payload().to_owned())),
            Ok(None) => Ok(None),
            Err(err) => Err(Error::Unavailable(Box::new(err))),
        }
    }
}

/// Maps any database failure to `Unavailable` (fail closed).
pub(crate) fn unavailable(err: DbErr) -> Error {
    Error::Unavailable(Box::new(err))
}

/// Maps a unique-key clash to `AlreadyExists(what)`, anything else to
/// `Unavailable`.
pub(crate) fn conflict_or_unavailable(what: &'static str) -> impl FnOnce(DbErr) -> Error {
    move |err| match err.sql_err() {
        Some(SqlErr::UniqueConstraintViolation(_)) => Error::AlreadyExists(what),
        _ => unavailable(err),
    }
}
