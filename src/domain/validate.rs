//! The hot path: turn a token into a principal, fast and fail-closed.
//!
//! Session tokens and API keys alike: parse and checksum the token (no I/O), hash it, look the hash up in an
//! in-memory cache, and fall back to one indexed database read. Unknown
//! tokens are cached as unknown for a short time. Revocation on this replica
//! clears the cache at once; an epoch counter stops a read that raced with a
//! revocation from putting a stale answer back. Last-seen times are written
//! coarsely, in batches, never once per validation.
//!
//! The validator spawns nothing: [`Validator::new`] hands back its background
//! work as [`ValidatorTasks`] for the caller (`app`) to run, each with a stop
//! signal: the [`LastSeenWriter`], which writes what is still queued before it
//! ends (asked to stop, or when the validator is dropped), and, when replicas
//! share the store (PostgreSQL), the [`RevocationFollower`], which applies the
//! revocations other replicas announce. A revocation here is announced to the
//! others before the call that made it returns.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use moka::{Expiry, sync::Cache};
use tokio::sync::mpsc;

use super::{
    AuthFailure, AuthMethod, CredentialId, Email, Error, KeyId, Principal, Result, Role, SessionId,
    SessionState, UserId,
    ports::Store,
    records::{KeyCredential, SessionCredential, TokenHash},
    scope,
    token::{TokenFormat, TokenKind},
};

/// How often, at most, one session's last-seen time is written (seconds).
const SEEN_INTERVAL_SECS: i64 = 60;
/// Last-seen updates waiting to be written; more are dropped (they are
/// advisory, and dropping never blocks validation).
const SEEN_QUEUE: usize = 4096;
/// Last-seen updates written at once.
const SEEN_BATCH: usize = 64;

/// What the cache knows about a token hash.
#[derive(Clone, Debug)]
enum Entry {
    /// A session's current or previous token.
    Session(Arc<KnownSession>),
    /// An API key.
    Key(Arc<KnownKey>),
    /// No session or key has this token.
    Unknown,
}

impl Entry {
    fn user_id(&self) -> Option<UserId> {
        match self {
            Entry::Session(known) => Some(known.user_id),
            Entry::Key(known) => Some(known.owner_id),
            Entry::Unknown => None,
        }
    }
}

/// The facts needed to answer for an API key without the database, and
/// when its last-used time was last recorded: one cache entry holds both.
#[derive(Debug)]
struct KnownKey {
    key_id: KeyId,
    owner_id: UserId,
    email: Email,
    role: Role,
    disabled: bool,
    scopes: Vec<String>,
    expires_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
    /// Unix seconds of the last-used time stored or last queued.
    seen: AtomicI64,
}

impl KnownKey {
    fn from_credential(found: KeyCredential) -> Self {
        let KeyCredential {
            key_id,
            owner_id,
            email,
            role,
            owner_disabled,
            scopes,
            expires_at,
            revoked_at,
            last_used_at,
        } = found;
        Self {
            key_id,
            owner_id,
            email,
            role,
            disabled: owner_disabled,
            scopes,
            expires_at,
            revoked_at,
            seen: AtomicI64::new(last_used_at.map_or(i64::MIN, |at| at.timestamp())),
        }
    }

    /// The principal, if the key is usable at `now`.
    fn check(&self, now: DateTime<Utc>) -> Result<Principal> {
        if self.disabled || self.revoked_at.is_some_and(|at| now >= at) {
            return Err(AuthFailure::InvalidToken.into());
        }
        if self.expires_at.is_some_and(|at| now >= at) {
            return Err(AuthFailure::Expired.into());
        }
        let stops_at = match (self.expires_at, self.revoked_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok(Principal {
            credential: CredentialId::ApiKey(self.key_id),
            user_id: self.owner_id,
            email: self.email.clone(),
            role: self.role,
            scopes: self.scopes.clone(),
            expires_at: stops_at,
            auth_methods: Vec::new(),
        })
    }
}

/// The facts needed to answer for a session token without the database.
#[derive(Debug)]
struct KnownSession {
    session_id: SessionId,
    user_id: UserId,
    email: Email,
    role: Role,
    disabled: bool,
    state: SessionState,
    expires_at: DateTime<Utc>,
    /// For a refreshed-away token: the end of its grace.
    previous_valid_until: Option<DateTime<Utc>>,
    auth_methods: Methods,
    /// Unix seconds of the last-seen time stored or last queued.
    seen: AtomicI64,
}

impl KnownSession {
    fn from_credential(found: SessionCredential) -> Self {
        let SessionCredential {
            session_id,
            user_id,
            email,
            role,
            user_disabled,
            state,
            expires_at,
            previous_valid_until,
            matched_previous,
            auth_methods,
            last_seen_at,
        } = found;
        Self {
            session_id,
            user_id,
            email,
            role,
            disabled: user_disabled,
            state,
            expires_at,
            // A previous token with no grace end recorded is already dead.
            previous_valid_until: matched_previous
                .then(|| previous_valid_until.unwrap_or(DateTime::<Utc>::MIN_UTC)),
            auth_methods: Methods::new(auth_methods),
            seen: AtomicI64::new(last_seen_at.timestamp()),
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
            auth_methods: self.auth_methods.to_vec(),
        })
    }
}

