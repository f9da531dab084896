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
pub mod breaker;
mod connect;
mod entity;
mod keys;
mod limits;
mod mfa;
mod readers;
mod sessions;
mod users;

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectionTrait as _, DatabaseConnection, DbErr, SqlErr};

use self::breaker::{Breaker, Gated};
pub use self::connect::{ConnectError, PoolSettings};
use self::readers::{Readers, reader_count};
use crate::domain::{
    error::{Error, Result},
    ports::{RevocationListener, Store},
};

/// The database, behind the queries portcullis needs.
#[derive(Clone, Debug)]
pub struct SqlStore {
    /// Every statement goes through the circuit breaker.
    db: Gated,
    /// Dedicated connections for the validator's one-row reads.
    readers: Arc<AnyReaders>,
    /// How long a call waits for a connection (and the health ping for an
    /// answer).
    timeout: Duration,
}

impl SqlStore {
    /// Connects to `url` (SQLite or PostgreSQL) with a pool of at most
    /// `max_connections` and the default `database_timeout` (500 ms).
    ///
    /// # Errors
    /// As [`SqlStore::connect_with`].
    pub async fn connect(url: &str, max_connections: u32) -> std::result::Result<Self, ConnectError> {
        Self::connect_with(url, PoolSettings { max_connections, ..PoolSettings::default() }).await
    }

    /// Connects to `url` (SQLite or PostgreSQL) with `settings`.
    ///
    /// # Errors
    /// The URL is not understood or the database cannot be reached; the
    /// message says why in one line (refused, no such database,
    /// authentication failed, cannot open the file).
    pub async fn connect_with(url: &str, settings: PoolSettings) -> std::result::Result<Self, ConnectError> {
        let inner = connect::open(url, settings).await?;
        let breaker = Arc::new(Breaker::new(settings.timeout));
        let count = settings
            .readers
            .map_or_else(|| reader_count(settings.max_connections), |n| usize::try_from(n).unwrap_or(0));
        let readers = if inner.get_database_backend() == sea_orm::DbBackend::Postgres {
            let options = inner.get_postgres_connection_pool().connect_options();
            AnyReaders::Postgres(Readers::new(count, (*options).clone(), settings.timeout))
        } else {
            // Another connection to an in-memory database would be another
            // database.
            let in_memory = url.contains(":memory:") || url.contains("mode=memory");
            let options = inner.get_sqlite_connection_pool().connect_options();
            let count = if in_memory { 0 } else { count };
            AnyReaders::Sqlite(Readers::new(count, (*options).clone(), settings.timeout))
        };
        Ok(Self { db: Gated { inner, breaker }, readers: Arc::new(readers), timeout: settings.timeout })
    }

    /// At most one row of one of the validator's reads (`postgres` and
    /// `sqlite` are the statement in each dialect, with `key` as its one
    /// parameter): on a dedicated reader, or on the pool when every reader
    /// is busy; through the breaker either way.
    pub(crate) async fn read_row<R>(
        &self,
        postgres: &'static str,
        sqlite: &'static str,
        key: &[u8],
    ) -> Result<Option<R>>
    where
        R: Send
            + Unpin
            + for<'r> sea_orm::sqlx::FromRow<'r, sea_orm::sqlx::postgres::PgRow>
            + for<'r> sea_orm::sqlx::FromRow<'r, sea_orm::sqlx::sqlite::SqliteRow>,
    {
        use sea_orm::sqlx::{PgConnection, SqliteConnection, query_as};
        match (&*self.readers, self.pool()) {
            (AnyReaders::Postgres(readers), Pool::Postgres(pool)) => {
                self.gated(async {
                    let query =
                        async |c: &mut PgConnection| query_as(postgres).bind(key).fetch_optional(c).await;
                    match readers.run(query).await {
                        Some(read) => read,
                        None => query_as(postgres).bind(key).fetch_optional(pool).await,
                    }
                })
                .await
            }
            (AnyReaders::Sqlite(readers), Pool::Sqlite(pool)) => {
                self.gated(async {
                    let query =
                        async |c: &mut SqliteConnection| query_as(sqlite).bind(key).fetch_optional(c).await;
                    match readers.run(query).await {
                        Some(read) => read,
                        None => query_as(sqlite).bind(key).fetch_optional(pool).await,
                    }
                })
                .await
            }
            (_, Pool::Postgres(pool)) => self.gated(query_as(postgres).bind(key).fetch_optional(pool)).await,
            (_, Pool::Sqlite(pool)) => self.gated(query_as(sqlite).bind(key).fetch_optional(pool)).await,
        }
    }

    /// The connection without the breaker (start-up, migrations, pools).
    fn raw(&self) -> &DatabaseConnection {
        &self.db.inner
    }

