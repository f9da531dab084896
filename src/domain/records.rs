//! The records the rules work with and exchange with their store: users,
//! sessions, API keys, second-factor secrets and codes, audit rows, and the
//! write requests the rules build for them (`NewSession`, `Rotation`, …).
//! Plain data with the small parsing and naming helpers each needs
//! (`Email::parse`, `Role::as_str`); the rules that use them live elsewhere
//! in `domain`.
//!
//! The store may import this module (with `ids`, `error` and the seam,
//! `ports`); so it imports nothing but those, `scope` and `input`, and
//! never a module of rules.

use chrono::{DateTime, Utc};

use super::{
    error::{Error, Result},
    ids::{KeyId, SessionId, UserId},
    input, scope,
};

// === Users ===
/// Longest email address accepted (RFC 5321 path limit).
const MAX_EMAIL_BYTES: usize = 254;

/// A normalised email address: trimmed, lower case, syntactically valid.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    /// Parses and normalises client input; `field` names it in the error.
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` for an empty, over-long or malformed address.
    pub fn parse(raw: &str, field: &'static str) -> Result<Self> {
        // Surrounding white space (tabs and line ends too) is trimmed away;
        // any control character left is refused.
        let normalised = raw.trim().to_lowercase();
        input::check_text(field, &normalised, usize::MAX)?;
        if normalised.is_empty() {
            return Err(Error::invalid(field, "must not be empty"));
        }
        if normalised.len() > MAX_EMAIL_BYTES {
            return Err(Error::invalid(field, format!("must be at most {MAX_EMAIL_BYTES} bytes")));
        }
        if !email_address::EmailAddress::is_valid(&normalised) {
            return Err(Error::invalid(field, "is not a valid email address"));
        }
        Ok(Self(normalised))
    }

    /// The normalised address.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Wraps an address read back from the store (already normalised).
    #[must_use]
    pub fn from_stored(stored: String) -> Self {
        Self(stored)
    }
}

/// What a user may do in portcullis itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Manages only its own password and sessions.
    User,
    /// Holds every `portcullis:` scope.
    Admin,
}

impl Role {
    /// The name stored in the database.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Admin => "admin",
        }
    }

    /// Reads a stored name.
    ///
    /// # Errors
    /// `Internal` for a name this version does not know.
    pub fn from_stored(name: &str) -> Result<Self> {
        match name {
            "user" => Ok(Role::User),
            "admin" => Ok(Role::Admin),
            other => Err(Error::Internal(format!("unknown role {other:?} in database"))),
        }
    }

    /// The scopes a session of this role holds: an admin holds every scope
    /// (so it can grant any scope to an API key), a user none.
    #[must_use]
    pub fn scopes(self) -> Vec<String> {
        match self {
            Role::User => Vec::new(),
            Role::Admin => vec![scope::ALL.to_owned()],
        }
    }
}

/// What a user account is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserKind {
    /// A person, who logs in with a password.
    Human,
    /// A program's identity: owns API keys, has no password, never logs in.
    Service,
}

impl UserKind {
    /// The name stored in the database.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            UserKind::Human => "human",
            UserKind::Service => "service",
        }
    }

    /// Reads a stored name.
    ///
    /// # Errors
    /// `Internal` for a name this version does not know.
    pub fn from_stored(name: &str) -> Result<Self> {
        match name {
            "human" => Ok(UserKind::Human),
            "service" => Ok(UserKind::Service),
            other => Err(Error::Internal(format!("unknown user kind {other:?} in database"))),
        }
    }
}

/// A user account, as the rules see it.
#[derive(Clone, Debug)]
pub struct User {
    /// Identifier.
    pub id: UserId,
    /// Normalised email.
    pub email: Email,
    /// Role.
    pub role: Role,
    /// Person or service account.
    pub kind: UserKind,
    /// Second factors turned on.
    pub mfa: MfaState,
    /// Disabled users cannot log in and their tokens stop working.
    pub disabled: bool,
    /// Per-user session lifetime override.
    pub session_lifetime: Option<chrono::Duration>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

/// Which second factors a user has turned on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MfaState {
    /// TOTP is confirmed.
    pub totp: bool,
    /// The email method is on (the address was verified).
    pub email: bool,
}

impl MfaState {
    /// Whether any second factor is on.
    #[must_use]
    pub fn any(self) -> bool {
        self.totp || self.email
    }

    /// The methods a login may use: each factor, and recovery codes
    /// whenever any factor is on.
    #[must_use]
    pub fn methods(self) -> Vec<MfaMethod> {
        let mut methods = Vec::new();
        if self.totp {
            methods.push(MfaMethod::Totp);
        }
        if self.email {
            methods.push(MfaMethod::Email);
        }
        if self.any() {
            methods.push(MfaMethod::RecoveryCode);
        }
        methods
    }
}

/// A second-factor method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MfaMethod {
    /// TOTP from an authenticator app.
    Totp,
    /// A code sent by email.
    Email,
    /// A single-use recovery code.
    RecoveryCode,
}

impl MfaMethod {
    /// How a session completed with this method was authenticated.
    #[must_use]
    pub fn auth_method(self) -> AuthMethod {
        match self {
            MfaMethod::Totp => AuthMethod::Totp,
            MfaMethod::Email => AuthMethod::EmailCode,
            MfaMethod::RecoveryCode => AuthMethod::RecoveryCode,
        }
    }
}

/// Changes to a user; `None` leaves a field alone.
#[derive(Clone, Debug, Default)]
pub struct UserPatch {
    /// New role.
    pub role: Option<Role>,
    /// New disabled flag.
    pub disabled: Option<bool>,
    /// New session lifetime; `Some(None)` clears the override.
    pub session_lifetime: Option<Option<chrono::Duration>>,
}

/// A user to insert.
pub struct NewUser {
    /// Normalised email.
    pub email: Email,
    /// argon2id PHC string; `None` for a service account.
    pub password_hash: Option<String>,
    /// Role.
    pub role: Role,
    /// Person or service account.
    pub kind: UserKind,
    /// Per-user session lifetime.
    pub session_lifetime: Option<chrono::Duration>,
    /// Creation time.
    pub now: DateTime<Utc>,
}

// === Sessions ===
/// How a session was authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    /// Email and password.
    Password,
    /// TOTP code.
    Totp,
    /// Emailed one-time code.
    EmailCode,
    /// Recovery code.
    RecoveryCode,
    /// A back-end service's login on the user's behalf.
    AdminLogin,
}

impl AuthMethod {
    /// The name stored in the database.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Password => "password",
            AuthMethod::Totp => "totp",
            AuthMethod::EmailCode => "email_code",
            AuthMethod::RecoveryCode => "recovery_code",
            AuthMethod::AdminLogin => "admin_login",
        }
    }

    /// Reads a comma-separated stored list; unknown names are skipped.
    #[must_use]
    pub fn parse_list(stored: &str) -> Vec<Self> {
        stored
            .split(',')
            .filter_map(|name| match name {
                "password" => Some(AuthMethod::Password),
                "totp" => Some(AuthMethod::Totp),
                "email_code" => Some(AuthMethod::EmailCode),
                "recovery_code" => Some(AuthMethod::RecoveryCode),
                "admin_login" => Some(AuthMethod::AdminLogin),
                _ => None,
            })
            .collect()
    }

    /// Writes a list as stored.
    #[must_use]
    pub fn join(methods: &[Self]) -> String {
        methods.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(",")
    }
}

/// Lifecycle of a session row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionState {
    /// Password accepted, second factor pending.
    PendingMfa,
    /// Usable.
    Active,
    /// Ended by logout, revocation, password change or reuse detection.
    Revoked,
}

impl SessionState {
    /// The name stored in the database.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::PendingMfa => "pending_mfa",
            SessionState::Active => "active",
            SessionState::Revoked => "revoked",
        }
    }

    /// Reads a stored name.
    ///
    /// # Errors
    /// `Internal` for a name this version does not know.
    pub fn from_stored(name: &str) -> Result<Self> {
        match name {
            "pending_mfa" => Ok(SessionState::PendingMfa),
            "active" => Ok(SessionState::Active),
            "revoked" => Ok(SessionState::Revoked),
            other => Err(Error::Internal(format!("unknown session state {other:?} in database"))),
        }
    }
}

/// Where the end user's request came from.
#[derive(Clone, Debug, Default)]
pub struct ClientInfo {
    /// Client IP address, as text.
    pub ip: String,
    /// User agent.
    pub user_agent: String,
    /// Device label.
    pub device_label: String,
}

/// A session row, without its token hashes.
#[derive(Clone, Debug)]
pub struct Session {
    /// Identifier.
    pub id: SessionId,
    /// Owner.
    pub user_id: UserId,
    /// Lifecycle state.
    pub state: SessionState,
    /// Lifetime granted at login; each refresh opens a window this long.
    pub lifetime: chrono::Duration,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last used (coarse).
    pub last_seen_at: DateTime<Utc>,
    /// Current token's expiry.
    pub expires_at: DateTime<Utc>,
    /// Latest expiry a refresh can reach.
    pub absolute_expires_at: DateTime<Utc>,
    /// Until when the previous (refreshed-away) token still works.
    pub previous_valid_until: Option<DateTime<Utc>>,
    /// Client at login.
    pub client: ClientInfo,
    /// How it was authenticated.
    pub auth_methods: Vec<AuthMethod>,
}

/// The SHA-256 of a token: what the database stores and the cache is keyed
/// by (`token::TokenFormat` makes it).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A hash is not secret, but a short form is all a reader needs.
        write!(f, "TokenHash({:02x}{:02x}{:02x}{:02x}…)", self.0[0], self.0[1], self.0[2], self.0[3])
    }
}

/// A session to insert.
pub struct NewSession {
    /// Owner.
    pub user_id: UserId,
    /// Hash of its first token.
    pub token_hash: TokenHash,
    /// Initial state.
    pub state: SessionState,
    /// Lifetime of each refresh window.
    pub lifetime: chrono::Duration,
    /// Login time.
    pub now: DateTime<Utc>,
    /// Expiry of the first token.
    pub expires_at: DateTime<Utc>,
    /// Latest possible expiry.
    pub absolute_expires_at: DateTime<Utc>,
    /// Client.
    pub client: ClientInfo,
    /// How it was authenticated.
    pub auth_methods: Vec<AuthMethod>,
    /// The reserved attempt this session is the success of: recorded (its
    /// reservation released, the account's failures cleared, its
    /// provisional row replaced) in the session's transaction.
    pub settles: Option<AttemptId>,
}

/// Sessions a change ends in its own transaction: every live session of the
/// user but `keep`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RevokeSessions {
    /// The session that stays (the caller's own), if any.
    pub keep: Option<SessionId>,
    /// Why, as stored with each revoked session.
    pub reason: &'static str,
}

/// A session found by one of its token hashes, with its user.
#[derive(Debug)]
pub struct SessionMatch {
    /// The session.
    pub session: Session,
    /// Its user.
    pub user: User,
    /// True when the hash was the previous (refreshed-away) token's.
    pub matched_previous: bool,
    /// The hash of the session's current token.
    pub current_hash: TokenHash,
}

/// What validating a session token needs, read on a cache miss: the
/// session's state and times and its user's identity, nothing more (no
/// password hash, no client fields).
#[derive(Clone, Debug)]
pub struct SessionCredential {
    /// The session.
    pub session_id: SessionId,
    /// Its user.
    pub user_id: UserId,
    /// The user's email.
    pub email: Email,
    /// The user's role.
    pub role: Role,
    /// Whether the user is disabled.
    pub user_disabled: bool,
    /// The session's state.
    pub state: SessionState,
    /// When the session expires.
    pub expires_at: DateTime<Utc>,
    /// End of the refreshed-away token's grace, if any.
    pub previous_valid_until: Option<DateTime<Utc>>,
    /// True when the hash was the previous (refreshed-away) token's.
    pub matched_previous: bool,
    /// How the session was authenticated.
    pub auth_methods: Vec<AuthMethod>,
    /// Last-seen time as stored.
    pub last_seen_at: DateTime<Utc>,
}

/// What validating an API key needs, read on a cache miss: the key's scopes
/// and times and its owner's identity.
#[derive(Clone, Debug)]
pub struct KeyCredential {
    /// The key.
    pub key_id: KeyId,
    /// Its owner.
    pub owner_id: UserId,
    /// The owner's email.
    pub email: Email,
    /// The owner's role.
    pub role: Role,
    /// Whether the owner is disabled.
    pub owner_disabled: bool,
    /// Scopes held.
    pub scopes: Vec<String>,
    /// Expiry, if any.
    pub expires_at: Option<DateTime<Utc>>,
    /// Revoked at, or stops at after a rotation's overlap.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Last-used time as stored.
    pub last_used_at: Option<DateTime<Utc>>,
}

/// A token rotation to apply if the session still has `expected` as its
/// current token.
pub struct Rotation {
    /// The session.
    pub session_id: SessionId,
    /// The token hash the caller saw as current.
    pub expected: TokenHash,
    /// The new current token hash.
    pub new_hash: TokenHash,
    /// The hash that stays valid during the grace.
    pub previous_hash: TokenHash,
    /// End of that grace.
    pub previous_valid_until: DateTime<Utc>,
    /// The new token's expiry.
    pub expires_at: DateTime<Utc>,
}

// === API keys ===
/// Whether an API key is for production or testing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyEnvironment {
    /// Production: `pcs_live_…`.
    Live,
    /// Testing: `pcs_test_…`.
    Test,
}

impl KeyEnvironment {
    /// The name stored in the database.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            KeyEnvironment::Live => "live",
            KeyEnvironment::Test => "test",
        }
    }

    /// Reads a stored name.
    ///
    /// # Errors
    /// `Internal` for a name this version does not know.
    pub fn from_stored(name: &str) -> Result<Self> {
        match name {
            "live" => Ok(KeyEnvironment::Live),
            "test" => Ok(KeyEnvironment::Test),
            other => Err(Error::Internal(format!("unknown key environment {other:?} in database"))),
        }
    }
}

/// An API key's metadata (never the key itself).
#[derive(Clone, Debug)]
pub struct ApiKey {
    /// Identifier.
    pub id: KeyId,
    /// The user the key acts as.
    pub owner_id: UserId,
    /// Human-readable name.
    pub name: String,
    /// Scopes held.
    pub scopes: Vec<String>,
    /// Live or test.
    pub environment: KeyEnvironment,
    /// The non-secret start of the key.
    pub display_prefix: String,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Expiry, if any.
    pub expires_at: Option<DateTime<Utc>>,
    /// Last used (coarse).
    pub last_used_at: Option<DateTime<Utc>>,
    /// Revoked at, or stops at after a rotation's overlap.
    pub revoked_at: Option<DateTime<Utc>>,
    /// The key this one replaced.
    pub rotated_from_id: Option<KeyId>,
}

impl ApiKey {
    /// Whether the key is revoked (or past its rotation overlap) at `now`.
    #[must_use]
    pub fn is_revoked(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_some_and(|at| now >= at)
    }
}

/// A key to insert.
pub struct NewKey {
    /// Owner.
    pub owner_id: UserId,
    /// Name.
    pub name: String,
    /// Hash of the key.
    pub hash: TokenHash,
    /// Non-secret start of the key.
    pub display_prefix: String,
    /// Live or test.
    pub environment: KeyEnvironment,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Creation time.
    pub now: DateTime<Utc>,
    /// Expiry.
    pub expires_at: Option<DateTime<Utc>>,
    /// The key this one replaces.
    pub rotated_from_id: Option<KeyId>,
}

// === Second factors ===

/// A user's stored TOTP secret.
#[derive(Debug)]
pub struct StoredTotp {
    /// The sealed secret.
    pub sealed: Vec<u8>,
    /// Whether enrolment was confirmed.
    pub confirmed: bool,
}

/// An emailed code on which one attempt was reserved.
#[derive(Debug)]
pub struct EmailCode {
    /// Identifier (of the code, not of a user or session).
    pub id: i64,
    /// HMAC digest of the code.
    pub digest: Vec<u8>,
}

/// What an emailed code is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodePurpose {
    /// Completing a pending login (bound to its session).
    Login,
    /// Proving the account's address (enrolment, disabling MFA).
    Account,
}

impl CodePurpose {
    /// The name stored in the database.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            CodePurpose::Login => "login",
            CodePurpose::Account => "account",
        }
    }
}

// === Abuse protection ===

/// A reserved attempt (password or code check), named by its provisional
/// audit row: written with the reservation, so an attempt whose record
/// never commits still shows in the audit log as a failure; the record of
/// the attempt replaces it in its own transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttemptId(pub i64);

/// The detail of a provisional attempt row, as it reads if the attempt's
/// record never replaced it.
pub const UNRECORDED_ATTEMPT: &str =
    "attempt started; its result was never recorded (database error), so it counts as a failure";

/// An account's attempt counters, as the store read them in the
/// transaction that records a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttemptCounters {
    /// Failed attempts since the last success or lock, this one included.
    pub failed_attempts: i32,
    /// Locks since the last success.
    pub lockouts: i32,
}

/// An account's attempt state, as read when a reservation was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttemptState {
    /// Failed attempts since the last success or lock.
    pub failed_attempts: i32,
    /// Attempts reserved and not yet decided (passwords or codes being
    /// checked right now, or reservations lost to a crash).
    pub in_flight: i32,
    /// When the latest attempt was reserved.
    pub reserved_at: Option<DateTime<Utc>>,
    /// The end of the current lock, if any.
    pub locked_until: Option<DateTime<Utc>>,
}

/// A lock the rules decided on: until when, and its audit row.
#[derive(Clone, Debug)]
pub struct Lock {
    /// The end of the lock.
    pub until: DateTime<Utc>,
    /// The row that records it.
    pub event: AuditEvent,
}

// === Audit ===

/// What happened: the audit log's action catalogue. [`Action::ALL`] is the
/// one list of the names an audit row can carry (the README lists them);
/// filters are checked against it, so a misspelt action is refused instead
/// of matching nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs, reason = "the names say it")]
pub enum Action {
    LoginSucceeded,
    LoginFailed,
    LoginPendingMfa,
    MfaSucceeded,
    MfaFailed,
    MfaEnabled,
    MfaDisabled,
    RecoveryCodesRegenerated,
    SessionRefreshed,
    RefreshReuse,
    Logout,
    SessionRevoked,
    SessionsRevoked,
    UserCreated,
    UserUpdated,
    PasswordChanged,
    PasswordSet,
    KeyCreated,
    KeyUpdated,
    KeyRotated,
    KeyRevoked,
    AccountLocked,
    CaptchaFailed,
    InvalidTokens,
}

impl Action {
    /// Every action, in the order the README lists them.
    pub const ALL: [Action; 24] = [
        Action::LoginSucceeded,
        Action::LoginFailed,
        Action::LoginPendingMfa,
        Action::MfaSucceeded,
        Action::MfaFailed,
        Action::MfaEnabled,
        Action::MfaDisabled,
        Action::RecoveryCodesRegenerated,
        Action::SessionRefreshed,
        Action::RefreshReuse,
        Action::Logout,
        Action::SessionRevoked,
        Action::SessionsRevoked,
        Action::UserCreated,
        Action::UserUpdated,
        Action::PasswordChanged,
        Action::PasswordSet,
        Action::KeyCreated,
        Action::KeyUpdated,
        Action::KeyRotated,
        Action::KeyRevoked,
        Action::AccountLocked,
        Action::CaptchaFailed,
        Action::InvalidTokens,
    ];

    /// The action named `name` (exactly as stored), if it is one.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|action| action.as_str() == name)
    }

    /// Every action's name, comma-separated: for messages that list them.
    #[must_use]
    pub fn names() -> String {
        Self::ALL.map(Action::as_str).join(", ")
    }

    /// As stored and filtered on.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Action::LoginSucceeded => "login.succeeded",
            Action::LoginFailed => "login.failed",
            Action::LoginPendingMfa => "login.pending_mfa",
            Action::MfaSucceeded => "mfa.succeeded",
            Action::MfaFailed => "mfa.failed",
            Action::MfaEnabled => "mfa.enabled",
            Action::MfaDisabled => "mfa.disabled",
            Action::RecoveryCodesRegenerated => "mfa.recovery_codes_regenerated",
            Action::SessionRefreshed => "session.refreshed",
            Action::RefreshReuse => "session.refresh_reuse",
            Action::Logout => "session.logout",
            Action::SessionRevoked => "session.revoked",
            Action::SessionsRevoked => "sessions.revoked",
            Action::UserCreated => "user.created",
            Action::UserUpdated => "user.updated",
            Action::PasswordChanged => "user.password_changed",
            Action::PasswordSet => "user.password_set",
            Action::KeyCreated => "key.created",
            Action::KeyUpdated => "key.updated",
            Action::KeyRotated => "key.rotated",
            Action::KeyRevoked => "key.revoked",
            Action::AccountLocked => "account.locked",
            Action::CaptchaFailed => "captcha.failed",
            Action::InvalidTokens => "token.invalid",
        }
    }
}

/// How it ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It happened.
    Success,
    /// It was refused.
    Failure,
}

impl Outcome {
    /// As stored and filtered on.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
        }
    }
}

/// One row of the audit log.
#[derive(Clone, Debug)]
pub struct AuditEvent {
    /// When.
    pub at: DateTime<Utc>,
    /// What.
    pub action: Action,
    /// How it ended.
    pub outcome: Outcome,
    /// Who (see [`Actor::label`]).
    pub actor: String,
    /// What it was done to: `user:5`, `session:9`, `key:2`, `email:a@b.c`.
    pub subject: String,
    /// The end user's IP.
    pub client_ip: String,
    /// The end user's user agent.
    pub user_agent: String,
    /// The request it came from.
    pub request_id: String,
    /// Why (a reason code, never a secret).
    pub detail: String,
    /// How many occurrences one row stands for (aggregated floods).
    pub count: i64,
}

impl AuditEvent {
    /// The same event with a reason.
    #[must_use]
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }
}

/// A stored audit row, as read back.
#[derive(Clone, Debug)]
pub struct AuditRecord {
    /// Identifier (ascending in time).
    pub id: i64,
    /// When.
    pub at: DateTime<Utc>,
    /// What (see [`Action::as_str`]).
    pub action: String,
    /// `success` or `failure`.
    pub outcome: String,
    /// Who.
    pub actor: String,
    /// To what.
    pub subject: String,
    /// The end user's IP.
    pub client_ip: String,
    /// The end user's user agent.
    pub user_agent: String,
    /// The request.
    pub request_id: String,
    /// Why.
    pub detail: String,
    /// Occurrences this row stands for.
    pub count: i64,
}

/// Filters of `ListAuditEvents`.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    /// Exact subject.
    pub subject: Option<String>,
    /// Exact actor.
    pub actor: Option<String>,
    /// Exact action.
    pub action: Option<String>,
    /// `success` or `failure`.
    pub outcome: Option<String>,
    /// At or after.
    pub start: Option<DateTime<Utc>>,
    /// Before.
    pub end: Option<DateTime<Utc>>,
    /// Exact request id.
    pub request_id: Option<String>,
}

impl AuditFilter {
    /// Checks the text filters for control characters and length (no
    /// stored value is longer), before they reach the database.
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` naming the filter.
    pub fn check(&self) -> Result<()> {
        let Self { subject, actor, action, outcome, start: _, end: _, request_id } = self;
        for (field, value, max) in [
            ("subject", subject, 320),
            ("actor", actor, 64),
            ("action", action, 48),
            ("outcome", outcome, 16),
            ("request_id", request_id, 128),
        ] {
            if let Some(value) = value {
                input::check_text(field, value, max)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_action_catalogue_lists_every_action_once() {
        for action in Action::ALL {
            assert_eq!(Action::parse(action.as_str()), Some(action));
            assert_eq!(Action::ALL.iter().filter(|a| **a == action).count(), 1, "{action:?} twice");
        }
        assert_eq!(Action::parse("login.failure"), None);
        assert!(Action::names().starts_with("login.succeeded, login.failed, "));
    }

    #[test]
    fn email_is_trimmed_and_lower_cased() {
        let email = Email::parse("  Alice@Example.COM ", "email").unwrap();
        assert_eq!(email.as_str(), "alice@example.com");
    }

    #[test]
    fn malformed_emails_are_refused() {
        for bad in ["", "   ", "no-at-sign", "a@", "@b.c", "a b@c.d"] {
            assert!(Email::parse(bad, "email").is_err(), "{bad:?} accepted");
        }
        let long = format!("{}@example.com", "a".repeat(300));
        assert!(Email::parse(&long, "email").is_err());
        for hostile in ["a\0@b.cd", "a@b.cd\0", "a\n@b.cd", "a@b\u{85}.cd"] {
            assert!(Email::parse(hostile, "email").is_err(), "{hostile:?} accepted");
        }
        assert_eq!(Email::parse("\tA@b.cd\n", "email").unwrap().as_str(), "a@b.cd");
    }
}
