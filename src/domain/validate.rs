//! The hot path: turn a token into a principal, fast and fail-closed.
//!
//! Parse and checksum the token (no I/O), hash it, look the hash up in an
//! in-memory cache, and fall back to one indexed database read. Unknown
//! tokens are cached as unknown for a short time. Revocation on this replica
//! clears the cache at once; an epoch counter stops a read that raced with a
//! revocation from putting a stale answer back. Last-seen times are written
//! coarsely by a background task, never once per validation.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use moka::{Expiry, sync::Cache};
use tokio::sync::mpsc;

use super::{
    AuthFailure, AuthMethod, CredentialId, Email, Error, Principal, Result, Role, SessionState,
    scope,
    token::{TokenFormat, TokenHash, TokenKind},
};
use crate::store::{SessionMatch, Store};

/// How often, at most, one session's last-seen time is written.
const SEEN_INTERVAL: Duration = Duration::from_mins(1);
/// Last-seen updates waiting to be written; more are dropped (they are
/// advisory, and dropping never blocks validation).
const SEEN_QUEUE: usize = 4096;

/// What the cache knows about a token hash.
#[derive(Clone, Debug)]
enum Entry {
    /// A session's current or previous token.
    Known(Arc<Known>),
    /// No session has this token.
    Unknown,
}

/// The facts needed to answer for a token without the database.
#[derive(Debug)]
struct Known {
    session_id: i64,
    user_id: i64,
    email: Email,
    role: Role,
    disabled: bool,
    state: SessionState,
    expires_at: DateTime<Utc>,
    /// For a refreshed-away token: the end of its grace.
    previous_valid_until: Option<DateTime<Utc>>,
    auth_methods: Vec<AuthMethod>,
}

impl Known {
    fn from_match(found: SessionMatch) -> Self {
        let SessionMatch {
            session,
            user,
            matched_previous,
            current_hash: _,
        } = found;
        Self {
            session_id: session.id,
            user_id: user.id,
            email: user.email,
            role: user.role,
            disabled: user.disabled,
            state: session.state,
            expires_at: session.expires_at,
            // A previous token with no grace end recorded is already dead.
            previous_valid_until: matched_previous.then(|| {
                session
                    .previous_valid_until
                    .unwrap_or(DateTime::<Utc>::MIN_UTC)
            }),
            auth_methods: session.auth_methods,
        }
    }

    /// The principal, if the token is usable at `now`.
    fn check(&self, kind: TokenKind, now: DateTime<Utc>) -> Result<Principal> {
        if self.disabled || self.state == SessionState::Revoked {
            return Err(AuthFailure::InvalidToken.into());
        }
        match (kind, self.state) {
            (TokenKind::Session, SessionState::Active) => {}
            (TokenKind::MfaPending, SessionState::PendingMfa) => {
                if now >= self.expires_at {
                    return Err(AuthFailure::Expired.into());
                }
                return Err(AuthFailure::MfaRequired.into());
            }
            _ => return Err(AuthFailure::InvalidToken.into()),
        }
        if let Some(grace_end) = self.previous_valid_until
            && now >= grace_end
        {
            return Err(AuthFailure::InvalidToken.into());
        }
        if now >= self.expires_at {
            return Err(AuthFailure::Expired.into());
        }
        Ok(Principal {
            credential: CredentialId::Session(self.session_id),
            user_id: self.user_id,
            email: self.email.clone(),
            role: self.role,
            scopes: self.role.scopes(),
            expires_at: Some(match self.previous_valid_until {
                Some(grace_end) => grace_end.min(self.expires_at),
                None => self.expires_at,
            }),
            auth_methods: self.auth_methods.clone(),
        })
    }
}

/// Gives known tokens the full cache lifetime and unknown ones a short one.
struct EntryExpiry {
    known: Duration,
    unknown: Duration,
}

impl Expiry<TokenHash, Entry> for EntryExpiry {
    fn expire_after_create(&self, _: &TokenHash, value: &Entry, _: Instant) -> Option<Duration> {
        Some(match value {
            Entry::Known(_) => self.known,
            Entry::Unknown => self.unknown,
        })
    }
}

/// Cache settings.
#[derive(Clone, Copy, Debug)]
pub struct CacheConfig {
    /// Lifetime of a known token's entry.
    pub ttl: Duration,
    /// Lifetime of an unknown token's entry.
    pub negative_ttl: Duration,
    /// Most entries.
    pub capacity: u64,
}

/// Validates tokens; shared by `ValidateToken` and the check of every
/// management call's own credential.
pub struct Validator {
    store: Store,
    tokens: TokenFormat,
    cache: Cache<TokenHash, Entry>,
    epoch: AtomicU64,
    seen: Cache<i64, ()>,
    seen_tx: mpsc::Sender<(i64, DateTime<Utc>)>,
    lookups: AtomicU64,
}

