//! The hot path: turn a token into a principal, fast and fail-closed.
//!
//! Session tokens and API keys alike: parse and checksum the token (no I/O), hash it, look the hash up in an
//! in-memory cache ([`cache`]), and fall back to one indexed database read.
//! Unknown tokens are cached as unknown for a short time, in a cache of
//! their own (a quarter of the capacity), so a flood of invalid tokens
//! cannot push valid ones out. Revocation on this replica
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
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

mod cache;

use cache::TokenCache;

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

/// What is known about a token hash.
#[derive(Clone, Debug)]
enum Entry {
    /// A session's current or previous token (with its auth methods when
    /// they do not pack into the session's facts: then it is not cached).
    Session(Arc<KnownSession>, Option<Vec<AuthMethod>>),
    /// An API key.
    Key(Arc<KnownKey>),
    /// No session or key has this token.
    Unknown,
}

/// What the cache of known tokens holds: an [`Entry`] that is not `Unknown`.
#[derive(Clone, Debug)]
enum Known {
    Session(Arc<KnownSession>),
    Key(Arc<KnownKey>),
}

impl Known {
    fn user_id(&self) -> UserId {
        match self {
            Known::Session(known) => known.user_id,
            Known::Key(known) => known.owner_id,
        }
    }
}

impl From<Known> for Entry {
    fn from(known: Known) -> Self {
        match known {
            Known::Session(session) => Entry::Session(session, None),
            Known::Key(key) => Entry::Key(key),
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
    seen: AtomicU32,
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
            seen: AtomicU32::new(last_used_at.map_or(0, |at| unix_seconds(at.timestamp()))),
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
    seen: AtomicU32,
}

impl KnownSession {
    /// The facts of `found`, and its auth methods apart when they do not
    /// pack (then the session is not cached).
    fn from_credential(found: SessionCredential) -> (Self, Option<Vec<AuthMethod>>) {
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
        let packed = Methods::pack(&auth_methods);
        let known = Self {
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
            auth_methods: packed.unwrap_or(Methods(0)),
            seen: AtomicU32::new(unix_seconds(last_seen_at.timestamp())),
        };
        (known, packed.is_none().then_some(auth_methods))
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

/// A session's auth methods, in order, packed in one `u64` (three bits
/// each, 0 ending the list): a cached session stays small (with its other
/// facts, 80 bytes: one 112-byte allocation). A session has one or two; one
/// with more than [`Methods::MAX`] is not cached (see `lookup`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Methods(u64);

impl Methods {
    const MAX: usize = 21;
    const ALL: [AuthMethod; 5] = [
        AuthMethod::Password,
        AuthMethod::Totp,
        AuthMethod::EmailCode,
        AuthMethod::RecoveryCode,
        AuthMethod::AdminLogin,
    ];

    /// The packed list, or `None` when it is longer than [`Methods::MAX`].
    fn pack(methods: &[AuthMethod]) -> Option<Self> {
        if methods.len() > Self::MAX {
            return None;
        }
        let mut packed = 0_u64;
        for (i, method) in methods.iter().enumerate() {
            let code = Self::ALL.iter().position(|m| m == method).map_or(0, |p| p as u64 + 1);
            packed |= code << (3 * i);
        }
        Some(Self(packed))
    }

    fn to_vec(self) -> Vec<AuthMethod> {
        let mut methods = Vec::with_capacity(2);
        let mut rest = self.0;
        while rest != 0 {
            let code = usize::try_from(rest & 0b111).unwrap_or(0);
            methods.extend(code.checked_sub(1).and_then(|i| Self::ALL.get(i)));
            rest >>= 3;
        }
        methods
    }
}

/// Cache settings.
#[derive(Clone, Copy, Debug)]
pub struct CacheConfig {
    /// Lifetime of a known token's entry.
    pub ttl: Duration,
    /// Lifetime of an unknown token's entry.
    pub negative_ttl: Duration,
    /// Most known tokens held; unknown ones are bounded apart, to a
    /// quarter of it.
    pub capacity: u64,
}

/// The two caches: known tokens, and tokens known to be unknown.
struct Caches {
    known: TokenCache<Known>,
    unknown: TokenCache<()>,
    ttl: Duration,
    negative_ttl: Duration,
}

/// Validates tokens; shared by `ValidateToken` and the check of every
/// management call's own credential.
pub struct Validator {
    store: Arc<dyn Store>,
    tokens: TokenFormat,
    caches: Arc<Caches>,
    epoch: Arc<AtomicU64>,
    seen_tx: mpsc::Sender<(CredentialId, DateTime<Utc>)>,
    lookups: AtomicU64,
}

impl Validator {
    /// A validator over `store`, and the background work it needs run.
    #[must_use]
    pub fn new(store: Arc<dyn Store>, tokens: TokenFormat, config: CacheConfig) -> (Self, ValidatorTasks) {
        let caches = Arc::new(Caches {
            known: TokenCache::new(config.capacity),
            unknown: TokenCache::new(config.capacity.div_ceil(4)),
            ttl: config.ttl,
            negative_ttl: config.negative_ttl,
        });
        let (seen_tx, seen_rx) = mpsc::channel(SEEN_QUEUE);
        let epoch = Arc::new(AtomicU64::new(0));
        let tasks = ValidatorTasks {
            last_seen: LastSeenWriter { store: Arc::clone(&store), queue: seen_rx },
            revocations: store.is_shared().then(|| RevocationFollower {
                store: Arc::clone(&store),
                caches: Arc::clone(&caches),
                epoch: Arc::clone(&epoch),
            }),
        };
        let validator = Self { store, tokens, caches, epoch, seen_tx, lookups: AtomicU64::new(0) };
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
            Entry::Session(known, methods) => {
                let mut principal = known.check(parsed.kind, now)?;
                if let Some(methods) = methods {
                    principal.auth_methods.clone_from(methods);
                }
                (principal, &known.seen)
            }
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
        forget_here(&self.caches, &self.epoch, what);
        // Other replicas hear it through LISTEN/NOTIFY; a lost announcement
        // is bounded by their cache lifetime.
        if self.store.is_shared()
            && let Err(err) = self.store.announce_revocation(&what.to_string()).await
        {
            tracing::warn!(error = %err, "could not notify other replicas of a revocation");
        }
    }

    async fn lookup(&self, hash: TokenHash, kind: TokenKind) -> Result<Entry> {
        if let Some(known) = self.caches.known.get(&hash) {
            return Ok(known.into());
        }
        if self.caches.unknown.get(&hash).is_some() {
            return Ok(Entry::Unknown);
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        self.lookups.fetch_add(1, Ordering::Relaxed);
        let entry = match kind {
            TokenKind::Session | TokenKind::MfaPending => match self.store.session_credential(&hash).await? {
                Some(found) => {
                    let (known, methods) = KnownSession::from_credential(found);
                    Entry::Session(Arc::new(known), methods)
                }
                None => Entry::Unknown,
            },
            TokenKind::LiveKey | TokenKind::TestKey => match self.store.key_credential(&hash).await? {
                Some(found) => Entry::Key(Arc::new(KnownKey::from_credential(found))),
                None => Entry::Unknown,
            },
        };
        // A revocation that ran while we read may have missed our entry:
        // then our read is not trusted for later requests. A revocation
        // moves the epoch before it drops entries, so one that starts after
        // the second look drops what we put back.
        if self.epoch.load(Ordering::Acquire) == epoch {
            let caches = &self.caches;
            match &entry {
                Entry::Session(known, None) => {
                    caches.known.insert(hash, Known::Session(Arc::clone(known)), caches.ttl);
                }
                // Too many auth methods to hold: read again each time.
                Entry::Session(_, Some(_)) => {}
                Entry::Key(known) => caches.known.insert(hash, Known::Key(Arc::clone(known)), caches.ttl),
                Entry::Unknown => caches.unknown.insert(hash, (), caches.negative_ttl),
            }
            if self.epoch.load(Ordering::Acquire) != epoch {
                caches.known.remove(&hash);
            }
        }
        Ok(entry)
    }

    /// Queues a last-seen write when the one stored (or last queued) is a
    /// minute old: the cache entry itself remembers it, so there is no
    /// second cache, and a fresh entry starts from the stored time.
    fn record_seen(&self, credential: CredentialId, seen: &AtomicU32, now: DateTime<Utc>) {
        let at = unix_seconds(now.timestamp());
        let last = seen.load(Ordering::Relaxed);
        if i64::from(at) - i64::from(last) < SEEN_INTERVAL_SECS
            || seen.compare_exchange(last, at, Ordering::Relaxed, Ordering::Relaxed).is_err()
        {
            return;
        }
        // Dropped when the writer is behind: last-seen is advisory.
        let _ = self.seen_tx.try_send((credential, now));
    }
}

/// Unix seconds as the cache holds them (4 bytes: until 2106), clamped.
fn unix_seconds(seconds: i64) -> u32 {
    u32::try_from(seconds.max(0)).unwrap_or(u32::MAX)
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

/// Moves the epoch, so a lookup that raced with the revocation is not
/// cached, and drops the matching entries from this replica's cache.
fn forget_here(caches: &Caches, epoch: &AtomicU64, what: Forget) {
    // Before the entries go: a lookup that read the store before this
    // point does not keep its answer (see `lookup`).
    epoch.fetch_add(1, Ordering::AcqRel);
    caches.known.forget_if(|known| match what {
        Forget::Session(id) => matches!(known, Known::Session(session) if session.session_id == id),
        Forget::Key(id) => matches!(known, Known::Key(key) if key.key_id == id),
        Forget::User(id) => known.user_id() == id,
    });
}

/// Applies other replicas' revocations (PostgreSQL LISTEN/NOTIFY) to this
/// replica's cache. While the listening connection is down, announcements
/// may be missed: the whole cache is dropped once listening again. Not
/// before: while the database is down nothing can be revoked, and cached
/// tokens keep validating until their entries expire (`token_cache_ttl`),
/// the bound on staleness when an announcement is lost anyway.
pub struct RevocationFollower {
    store: Arc<dyn Store>,
    caches: Arc<Caches>,
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
                            forget_here(&self.caches, &self.epoch, what);
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
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.caches.known.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_keep_their_order_packed_or_not() {
        let two = vec![AuthMethod::AdminLogin, AuthMethod::Totp];
        assert_eq!(Methods::pack(&two).unwrap().to_vec(), two);
        assert_eq!(Methods::pack(&[]).unwrap().to_vec(), Vec::new());
        let all = Methods::ALL.repeat(5);
        assert_eq!(Methods::pack(&all[..Methods::MAX]).unwrap().to_vec(), all[..Methods::MAX]);
        assert_eq!(Methods::pack(&all[..=Methods::MAX]), None);
        assert_eq!(size_of::<KnownSession>(), 80, "a cached session fits a 112-byte allocation");
    }
}
