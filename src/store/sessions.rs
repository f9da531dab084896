//! Queries on `sessions`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, sea_query::Expr, sqlx,
};

use super::{
    Pool, SqlStore, audit, conflict_or_unavailable,
    entity::{sessions, users},
    unavailable,
};
use crate::domain::{
    error::{Error, Result},
    ids::{SessionId, UserId},
    ports::{AuditFor, SessionStore},
    records::{
        AuditEvent, AuthMethod, ClientInfo, Email, NewSession, RevokeSessions, Role, Rotation, Session,
        SessionCredential, SessionMatch, SessionState, TokenHash,
    },
};

impl TryFrom<sessions::Model> for Session {
    type Error = Error;

    fn try_from(model: sessions::Model) -> Result<Self> {
        let sessions::Model {
            id,
            user_id,
            token_hash: _,
            previous_token_hash: _,
            previous_valid_until,
            state,
            lifetime_secs,
            created_at,
            last_seen_at,
            expires_at,
            absolute_expires_at,
            ip,
            user_agent,
            device_label,
            auth_methods,
            revoked_at: _,
            revoke_reason: _,
            mfa_attempts: _,
        } = model;
        Ok(Session {
            id: SessionId::new(id),
            user_id: UserId::new(user_id),
            state: SessionState::from_stored(&state)?,
            lifetime: chrono::Duration::seconds(lifetime_secs),
            created_at,
            last_seen_at,
            expires_at,
            absolute_expires_at,
            previous_valid_until,
            client: ClientInfo { ip, user_agent, device_label },
            auth_methods: AuthMethod::parse_list(&auth_methods),
        })
    }
}

#[async_trait]
impl SessionStore for SqlStore {
    /// Inserts a session.
    async fn insert_session(&self, new: NewSession, audit: AuditFor<'_, Session>) -> Result<Session> {
        let txn = self.begin().await?;
        let session: Session = sessions::ActiveModel {
            user_id: Set(new.user_id.get()),
            token_hash: Set(new.token_hash.0.to_vec()),
            previous_token_hash: Set(None),
            previous_valid_until: Set(None),
            state: Set(new.state.as_str().to_owned()),
            lifetime_secs: Set(new.lifetime.num_seconds()),
            created_at: Set(new.now),
            last_seen_at: Set(new.now),
            expires_at: Set(new.expires_at),
            absolute_expires_at: Set(new.absolute_expires_at),
            ip: Set(new.client.ip),
            user_agent: Set(new.client.user_agent),
            device_label: Set(new.client.device_label),
            auth_methods: Set(AuthMethod::join(&new.auth_methods)),
            revoked_at: Set(None),
            revoke_reason: Set(None),
            mfa_attempts: Set(0),
            ..Default::default()
        }
        .insert(&txn)
        .await
        .map_err(conflict_or_unavailable("session"))?
        .try_into()?;
        audit::write(&txn, &audit(&session)).await?;
        if let Some(attempt) = new.settles {
            super::limits::settle_success(&txn, new.user_id, attempt).await?;
        }
        txn.commit().await.map_err(unavailable)?;
        Ok(session)
    }

    /// The session whose current or previous token hash is `hash`, with its
    /// user. One indexed read.
    async fn session_by_hash(&self, hash: &TokenHash) -> Result<Option<SessionMatch>> {
        let bytes = hash.0.to_vec();
        let found = sessions::Entity::find()
            .filter(
                Condition::any()
                    .add(sessions::Column::TokenHash.eq(bytes.clone()))
                    .add(sessions::Column::PreviousTokenHash.eq(bytes.clone())),
            )
            .find_also_related(users::Entity)
            .one(&self.db)
            .await
            .map_err(unavailable)?;
        let Some((session, Some(user))) = found else {
            return Ok(None);
        };
        let matched_previous = session.token_hash != bytes;
        let current_hash = TokenHash(
            session
                .token_hash
                .as_slice()
                .try_into()
                .map_err(|_| Error::Internal("stored token hash is not 32 bytes".into()))?,
        );
        Ok(Some(SessionMatch {
            current_hash,
            session: session.try_into()?,
            user: user.try_into()?,
            matched_previous,
        }))
    }

