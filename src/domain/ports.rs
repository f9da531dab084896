//! The seam between the rules and persistence: what the rules need their
//! store to read and write, said in domain terms (records, typed ids,
//! [`Error`](super::Error)). [`Store`] is the whole of it, made of one trait
//! per area ([`UserStore`], [`SessionStore`], [`KeyStore`], [`LimitStore`],
//! [`MfaStore`], [`AuditStore`]); `crate::store` implements them on sea-orm.
//! Nothing here names a table, a query or a database type. The rules call
//! them on `dyn Store`, which needs none of the area traits in scope.
//!
//! The rules decide; the store applies what it is told, atomically. Where
//! a method says "in one transaction" or "compare-and-set", the
//! implementation makes it so, and the audit rows it is handed are written
//! in the same transaction as the change they record. A failure of the
//! database is `Error::Unavailable` (a unique-key clash `AlreadyExists`),
//! never an answer.
//!
//! Dyn, not generic: the rules hold an `Arc<dyn Store>` and the methods are
//! `async_trait`s. A generic `Domain<S: Store>` would carry a type parameter
//! through the validator, every gRPC service and `app` for no gain, since
//! there is one store (tests run the real one, on SQLite and PostgreSQL).
//! The price of dyn is one boxed future and one indirect call per store call:
//! tens of nanoseconds. On the hot path only a cache miss of
//! `Validator::lookup` reaches the store, and it then waits a database round
//! trip of hundreds of microseconds; a cache hit never calls it.
//!
//! Imports only the records, ids and error of the domain: it must not import
//! sea-orm, tonic, prost or `crate::store`.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    error::Result,
    ids::{KeyId, SessionId, UserId},
    records::{
        ApiKey, AttemptCounters, AttemptId, AttemptState, AuditEvent, AuditFilter, AuditRecord, CodePurpose,
        Email, EmailCode, KeyCredential, Lock, NewKey, NewSession, NewUser, RevokeSessions, Rotation,
        Session, SessionCredential, SessionMatch, StoredTotp, TokenHash, User, UserPatch,
    },
};

/// Audit rows for a record that gets its id only when it is written: the
/// store calls it inside the transaction that writes the record.
pub type AuditFor<'a, T> = &'a (dyn Fn(&T) -> Vec<AuditEvent> + Send + Sync);

/// The lockout rule, handed to the store: given the counters it read in its
/// transaction, the lock they call for (the rules' decision, not the
/// store's).
pub type DecideLock<'a> = &'a (dyn Fn(AttemptCounters) -> Option<Lock> + Send + Sync);

/// Everything the rules need from persistence.
#[async_trait]
pub trait Store: UserStore + SessionStore + KeyStore + LimitStore + MfaStore + AuditStore {
    /// Checks that the database answers (the health probe).
    async fn ping(&self) -> Result<()>;

    /// Whether other replicas may share this store (PostgreSQL), so a
    /// revocation must be announced to their caches.
    fn is_shared(&self) -> bool;

    /// Tells every replica sharing this store to forget `what` (a
    /// revocation, in the validator's notation).
    async fn announce_revocation(&self, what: &str) -> Result<()>;

    /// Starts listening for the revocations other replicas announce.
    async fn revocation_listener(&self) -> Result<Box<dyn RevocationListener>>;
}

/// Revocations other replicas announce, in order.
#[async_trait]
pub trait RevocationListener: Send {
    /// The next announcement; `None` when the connection was lost and
    /// re-established, so that announcements may have been missed.
    async fn next(&mut self) -> Result<Option<String>>;
}

