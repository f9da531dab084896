//! API keys: creation with no escalation, listing, scope changes,
//! revocation and rotation with an overlap window.
//!
//! A caller manages its own user's keys; other owners' keys need the
//! keys-read or keys-write scope. A key can only be given scopes its creator
//! holds, and only a caller holding all of a key's scopes may rotate it (a
//! rotation hands out a fresh secret with those scopes).

use chrono::{DateTime, Utc};

use super::{
    Action, ApiKey, Ctx, Domain, Error, IssuedKey, KeyEnvironment, KeyId, Outcome, Page, Principal, Result,
    UserId, page_size, parse_page_token,
    records::NewKey,
    scope,
    token::{TokenFormat, TokenKind},
};

/// Longest key name, in characters.
const MAX_NAME_CHARS: usize = 100;
/// Most scopes on one key.
const MAX_SCOPES: usize = 64;
/// Longest rotation overlap.
const MAX_OVERLAP: chrono::Duration = chrono::Duration::days(7);

/// A page of keys.
pub type KeyPage = Page<ApiKey>;

/// A key to create, as the client sent it.
#[derive(Debug)]
pub struct NewKeyInput {
    /// Name.
    pub name: String,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Live or test.
    pub environment: KeyEnvironment,
    /// Expiry.
    pub expires_at: Option<DateTime<Utc>>,
    /// Owner; `None` means the caller.
    pub owner_id: Option<UserId>,
}

/// Changes to a key; `None` leaves a field alone.
#[derive(Debug, Default)]
pub struct KeyPatch {
    /// New name.
    pub name: Option<String>,
    /// New scopes.
    pub scopes: Option<Vec<String>>,
}

impl Domain {
    /// Creates a key for the caller or (with keys-write) another owner.
    ///
    /// # Errors
    /// `Forbidden` for another owner without keys-write or a scope the caller
    /// does not hold; `InvalidArgument` for a bad name, scope or expiry;
    /// `NotFound` for an unknown owner.
    pub async fn create_key(&self, ctx: &Ctx, caller: &Principal, input: NewKeyInput) -> Result<IssuedKey> {
        let owner_id = match input.owner_id {
            None => caller.user_id,
            Some(id) if id.get() <= 0 => {
                return Err(Error::invalid("owner_id", "must be a user id, or 0 for yourself"));
            }
            Some(id) => {
                if id != caller.user_id {
                    caller.require(scope::KEYS_WRITE)?;
                }
                id
            }
        };
        let name = check_name(&input.name, "name")?;
        let scopes = check_scopes(caller, input.scopes, "scopes")?;
        let now = self.clock.now();
        if let Some(expires_at) = input.expires_at
            && expires_at <= now
        {
            return Err(Error::invalid("expire_time", "must be in the future"));
        }
        if self.store.user(owner_id).await?.is_none() {
            return Err(Error::NotFound("user"));
        }
        let ctx = ctx.acting_as(caller);
        self.insert_new_key(&ctx, owner_id, name, scopes, input.environment, input.expires_at, now).await
    }

    /// Creates a key for the user with `owner_email`, with no caller: the
    /// CLI's bootstrap of a service before any admin exists.
    ///
    /// # Errors
    /// As [`Domain::create_key`], without the permission checks.
    pub async fn create_key_unchecked(
        &self,
        ctx: &Ctx,
        owner_email: &str,
        name: &str,
        scopes: Vec<String>,
        environment: KeyEnvironment,
    ) -> Result<IssuedKey> {
        let email = super::Email::parse(owner_email, "owner")?;
        let (owner, _) = self.store.user_by_email(&email).await?.ok_or(Error::NotFound("user"))?;
        let name = check_name(name, "name")?;
        let scopes = check_syntax_all(scopes, "scopes")?;
        self.insert_new_key(ctx, owner.id, name, scopes, environment, None, self.clock.now()).await
    }

