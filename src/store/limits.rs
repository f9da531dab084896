//! Shared abuse-protection state: fixed-window rate-limit counters and
//! per-account lockout. Every update is one atomic statement, so limits
//! hold across concurrent requests, restarts and replicas.

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
    ports::LimitStore,
    records::{AuditEvent, LockPolicy},
};

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

    /// Reserves one attempt against account `user_id`: counts it before the
    /// password or code is checked, so parallel guesses cannot exceed the
    /// threshold. `false` when the account is locked or out of attempts.
    async fn reserve_attempt(&self, user_id: UserId, now: DateTime<Utc>, policy: LockPolicy) -> Result<bool> {
        let result = users::Entity::update_many()
            .col_expr(users::Column::FailedAttempts, Expr::col(users::Column::FailedAttempts).add(1))
            .filter(users::Column::Id.eq(user_id.get()))
            .filter(users::Column::FailedAttempts.lt(policy.threshold))
            .filter(
                sea_orm::Condition::any()
                    .add(users::Column::LockedUntil.is_null())
                    .add(users::Column::LockedUntil.lte(now)),
            )
            .exec(&self.db)
            .await
            .map_err(unavailable)?;
        Ok(result.rows_affected == 1)
    }

    /// Records a failed (reserved) attempt with its audit rows; when the
    /// account has used up its attempts, locks it (for longer each time)
    /// and adds `lock_event`. Returns the end of the new lock, if any.
    async fn record_failure(
        &self,
        user_id: UserId,
        now: DateTime<Utc>,
        policy: LockPolicy,
        events: &[AuditEvent],
        lock_event: AuditEvent,
    ) -> Result<Option<DateTime<Utc>>> {
        let txn = self.begin().await?;
        let Some(user) = users::Entity::find_by_id(user_id.get()).one(&txn).await.map_err(unavailable)?
        else {
            return Ok(None);
        };
        let mut locked = None;
        if user.failed_attempts >= policy.threshold {
            let factor = 2i32.saturating_pow(u32::try_from(user.lockouts.clamp(0, 20)).unwrap_or(20));
            let length = policy.base.checked_mul(factor).unwrap_or(policy.max).min(policy.max);
            let until = now + length;
            let applied = users::Entity::update_many()
                .col_expr(users::Column::LockedUntil, Expr::value(Some(until)))
                .col_expr(users::Column::Lockouts, Expr::col(users::Column::Lockouts).add(1))
                .col_expr(users::Column::FailedAttempts, Expr::value(0))
                .filter(users::Column::Id.eq(user_id.get()))
                .filter(users::Column::FailedAttempts.gte(policy.threshold))
                .filter(users::Column::Lockouts.eq(user.lockouts))
                .exec(&txn)
                .await
                .map_err(unavailable)?;
            if applied.rows_affected == 1 {
                locked = Some(until);
            }
        }
        audit::write(&txn, events).await?;
        if let Some(until) = locked {
            audit::write(&txn, &[lock_event.detail(format!("locked until {}", until.to_rfc3339()))]).await?;
        }
        txn.commit().await.map_err(unavailable)?;
        Ok(locked)
    }

    /// Clears the failed-attempt count and lock history after a success.
    async fn reset_failures(&self, user_id: UserId) -> Result<()> {
        users::Entity::update_many()
            .col_expr(users::Column::FailedAttempts, Expr::value(0))
            .col_expr(users::Column::Lockouts, Expr::value(0))
            .filter(users::Column::Id.eq(user_id.get()))
            .filter(
                sea_orm::Condition::any()
                    .add(users::Column::FailedAttempts.gt(0))
                    .add(users::Column::Lockouts.gt(0)),
            )
            .exec(&self.db)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