/// A session's auth methods, in order, held without a heap allocation when
/// there are at most [`Methods::INLINE`] (a session has one or two): a cached
/// principal stays small.
#[derive(Debug)]
enum Methods {
    Inline { len: u8, items: [AuthMethod; Methods::INLINE] },
    Heap(Box<[AuthMethod]>),
}

impl Methods {
    const INLINE: usize = 6;

    fn new(methods: Vec<AuthMethod>) -> Self {
        if methods.len() > Self::INLINE {
            return Self::Heap(methods.into_boxed_slice());
        }
        let mut items = [AuthMethod::Password; Self::INLINE];
        items[..methods.len()].copy_from_slice(&methods);
        Self::Inline { len: u8::try_from(methods.len()).unwrap_or(0), items }
    }

    fn to_vec(&self) -> Vec<AuthMethod> {
        match self {
            Self::Inline { len, items } => items[..usize::from(*len)].to_vec(),
            Self::Heap(items) => items.to_vec(),
        }
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
            Entry::Session(_) | Entry::Key(_) => self.known,
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
    store: Arc<dyn Store>,
    tokens: TokenFormat,
    cache: Cache<TokenHash, Entry>,
    epoch: Arc<AtomicU64>,
    seen_tx: mpsc::Sender<(CredentialId, DateTime<Utc>)>,
    lookups: AtomicU64,
}

impl Validator {
    /// A validator over `store`, and the background work it needs run.
    #[must_use]
    pub fn new(store: Arc<dyn Store>, tokens: TokenFormat, config: CacheConfig) -> (Self, ValidatorTasks) {
        let cache = Cache::builder()
            .max_capacity(config.capacity)
            .expire_after(EntryExpiry { known: config.ttl, unknown: config.negative_ttl })
            .support_invalidation_closures()
            .build();
        let (seen_tx, seen_rx) = mpsc::channel(SEEN_QUEUE);
        let epoch = Arc::new(AtomicU64::new(0));
        let tasks = ValidatorTasks {
            last_seen: LastSeenWriter { store: Arc::clone(&store), queue: seen_rx },
            revocations: store.is_shared().then(|| RevocationFollower {
                store: Arc::clone(&store),
                cache: cache.clone(),
                epoch: Arc::clone(&epoch),
            }),
        };
        let validator = Self { store, tokens, cache, epoch, seen_tx, lookups: AtomicU64::new(0) };
        (validator, tasks)
    }

    /// The principal behind `token`, if it holds every scope in `required`.
    ///
    /// # Errors
    /// `Unauthenticated` (invalid, expired, MFA pending), `Forbidden` for a
    /// missing scope, `InvalidArgument` for a malformed required scope,
    /// `Unavailable` when the database cannot answer (never "valid").
    pub async fn validate(&self, token: &str, required: &[String], now: DateTime<Utc>) -> Result<Principal> {
        for wanted in required {
            scope::check_syntax(wanted).map_err(|why| Error::invalid("required_scopes", why))?;
        }
        let parsed = self.tokens.parse(token).map_err(|_| AuthFailure::InvalidToken)?;
        let entry = self.lookup(parsed.hash, parsed.kind).await?;
        let (principal, seen) = match &entry {
            Entry::Session(known) => (known.check(parsed.kind, now)?, &known.seen),
            Entry::Key(known) => (known.check(now)?, &known.seen),
            Entry::Unknown => return Err(AuthFailure::InvalidToken.into()),
        };
        if let Some(missing) = scope::first_missing(&principal.scopes, required) {
            return Err(Error::missing_scope(missing));
        }
        self.record_seen(principal.credential, seen, now);
        Ok(principal)
    }