/// User accounts and their passwords.
#[async_trait]
pub trait UserStore: Send + Sync {
    /// Inserts a user, with the rows of `audit`, in one transaction.
    ///
    /// # Errors
    /// `AlreadyExists("user")` when the email is taken.
    async fn insert_user(&self, new: NewUser, audit: AuditFor<'_, User>) -> Result<User>;

    /// The user with `id`.
    async fn user(&self, id: UserId) -> Result<Option<User>>;

    /// The user with `email`, and its password hash.
    async fn user_by_email(&self, email: &Email) -> Result<Option<(User, Option<String>)>>;

    /// The password hash of user `id`.
    async fn password_hash(&self, id: UserId) -> Result<Option<String>>;

    /// Users by ascending id, after `after`, at most `limit`.
    async fn list_users(&self, after: Option<UserId>, limit: u64) -> Result<Vec<User>>;

    /// Applies `patch` to user `id` and ends the sessions `revoke` names,
    /// with `events`, in one transaction. `None` when there is no such user.
    async fn update_user(
        &self,
        id: UserId,
        patch: &UserPatch,
        revoke: Option<RevokeSessions>,
        now: DateTime<Utc>,
        events: &[AuditEvent],
    ) -> Result<Option<User>>;

    /// Replaces a password hash with an upgraded one (same password).
    async fn upgrade_password_hash(&self, id: UserId, hash: String) -> Result<()>;

    /// Sets a new password hash and ends the sessions `revoke` names, with
    /// `events`, in one transaction. Returns how many sessions were revoked,
    /// or `None` when the user does not exist.
    async fn set_password(
        &self,
        id: UserId,
        hash: String,
        revoke: RevokeSessions,
        now: DateTime<Utc>,
        events: &[AuditEvent],
    ) -> Result<Option<u64>>;
}

/// Sessions (pending logins included) and their token hashes.
#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Inserts a session, with the rows of `audit`, in one transaction.
    async fn insert_session(&self, new: NewSession, audit: AuditFor<'_, Session>) -> Result<Session>;

    /// The session whose current or previous token hash is `hash`, with its
    /// user. One indexed read: the validator's cache miss.
    async fn session_by_hash(&self, hash: &TokenHash) -> Result<Option<SessionMatch>>;

    /// What validation needs of the session whose current or previous token
    /// hash is `hash`: one indexed read of the few columns a cache entry
    /// holds (never the password hash). The validator's cache miss.
    async fn session_credential(&self, hash: &TokenHash) -> Result<Option<SessionCredential>>;

    /// Applies `rotation` if the session is active and its current token is
    /// still the one expected (compare-and-set), with `events` in the same
    /// transaction. Returns whether it was applied.
    async fn rotate_session(&self, rotation: Rotation, events: &[AuditEvent]) -> Result<bool>;

    /// The session with `id`.
    async fn session(&self, id: SessionId) -> Result<Option<Session>>;

    /// Revokes session `id` for `reason` (no-op when already revoked), with
    /// `events`, in one transaction. Returns whether a row was changed.
    async fn revoke_session(
        &self,
        id: SessionId,
        reason: &str,
        now: DateTime<Utc>,
        events: &[AuditEvent],
    ) -> Result<bool>;

    /// Ends the sessions of `user_id` that `revoke` names, with `events`, in
    /// one transaction. Returns how many were revoked.
    async fn revoke_user_sessions(
        &self,
        user_id: UserId,
        revoke: RevokeSessions,
        now: DateTime<Utc>,
        events: &[AuditEvent],
    ) -> Result<u64>;

    /// Active sessions of `user_id` unexpired at `now`, newest first, before
    /// `before`, at most `limit`.
    async fn list_active_sessions(
        &self,
        user_id: UserId,
        now: DateTime<Utc>,
        before: Option<SessionId>,
        limit: u64,
    ) -> Result<Vec<Session>>;

    /// Records last-seen times, in one statement; an earlier time never
    /// replaces a later one.
    async fn touch_sessions(&self, seen: &[(SessionId, DateTime<Utc>)]) -> Result<()>;
}

/// API keys.
#[async_trait]
pub trait KeyStore: Send + Sync {
    /// Inserts a key, with the rows of `audit`, in one transaction.
    async fn insert_key(&self, new: NewKey, audit: AuditFor<'_, ApiKey>) -> Result<ApiKey>;

    /// The key with `id`.
    async fn key(&self, id: KeyId) -> Result<Option<ApiKey>>;

    /// The key whose hash is `hash`, with its owner. One indexed read: the
    /// validator's cache miss.
    async fn key_by_hash(&self, hash: &TokenHash) -> Result<Option<(ApiKey, User)>>;

    /// What validation needs of the key whose hash is `hash`: one indexed
    /// read of the few columns a cache entry holds. The validator's cache
    /// miss.
    async fn key_credential(&self, hash: &TokenHash) -> Result<Option<KeyCredential>>;

    /// Keys of `owner_id`, newest first, before `before`, at most `limit`.
    async fn list_keys(&self, owner_id: UserId, before: Option<KeyId>, limit: u64) -> Result<Vec<ApiKey>>;

    /// Sets a key's name and/or scopes, with `events`, in one transaction.
    /// `None` when there is no such key.
    async fn update_key(
        &self,
        id: KeyId,
        name: Option<String>,
        scopes: Option<Vec<String>>,
        events: &[AuditEvent],
    ) -> Result<Option<ApiKey>>;

    /// Makes key `id` stop working at `at`, unless it already stops earlier,
    /// with `events`, in one transaction.
    async fn revoke_key(&self, id: KeyId, at: DateTime<Utc>, events: &[AuditEvent]) -> Result<()>;

    /// Inserts `new`, the replacement of key `old_id`, and makes the old key
    /// stop at `old_stops_at`, with the rows of `audit`, in one transaction;
    /// only if the old key is still unrevoked at `now` (compare-and-set: a
    /// concurrent rotation or revocation wins). Returns (new, old).
    async fn rotate_key(
        &self,
        old_id: KeyId,
        old_stops_at: DateTime<Utc>,
        now: DateTime<Utc>,
        new: NewKey,
        audit: AuditFor<'_, ApiKey>,
    ) -> Result<Option<(ApiKey, ApiKey)>>;

    /// Records last-used times, in one statement; an earlier time never
    /// replaces a later one.
    async fn touch_keys(&self, used: &[(KeyId, DateTime<Utc>)]) -> Result<()>;
}

/// Rate-limit counters and per-account attempt counters. Every update is
/// one atomic statement or transaction, so the limits the rules set hold
/// across concurrent requests, restarts and replicas.
#[async_trait]
pub trait LimitStore: Send + Sync {
    /// Counts one hit on counter `key` in the window starting at
    /// `window_start` (seconds; a new window starts the count again) and
    /// returns the hits in that window, this one included.
    async fn hit_rate_limit(&self, key: &str, window_start: i64) -> Result<i64>;

