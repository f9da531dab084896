//! Queries on `api_keys`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    sea_query::Expr, sqlx,
};

use super::{
    Pool, SqlStore, audit, conflict_or_unavailable,
    entity::{api_keys, users},
    sessions::{latest_per_id, values_list},
    unavailable,
};
use crate::domain::{
    error::{Error, Result},
    ids::{KeyId, UserId},
    ports::{AuditFor, KeyStore},
    records::{ApiKey, AuditEvent, Email, KeyCredential, KeyEnvironment, NewKey, Role, TokenHash, User},
};

impl TryFrom<api_keys::Model> for ApiKey {
    type Error = Error;

    fn try_from(model: api_keys::Model) -> Result<Self> {
        let api_keys::Model {
            id,
            owner_id,
            name,
            key_hash: _,
            display_prefix,
            environment,
            scopes,
            created_at,
            expires_at,
            last_used_at,
            revoked_at,
            rotated_from_id,
        } = model;
        Ok(ApiKey {
            id: KeyId::new(id),
            owner_id: UserId::new(owner_id),
            name,
            scopes: scopes.split_whitespace().map(str::to_owned).collect(),
            environment: KeyEnvironment::from_stored(&environment)?,
            display_prefix,
            created_at,
            expires_at,
            last_used_at,
            revoked_at,
            rotated_from_id: rotated_from_id.map(KeyId::new),
        })
    }
}

fn active_model(new: NewKey) -> api_keys::ActiveModel {
    api_keys::ActiveModel {
        owner_id: Set(new.owner_id.get()),
        name: Set(new.name),
        key_hash: Set(new.hash.0.to_vec()),
        display_prefix: Set(new.display_prefix),
        environment: Set(new.environment.as_str().to_owned()),
        scopes: Set(new.scopes.join(" ")),
        created_at: Set(new.now),
        expires_at: Set(new.expires_at),
        last_used_at: Set(None),
        revoked_at: Set(None),
        rotated_from_id: Set(new.rotated_from_id.map(KeyId::get)),
        ..Default::default()
    }
}

#[async_trait]
impl KeyStore for SqlStore {
    /// Inserts a key.
    async fn insert_key(&self, new: NewKey, audit: AuditFor<'_, ApiKey>) -> Result<ApiKey> {
        let txn = self.begin().await?;
        let key: ApiKey =
            active_model(new).insert(&txn).await.map_err(conflict_or_unavailable("api key"))?.try_into()?;
        audit::write(&txn, &audit(&key)).await?;
        txn.commit().await.map_err(unavailable)?;
        Ok(key)
    }

    /// The key with `id`.
    async fn key(&self, id: KeyId) -> Result<Option<ApiKey>> {
        api_keys::Entity::find_by_id(id.get())
            .one(&self.db)
            .await
            .map_err(unavailable)?
            .map(ApiKey::try_from)
            .transpose()
    }

    /// The key whose hash is `hash`, with its owner. One indexed read.
    async fn key_by_hash(&self, hash: &TokenHash) -> Result<Option<(ApiKey, User)>> {
        let found = api_keys::Entity::find()
            .filter(api_keys::Column::KeyHash.eq(hash.0.to_vec()))
            .find_also_related(users::Entity)
            .one(&self.db)
            .await
            .map_err(unavailable)?;
        match found {
            Some((key, Some(owner))) => Ok(Some((key.try_into()?, owner.try_into()?))),
            _ => Ok(None),
        }
    }

    /// Keys of `owner_id`, newest first, before `before`.
    async fn list_keys(&self, owner_id: UserId, before: Option<KeyId>, limit: u64) -> Result<Vec<ApiKey>> {
        let mut query = api_keys::Entity::find()
            .filter(api_keys::Column::OwnerId.eq(owner_id.get()))
            .order_by_desc(api_keys::Column::Id)
            .limit(limit);
        if let Some(before) = before {
            query = query.filter(api_keys::Column::Id.lt(before.get()));
        }
        query.all(&self.db).await.map_err(unavailable)?.into_iter().map(ApiKey::try_from).collect()
    }

    /// Sets a key's name and/or scopes.
    async fn update_key(
        &self,
        id: KeyId,
        name: Option<String>,
        scopes: Option<Vec<String>>,
        events: &[AuditEvent],
    ) -> Result<Option<ApiKey>> {
        let txn = self.begin().await?;
        let Some(existing) = api_keys::Entity::find_by_id(id.get()).one(&txn).await.map_err(unavailable)?
        else {
            return Ok(None);
        };
        let mut model: api_keys::ActiveModel = existing.into();
        if let Some(name) = name {
            model.name = Set(name);
        }
        if let Some(scopes) = scopes {
            model.scopes = Set(scopes.join(" "));
        }
        let updated = model.update(&txn).await.map_err(unavailable)?.try_into()?;
        audit::write(&txn, events).await?;
        txn.commit().await.map_err(unavailable)?;
        Ok(Some(updated))
    }

