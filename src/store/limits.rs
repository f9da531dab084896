//! Shared abuse-protection state: fixed-window rate-limit counters and
//! per-account attempt counters and locks. Every update is one atomic
//! statement or transaction, so the limits the rules set hold across
//! concurrent requests, restarts and replicas. The limits themselves (how
//! many attempts, how long a lock) come from the rules.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, Statement,
    sea_query::{Expr, ExprTrait as _},
};

use super::{SqlStore, audit, entity::users, unavailable};
use crate::domain::{
    error::{Error, Result},
    ids::UserId,
    ports::DecideLock,
    ports::LimitStore,
    records::{AttemptCounters, AttemptId, AttemptState, AuditEvent},
};

/// One reservation fewer in flight, never below zero (both dialects).
const RELEASE_ONE: &str = "CASE WHEN attempts_in_flight > 0 THEN attempts_in_flight - 1 ELSE 0 END";

#[async_trait]
impl LimitStore for SqlStore {
    /// Counts one hit on `key` in the window starting at `window_start`
    /// (seconds) and returns the hits in that window, this one included.
    async fn hit_rate_limit(&self, key: &str, window_start: i64) -> Result<i64> {
        let backend = self.db.get_database_backend();
        let sql = match backend {
            sea_orm::DatabaseBackend::Postgres => {
                "INSERT INTO rate_limits (key, window_start, hits) VALUES ($1, $2, 1) \
                 ON CONFLICT (key) DO UPDATE SET \
                 hits = CASE WHEN rate_limits.window_start = excluded.window_start THEN rate_limits.hits + 1 ELSE 1 END, \
                 window_start = excluded.window_start RETURNING hits"
            }
            _ => {
                "INSERT INTO rate_limits (key, window_start, hits) VALUES (?, ?, 1) \
                 ON CONFLICT (key) DO UPDATE SET \
                 hits = CASE WHEN rate_limits.window_start = excluded.window_start THEN rate_limits.hits + 1 ELSE 1 END, \
                 window_start = excluded.window_start RETURNING hits"
            }
        };
        let row = self
            .db
            .query_one_raw(Statement::from_sql_and_values(backend, sql, [key.into(), window_start.into()]))
            .await
            .map_err(unavailable)?
            .ok_or_else(|| Error::Internal("rate-limit upsert returned no row".into()))?;
        let hits: i32 = row.try_get("", "hits").map_err(unavailable)?;
        Ok(i64::from(hits))
    }

    /// The hits on `key` in the window starting at `window_start`, without
    /// counting one.
    async fn rate_limit_hits(&self, key: &str, window_start: i64) -> Result<i64> {
        let backend = self.db.get_database_backend();
        let sql = match backend {
            sea_orm::DatabaseBackend::Postgres => {
                "SELECT hits FROM rate_limits WHERE key = $1 AND window_start = $2"
            }
            _ => "SELECT hits FROM rate_limits WHERE key = ? AND window_start = ?",
        };
        let row = self
            .db
            .query_one_raw(Statement::from_sql_and_values(backend, sql, [key.into(), window_start.into()]))
            .await
            .map_err(unavailable)?;
        match row {
            Some(row) => Ok(i64::from(row.try_get::<i32>("", "hits").map_err(unavailable)?)),
            None => Ok(0),
        }
    }