    /// Forgets every cached token of session `id`, here and (PostgreSQL)
    /// on every other replica.
    pub async fn forget_session(&self, id: SessionId) {
        self.forget(Forget::Session(id)).await;
    }

    /// Forgets API key `id`, here and on every other replica.
    pub async fn forget_key(&self, id: KeyId) {
        self.forget(Forget::Key(id)).await;
    }

    /// Forgets every cached session token and API key of user `id`, here and
    /// on every other replica.
    pub async fn forget_user(&self, id: UserId) {
        self.forget(Forget::User(id)).await;
    }

    /// How many database lookups validation has made (cache misses).
    #[must_use]
    pub fn lookup_count(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
    }

    async fn forget(&self, what: Forget) {
        forget_here(&self.cache, &self.epoch, what);
        // Other replicas hear it through LISTEN/NOTIFY; a lost announcement
        // is bounded by their cache lifetime.
        if self.store.is_shared()
            && let Err(err) = self.store.announce_revocation(&what.to_string()).await
        {
            tracing::warn!(error = %err, "could not notify other replicas of a revocation");
        }
    }

    async fn lookup(&self, hash: TokenHash, kind: TokenKind) -> Result<Entry> {
        if let Some(entry) = self.cache.get(&hash) {
            return Ok(entry);
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        self.lookups.fetch_add(1, Ordering::Relaxed);
        let entry = match kind {
            TokenKind::Session | TokenKind::MfaPending => match self.store.session_credential(&hash).await? {
                Some(found) => Entry::Session(Arc::new(KnownSession::from_credential(found))),
                None => Entry::Unknown,
            },
            TokenKind::LiveKey | TokenKind::TestKey => match self.store.key_credential(&hash).await? {
                Some(found) => Entry::Key(Arc::new(KnownKey::from_credential(found))),
                None => Entry::Unknown,
            },
        };
        // A revocation that ran while we read may have missed our entry:
        // then our read is not trusted for later requests.
        if self.epoch.load(Ordering::Acquire) == epoch {
            self.cache.insert(hash, entry.clone());
        }
        Ok(entry)
    }

    /// Queues a last-seen write when the one stored (or last queued) is a
    /// minute old: the cache entry itself remembers it, so there is no
    /// second cache, and a fresh entry starts from the stored time.
    fn record_seen(&self, credential: CredentialId, seen: &AtomicI64, now: DateTime<Utc>) {
        let at = now.timestamp();
        let last = seen.load(Ordering::Relaxed);
        if at.saturating_sub(last) < SEEN_INTERVAL_SECS
            || seen.compare_exchange(last, at, Ordering::Relaxed, Ordering::Relaxed).is_err()
        {
            return;
        }
        // Dropped when the writer is behind: last-seen is advisory.
        let _ = self.seen_tx.try_send((credential, now));
    }
}

/// The validator's background work, for the caller to run: the validator
/// spawns nothing.
pub struct ValidatorTasks {
    /// Writes last-seen and last-used times.
    pub last_seen: LastSeenWriter,
    /// Applies other replicas' revocations; `None` when no other replica
    /// shares the store (SQLite).
    pub revocations: Option<RevocationFollower>,
}

/// Writes session last-seen and key last-used times in batches of at most
/// 64: one statement per table per batch.
pub struct LastSeenWriter {
    store: Arc<dyn Store>,
    queue: mpsc::Receiver<(CredentialId, DateTime<Utc>)>,
}

impl LastSeenWriter {
    /// Writes until `stop` resolves or the validator is dropped, then writes
    /// what is still queued and returns.
    pub async fn run(self, stop: impl Future<Output = ()>) {
        let Self { store, mut queue } = self;
        let mut stop = std::pin::pin!(stop);
        let mut batch = Vec::with_capacity(SEEN_BATCH);
        loop {
            tokio::select! {
                biased;
                () = &mut stop => break,
                // Cancel-safe: a batch interrupted by `stop` stays queued.
                received = queue.recv_many(&mut batch, SEEN_BATCH) => {
                    if received == 0 {
                        return;
                    }
                    write_seen(store.as_ref(), &mut batch).await;
                }
            }
        }
        queue.close();
        while queue.recv_many(&mut batch, SEEN_BATCH).await > 0 {
            write_seen(store.as_ref(), &mut batch).await;
        }
    }
}

/// Writes one batch (and empties it).
async fn write_seen(store: &dyn Store, batch: &mut Vec<(CredentialId, DateTime<Utc>)>) {
    let (mut sessions, mut keys) = (Vec::new(), Vec::new());
    for (credential, at) in batch.drain(..) {
        match credential {
            CredentialId::Session(id) => sessions.push((id, at)),
            CredentialId::ApiKey(id) => keys.push((id, at)),
        }
    }
    let written = match store.touch_sessions(&sessions).await {
        Ok(()) => store.touch_keys(&keys).await,
        Err(err) => Err(err),
    };
    if let Err(err) = written {
        tracing::warn!(error = %err, "could not record last-used times");
    }
}

/// What a revocation makes the caches forget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Forget {
    Session(SessionId),
    Key(KeyId),
    User(UserId),
}

impl std::fmt::Display for Forget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Forget::Session(id) => write!(f, "session:{id}"),
            Forget::Key(id) => write!(f, "key:{id}"),
            Forget::User(id) => write!(f, "user:{id}"),
        }
    }
}