    #[allow(clippy::too_many_arguments, reason = "one private constructor of rows")]
    async fn insert_new_key(
        &self,
        ctx: &Ctx,
        owner_id: UserId,
        name: String,
        scopes: Vec<String>,
        environment: KeyEnvironment,
        expires_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<IssuedKey> {
        let (key, hash) = self.tokens.generate(TokenKind::of_key(environment))?;
        let api_key = self
            .store
            .insert_key(
                NewKey {
                    owner_id,
                    name,
                    hash,
                    display_prefix: TokenFormat::display_prefix(&key),
                    environment,
                    scopes,
                    now,
                    expires_at,
                    rotated_from_id: None,
                },
                &|key: &ApiKey| {
                    let detail = format!("owner=user:{owner_id} scopes={}", key.scopes.join(","));
                    vec![
                        ctx.event(now, Action::KeyCreated, Outcome::Success, format!("key:{}", key.id))
                            .detail(detail),
                    ]
                },
            )
            .await?;
        tracing::info!(key_id = api_key.id.get(), owner_id = owner_id.get(), "api key created");
        Ok(IssuedKey { key, api_key })
    }

    /// One key's metadata.
    ///
    /// # Errors
    /// `NotFound` when it does not exist or the caller may not see it.
    pub async fn get_key(&self, caller: &Principal, key_id: KeyId) -> Result<ApiKey> {
        self.visible_key(caller, key_id, scope::KEYS_READ).await
    }

    /// Keys of an owner (`None`: the caller), newest first.
    ///
    /// # Errors
    /// `Forbidden` for another owner without keys-read; `InvalidArgument`
    /// for a bad page token.
    pub async fn list_keys(
        &self,
        caller: &Principal,
        owner_id: Option<UserId>,
        requested: i32,
        token: &str,
    ) -> Result<KeyPage> {
        let owner_id = super::sessions::target_user(caller, owner_id, scope::KEYS_READ)?;
        let before = parse_page_token(token)?.map(KeyId::new);
        let limit = page_size(requested, 50, 500);
        let keys = self.store.list_keys(owner_id, before, limit + 1).await?;
        Ok(Page::from_overfetch(keys, limit, |k: &ApiKey| k.id.get()))
    }

    /// Changes a key's name or scopes.
    ///
    /// # Errors
    /// `NotFound`, `Forbidden` (a scope the caller does not hold),
    /// `InvalidArgument`.
    pub async fn update_key(
        &self,
        ctx: &Ctx,
        caller: &Principal,
        key_id: KeyId,
        patch: KeyPatch,
    ) -> Result<ApiKey> {
        let name = patch.name.map(|name| check_name(&name, "api_key.name")).transpose()?;
        let scopes = patch.scopes.map(|s| check_scopes(caller, s, "api_key.scopes")).transpose()?;
        self.visible_key(caller, key_id, scope::KEYS_WRITE).await?;
        let event = ctx
            .acting_as(caller)
            .event(self.clock.now(), Action::KeyUpdated, Outcome::Success, format!("key:{key_id}"))
            .detail(scopes.as_ref().map(|s| format!("scopes={}", s.join(","))).unwrap_or_default());
        let key =
            self.store.update_key(key_id, name, scopes, &[event]).await?.ok_or(Error::NotFound("api key"))?;
        self.validator.forget_key(key_id).await;
        tracing::info!(key_id = key_id.get(), "api key updated");
        Ok(key)
    }

    /// Revokes a key at once; revoking a revoked key changes nothing.
    ///
    /// # Errors
    /// `NotFound` when it does not exist or the caller may not manage it.
    pub async fn revoke_key(&self, ctx: &Ctx, caller: &Principal, key_id: KeyId) -> Result<ApiKey> {
        let key = self.visible_key(caller, key_id, scope::KEYS_WRITE).await?;
        let now = self.clock.now();
        if key.is_revoked(now) {
            return Ok(key);
        }
        let event =
            ctx.acting_as(caller).event(now, Action::KeyRevoked, Outcome::Success, format!("key:{key_id}"));
        self.store.revoke_key(key_id, now, &[event]).await?;
        self.validator.forget_key(key_id).await;
        tracing::info!(key_id = key_id.get(), "api key revoked");
        self.store.key(key_id).await?.ok_or(Error::NotFound("api key"))
    }

    /// Revokes a key with no caller: the CLI's. Revoking a revoked key
    /// changes nothing.
    ///
    /// # Errors
    /// `NotFound` for an unknown key.
    pub async fn revoke_key_unchecked(&self, ctx: &Ctx, key_id: KeyId) -> Result<ApiKey> {
        let key = self.key_unchecked(key_id).await?;
        let now = self.clock.now();
        if key.is_revoked(now) {
            return Ok(key);
        }
        let event = ctx.event(now, Action::KeyRevoked, Outcome::Success, format!("key:{key_id}"));
        self.store.revoke_key(key_id, now, &[event]).await?;
        self.validator.forget_key(key_id).await;
        tracing::info!(key_id = key_id.get(), "api key revoked");
        self.key_unchecked(key_id).await
    }

    /// One key, with no caller: the CLI's.
    ///
    /// # Errors
    /// `InvalidArgument` for an id that is not positive, `NotFound`.
    pub async fn key_unchecked(&self, key_id: KeyId) -> Result<ApiKey> {
        if key_id.get() <= 0 {
            return Err(Error::invalid("key_id", "must be a positive key id"));
        }
        self.store.key(key_id).await?.ok_or(Error::NotFound("api key"))
    }

    /// Keys of `owner_id`, newest first, with no caller: the CLI's.
    ///
    /// # Errors
    /// `InvalidArgument` for a bad page token.
    pub async fn list_keys_unchecked(
        &self,
        owner_id: UserId,
        requested: i32,
        token: &str,
    ) -> Result<KeyPage> {
        let before = parse_page_token(token)?.map(KeyId::new);
        let limit = page_size(requested, 50, 500);
        let keys = self.store.list_keys(owner_id, before, limit + 1).await?;
        Ok(Page::from_overfetch(keys, limit, |k: &ApiKey| k.id.get()))
    }

    /// Replaces a key; the old one works until `overlap` ends.
    ///
    /// # Errors
    /// `NotFound`; `Forbidden` when the caller does not hold all the key's
    /// scopes; `InvalidArgument` for a revoked key or a bad overlap.
    pub async fn rotate_key(
        &self,
        ctx: &Ctx,
        caller: &Principal,
        key_id: KeyId,
        overlap: chrono::Duration,
    ) -> Result<(IssuedKey, ApiKey)> {
        check_overlap(overlap)?;
        let old = self.visible_key(caller, key_id, scope::KEYS_WRITE).await?;
        for held in &old.scopes {
            if !caller.has_scope(held) {
                return Err(Error::Forbidden {
                    message: format!(
                        "rotating this key would hand out the scope `{held}` the caller does not hold"
                    ),
                    missing_scope: Some(held.clone()),
                });
            }
        }
        self.rotate(&ctx.acting_as(caller), old, overlap).await
    }

    /// Replaces a key with no caller: the CLI's `key rotate`.
    ///
    /// # Errors
    /// As [`Domain::rotate_key`], without the permission checks.
    pub async fn rotate_key_unchecked(
        &self,
        ctx: &Ctx,
        key_id: KeyId,
        overlap: chrono::Duration,
    ) -> Result<(IssuedKey, ApiKey)> {
        check_overlap(overlap)?;
        let old = self.key_unchecked(key_id).await?;
        self.rotate(ctx, old, overlap).await
    }

    async fn rotate(&self, ctx: &Ctx, old: ApiKey, overlap: chrono::Duration) -> Result<(IssuedKey, ApiKey)> {
        let now = self.clock.now();
        if old.is_revoked(now) {
            return Err(Error::invalid("key_id", "the key is revoked; create a new one"));
        }
        let (key, hash) = self.tokens.generate(TokenKind::of_key(old.environment))?;
        let new = NewKey {
            owner_id: old.owner_id,
            name: old.name.clone(),
            hash,
            display_prefix: TokenFormat::display_prefix(&key),
            environment: old.environment,
            scopes: old.scopes.clone(),
            now,
            expires_at: old.expires_at,
            rotated_from_id: Some(old.id),
        };
        let audit = |key: &ApiKey| {
            let detail = format!("from key:{} overlap={}s", old.id, overlap.num_seconds());
            vec![
                ctx.event(now, Action::KeyRotated, Outcome::Success, format!("key:{}", key.id))
                    .detail(detail),
            ]
        };
        let Some((api_key, previous)) =
            self.store.rotate_key(old.id, now + overlap, now, new, &audit).await?
        else {
            return Err(Error::invalid("key_id", "the key was revoked or rotated meanwhile"));
        };
        self.validator.forget_key(old.id).await;
        tracing::info!(old_key_id = old.id.get(), new_key_id = api_key.id.get(), "api key rotated");
        Ok((IssuedKey { key, api_key }, previous))
    }

    /// A key the caller may see (its own, or any with `needed`). Others are
    /// `NotFound`, so their existence is not revealed.
    async fn visible_key(&self, caller: &Principal, key_id: KeyId, needed: &str) -> Result<ApiKey> {
        if key_id.get() <= 0 {
            return Err(Error::invalid("key_id", "must be a positive key id"));
        }
        let key = self.store.key(key_id).await?.ok_or(Error::NotFound("api key"))?;
        if key.owner_id == caller.user_id || caller.has_scope(needed) {
            Ok(key)
        } else if caller.has_scope(scope::KEYS_READ) {
            Err(Error::missing_scope(needed))
        } else {
            Err(Error::NotFound("api key"))
        }
    }
}

fn check_overlap(overlap: chrono::Duration) -> Result<()> {
    if overlap < chrono::Duration::zero() || overlap > MAX_OVERLAP {
        return Err(Error::invalid("overlap", "must be between 0 and 7 days"));
    }
    Ok(())
}

fn check_name(name: &str, field: &'static str) -> Result<String> {
    let name = name.trim();
    if name.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if name.chars().count() > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(Error::invalid(field, format!("must be at most {MAX_NAME_CHARS} printable characters")));
    }
    Ok(name.to_owned())
}

fn check_syntax_all(scopes: Vec<String>, field: &'static str) -> Result<Vec<String>> {
    if scopes.len() > MAX_SCOPES {
        return Err(Error::invalid(field, format!("at most {MAX_SCOPES} scopes")));
    }
    let mut checked: Vec<String> = Vec::with_capacity(scopes.len());
    for wanted in scopes {
        scope::check_syntax(&wanted).map_err(|why| Error::invalid(field, why))?;
        if !checked.contains(&wanted) {
            checked.push(wanted);
        }
    }
    Ok(checked)
}

/// Checks syntax and that the caller holds every scope it grants.
fn check_scopes(caller: &Principal, scopes: Vec<String>, field: &'static str) -> Result<Vec<String>> {
    let scopes = check_syntax_all(scopes, field)?;
    if let Some(missing) = scope::first_missing(&caller.scopes, &scopes) {
        return Err(Error::Forbidden {
            message: format!("cannot grant the scope `{missing}`: the caller does not hold it"),
            missing_scope: Some(missing.to_owned()),
        });
    }
    Ok(scopes)
}