    /// Applies a rotation if the session's current token is still the one
    /// expected (compare-and-set). Returns whether it was applied.
    async fn rotate_session(&self, rotation: Rotation, events: &[AuditEvent]) -> Result<bool> {
        let txn = self.begin().await?;
        let result = sessions::Entity::update_many()
            .col_expr(sessions::Column::TokenHash, Expr::value(rotation.new_hash.0.to_vec()))
            .col_expr(
                sessions::Column::PreviousTokenHash,
                Expr::value(Some(rotation.previous_hash.0.to_vec())),
            )
            .col_expr(sessions::Column::PreviousValidUntil, Expr::value(Some(rotation.previous_valid_until)))
            .col_expr(sessions::Column::ExpiresAt, Expr::value(rotation.expires_at))
            .filter(sessions::Column::Id.eq(rotation.session_id.get()))
            .filter(sessions::Column::TokenHash.eq(rotation.expected.0.to_vec()))
            .filter(sessions::Column::State.eq(SessionState::Active.as_str()))
            .exec(&txn)
            .await
            .map_err(unavailable)?;
        if result.rows_affected != 1 {
            return Ok(false);
        }
        audit::write(&txn, events).await?;
        txn.commit().await.map_err(unavailable)?;
        Ok(true)
    }

    /// The session with `id`.
    async fn session(&self, id: SessionId) -> Result<Option<Session>> {
        sessions::Entity::find_by_id(id.get())
            .one(&self.db)
            .await
            .map_err(unavailable)?
            .map(Session::try_from)
            .transpose()
    }

    /// Revokes session `id` (no-op when already revoked). Returns whether a
    /// row was changed.
    async fn revoke_session(
        &self,
        id: SessionId,
        reason: &str,
        now: DateTime<Utc>,
        events: &[AuditEvent],
    ) -> Result<bool> {
        let txn = self.begin().await?;
        let result =
            revoke_where(&txn, Condition::all().add(sessions::Column::Id.eq(id.get())), reason, now).await?;
        audit::write(&txn, events).await?;
        txn.commit().await.map_err(unavailable)?;
        Ok(result > 0)
    }

    /// Revokes the sessions of `user_id` that `revoke` names.
    async fn revoke_user_sessions(
        &self,
        user_id: UserId,
        revoke: RevokeSessions,
        now: DateTime<Utc>,
        events: &[AuditEvent],
    ) -> Result<u64> {
        let txn = self.begin().await?;
        let revoked = revoke_user_sessions_in(&txn, user_id, revoke, now).await?;
        audit::write(&txn, events).await?;
        txn.commit().await.map_err(unavailable)?;
        Ok(revoked)
    }

    /// Active, unexpired sessions of `user_id`, newest first, before `before`.
    async fn list_active_sessions(
        &self,
        user_id: UserId,
        now: DateTime<Utc>,
        before: Option<SessionId>,
        limit: u64,
    ) -> Result<Vec<Session>> {
        let mut query = sessions::Entity::find()
            .filter(sessions::Column::UserId.eq(user_id.get()))
            .filter(sessions::Column::State.eq(SessionState::Active.as_str()))
            .filter(sessions::Column::ExpiresAt.gt(now))
            .order_by_desc(sessions::Column::Id)
            .limit(limit);
        if let Some(before) = before {
            query = query.filter(sessions::Column::Id.lt(before.get()));
        }
        query.all(&self.db).await.map_err(unavailable)?.into_iter().map(Session::try_from).collect()
    }

    /// Records last-seen times (coarse; written in batches off the hot
    /// path), in one statement.
    async fn touch_sessions(&self, seen: &[(SessionId, DateTime<Utc>)]) -> Result<()> {
        let latest = latest_per_id(seen.iter().map(|(id, at)| (id.get(), *at)));
        if latest.is_empty() {
            return Ok(());
        }
        match self.pool() {
            Pool::Postgres(pool) => {
                let (ids, times): (Vec<i64>, Vec<DateTime<Utc>>) = latest.into_iter().unzip();
                let update = sqlx::query(
                    "UPDATE sessions AS s SET last_seen_at = v.at \
                     FROM UNNEST($1::int8[], $2::timestamptz[]) AS v(id, at) \
                     WHERE s.id = v.id AND s.last_seen_at < v.at",
                )
                .bind(ids)
                .bind(times);
                self.gated(update.execute(pool)).await?;
            }
            Pool::Sqlite(pool) => {
                let sql = format!(
                    "UPDATE sessions SET last_seen_at = v.at \
                     FROM (SELECT column1 AS id, column2 AS at FROM (VALUES {})) AS v \
                     WHERE sessions.id = v.id AND sessions.last_seen_at < v.at",
                    values_list(latest.len())
                );
                // Only placeholders are formatted into the text.
                let mut update = sqlx::query(sqlx::AssertSqlSafe(sql));
                for (id, at) in latest {
                    update = update.bind(id).bind(at);
                }
                self.gated(update.execute(pool)).await?;
            }
        }
        Ok(())
    }