    /// The hits on `key` in the window starting at `window_start`, without
    /// counting one.
    async fn rate_limit_hits(&self, key: &str, window_start: i64) -> Result<i64>;

    /// Forgets counter `key`.
    async fn clear_rate_limit(&self, key: &str) -> Result<()>;

    /// Reserves one attempt against account `user_id` (counts it in
    /// flight, and when), unless the account's failed attempts and
    /// attempts in flight already make `max_attempts`, or it is locked at
    /// `now` (one atomic update), and writes `pending`, the attempt's
    /// provisional audit row, in the same transaction. Returns the attempt
    /// when it was reserved.
    async fn reserve_attempt(
        &self,
        user_id: UserId,
        now: DateTime<Utc>,
        max_attempts: i32,
        pending: &AuditEvent,
    ) -> Result<Option<AttemptId>>;

    /// The account's attempt state; `None` when there is no such user.
    async fn attempt_state(&self, user_id: UserId) -> Result<Option<AttemptState>>;

    /// Replaces the attempts in flight by `failed_attempts` failures, if
    /// the counters are still those of `seen` (compare-and-set): how
    /// reservations lost to a crash are given back. Returns whether it was
    /// applied.
    async fn reclaim_attempts(
        &self,
        user_id: UserId,
        seen: AttemptState,
        failed_attempts: i32,
    ) -> Result<bool>;

    /// Records a failed (reserved) attempt with `events`, in one
    /// transaction: the reservation becomes a failure, then the account's
    /// counters are read and `decide` says whether they lock it; a lock is
    /// applied only if the counters are still those it read
    /// (compare-and-set), and then with its own row: the lock starts a new
    /// failure count and counts one more lockout. Returns the end of the
    /// lock applied, if any. `events` replace the attempt's provisional row.
    async fn record_failure(
        &self,
        user_id: UserId,
        attempt: AttemptId,
        events: &[AuditEvent],
        decide: DecideLock<'_>,
    ) -> Result<Option<DateTime<Utc>>>;

    /// Records a successful (reserved) attempt, in one transaction:
    /// releases its reservation, clears the account's failures and
    /// lockouts, and removes its provisional row (the change the success
    /// allows writes its own).
    async fn record_success(&self, user_id: UserId, attempt: AttemptId) -> Result<()>;

