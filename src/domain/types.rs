//! What the rules hand the edges: principals, freshly issued tokens and
//! keys (shown once), login outcomes, and pages of listings. The records
//! these are made of live in `records`.

use chrono::{DateTime, Utc};

use super::{
    ApiKey, AuthMethod, Email, Error, KeyId, MfaMethod, Result, Role, SessionId, User, UserId, scope,
};

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