    /// Makes key `id` stop working at `at`, unless it already stops earlier.
    async fn revoke_key(&self, id: KeyId, at: DateTime<Utc>, events: &[AuditEvent]) -> Result<()> {
        let txn = self.begin().await?;
        api_keys::Entity::update_many()
            .col_expr(api_keys::Column::RevokedAt, Expr::value(Some(at)))
            .filter(api_keys::Column::Id.eq(id.get()))
            .filter(
                sea_orm::Condition::any()
                    .add(api_keys::Column::RevokedAt.is_null())
                    .add(api_keys::Column::RevokedAt.gt(at)),
            )
            .exec(&txn)
            .await
            .map_err(unavailable)?;
        audit::write(&txn, events).await?;
        txn.commit().await.map_err(unavailable)
    }

    /// Inserts the replacement of key `old_id` and makes the old key stop at
    /// `old_stops_at`, in one transaction; only if the old key is still
    /// unrevoked at `now` (a concurrent rotation or revocation wins).
    async fn rotate_key(
        &self,
        old_id: KeyId,
        old_stops_at: DateTime<Utc>,
        now: DateTime<Utc>,
        new: NewKey,
        audit: AuditFor<'_, ApiKey>,
    ) -> Result<Option<(ApiKey, ApiKey)>> {
        let txn = self.begin().await?;
        let retired = api_keys::Entity::update_many()
            .col_expr(api_keys::Column::RevokedAt, Expr::value(Some(old_stops_at)))
            .filter(api_keys::Column::Id.eq(old_id.get()))
            .filter(
                sea_orm::Condition::any()
                    .add(api_keys::Column::RevokedAt.is_null())
                    .add(api_keys::Column::RevokedAt.gt(now)),
            )
            .exec(&txn)
            .await
            .map_err(unavailable)?;
        if retired.rows_affected != 1 {
            return Ok(None);
        }
        let created: ApiKey =
            active_model(new).insert(&txn).await.map_err(conflict_or_unavailable("api key"))?.try_into()?;
        let old: ApiKey = api_keys::Entity::find_by_id(old_id.get())
            .one(&txn)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| Error::Internal("rotated key vanished".into()))?
            .try_into()?;
        audit::write(&txn, &audit(&created)).await?;
        txn.commit().await.map_err(unavailable)?;
        Ok(Some((created, old)))
    }

    /// Records last-used times (coarse; written in batches off the hot
    /// path), in one statement.
    async fn touch_keys(&self, used: &[(KeyId, DateTime<Utc>)]) -> Result<()> {
        let latest = latest_per_id(used.iter().map(|(id, at)| (id.get(), *at)));
        if latest.is_empty() {
            return Ok(());
        }
        match self.pool() {
            Pool::Postgres(pool) => {
                let (ids, times): (Vec<i64>, Vec<DateTime<Utc>>) = latest.into_iter().unzip();
                let update = sqlx::query(
                    "UPDATE api_keys AS k SET last_used_at = v.at \
                     FROM UNNEST($1::int8[], $2::timestamptz[]) AS v(id, at) \
                     WHERE k.id = v.id AND (k.last_used_at IS NULL OR k.last_used_at < v.at)",
                )
                .bind(ids)
                .bind(times);
                self.gated(update.execute(pool)).await?;
            }
            Pool::Sqlite(pool) => {
                let sql = format!(
                    "UPDATE api_keys SET last_used_at = v.at \
                     FROM (SELECT column1 AS id, column2 AS at FROM (VALUES {})) AS v \
                     WHERE api_keys.id = v.id \
                     AND (api_keys.last_used_at IS NULL OR api_keys.last_used_at < v.at)",
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
    async fn key_credential(&self, hash: &TokenHash) -> Result<Option<KeyCredential>> {
        type Row = (
            i64,
            i64,
            String,
            Option<DateTime<Utc>>,
            Option<DateTime<Utc>>,
            Option<DateTime<Utc>>,
            String,
            String,
            bool,
        );
        const COLUMNS: &str = "SELECT k.id, k.owner_id, k.scopes, k.expires_at, k.revoked_at, k.last_used_at, \
             u.email, u.role, u.disabled \
             FROM api_keys k JOIN users u ON u.id = k.owner_id WHERE k.key_hash = {h}";
        static POSTGRES: std::sync::LazyLock<String> =
            std::sync::LazyLock::new(|| COLUMNS.replace("{h}", "$1"));
        static SQLITE: std::sync::LazyLock<String> =
            std::sync::LazyLock::new(|| COLUMNS.replace("{h}", "?1"));
        let row: Option<Row> = self.read_row(POSTGRES.as_str(), SQLITE.as_str(), hash.0.as_slice()).await?;
        let Some((id, owner_id, scopes, expires_at, revoked_at, last_used_at, email, role, disabled)) = row
        else {
            return Ok(None);
        };
        Ok(Some(KeyCredential {
            key_id: KeyId::new(id),
            owner_id: UserId::new(owner_id),
            email: Email::from_stored(email),
            role: Role::from_stored(&role)?,
            owner_disabled: disabled,
            scopes: scopes.split_whitespace().map(str::to_owned).collect(),
            expires_at,
            revoked_at,
            last_used_at,
        }))
    }
}