    /// Follows the database's state as calls and the health ping see it:
    /// `true` while it answers.
    #[must_use]
    pub fn database_up(&self) -> tokio::sync::watch::Receiver<bool> {
        self.db.breaker.subscribe()
    }

    /// Applies every pending migration. On PostgreSQL under an advisory lock,
    /// so replicas or Jobs starting at once migrate one after the other (the
    /// later ones find nothing to do).
    ///
    /// # Errors
    /// A migration failed; nothing of it was applied on PostgreSQL.
    pub async fn migrate(&self) -> std::result::Result<(), DbErr> {
        if self.raw().get_database_backend() != sea_orm::DbBackend::Postgres {
            return Migrator::up(self.raw(), None).await;
        }
        connect::with_migration_lock(self.raw(), Migrator::up(self.raw(), None)).await
    }

    /// Starts a write transaction. On SQLite it takes the write lock at once
    /// (`BEGIN IMMEDIATE`), so concurrent writers wait their turn (up to the
    /// busy timeout) instead of failing when one upgrades a read to a write.
    pub(crate) async fn begin(&self) -> Result<sea_orm::DatabaseTransaction> {
        use sea_orm::{SqliteTransactionMode, TransactionOptions, TransactionTrait as _};
        self.db.breaker.admit().map_err(unavailable)?;
        let begun = self
            .raw()
            .begin_with_options(TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..TransactionOptions::default()
            })
            .await;
        self.db.breaker.record(&begun);
        begun.map_err(unavailable)
    }

    /// Runs a query written for sqlx directly (the validator's hot path)
    /// through the breaker, as [`Gated`] runs sea-orm's.
    pub(crate) async fn gated<T>(
        &self,
        call: impl Future<Output = std::result::Result<T, sea_orm::sqlx::Error>>,
    ) -> Result<T> {
        self.db.breaker.admit().map_err(unavailable)?;
        let result = call.await.map_err(|e| DbErr::Query(sea_orm::RuntimeErr::SqlxError(Arc::new(e))));
        self.db.breaker.record(&result);
        result.map_err(unavailable)
    }

    /// The backend's pool, for queries written for sqlx.
    pub(crate) fn pool(&self) -> Pool<'_> {
        match self.raw().get_database_backend() {
            sea_orm::DbBackend::Postgres => Pool::Postgres(self.raw().get_postgres_connection_pool()),
            _ => Pool::Sqlite(self.raw().get_sqlite_connection_pool()),
        }
    }

    /// The connection pool's use: (open, idle, most), for metrics.
    #[must_use]
    pub fn pool_use(&self) -> (u32, u32, u32) {
        match self.raw().get_database_backend() {
            sea_orm::DbBackend::Sqlite => {
                let pool = self.raw().get_sqlite_connection_pool();
                (
                    pool.size(),
                    u32::try_from(pool.num_idle()).unwrap_or(u32::MAX),
                    pool.options().get_max_connections(),
                )
            }
            sea_orm::DbBackend::Postgres => {
                let pool = self.raw().get_postgres_connection_pool();
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
        let _ = self.db.inner.close().await;
    }
}

#[async_trait]
impl Store for SqlStore {
    /// The health probe: always asks the database (also while the breaker
    /// is open), within `database_timeout`, and tells the breaker.
    async fn ping(&self) -> Result<()> {
        let answered = match tokio::time::timeout(self.timeout, self.raw().ping()).await {
            Ok(answered) => answered,
            Err(_) => Err(DbErr::Custom(format!("no answer within {} ms", self.timeout.as_millis()))),
        };
        match &answered {
            Ok(()) => self.db.breaker.close(),
            Err(err) => self.db.breaker.trip(err),
        }
        answered.map_err(unavailable)
    }

    /// True on PostgreSQL: replicas share revocations by `NOTIFY`.
    fn is_shared(&self) -> bool {
        self.raw().get_database_backend() == sea_orm::DbBackend::Postgres
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
        let pool = self.raw().get_postgres_connection_pool();
        let mut listener = sea_orm::sqlx::postgres::PgListener::connect_with(pool)
            .await
            .map_err(|e| Error::Unavailable(Box::new(e)))?;
        listener.listen(REVOCATION_CHANNEL).await.map_err(|e| Error::Unavailable(Box::new(e)))?;
        Ok(Box::new(PgRevocations(listener)))
    }
}

/// The readers of the store's backend.
#[derive(Debug)]
enum AnyReaders {
    Postgres(Readers<sea_orm::sqlx::PgConnection>),
    Sqlite(Readers<sea_orm::sqlx::SqliteConnection>),
}

/// A backend's sqlx pool.
pub(crate) enum Pool<'a> {
    Sqlite(&'a sea_orm::sqlx::SqlitePool),
    Postgres(&'a sea_orm::sqlx::PgPool),
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
