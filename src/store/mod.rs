//! Persistence: sea-orm entities and the queries the rules need, on SQLite or
//! PostgreSQL. Returns the plain records of `domain`; no sea-orm type leaves
//! this module. Every database failure becomes `domain::Error::Unavailable`
//! (or `AlreadyExists` for a unique-key clash), so a fault is never read as
//! "valid".

mod audit;
mod entity;
mod keys;
mod limits;
mod mfa;
mod sessions;
mod users;

use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbErr, SqlErr};

use crate::domain::Error;

pub use keys::NewKey;
pub use limits::LockPolicy;
pub use mfa::{CodePurpose, MAX_CODE_ATTEMPTS};
pub use sessions::{NewSession, Rotation, SessionMatch};
pub use users::NewUser;

/// The database, behind the queries portcullis needs.
#[derive(Clone, Debug)]
pub struct Store {
    db: DatabaseConnection,
}

impl Store {
    /// Connects to `url` (SQLite or PostgreSQL) with a pool of at most
    /// `max_connections`.
    ///
    /// # Errors
    /// The database cannot be reached or the URL is not understood.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, DbErr> {
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
    pub async fn migrate(&self) -> Result<(), DbErr> {
        Migrator::up(&self.db, None).await
    }

    /// Checks that the database answers.
    ///
    /// # Errors
    /// `Unavailable` when it does not.
    pub async fn ping(&self) -> Result<(), Error> {
        self.db.ping().await.map_err(unavailable)
    }

    /// Starts a write transaction. On SQLite it takes the write lock at once
    /// (`BEGIN IMMEDIATE`), so concurrent writers wait their turn (up to the
    /// busy timeout) instead of failing when one upgrades a read to a write.
    pub(crate) async fn begin(&self) -> Result<sea_orm::DatabaseTransaction, Error> {
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

    /// True on PostgreSQL (where replicas share revocations by NOTIFY).
    #[must_use]
    pub fn is_postgres(&self) -> bool {
        self.db.get_database_backend() == sea_orm::DbBackend::Postgres
    }

    /// Tells every replica (PostgreSQL `NOTIFY`) to forget `what`.
    pub async fn notify_revocation(&self, what: &str) -> Result<(), Error> {
        let statement = sea_orm::Statement::from_sql_and_values(
            sea_orm::DbBackend::Postgres,
            "SELECT pg_notify($1, $2)",
            [REVOCATION_CHANNEL.into(), what.into()],
        );
        self.db.execute_raw(statement).await.map_err(unavailable)?;
        Ok(())
    }

    /// A listener for revocation notifications (PostgreSQL only).
    pub async fn revocation_listener(&self) -> Result<RevocationListener, Error> {
        let pool = self.db.get_postgres_connection_pool();
        let mut listener = sea_orm::sqlx::postgres::PgListener::connect_with(pool)
            .await
            .map_err(|e| Error::Unavailable(Box::new(e)))?;
        listener.listen(REVOCATION_CHANNEL).await.map_err(|e| Error::Unavailable(Box::new(e)))?;
        Ok(RevocationListener(listener))
    }

    /// Closes the pool.
    pub async fn close(self) {
        let _ = self.db.close().await;
    }
}

/// The NOTIFY channel of revocations.
const REVOCATION_CHANNEL: &str = "portcullis_revocations";

/// Receives revocations other replicas announce.
pub struct RevocationListener(sea_orm::sqlx::postgres::PgListener);

impl RevocationListener {
    /// The next revocation's payload; `None` when the connection was lost
    /// and re-established (notifications may have been missed).
    pub async fn next(&mut self) -> Result<Option<String>, Error> {
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
