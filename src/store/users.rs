//! Queries on `users`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};

use super::{
    SqlStore, audit, conflict_or_unavailable, entity::users, sessions::revoke_user_sessions_in, unavailable,
};
use crate::domain::{
    error::{Error, Result},
    ids::UserId,
    ports::{AuditFor, UserStore},
    records::{AuditEvent, Email, MfaState, NewUser, RevokeSessions, Role, User, UserKind, UserPatch},
};

impl TryFrom<users::Model> for User {
    type Error = Error;

    fn try_from(model: users::Model) -> Result<Self> {
        let users::Model {
            id,
            email,
            password_hash: _,
            role,
            disabled,
            session_lifetime_secs,
            created_at,
            updated_at,
            kind,
            mfa_totp,
            mfa_email,
            failed_attempts: _,
            locked_until: _,
            lockouts: _,
            attempts_in_flight: _,
            attempts_reserved_at: _,
        } = model;
        Ok(User {
            id: UserId::new(id),
            email: Email::from_stored(email),
            role: Role::from_stored(&role)?,
            kind: UserKind::from_stored(&kind)?,
            mfa: MfaState { totp: mfa_totp, email: mfa_email },
            disabled,
            session_lifetime: session_lifetime_secs.map(chrono::Duration::seconds),
            created_at,
            updated_at,
        })
    }
}

#[async_trait]
impl UserStore for SqlStore {
    /// Inserts a user.
    ///
    /// # Errors
    /// `AlreadyExists("user")` when the email is taken.
    async fn insert_user(&self, new: NewUser, audit: AuditFor<'_, User>) -> Result<User> {
        let txn = self.begin().await?;
        let model = users::ActiveModel {
            email: Set(new.email.as_str().to_owned()),
            password_hash: Set(new.password_hash),
            role: Set(new.role.as_str().to_owned()),
            kind: Set(new.kind.as_str().to_owned()),
            mfa_totp: Set(false),
            mfa_email: Set(false),
            failed_attempts: Set(0),
            locked_until: Set(None),
            lockouts: Set(0),
            attempts_in_flight: Set(0),
            attempts_reserved_at: Set(None),
            disabled: Set(false),
            session_lifetime_secs: Set(new.session_lifetime.map(|d| d.num_seconds())),
            created_at: Set(new.now),
            updated_at: Set(new.now),
            ..Default::default()
        }
        .insert(&txn)
        .await
        .map_err(conflict_or_unavailable("user"))?;
        let user: User = model.try_into()?;
        audit::write(&txn, &audit(&user)).await?;
        txn.commit().await.map_err(unavailable)?;
        Ok(user)
    }

    /// The user with `id`.
    async fn user(&self, id: UserId) -> Result<Option<User>> {
        users::Entity::find_by_id(id.get())
            .one(&self.db)
            .await
            .map_err(unavailable)?
            .map(User::try_from)
            .transpose()
    }

    /// The user with `email`, and its password hash.
    async fn user_by_email(&self, email: &Email) -> Result<Option<(User, Option<String>)>> {
        let Some(model) = users::Entity::find()
            .filter(users::Column::Email.eq(email.as_str()))
            .one(&self.db)
            .await
            .map_err(unavailable)?
        else {
            return Ok(None);
        };
        let hash = model.password_hash.clone();
        Ok(Some((model.try_into()?, hash)))
    }

    /// The password hash of user `id`.
    async fn password_hash(&self, id: UserId) -> Result<Option<String>> {
        Ok(users::Entity::find_by_id(id.get())
            .one(&self.db)
            .await
            .map_err(unavailable)?
            .and_then(|model| model.password_hash))
    }

    /// Users by ascending id, after `after`.
    async fn list_users(&self, after: Option<UserId>, limit: u64) -> Result<Vec<User>> {
        let mut query = users::Entity::find().order_by_asc(users::Column::Id).limit(limit);
        if let Some(after) = after {
            query = query.filter(users::Column::Id.gt(after.get()));
        }
        query.all(&self.db).await.map_err(unavailable)?.into_iter().map(User::try_from).collect()
    }

    async fn update_user(
        &self,
        id: UserId,
        patch: &UserPatch,
        revoke: Option<RevokeSessions>,
        now: DateTime<Utc>,
        events: &[AuditEvent],
    ) -> Result<Option<User>> {
        let txn = self.begin().await?;
        let Some(existing) = users::Entity::find_by_id(id.get()).one(&txn).await.map_err(unavailable)? else {
            return Ok(None);
        };
        let mut model: users::ActiveModel = existing.into();
        if let Some(role) = patch.role {
            model.role = Set(role.as_str().to_owned());
        }
        if let Some(disabled) = patch.disabled {
            model.disabled = Set(disabled);
        }
        if let Some(lifetime) = patch.session_lifetime {
            model.session_lifetime_secs = Set(lifetime.map(|d| d.num_seconds()));
        }
        model.updated_at = Set(now);
        let updated = model.update(&txn).await.map_err(unavailable)?;
        if let Some(revoke) = revoke {
            revoke_user_sessions_in(&txn, id, revoke, now).await?;
        }
        audit::write(&txn, events).await?;
        txn.commit().await.map_err(unavailable)?;
        Ok(Some(updated.try_into()?))
    }

    /// Replaces a password hash with an upgraded one (same password).
    async fn upgrade_password_hash(&self, id: UserId, hash: String) -> Result<()> {
        users::Entity::update_many()
            .col_expr(users::Column::PasswordHash, sea_orm::sea_query::Expr::value(hash))
            .filter(users::Column::Id.eq(id.get()))
            .exec(&self.db)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn set_password(
        &self,
        id: UserId,
        hash: String,
        revoke: RevokeSessions,
        now: DateTime<Utc>,
        events: &[AuditEvent],
    ) -> Result<Option<u64>> {
        let txn = self.begin().await?;
        let updated = users::Entity::update_many()
            .col_expr(users::Column::PasswordHash, sea_orm::sea_query::Expr::value(hash))
            .col_expr(users::Column::UpdatedAt, sea_orm::sea_query::Expr::value(now))
            .filter(users::Column::Id.eq(id.get()))
            .exec(&txn)
            .await
            .map_err(unavailable)?;
        if updated.rows_affected == 0 {
            return Ok(None);
        }
        let revoked = revoke_user_sessions_in(&txn, id, revoke, now).await?;
        audit::write(&txn, events).await?;
        txn.commit().await.map_err(unavailable)?;
        Ok(Some(revoked))
    }
}