    /// The few columns a validator's cache entry needs, in one prepared
    /// (and per connection cached) statement.
    async fn session_credential(&self, hash: &TokenHash) -> Result<Option<SessionCredential>> {
        type Row = (
            i64,
            i64,
            String,
            DateTime<Utc>,
            Option<DateTime<Utc>>,
            String,
            bool,
            DateTime<Utc>,
            String,
            String,
            bool,
        );
        const COLUMNS: &str = "SELECT s.id, s.user_id, s.state, s.expires_at, s.previous_valid_until, \
             s.auth_methods, s.token_hash <> {h} AS matched_previous, s.last_seen_at, \
             u.email, u.role, u.disabled \
             FROM sessions s JOIN users u ON u.id = s.user_id \
             WHERE s.token_hash = {h} OR s.previous_token_hash = {h} LIMIT 1";
        static POSTGRES: std::sync::LazyLock<String> =
            std::sync::LazyLock::new(|| COLUMNS.replace("{h}", "$1"));
        static SQLITE: std::sync::LazyLock<String> =
            std::sync::LazyLock::new(|| COLUMNS.replace("{h}", "?1"));
        let row: Option<Row> = self.read_row(POSTGRES.as_str(), SQLITE.as_str(), hash.0.as_slice()).await?;
        let Some((
            id,
            user_id,
            state,
            expires_at,
            previous_valid_until,
            auth_methods,
            matched_previous,
            last_seen_at,
            email,
            role,
            disabled,
        )) = row
        else {
            return Ok(None);
        };
        Ok(Some(SessionCredential {
            session_id: SessionId::new(id),
            user_id: UserId::new(user_id),
            email: Email::from_stored(email),
            role: Role::from_stored(&role)?,
            user_disabled: disabled,
            state: SessionState::from_stored(&state)?,
            expires_at,
            previous_valid_until,
            matched_previous,
            auth_methods: AuthMethod::parse_list(&auth_methods),
            last_seen_at,
        }))
    }
}

/// The latest time per id (a batch may hold one id twice).
pub(crate) fn latest_per_id(
    times: impl Iterator<Item = (i64, DateTime<Utc>)>,
) -> std::collections::BTreeMap<i64, DateTime<Utc>> {
    let mut latest = std::collections::BTreeMap::new();
    for (id, at) in times {
        latest.entry(id).and_modify(|seen: &mut DateTime<Utc>| *seen = (*seen).max(at)).or_insert(at);
    }
    latest
}

/// `(?, ?), (?, ?), …` with `rows` pairs: the VALUES of a batched update.
pub(crate) fn values_list(rows: usize) -> String {
    let mut list = String::with_capacity(rows * 8);
    for row in 0..rows {
        if row > 0 {
            list.push_str(", ");
        }
        list.push_str("(?, ?)");
    }
    list
}

/// Revokes the sessions of `user_id` that `revoke` names, on `conn` (which
/// may be a transaction).
pub(crate) async fn revoke_user_sessions_in<C: ConnectionTrait>(
    conn: &C,
    user_id: UserId,
    revoke: RevokeSessions,
    now: DateTime<Utc>,
) -> Result<u64> {
    let RevokeSessions { keep, reason } = revoke;
    let mut condition = Condition::all().add(sessions::Column::UserId.eq(user_id.get()));
    if let Some(keep) = keep {
        condition = condition.add(sessions::Column::Id.ne(keep.get()));
    }
    revoke_where(conn, condition, reason, now).await
}

async fn revoke_where<C: ConnectionTrait>(
    conn: &C,
    condition: Condition,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<u64> {
    let result = sessions::Entity::update_many()
        .col_expr(sessions::Column::State, Expr::value(SessionState::Revoked.as_str()))
        .col_expr(sessions::Column::RevokedAt, Expr::value(Some(now)))
        .col_expr(sessions::Column::RevokeReason, Expr::value(Some(reason.to_owned())))
        .filter(condition)
        .filter(sessions::Column::State.ne(SessionState::Revoked.as_str()))
        .exec(conn)
        .await
        .map_err(unavailable)?;
    Ok(result.rows_affected)
}
