//! Failing fast while the database is down: a circuit breaker in front of
//! the connection pool, and [`Gated`], the connection every query of the
//! store goes through.
//!
//! Closed (the normal state) costs one atomic load per call. The first call
//! that fails for a reason of the connection (refused, reset, the database
//! gone — not a constraint or a bad value) opens it: from then
//! on calls answer `Unavailable` at once instead of each waiting for the
//! pool's timeout, except one call every [`RETRY_AFTER`], which is let
//! through as a probe. The health probe's ping always goes through. Any
//! answer from the database (a success, or an error the database itself
//! raised) closes it again. Every change is published on a watch channel, so
//! health can turn NOT_SERVING the moment a call fails.
//!
//! A call that waited too long for a pooled connection opens it only if the
//! database has not answered anyone lately (within the answer window): while
//! other calls get their answers, a full pool is load (SQLite writers taking
//! turns, a burst of logins), not an outage, and reading it as one would
//! turn every call away for a moment.
//!
//! A mechanism, not a policy: it decides nothing about what a failure means
//! for a caller (that is `Unavailable`, fail closed, as everywhere).

use std::{
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, ExecResult, QueryResult, RuntimeErr, Statement,
};
use tokio::sync::watch;

/// While open, how often one call is let through to try the database.
pub const RETRY_AFTER: Duration = Duration::from_millis(500);

/// The circuit breaker; shared by the store's clones.
#[derive(Debug)]
pub struct Breaker {
    /// Fast path: false while closed.
    open: AtomicBool,
    /// When the next probe may go through (meaningful while open).
    next_probe: Mutex<Instant>,
    /// `true` while the database answers.
    up: watch::Sender<bool>,
    /// The clock's origin for `last_answer`.
    epoch: Instant,
    /// When the database last answered a call, in nanoseconds since `epoch`.
    last_answer: AtomicU64,
    /// How recent an answer makes a pool timeout load rather than an outage.
    answer_window: Duration,
}

/// Whether a call may go to the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Closed: go ahead.
    Closed,
    /// Open, but this call is the probe.
    Probe,
}

impl Default for Breaker {
    fn default() -> Self {
        Self::new(Duration::from_millis(500))
    }
}

impl Breaker {
    /// A closed breaker; a pool timeout opens it only when the database has
    /// answered nothing for `answer_window` (the store passes
    /// `database_timeout`).
    #[must_use]
    pub fn new(answer_window: Duration) -> Self {
        let epoch = Instant::now();
        Self {
            open: AtomicBool::new(false),
            next_probe: Mutex::new(epoch),
            up: watch::Sender::new(true),
            epoch,
            last_answer: AtomicU64::new(0),
            answer_window,
        }
    }

    /// Lets a call through, or refuses it while the database is down.
    ///
    /// # Errors
    /// Open, and not this call's turn to probe.
    pub fn admit(&self) -> Result<Admission, DbErr> {
        if !self.open.load(Ordering::Acquire) {
            return Ok(Admission::Closed);
        }
        let now = Instant::now();
        let mut next = self.next_probe.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if now >= *next {
            *next = now + RETRY_AFTER;
            return Ok(Admission::Probe);
        }
        Err(DbErr::Custom(
            "the database did not answer a moment ago; failing fast until it does (circuit open)".into(),
        ))
    }

    /// Records how a call that went through ended.
    pub fn record<T>(&self, result: &Result<T, DbErr>) {
        match result {
            Err(err) if is_pool_timeout(err) => {
                if self.answered_within(self.answer_window) {
                    tracing::debug!(
                        "no pooled connection in time while the database answers others: load, not an outage"
                    );
                } else {
                    self.trip(err);
                }
            }
            Err(err) if is_outage(err) => self.trip(err),
            _ => self.close(),
        }
    }

    /// Notes that the database answered just now.
    fn answered(&self) {
        let since = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_answer.store(since, Ordering::Relaxed);
    }

    /// Whether the database answered some call within `window`.
    fn answered_within(&self, window: Duration) -> bool {
        let last = Duration::from_nanos(self.last_answer.load(Ordering::Relaxed));
        let at = self.epoch + last;
        last > Duration::ZERO && at.elapsed() <= window
    }

    /// Opens the breaker (a failure of the connection).
    pub fn trip(&self, why: &dyn std::fmt::Display) {
        {
            let mut next = self.next_probe.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            *next = Instant::now() + RETRY_AFTER;
        }
        if !self.open.swap(true, Ordering::AcqRel) {
            tracing::warn!(error = %why, "database unreachable: calls that need it answer UNAVAILABLE at once");
            self.up.send_replace(false);
        }
    }

    /// Closes the breaker (the database answered).
    pub fn close(&self) {
        self.answered();
        if self.open.load(Ordering::Acquire) && self.open.swap(false, Ordering::AcqRel) {
            tracing::info!("database reachable again");
            self.up.send_replace(true);
        }
    }

    /// Whether the database answered last time (closed).
    #[must_use]
    pub fn is_up(&self) -> bool {
        !self.open.load(Ordering::Acquire)
    }

