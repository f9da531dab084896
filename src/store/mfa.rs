//! Queries for second factors. Every "use once" and every attempt limit the
//! rules ask for is applied as a compare-and-set in the database (an UPDATE
//! whose WHERE clause holds the condition), so it holds under concurrency,
//! across replicas and after a restart.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait,
    ActiveValue::Set,
    ColumnTrait, Condition, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    sea_query::{Expr, ExprTrait as _},
};

use super::{
    SqlStore, audit,
    entity::{mfa_codes, recovery_codes, sessions, totp_secrets, users},
    sessions::revoke_user_sessions_in,
    unavailable,
};
use crate::domain::{
    error::Result,
    ids::{SessionId, UserId},
    ports::MfaStore,
    records::{AuditEvent, CodePurpose, EmailCode, RevokeSessions, SessionState, StoredTotp},
};

#[async_trait]
impl MfaStore for SqlStore {
    /// Stores a new, unconfirmed TOTP secret, replacing an unconfirmed one.
    /// Returns `false` when TOTP is already confirmed.
    async fn begin_totp(&self, user_id: UserId, sealed: Vec<u8>, now: DateTime<Utc>) -> Result<bool> {
        let txn = self.begin().await?;
        totp_secrets::Entity::delete_many()
            .filter(totp_secrets::Column::UserId.eq(user_id.get()))
            .filter(totp_secrets::Column::Confirmed.eq(false))
            .exec(&txn)
            .await
            .map_err(unavailable)?;
        if totp_secrets::Entity::find_by_id(user_id.get()).one(&txn).await.map_err(unavailable)?.is_some() {
            return Ok(false);
        }
        totp_secrets::ActiveModel {
            user_id: Set(user_id.get()),
            secret_sealed: Set(sealed),
            confirmed: Set(false),
            last_step: Set(None),
            created_at: Set(now),
        }
        .insert(&txn)
        .await
        .map_err(unavailable)?;
        txn.commit().await.map_err(unavailable)?;
        Ok(true)
    }

    /// The user's TOTP secret, if any.
    async fn totp(&self, user_id: UserId) -> Result<Option<StoredTotp>> {
        Ok(totp_secrets::Entity::find_by_id(user_id.get())
            .one(&self.db)
            .await
            .map_err(unavailable)?
            .map(|row| StoredTotp { sealed: row.secret_sealed, confirmed: row.confirmed }))
    }

    /// Accepts TOTP time step `step` once: only if it is later than the last
    /// accepted step (compare-and-set).
    async fn accept_totp_step(&self, user_id: UserId, step: i64) -> Result<bool> {
        let result = totp_secrets::Entity::update_many()
            .col_expr(totp_secrets::Column::LastStep, Expr::value(Some(step)))
            .filter(totp_secrets::Column::UserId.eq(user_id.get()))
            .filter(totp_secrets::Column::Confirmed.eq(true))
            .filter(
                Condition::any()
                    .add(totp_secrets::Column::LastStep.is_null())
                    .add(totp_secrets::Column::LastStep.lt(step)),
            )
            .exec(&self.db)
            .await
            .map_err(unavailable)?;
        Ok(result.rows_affected == 1)
    }

    /// Confirms TOTP at `step`, stores `recovery` digests when given, and
    /// ends the sessions `revoke` names, in one transaction. Returns
    /// `false` when there was no unconfirmed enrolment.
    async fn confirm_totp(
        &self,
        user_id: UserId,
        step: i64,
        recovery: Option<&[[u8; 32]]>,
        revoke: RevokeSessions,
        now: DateTime<Utc>,
        events: &[AuditEvent],
    ) -> Result<bool> {
        let txn = self.begin().await?;
        let confirmed = totp_secrets::Entity::update_many()
            .col_expr(totp_secrets::Column::Confirmed, Expr::value(true))
            .col_expr(totp_secrets::Column::LastStep, Expr::value(Some(step)))
            .filter(totp_secrets::Column::UserId.eq(user_id.get()))
            .filter(totp_secrets::Column::Confirmed.eq(false))
            .exec(&txn)
            .await
            .map_err(unavailable)?;
        if confirmed.rows_affected != 1 {
            return Ok(false);
        }
        set_flag(&txn, user_id, users::Column::MfaTotp, true, now).await?;
        if let Some(recovery) = recovery {
            replace_recovery_in(&txn, user_id, recovery).await?;
        }
        revoke_user_sessions_in(&txn, user_id, revoke, now).await?;
        audit::write(&txn, events).await?;
        txn.commit().await.map_err(unavailable)?;
        Ok(true)
    }

