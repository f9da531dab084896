//! Plain records the rules work with: users, sessions, principals, and the
//! newtypes that parse client input (`Email`).

use chrono::{DateTime, Utc};

use super::{Error, KeyId, Result, SessionId, UserId, scope};

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
    pub fn parse(input: &str, field: &'static str) -> Result<Self> {
        let normalised = input.trim().to_lowercase();
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

/// What kind of credential a principal holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CredentialId {
    /// A session token, by session id.
    Session(SessionId),
    /// An API key, by key id.
    ApiKey(KeyId),
}

/// Who a credential belongs to and what it may do.
#[derive(Clone, Debug)]
pub struct Principal {
    /// Which credential.
    pub credential: CredentialId,
    /// Owner.
    pub user_id: UserId,
    /// Owner's email.
    pub email: Email,
    /// Owner's role.
    pub role: Role,
    /// Scopes held.
    pub scopes: Vec<String>,
    /// When the credential stops working.
    pub expires_at: Option<DateTime<Utc>>,
    /// How the session was authenticated.
    pub auth_methods: Vec<AuthMethod>,
}

impl Principal {
    /// Whether this principal holds `scope` (wildcards apply).
    #[must_use]
    pub fn has_scope(&self, wanted: &str) -> bool {
        scope::grants(&self.scopes, wanted)
    }

    /// Fails with `FORBIDDEN` unless this principal holds `scope`.
    ///
    /// # Errors
    /// `Forbidden` naming the scope.
    pub fn require(&self, wanted: &str) -> Result<()> {
        if self.has_scope(wanted) { Ok(()) } else { Err(Error::missing_scope(wanted)) }
    }

    /// The session id, when the credential is a session token.
    #[must_use]
    pub fn session_id(&self) -> Option<SessionId> {
        match self.credential {
            CredentialId::Session(id) => Some(id),
            CredentialId::ApiKey(_) => None,
        }
    }
}

/// A freshly issued session token, shown to the client once.
pub struct IssuedSession {
    /// The token; only its hash is stored.
    pub token: secrecy::SecretString,
    /// Session id.
    pub session_id: SessionId,
    /// Expiry of this token.
    pub expires_at: DateTime<Utc>,
    /// The user.
    pub user: User,
}

impl std::fmt::Debug for IssuedSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedSession")
            .field("token", &"<redacted>")
            .field("session_id", &self.session_id)
            .field("expires_at", &self.expires_at)
            .field("user", &self.user.id)
            .finish()
    }
}

/// A login waiting for its second factor.
pub struct MfaChallenge {
    /// The pending-login token; only its hash is stored.
    pub token: secrecy::SecretString,
    /// The methods the user may complete it with.
    pub methods: Vec<MfaMethod>,
    /// When it expires.
    pub expires_at: DateTime<Utc>,
}

impl std::fmt::Debug for MfaChallenge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MfaChallenge")
            .field("token", &"<redacted>")
            .field("methods", &self.methods)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// What a login returns.
#[derive(Debug)]
pub enum LoginOutcome {
    /// Logged in.
    Session(IssuedSession),
    /// The password was right; a second factor is needed.
    Mfa(MfaChallenge),
}

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

    /// The token kind of keys of this environment.
    #[must_use]
    pub fn token_kind(self) -> super::token::TokenKind {
        match self {
            KeyEnvironment::Live => super::token::TokenKind::LiveKey,
            KeyEnvironment::Test => super::token::TokenKind::TestKey,
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

/// A freshly made API key, shown to the client once.
pub struct IssuedKey {
    /// The key; only its hash is stored.
    pub key: secrecy::SecretString,
    /// Its metadata.
    pub api_key: ApiKey,
}

impl std::fmt::Debug for IssuedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedKey").field("key", &"<redacted>").field("api_key", &self.api_key).finish()
    }
}

/// One page of a listing, and where the next begins.
#[derive(Debug)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Token for the next page; `None` on the last.
    pub next_page_token: Option<String>,
}

impl<T> Page<T> {
    /// A page from rows fetched `limit + 1` at a time: the extra row only
    /// says that another page follows, which starts after the last item's id.
    #[must_use]
    pub fn from_overfetch(mut rows: Vec<T>, limit: u64, id: impl Fn(&T) -> i64) -> Self {
        let more = rows.len() as u64 > limit;
        rows.truncate(limit as usize);
        let next_page_token = if more { rows.last().map(|row| page_token(id(row))) } else { None };
        Self { items: rows, next_page_token }
    }
}

/// Reads a page size: 0 means the default, larger than `max` is capped.
#[must_use]
pub fn page_size(requested: i32, default: u64, max: u64) -> u64 {
    match u64::try_from(requested) {
        Ok(0) | Err(_) => default,
        Ok(n) => n.min(max),
    }
}

/// Reads an opaque page token (the last id seen).
///
/// # Errors
/// `INVALID_ARGUMENT` on `page_token` for anything this server did not issue.
pub fn parse_page_token(token: &str) -> Result<Option<i64>> {
    if token.is_empty() {
        return Ok(None);
    }
    token
        .strip_prefix("p1.")
        .and_then(|id| id.parse::<i64>().ok())
        .filter(|id| *id > 0)
        .map(Some)
        .ok_or_else(|| Error::invalid("page_token", "is not a token from a previous response"))
}

/// Writes an opaque page token.
#[must_use]
pub fn page_token(last_id: i64) -> String {
    format!("p1.{last_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }

    #[test]
    fn page_tokens_round_trip_and_refuse_garbage() {
        assert_eq!(parse_page_token(&page_token(42)).unwrap(), Some(42));
        assert_eq!(parse_page_token("").unwrap(), None);
        for bad in ["42", "p1.", "p1.-3", "p1.x", "p2.5"] {
            assert!(parse_page_token(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn page_size_defaults_and_caps() {
        assert_eq!(page_size(0, 50, 500), 50);
        assert_eq!(page_size(-1, 50, 500), 50);
        assert_eq!(page_size(10, 50, 500), 10);
        assert_eq!(page_size(10_000, 50, 500), 500);
    }
}