    /// Follows the state: `true` while the database answers.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.up.subscribe()
    }
}

/// Whether `err` says the database could not be reached or the connection
/// broke (rather than the database refusing one statement).
#[must_use]
pub fn is_outage(err: &DbErr) -> bool {
    match err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => sqlx_is_outage(e),
        _ => false,
    }
}

/// Whether `err` is a wait for a pooled connection that ran out: an outage
/// only if nothing else gets answers either.
#[must_use]
pub fn is_pool_timeout(err: &DbErr) -> bool {
    match err {
        DbErr::ConnectionAcquire(sea_orm::ConnAcquireErr::Timeout) => true,
        DbErr::Conn(RuntimeErr::SqlxError(e))
        | DbErr::Exec(RuntimeErr::SqlxError(e))
        | DbErr::Query(RuntimeErr::SqlxError(e)) => matches!(**e, sea_orm::sqlx::Error::PoolTimedOut),
        _ => false,
    }
}

/// The sqlx errors that mean the connection, not the statement, failed.
#[must_use]
pub fn sqlx_is_outage(err: &sea_orm::sqlx::Error) -> bool {
    use sea_orm::sqlx::Error as E;
    match err {
        E::Io(_) | E::Tls(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed | E::Protocol(_) => true,
        E::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 57P01-57P03: the server is shutting
            // down or starting; 3D000: the database is gone; 53300: too
            // many connections.
            code.starts_with("08") || code.starts_with("57P") || code == "3D000" || code == "53300"
        }),
        _ => false,
    }
}

/// The pool behind the breaker: every statement asks the breaker first and
/// reports how it went. Transactions are gated where they begin
/// (`SqlStore::begin`).
#[derive(Clone, Debug)]
pub struct Gated {
    pub(crate) inner: DatabaseConnection,
    pub(crate) breaker: std::sync::Arc<Breaker>,
}

impl Gated {
    async fn run<T, F>(&self, call: F) -> Result<T, DbErr>
    where
        F: std::future::Future<Output = Result<T, DbErr>> + Send,
    {
        self.breaker.admit()?;
        let result = call.await;
        self.breaker.record(&result);
        result
    }
}

#[async_trait]
impl ConnectionTrait for Gated {
    fn get_database_backend(&self) -> DbBackend {
        self.inner.get_database_backend()
    }

    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        self.run(self.inner.execute_raw(stmt)).await
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        self.run(self.inner.execute_unprepared(sql)).await
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        self.run(self.inner.query_one_raw(stmt)).await
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        self.run(self.inner.query_all_raw(stmt)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_opens_it_and_an_answer_closes_it() {
        let breaker = Breaker::default();
        let mut up = breaker.subscribe();
        assert_eq!(breaker.admit().unwrap(), Admission::Closed);
        breaker.record::<()>(&Err(DbErr::ConnectionAcquire(sea_orm::ConnAcquireErr::Timeout)));
        assert!(!breaker.is_up());
        assert!(up.has_changed().unwrap());
        assert!(!*up.borrow_and_update());
        // Open: refused at once until the retry time, then one probe.
        assert!(breaker.admit().is_err());
        *breaker.next_probe.lock().unwrap() = Instant::now();
        assert_eq!(breaker.admit().unwrap(), Admission::Probe);
        assert!(breaker.admit().is_err(), "only one probe at a time");
        breaker.record(&Ok(()));
        assert!(breaker.is_up());
        assert!(*up.borrow_and_update());
        assert_eq!(breaker.admit().unwrap(), Admission::Closed);
    }

    #[test]
    fn a_pool_timeout_is_load_while_the_database_answers_others() {
        let timeout = || Err::<(), _>(DbErr::ConnectionAcquire(sea_orm::ConnAcquireErr::Timeout));
        let breaker = Breaker::new(Duration::from_millis(50));
        breaker.record(&Ok(()));
        breaker.record(&timeout());
        assert!(breaker.is_up(), "another call was just answered: a full pool, not an outage");
        std::thread::sleep(Duration::from_millis(60));
        breaker.record(&timeout());
        assert!(!breaker.is_up(), "nothing answered within the window: an outage");
        // A broken connection is an outage however recent the last answer.
        let breaker = Breaker::new(Duration::from_mins(1));
        breaker.record(&Ok(()));
        breaker.record::<()>(&Err(DbErr::Conn(RuntimeErr::SqlxError(std::sync::Arc::new(
            sea_orm::sqlx::Error::Io(std::io::ErrorKind::ConnectionReset.into()),
        )))));
        assert!(!breaker.is_up());
    }

    #[test]
    fn a_statement_the_database_refused_is_no_outage() {
        let breaker = Breaker::default();
        breaker.record::<()>(&Err(DbErr::Custom("unique violation".into())));
        assert!(breaker.is_up());
        assert!(!is_outage(&DbErr::RecordNotFound("x".into())));
        assert!(is_outage(&DbErr::Conn(RuntimeErr::SqlxError(std::sync::Arc::new(
            sea_orm::sqlx::Error::PoolTimedOut
        )))));
    }
}