impl Validator {
    /// A validator over `store`; spawns the last-seen writer on the current
    /// tokio runtime.
    #[must_use]
    pub fn new(store: Store, tokens: TokenFormat, config: CacheConfig) -> Self {
        let cache = Cache::builder()
            .max_capacity(config.capacity)
            .expire_after(EntryExpiry {
                known: config.ttl,
                unknown: config.negative_ttl,
            })
            .support_invalidation_closures()
            .build();
        let (seen_tx, seen_rx) = mpsc::channel(SEEN_QUEUE);
        tokio::spawn(write_last_seen(store.clone(), seen_rx));
        Self {
            store,
            tokens,
            cache,
            epoch: AtomicU64::new(0),
            seen: Cache::builder()
                .max_capacity(config.capacity)
                .time_to_live(SEEN_INTERVAL)
                .build(),
            seen_tx,
            lookups: AtomicU64::new(0),
        }
    }

    /// The principal behind `token`, if it holds every scope in `required`.
    ///
    /// # Errors
    /// `Unauthenticated` (invalid, expired, MFA pending), `Forbidden` for a
    /// missing scope, `InvalidArgument` for a malformed required scope,
    /// `Unavailable` when the database cannot answer (never "valid").
    pub async fn validate(
        &self,
        token: &str,
        required: &[String],
        now: DateTime<Utc>,
    ) -> Result<Principal> {
        for wanted in required {
            scope::check_syntax(wanted).map_err(|why| Error::invalid("required_scopes", why))?;
        }
        let parsed = self
            .tokens
            .parse(token)
            .map_err(|_| AuthFailure::InvalidToken)?;
        if !matches!(parsed.kind, TokenKind::Session | TokenKind::MfaPending) {
            return Err(AuthFailure::InvalidToken.into());
        }
        let Entry::Known(known) = self.lookup(parsed.hash).await? else {
            return Err(AuthFailure::InvalidToken.into());
        };
        let principal = known.check(parsed.kind, now)?;
        if let Some(missing) = scope::first_missing(&principal.scopes, required) {
            return Err(Error::missing_scope(missing));
        }
        self.record_seen(known.session_id, now);
        Ok(principal)
    }

    /// Forgets every cached token of session `id`.
    pub fn forget_session(&self, id: i64) {
        self.forget(move |known| known.session_id == id);
    }

    /// Forgets every cached token of user `id`.
    pub fn forget_user(&self, id: i64) {
        self.forget(move |known| known.user_id == id);
    }

    /// How many database lookups validation has made (cache misses).
    #[must_use]
    pub fn lookup_count(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
    }

    fn forget(&self, matches: impl Fn(&Known) -> bool + Send + Sync + 'static) {
        let predicate = move |_: &TokenHash, entry: &Entry| match entry {
            Entry::Known(known) => matches(known),
            Entry::Unknown => false,
        };
        if self.cache.invalidate_entries_if(predicate).is_err() {
            // Cannot happen (closures are enabled above); clear everything
            // rather than risk answering for a revoked token.
            self.cache.invalidate_all();
        }
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    async fn lookup(&self, hash: TokenHash) -> Result<Entry> {
        if let Some(entry) = self.cache.get(&hash) {
            return Ok(entry);
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        self.lookups.fetch_add(1, Ordering::Relaxed);
        let entry = match self.store.session_by_hash(&hash).await? {
            Some(found) => Entry::Known(Arc::new(Known::from_match(found))),
            None => Entry::Unknown,
        };
        // A revocation that ran while we read may have missed our entry:
        // then our read is not trusted for later requests.
        if self.epoch.load(Ordering::Acquire) == epoch {
            self.cache.insert(hash, entry.clone());
        }
        Ok(entry)
    }

    fn record_seen(&self, session_id: i64, now: DateTime<Utc>) {
        if self.seen.contains_key(&session_id) {
            return;
        }
        self.seen.insert(session_id, ());
        // Dropped when the writer is behind: last-seen is advisory.
        let _ = self.seen_tx.try_send((session_id, now));
    }
}

/// Writes last-seen times in batches until the validator is dropped.
async fn write_last_seen(store: Store, mut rx: mpsc::Receiver<(i64, DateTime<Utc>)>) {
    let mut batch = Vec::with_capacity(64);
    while rx.recv_many(&mut batch, 64).await > 0 {
        if let Err(err) = store.touch_sessions(&batch).await {
            tracing::warn!(error = %err, "could not record session last-seen times");
        }
        batch.clear();
    }
}