impl std::str::FromStr for Forget {
    type Err = ();

    fn from_str(text: &str) -> std::result::Result<Self, ()> {
        let (kind, id) = text.split_once(':').ok_or(())?;
        let id: i64 = id.parse().map_err(|_| ())?;
        match kind {
            "session" => Ok(Forget::Session(SessionId::new(id))),
            "key" => Ok(Forget::Key(KeyId::new(id))),
            "user" => Ok(Forget::User(UserId::new(id))),
            _ => Err(()),
        }
    }
}

/// Drops the matching entries from this replica's cache, and moves the
/// epoch so a lookup that raced with the revocation is not cached.
fn forget_here(cache: &Cache<TokenHash, Entry>, epoch: &AtomicU64, what: Forget) {
    let predicate = move |_: &TokenHash, entry: &Entry| match what {
        Forget::Session(id) => matches!(entry, Entry::Session(known) if known.session_id == id),
        Forget::Key(id) => matches!(entry, Entry::Key(known) if known.key_id == id),
        Forget::User(id) => entry.user_id() == Some(id),
    };
    if cache.invalidate_entries_if(predicate).is_err() {
        // Cannot happen (closures are enabled); clear everything rather
        // than risk answering for a revoked token.
        cache.invalidate_all();
    }
    epoch.fetch_add(1, Ordering::AcqRel);
}

/// Applies other replicas' revocations (PostgreSQL LISTEN/NOTIFY) to this
/// replica's cache. While the listening connection is down, announcements
/// may be missed: the whole cache is dropped once listening again. Not
/// before: while the database is down nothing can be revoked, and cached
/// tokens keep validating until their entries expire (`token_cache_ttl`),
/// the bound on staleness when an announcement is lost anyway.
pub struct RevocationFollower {
    store: Arc<dyn Store>,
    cache: Cache<TokenHash, Entry>,
    epoch: Arc<AtomicU64>,
}

impl RevocationFollower {
    /// Follows (reconnecting after a failure) until `stop` resolves.
    pub async fn run(self, stop: impl Future<Output = ()>) {
        tokio::select! {
            () = self.follow() => {}
            () = stop => {}
        }
    }

    async fn follow(&self) {
        // Whether announcements may have been missed since the last listener.
        let mut missed = false;
        loop {
            let mut listener = match self.store.revocation_listener().await {
                Ok(listener) => listener,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot listen for revocations; retrying");
                    missed = true;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if std::mem::take(&mut missed) {
                self.forget_everything();
            }
            loop {
                match listener.next().await {
                    Ok(Some(payload)) => {
                        if let Ok(what) = payload.parse::<Forget>() {
                            forget_here(&self.cache, &self.epoch, what);
                        } else {
                            tracing::warn!(payload, "unknown revocation notification");
                        }
                    }
                    Ok(None) => {
                        // The connection was lost: listen again on a new one
                        // and forget everything once it listens.
                        missed = true;
                        break;
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "revocation listener failed; reconnecting");
                        missed = true;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        break;
                    }
                }
            }
        }
    }

    fn forget_everything(&self) {
        self.cache.invalidate_all();
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_keep_their_order_inline_or_not() {
        let two = vec![AuthMethod::AdminLogin, AuthMethod::Totp];
        assert!(matches!(Methods::new(two.clone()), Methods::Inline { .. }));
        assert_eq!(Methods::new(two.clone()).to_vec(), two);
        assert_eq!(Methods::new(Vec::new()).to_vec(), Vec::new());
        let many = vec![AuthMethod::Password; Methods::INLINE + 1];
        assert!(matches!(Methods::new(many.clone()), Methods::Heap(_)));
        assert_eq!(Methods::new(many.clone()).to_vec(), many);
    }
}