    /// Turns the email method on, stores `recovery` digests when given, and
    /// ends the sessions `revoke` names, in one transaction.
    async fn enable_email_mfa(
        &self,
        user_id: UserId,
        recovery: Option<&[[u8; 32]]>,
        revoke: RevokeSessions,
        now: DateTime<Utc>,
        events: &[AuditEvent],
    ) -> Result<()> {
        let txn = self.begin().await?;
        set_flag(&txn, user_id, users::Column::MfaEmail, true, now).await?;
        if let Some(recovery) = recovery {
            replace_recovery_in(&txn, user_id, recovery).await?;
        }
        revoke_user_sessions_in(&txn, user_id, revoke, now).await?;
        audit::write(&txn, events).await?;
        txn.commit().await.map_err(unavailable)
    }

    /// Turns every second factor off, deletes secrets and codes, and ends the
    /// sessions `revoke` names, in one transaction. Returns how many sessions
    /// were revoked.
    async fn disable_mfa(
        &self,
        user_id: UserId,
        revoke: RevokeSessions,
        now: DateTime<Utc>,
        events: &[AuditEvent],
    ) -> Result<u64> {
        let txn = self.begin().await?;
        totp_secrets::Entity::delete_many()
            .filter(totp_secrets::Column::UserId.eq(user_id.get()))
            .exec(&txn)
            .await
            .map_err(unavailable)?;
        recovery_codes::Entity::delete_many()
            .filter(recovery_codes::Column::UserId.eq(user_id.get()))
            .exec(&txn)
            .await
            .map_err(unavailable)?;
        mfa_codes::Entity::delete_many()
            .filter(mfa_codes::Column::UserId.eq(user_id.get()))
            .exec(&txn)
            .await
            .map_err(unavailable)?;
        set_flag(&txn, user_id, users::Column::MfaTotp, false, now).await?;
        set_flag(&txn, user_id, users::Column::MfaEmail, false, now).await?;
        let revoked = revoke_user_sessions_in(&txn, user_id, revoke, now).await?;
        audit::write(&txn, events).await?;
        txn.commit().await.map_err(unavailable)?;
        Ok(revoked)
    }

    /// Replaces the user's recovery codes with `digests`.
    async fn replace_recovery_codes(
        &self,
        user_id: UserId,
        digests: &[[u8; 32]],
        events: &[AuditEvent],
    ) -> Result<()> {
        let txn = self.begin().await?;
        replace_recovery_in(&txn, user_id, digests).await?;
        audit::write(&txn, events).await?;
        txn.commit().await.map_err(unavailable)
    }

    /// Uses a recovery code once (compare-and-set).
    async fn use_recovery_code(
        &self,
        user_id: UserId,
        digest: &[u8; 32],
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let result = recovery_codes::Entity::update_many()
            .col_expr(recovery_codes::Column::UsedAt, Expr::value(Some(now)))
            .filter(recovery_codes::Column::UserId.eq(user_id.get()))
            .filter(recovery_codes::Column::CodeHash.eq(digest.to_vec()))
            .filter(recovery_codes::Column::UsedAt.is_null())
            .exec(&self.db)
            .await
            .map_err(unavailable)?;
        Ok(result.rows_affected == 1)
    }

    /// How many unused recovery codes the user has.
    async fn unused_recovery_codes(&self, user_id: UserId) -> Result<u64> {
        recovery_codes::Entity::find()
            .filter(recovery_codes::Column::UserId.eq(user_id.get()))
            .filter(recovery_codes::Column::UsedAt.is_null())
            .count(&self.db)
            .await
            .map_err(unavailable)
    }