    /// Releases a reservation whose password or code was never checked,
    /// with its provisional row.
    async fn release_attempt(&self, user_id: UserId, attempt: AttemptId) -> Result<()>;
}

/// Second factors: TOTP secrets, recovery codes, emailed codes, and the
/// attempts and completion of pending logins. Every "once" is a
/// compare-and-set, so it holds under concurrency, across replicas and after
/// a restart.
#[async_trait]
pub trait MfaStore: Send + Sync {
    /// Stores a new, unconfirmed TOTP secret, replacing an unconfirmed one.
    /// Returns `false` when TOTP is already confirmed.
    async fn begin_totp(&self, user_id: UserId, sealed: Vec<u8>, now: DateTime<Utc>) -> Result<bool>;

    /// The user's TOTP secret, if any.
    async fn totp(&self, user_id: UserId) -> Result<Option<StoredTotp>>;

    /// Accepts TOTP time step `step` once: only if TOTP is confirmed and
    /// `step` is later than the last accepted step (compare-and-set).
    async fn accept_totp_step(&self, user_id: UserId, step: i64) -> Result<bool>;

    /// Confirms TOTP at `step`, stores `recovery` digests when given, and
    /// ends the sessions `revoke` names, with `events`, in one transaction.
    /// Returns `false` when there was no unconfirmed enrolment.
    async fn confirm_totp(
        &self,
        user_id: UserId,
        step: i64,
        recovery: Option<&[[u8; 32]]>,
        revoke: RevokeSessions,
        now: DateTime<Utc>,
        events: &[AuditEvent],
    ) -> Result<bool>;

    /// Turns the email method on, stores `recovery` digests when given, and
    /// ends the sessions `revoke` names, with `events`, in one transaction.
    async fn enable_email_mfa(
        &self,
        user_id: UserId,
        recovery: Option<&[[u8; 32]]>,
        revoke: RevokeSessions,
        now: DateTime<Utc>,
        events: &[AuditEvent],
    ) -> Result<()>;

    /// Turns every second factor off, deletes secrets and codes, and ends the
    /// sessions `revoke` names, with `events`, in one transaction. Returns
    /// how many sessions were revoked.
    async fn disable_mfa(
        &self,
        user_id: UserId,
        revoke: RevokeSessions,
        now: DateTime<Utc>,
        events: &[AuditEvent],
    ) -> Result<u64>;

    /// Replaces the user's recovery codes with `digests`, with `events`, in
    /// one transaction.
    async fn replace_recovery_codes(
        &self,
        user_id: UserId,
        digests: &[[u8; 32]],
        events: &[AuditEvent],
    ) -> Result<()>;

    /// Uses the recovery code with `digest` once (compare-and-set).
    async fn use_recovery_code(&self, user_id: UserId, digest: &[u8; 32], now: DateTime<Utc>)
    -> Result<bool>;

    /// How many unused recovery codes the user has.
    async fn unused_recovery_codes(&self, user_id: UserId) -> Result<u64>;

    /// Stores an emailed code's digest, replacing unused older ones of the
    /// same purpose (and pending login).
    async fn insert_code(
        &self,
        user_id: UserId,
        session_id: Option<SessionId>,
        purpose: CodePurpose,
        digest: [u8; 32],
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<()>;

    /// Reserves one attempt on the newest usable code of this purpose (and
    /// pending login): unused, unexpired at `now`, with fewer than
    /// `max_attempts` counted (one atomic update). `None` when there is no
    /// such code.
    async fn reserve_code_attempt(
        &self,
        user_id: UserId,
        session_id: Option<SessionId>,
        purpose: CodePurpose,
        now: DateTime<Utc>,
        max_attempts: i32,
    ) -> Result<Option<EmailCode>>;

    /// Uses emailed code `id` once (compare-and-set).
    async fn consume_code(&self, id: i64, now: DateTime<Utc>) -> Result<bool>;

    /// Reserves one code attempt on pending login `session_id`; `false` once
    /// it has had `max_attempts` (one atomic update).
    async fn reserve_mfa_attempt(&self, session_id: SessionId, max_attempts: i32) -> Result<bool>;

    /// Ends pending login `session_id`, completed (compare-and-set);
    /// `false` when another request completed it first.
    async fn complete_pending(&self, session_id: SessionId, now: DateTime<Utc>) -> Result<bool>;
}

/// The audit log: appended to, and read back.
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Writes events that record no other change (a refused login).
    async fn audit(&self, events: &[AuditEvent]) -> Result<()>;

    /// Events matching `filter`, newest first, before id `before`, at most
    /// `limit`.
    async fn list_audit(
        &self,
        filter: &AuditFilter,
        before: Option<i64>,
        limit: u64,
    ) -> Result<Vec<AuditRecord>>;
}