    /// Forgets the counter `key` (a success clears the failures it counted).
    async fn clear_rate_limit(&self, key: &str) -> Result<()> {
        let backend = self.db.get_database_backend();
        let sql = match backend {
            sea_orm::DatabaseBackend::Postgres => "DELETE FROM rate_limits WHERE key = $1",
            _ => "DELETE FROM rate_limits WHERE key = ?",
        };
        self.db
            .execute_raw(Statement::from_sql_and_values(backend, sql, [key.into()]))
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// One conditional increment: parallel reservations cannot pass
    /// `max_attempts`.
    async fn reserve_attempt(
        &self,
        user_id: UserId,
        now: DateTime<Utc>,
        max_attempts: i32,
        pending: &AuditEvent,
    ) -> Result<Option<AttemptId>> {
        let txn = self.begin().await?;
        let result = users::Entity::update_many()
            .col_expr(users::Column::AttemptsInFlight, Expr::col(users::Column::AttemptsInFlight).add(1))
            .col_expr(users::Column::AttemptsReservedAt, Expr::value(Some(now)))
            .filter(users::Column::Id.eq(user_id.get()))
            .filter(
                Expr::col(users::Column::FailedAttempts)
                    .add(Expr::col(users::Column::AttemptsInFlight))
                    .lt(max_attempts),
            )
            .filter(
                sea_orm::Condition::any()
                    .add(users::Column::LockedUntil.is_null())
                    .add(users::Column::LockedUntil.lte(now)),
            )
            .exec(&txn)
            .await
            .map_err(unavailable)?;
        if result.rows_affected != 1 {
            return Ok(None);
        }
        let attempt = audit::write_pending(&txn, pending).await?;
        txn.commit().await.map_err(unavailable)?;
        Ok(Some(attempt))
    }

    async fn attempt_state(&self, user_id: UserId) -> Result<Option<AttemptState>> {
        let user = users::Entity::find_by_id(user_id.get()).one(&self.db).await.map_err(unavailable)?;
        Ok(user.map(|user| AttemptState {
            failed_attempts: user.failed_attempts,
            in_flight: user.attempts_in_flight,
            reserved_at: user.attempts_reserved_at,
            locked_until: user.locked_until,
        }))
    }

    async fn reclaim_attempts(
        &self,
        user_id: UserId,
        seen: AttemptState,
        failed_attempts: i32,
    ) -> Result<bool> {
        let result = users::Entity::update_many()
            .col_expr(users::Column::FailedAttempts, Expr::value(failed_attempts))
            .col_expr(users::Column::AttemptsInFlight, Expr::value(0))
            .filter(users::Column::Id.eq(user_id.get()))
            .filter(users::Column::FailedAttempts.eq(seen.failed_attempts))
            .filter(users::Column::AttemptsInFlight.eq(seen.in_flight))
            .exec(&self.db)
            .await
            .map_err(unavailable)?;
        Ok(result.rows_affected == 1)
    }

    /// Conversion of the reservation, read, decision, compare-and-set and
    /// audit rows in one transaction (`BEGIN IMMEDIATE` on SQLite; the
    /// first update holds the row on PostgreSQL).
    async fn record_failure(
        &self,
        user_id: UserId,
        attempt: AttemptId,
        events: &[AuditEvent],
        decide: DecideLock<'_>,
    ) -> Result<Option<DateTime<Utc>>> {
        let txn = self.begin().await?;
        if !audit::settle_pending(&txn, attempt).await? {
            return Ok(None);
        }
        users::Entity::update_many()
            .col_expr(users::Column::FailedAttempts, Expr::col(users::Column::FailedAttempts).add(1))
            .col_expr(users::Column::AttemptsInFlight, Expr::cust(RELEASE_ONE))
            .filter(users::Column::Id.eq(user_id.get()))
            .exec(&txn)
            .await
            .map_err(unavailable)?;
        let Some(user) = users::Entity::find_by_id(user_id.get()).one(&txn).await.map_err(unavailable)?
        else {
            return Ok(None);
        };
        let read = AttemptCounters { failed_attempts: user.failed_attempts, lockouts: user.lockouts };
        let mut locked = None;
        if let Some(lock) = decide(read) {
            let applied = users::Entity::update_many()
                .col_expr(users::Column::LockedUntil, Expr::value(Some(lock.until)))
                .col_expr(users::Column::Lockouts, Expr::col(users::Column::Lockouts).add(1))
                .col_expr(users::Column::FailedAttempts, Expr::value(0))
                .filter(users::Column::Id.eq(user_id.get()))
                .filter(users::Column::FailedAttempts.eq(read.failed_attempts))
                .filter(users::Column::Lockouts.eq(read.lockouts))
                .exec(&txn)
                .await
                .map_err(unavailable)?;
            if applied.rows_affected == 1 {
                locked = Some(lock);
            }
        }
        audit::write(&txn, events).await?;
        if let Some(lock) = &locked {
            audit::write(&txn, std::slice::from_ref(&lock.event)).await?;
        }
        txn.commit().await.map_err(unavailable)?;
        Ok(locked.map(|lock| lock.until))
    }

    async fn record_success(&self, user_id: UserId, attempt: AttemptId) -> Result<()> {
        let txn = self.begin().await?;
        settle_success(&txn, user_id, attempt).await?;
        txn.commit().await.map_err(unavailable)
    }

    async fn release_attempt(&self, user_id: UserId, attempt: AttemptId) -> Result<()> {
        let txn = self.begin().await?;
        if !audit::settle_pending(&txn, attempt).await? {
            return Ok(());
        }
        users::Entity::update_many()
            .col_expr(users::Column::AttemptsInFlight, Expr::cust(RELEASE_ONE))
            .filter(users::Column::Id.eq(user_id.get()))
            .filter(users::Column::AttemptsInFlight.gt(0))
            .exec(&txn)
            .await
            .map_err(unavailable)?;
        txn.commit().await.map_err(unavailable)
    }
}

/// A successful attempt's record, on `conn` (a transaction: its own, or the
/// one that starts the session the success allows): releases the
/// reservation, clears the account's failures and lockouts, and removes the
/// attempt's provisional row; nothing if it was recorded already.
pub(crate) async fn settle_success<C: ConnectionTrait>(
    conn: &C,
    user_id: UserId,
    attempt: AttemptId,
) -> Result<()> {
    if !audit::settle_pending(conn, attempt).await? {
        return Ok(());
    }
    users::Entity::update_many()
        .col_expr(users::Column::FailedAttempts, Expr::value(0))
        .col_expr(users::Column::Lockouts, Expr::value(0))
        .col_expr(users::Column::AttemptsInFlight, Expr::cust(RELEASE_ONE))
        .filter(users::Column::Id.eq(user_id.get()))
        .filter(
            sea_orm::Condition::any()
                .add(users::Column::FailedAttempts.gt(0))
                .add(users::Column::Lockouts.gt(0))
                .add(users::Column::AttemptsInFlight.gt(0)),
        )
        .exec(conn)
        .await
        .map_err(unavailable)?;
    Ok(())
}