    /// Stores an emailed code, replacing unused older ones of the same
    /// purpose (and pending login).
    async fn insert_code(
        &self,
        user_id: UserId,
        session_id: Option<SessionId>,
        purpose: CodePurpose,
        digest: [u8; 32],
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<()> {
        let txn = self.begin().await?;
        mfa_codes::Entity::delete_many()
            .filter(code_scope(user_id, session_id, purpose))
            .exec(&txn)
            .await
            .map_err(unavailable)?;
        mfa_codes::ActiveModel {
            user_id: Set(user_id.get()),
            session_id: Set(session_id.map(SessionId::get)),
            purpose: Set(purpose.as_str().to_owned()),
            code_hash: Set(digest.to_vec()),
            attempts: Set(0),
            created_at: Set(now),
            expires_at: Set(expires_at),
            used_at: Set(None),
            ..Default::default()
        }
        .insert(&txn)
        .await
        .map_err(unavailable)?;
        txn.commit().await.map_err(unavailable)
    }

    /// Reserves one attempt on the newest usable code of this purpose (and
    /// pending login): unused, unexpired, under the attempt limit. `None`
    /// when there is no such code.
    async fn reserve_code_attempt(
        &self,
        user_id: UserId,
        session_id: Option<SessionId>,
        purpose: CodePurpose,
        now: DateTime<Utc>,
        max_attempts: i32,
    ) -> Result<Option<EmailCode>> {
        let Some(code) = mfa_codes::Entity::find()
            .filter(code_scope(user_id, session_id, purpose))
            .order_by_desc(mfa_codes::Column::Id)
            .one(&self.db)
            .await
            .map_err(unavailable)?
        else {
            return Ok(None);
        };
        let reserved = mfa_codes::Entity::update_many()
            .col_expr(mfa_codes::Column::Attempts, Expr::col(mfa_codes::Column::Attempts).add(1))
            .filter(mfa_codes::Column::Id.eq(code.id))
            .filter(mfa_codes::Column::UsedAt.is_null())
            .filter(mfa_codes::Column::ExpiresAt.gt(now))
            .filter(mfa_codes::Column::Attempts.lt(max_attempts))
            .exec(&self.db)
            .await
            .map_err(unavailable)?;
        Ok((reserved.rows_affected == 1).then_some(EmailCode { id: code.id, digest: code.code_hash }))
    }

    /// Uses an emailed code once (compare-and-set).
    async fn consume_code(&self, id: i64, now: DateTime<Utc>) -> Result<bool> {
        let result = mfa_codes::Entity::update_many()
            .col_expr(mfa_codes::Column::UsedAt, Expr::value(Some(now)))
            .filter(mfa_codes::Column::Id.eq(id))
            .filter(mfa_codes::Column::UsedAt.is_null())
            .exec(&self.db)
            .await
            .map_err(unavailable)?;
        Ok(result.rows_affected == 1)
    }

    /// Reserves one code attempt on a pending login; `false` once it has
    /// had its five.
    async fn reserve_mfa_attempt(&self, session_id: SessionId, max_attempts: i32) -> Result<bool> {
        let result = sessions::Entity::update_many()
            .col_expr(sessions::Column::MfaAttempts, Expr::col(sessions::Column::MfaAttempts).add(1))
            .filter(sessions::Column::Id.eq(session_id.get()))
            .filter(sessions::Column::State.eq(SessionState::PendingMfa.as_str()))
            .filter(sessions::Column::MfaAttempts.lt(max_attempts))
            .exec(&self.db)
            .await
            .map_err(unavailable)?;
        Ok(result.rows_affected == 1)
    }

    /// Ends a pending login that was completed; `false` when another request
    /// completed it first.
    async fn complete_pending(&self, session_id: SessionId, now: DateTime<Utc>) -> Result<bool> {
        let result = sessions::Entity::update_many()
            .col_expr(sessions::Column::State, Expr::value(SessionState::Revoked.as_str()))
            .col_expr(sessions::Column::RevokedAt, Expr::value(Some(now)))
            .col_expr(sessions::Column::RevokeReason, Expr::value(Some("mfa_completed")))
            .filter(sessions::Column::Id.eq(session_id.get()))
            .filter(sessions::Column::State.eq(SessionState::PendingMfa.as_str()))
            .exec(&self.db)
            .await
            .map_err(unavailable)?;
        Ok(result.rows_affected == 1)
    }
}

fn code_scope(user_id: UserId, session_id: Option<SessionId>, purpose: CodePurpose) -> Condition {
    let session = match session_id {
        Some(id) => mfa_codes::Column::SessionId.eq(id.get()),
        None => mfa_codes::Column::SessionId.is_null(),
    };
    Condition::all()
        .add(mfa_codes::Column::UserId.eq(user_id.get()))
        .add(mfa_codes::Column::Purpose.eq(purpose.as_str()))
        .add(session)
        .add(mfa_codes::Column::UsedAt.is_null())
}

async fn set_flag<C: ConnectionTrait>(
    conn: &C,
    user_id: UserId,
    column: users::Column,
    value: bool,
    now: DateTime<Utc>,
) -> Result<()> {
    users::Entity::update_many()
        .col_expr(column, Expr::value(value))
        .col_expr(users::Column::UpdatedAt, Expr::value(now))
        .filter(users::Column::Id.eq(user_id.get()))
        .exec(conn)
        .await
        .map_err(unavailable)?;
    Ok(())
}

async fn replace_recovery_in<C: ConnectionTrait>(
    conn: &C,
    user_id: UserId,
    digests: &[[u8; 32]],
) -> Result<()> {
    recovery_codes::Entity::delete_many()
        .filter(recovery_codes::Column::UserId.eq(user_id.get()))
        .exec(conn)
        .await
        .map_err(unavailable)?;
    let rows = digests.iter().map(|digest| recovery_codes::ActiveModel {
        user_id: Set(user_id.get()),
        code_hash: Set(digest.to_vec()),
        used_at: Set(None),
        ..Default::default()
    });
    recovery_codes::Entity::insert_many(rows).exec(conn).await.map_err(unavailable)?;
    Ok(())
}
