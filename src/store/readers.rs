//! Dedicated read connections for the validator's cache misses.
//!
//! sqlx's pool tests every connection it gets back — a round trip to
//! PostgreSQL (a `Sync` message), a hand-off to SQLite's worker thread — in
//! a task it spawns for the purpose: on the one-query miss path that costs
//! about as much as the query itself. The readers are a few connections of
//! their own, held for the life of the store and used one query at a time:
//! no check-out, no return, no test, unless a query on one was cut short
//! (its caller went away), which is the case the pool's test is for.
//!
//! When every reader is busy, a miss goes to the pool as before. A reader
//! whose query failed is dropped; the next miss that finds its slot empty
//! opens it again, within `database_timeout`. Every query still goes
//! through the circuit breaker (the caller's `SqlStore::gated`).

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use sea_orm::sqlx::{self, ConnectOptions as _, Connection};
use tokio::sync::Mutex;

/// A few dedicated connections of one backend.
pub(crate) struct Readers<C: Connection> {
    slots: Box<[Mutex<Slot<C>>]>,
    /// Where the next search for a free reader starts (spreads the load).
    next: AtomicUsize,
    options: C::Options,
    /// Longest wait for a new connection to open.
    timeout: Duration,
}

/// One reader: its connection, once opened.
struct Slot<C> {
    connection: Option<C>,
    /// A query on it was cut short: test it before the next one.
    interrupted: bool,
}

impl<C: Connection> std::fmt::Debug for Readers<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readers").field("count", &self.slots.len()).finish_non_exhaustive()
    }
}

impl<C: Connection> Readers<C> {
    /// `count` readers (none opened yet) connecting with `options`.
    pub(crate) fn new(count: usize, options: C::Options, timeout: Duration) -> Self {
        let slots = (0..count).map(|_| Mutex::new(Slot { connection: None, interrupted: false })).collect();
        Self { slots, next: AtomicUsize::new(0), options, timeout }
    }

    /// Runs `query` on a free reader; `None` when every reader is busy
    /// (the caller uses the pool then).
    pub(crate) async fn run<T>(
        &self,
        query: impl AsyncFnOnce(&mut C) -> Result<T, sqlx::Error>,
    ) -> Option<Result<T, sqlx::Error>> {
        let count = self.slots.len();
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..count {
            if let Ok(mut slot) = self.slots[(first + i) % count].try_lock() {
                return Some(self.run_on(&mut slot, query).await);
            }
        }
        None
    }

    async fn run_on<T>(
        &self,
        slot: &mut Slot<C>,
        query: impl AsyncFnOnce(&mut C) -> Result<T, sqlx::Error>,
    ) -> Result<T, sqlx::Error> {
        if slot.interrupted {
            slot.interrupted = false;
            if let Some(mut connection) = slot.connection.take()
                && connection.ping().await.is_ok()
            {
                slot.connection = Some(connection);
            }
        }
        let connection = match &mut slot.connection {
            Some(connection) => connection,
            empty @ None => {
                let opened = tokio::time::timeout(self.timeout, self.options.connect())
                    .await
                    .map_err(|_| sqlx::Error::Io(std::io::ErrorKind::TimedOut.into()))??;
                empty.insert(opened)
            }
        };
        // Cleared only if the query runs to its end, with or without rows.
        slot.interrupted = true;
        let result = query(connection).await;
        slot.interrupted = false;
        if result.is_err() {
            slot.connection = None;
        }
        result
    }
}

/// How many readers a store gets: one per core, at least four (with 16
/// misses in flight on 2 cores, two readers left most of them to the pool;
/// four halved those), at most eight, and never more than half the pool's
/// size.
#[must_use]
pub(crate) fn reader_count(max_connections: u32) -> usize {
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
    let half_pool = usize::try_from(max_connections / 2).unwrap_or(usize::MAX);
    cores.clamp(4, 8).min(half_pool)
}

#[cfg(test)]
mod tests {
    use std::str::FromStr as _;

    use sea_orm::sqlx::{
        PgConnection, SqliteConnection, postgres::PgConnectOptions, query_scalar,
        sqlite::SqliteConnectOptions,
    };

    use super::*;

    /// A query cut short (its caller went away) leaves the reader in a
    /// state the next query must not see: it is tested first, and the next
    /// query gets its own answer.
    #[tokio::test]
    async fn a_query_cut_short_never_leaks_into_the_next_one_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let options = SqliteConnectOptions::new().filename(dir.path().join("r.db")).create_if_missing(true);
        let readers = Readers::<SqliteConnection>::new(1, options, Duration::from_secs(5));
        let slow = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 3000000) \
                    SELECT count(*) FROM c";
        cut_short_then_ask!(&readers, SqliteConnection, slow);
    }

    /// The same on PostgreSQL, where the cut query's answer would still be
    /// on the wire (run where `PORTCULLIS_TEST_DATABASE_URL` is set, as
    /// `scripts/test` and CI do).
    #[tokio::test]
    async fn a_query_cut_short_never_leaks_into_the_next_one_on_postgres() {
        let Ok(url) = std::env::var("PORTCULLIS_TEST_DATABASE_URL") else {
            assert!(std::env::var_os("CI").is_none(), "CI must set PORTCULLIS_TEST_DATABASE_URL");
            return;
        };
        let options = PgConnectOptions::from_str(&url).unwrap();
        let readers = Readers::<PgConnection>::new(1, options, Duration::from_secs(5));
        cut_short_then_ask!(&readers, PgConnection, "SELECT CAST(count(*) AS BIGINT) FROM pg_sleep(0.3)");
    }

    /// Opens a reader, cuts `slow` short on it, then asks it three more
    /// questions (a macro: the two backends' connections share no trait
    /// that runs a query).
    macro_rules! cut_short_then_ask {
        ($readers:expr, $connection:ty, $slow:expr) => {{
            let readers = $readers;
            for n in 1..5_i64 {
                if n == 2 {
                    let cut = tokio::time::timeout(
                        Duration::from_millis(50),
                        readers.run(async |c: &mut $connection| {
                            query_scalar::<_, i64>($slow).fetch_one(c).await
                        }),
                    )
                    .await;
                    assert!(cut.is_err(), "the slow query should still have been running");
                }
                let sql = sqlx::AssertSqlSafe(format!("SELECT CAST({n} AS BIGINT)"));
                let answer =
                    readers.run(async |c: &mut $connection| query_scalar::<_, i64>(sql).fetch_one(c).await);
                assert_eq!(answer.await.unwrap().unwrap(), n, "each query gets its own answer");
            }
        }};
    }
    use cut_short_then_ask;
}
