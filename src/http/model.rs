//! The JSON shapes the dialects share, and their conversions from the
//! domain's records. Domain → JSON conversions destructure every field, so a
//! new field breaks the build until it is mapped (or deliberately left out).
//!
//! Times are RFC 3339 strings in UTC (`2026-11-24T05:09:46Z`).

use chrono::{DateTime, SecondsFormat, Utc};
use secrecy::ExposeSecret as _;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::{
    self, AuthMethod, ClientInfo, CredentialId, Ctx, KeyEnvironment, KeyId, MfaMethod, Role,
};

/// Longest user agent a session records (the rules refuse longer ones).
const MAX_USER_AGENT: usize = 512;

/// A time for the wire.
#[must_use]
pub fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The end user's client as the request shows it: the IP the request
/// layers chose (the peer's, or a trusted caller's claim) and the
/// `User-Agent`, without control characters and cut to what a session
/// records.
#[must_use]
pub fn client(ctx: &Ctx) -> ClientInfo {
    ClientInfo {
        ip: ctx.client_ip.map(|ip| ip.to_string()).unwrap_or_default(),
        // A header the client did not fill as a field: made printable, not refused.
        user_agent: domain::input::printable_prefix(&ctx.user_agent, MAX_USER_AGENT),
        device_label: String::new(),
    }
}

/// A user, as logins and `session` show it.
#[derive(Debug, Serialize, ToSchema)]
pub struct User {
    /// Identifier.
    #[schema(example = 42)]
    pub id: i64,
    /// Normalised email.
    #[schema(example = "user@example.com")]
    pub email: String,
    /// `admin` or `user`.
    #[schema(example = "admin")]
    pub role: RoleName,
}

/// A role.
#[derive(Clone, Copy, Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RoleName {
    /// Every `portcullis:` scope.
    Admin,
    /// Its own sessions, password and keys.
    User,
}

impl From<Role> for RoleName {
    fn from(role: Role) -> Self {
        match role {
            Role::Admin => RoleName::Admin,
            Role::User => RoleName::User,
        }
    }
}

impl From<domain::User> for User {
    fn from(user: domain::User) -> Self {
        let domain::User {
            id,
            email,
            role,
            kind: _,
            mfa: _,
            disabled: _,
            session_lifetime: _,
            created_at: _,
            updated_at: _,
        } = user;
        User { id: id.get(), email: email.as_str().to_owned(), role: role.into() }
    }
}

/// A new session: its token (shown once) and its user.
#[derive(Debug, Serialize, ToSchema)]
pub struct Session {
    /// The session token.
    #[schema(example = "pcs_sess_…")]
    pub token: String,
    /// When the token stops working, unless refreshed.
    #[schema(example = "2026-11-25T05:09:46Z")]
    pub expires_at: String,
    /// Who logged in.
    pub user: User,
}

impl From<domain::IssuedSession> for Session {
    fn from(issued: domain::IssuedSession) -> Self {
        let domain::IssuedSession { token, session_id: _, expires_at, user } = issued;
        Session { token: token.expose_secret().to_owned(), expires_at: time(expires_at), user: user.into() }
    }
}

/// A second-factor method.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// A code from an authenticator app.
    Totp,
    /// A code sent by email (`mfa/send`).
    Email,
    /// A single-use recovery code.
    RecoveryCode,
}

impl From<MfaMethod> for Method {
    fn from(method: MfaMethod) -> Self {
        match method {
            MfaMethod::Totp => Method::Totp,
            MfaMethod::Email => Method::Email,
            MfaMethod::RecoveryCode => Method::RecoveryCode,
        }
    }
}

impl From<Method> for MfaMethod {
    fn from(method: Method) -> Self {
        match method {
            Method::Totp => MfaMethod::Totp,
            Method::Email => MfaMethod::Email,
            Method::RecoveryCode => MfaMethod::RecoveryCode,
        }
    }
}

/// A login that needs its second factor.
#[derive(Debug, Serialize, ToSchema)]
pub struct MfaChallenge {
    /// The pending login's token: accepted only by `mfa/verify` and
    /// `mfa/send`, never as a session.
    #[schema(example = "pcs_mfa_…")]
    pub mfa_token: String,
    /// The methods that can complete it.
    pub methods: Vec<Method>,
    /// When the pending login ends.
    pub expires_at: String,
}

impl From<domain::MfaChallenge> for MfaChallenge {
    fn from(challenge: domain::MfaChallenge) -> Self {
        let domain::MfaChallenge { token, methods, expires_at } = challenge;
        MfaChallenge {
            mfa_token: token.expose_secret().to_owned(),
            methods: methods.into_iter().map(Method::from).collect(),
            expires_at: time(expires_at),
        }
    }
}

/// How a session was authenticated.
#[derive(Clone, Copy, Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethodName {
    /// Email and password.
    Password,
    /// TOTP code.
    Totp,
    /// Emailed code.
    EmailCode,
    /// Recovery code.
    RecoveryCode,
    /// A back-end service's login on the user's behalf.
    AdminLogin,
}

impl From<AuthMethod> for AuthMethodName {
    fn from(method: AuthMethod) -> Self {
        match method {
            AuthMethod::Password => AuthMethodName::Password,
            AuthMethod::Totp => AuthMethodName::Totp,
            AuthMethod::EmailCode => AuthMethodName::EmailCode,
            AuthMethod::RecoveryCode => AuthMethodName::RecoveryCode,
            AuthMethod::AdminLogin => AuthMethodName::AdminLogin,
        }
    }
}

/// What a credential is.
#[derive(Clone, Copy, Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// A session token.
    Session,
    /// An API key.
    ApiKey,
}

/// Who the caller is and what it may do: `ValidateToken`'s principal.
#[derive(Debug, Serialize, ToSchema)]
pub struct Principal {
    /// Session or API key.
    pub kind: CredentialKind,
    /// The owner.
    pub user: User,
    /// The session, for a session token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<i64>,
    /// The key, for an API key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<i64>,
    /// Scopes held.
    pub scopes: Vec<String>,
    /// When the credential stops working (none: an API key without expiry).
    pub expires_at: Option<String>,
    /// How the session was authenticated.
    pub auth_methods: Vec<AuthMethodName>,
}

impl From<domain::Principal> for Principal {
    fn from(principal: domain::Principal) -> Self {
        let domain::Principal { credential, user_id, email, role, scopes, expires_at, auth_methods } =
            principal;
        let (kind, session_id, key_id) = match credential {
            CredentialId::Session(id) => (CredentialKind::Session, Some(id.get()), None),
            CredentialId::ApiKey(id) => (CredentialKind::ApiKey, None, Some(id.get())),
        };
        Principal {
            kind,
            user: User { id: user_id.get(), email: email.as_str().to_owned(), role: role.into() },
            session_id,
            key_id,
            scopes,
            expires_at: expires_at.map(time),
            auth_methods: auth_methods.into_iter().map(AuthMethodName::from).collect(),
        }
    }
}

/// `live` or `test`.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Environment {
    /// Production keys, `pcs_live_…`.
    #[default]
    Live,
    /// Test keys, `pcs_test_…`.
    Test,
}

impl From<Environment> for KeyEnvironment {
    fn from(environment: Environment) -> Self {
        match environment {
            Environment::Live => KeyEnvironment::Live,
            Environment::Test => KeyEnvironment::Test,
        }
    }
}

impl From<KeyEnvironment> for Environment {
    fn from(environment: KeyEnvironment) -> Self {
        match environment {
            KeyEnvironment::Live => Environment::Live,
            KeyEnvironment::Test => Environment::Test,
        }
    }
}

/// An API key's metadata (never the key itself).
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiKey {
    /// Identifier.
    pub id: i64,
    /// Name.
    pub name: String,
    /// The user the key acts as.
    pub owner_id: i64,
    /// Scopes held.
    pub scopes: Vec<String>,
    /// Live or test.
    pub environment: Environment,
    /// The non-secret start of the key, to recognise it.
    pub display_prefix: String,
    /// Created.
    pub created_at: String,
    /// Expiry, if any.
    pub expires_at: Option<String>,
    /// Last used (coarse).
    pub last_used_at: Option<String>,
    /// Revoked, or the end of its rotation overlap.
    pub revoked_at: Option<String>,
    /// The key this one replaced.
    pub rotated_from_id: Option<i64>,
}

impl From<domain::ApiKey> for ApiKey {
    fn from(key: domain::ApiKey) -> Self {
        let domain::ApiKey {
            id,
            owner_id,
            name,
            scopes,
            environment,
            display_prefix,
            created_at,
            expires_at,
            last_used_at,
            revoked_at,
            rotated_from_id,
        } = key;
        ApiKey {
            id: id.get(),
            name,
            owner_id: owner_id.get(),
            scopes,
            environment: environment.into(),
            display_prefix,
            created_at: time(created_at),
            expires_at: expires_at.map(time),
            last_used_at: last_used_at.map(time),
            revoked_at: revoked_at.map(time),
            rotated_from_id: rotated_from_id.map(KeyId::get),
        }
    }
}

/// A new key: the key itself (shown once) and its metadata.
#[derive(Debug, Serialize, ToSchema)]
pub struct NewKey {
    /// The key; only its hash is kept.
    #[schema(example = "pcs_live_…")]
    pub key: String,
    /// Its metadata.
    pub api_key: ApiKey,
}

impl From<domain::IssuedKey> for NewKey {
    fn from(issued: domain::IssuedKey) -> Self {
        let domain::IssuedKey { key, api_key } = issued;
        NewKey { key: key.expose_secret().to_owned(), api_key: api_key.into() }
    }
}

// === envelopes, for the description ===

/// `{"status":"error","error":{…}}`: every S4E failure.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorEnvelope {
    /// Always `error`.
    #[schema(example = "error")]
    pub status: String,
    /// What went wrong.
    pub error: ErrorDetail,
}

/// One failure: a row of the error table.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// The S4E code: `unauthorized`, `token_expired`, `forbidden`,
    /// `mfa_required`, `rate_limited`, `invalid_argument`, …
    #[schema(example = "unauthorized")]
    pub code: String,
    /// For people; never a secret.
    pub message: String,
    /// For `invalid_argument`: the field at fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// `{"status":"success","data":…}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Success<T> {
    /// Always `success`.
    #[schema(example = "success")]
    pub status: String,
    /// The answer.
    pub data: T,
}

/// `{"status":"mfa_required","data":…}`: the password was right, a second
/// factor is needed.
#[derive(Debug, Serialize, ToSchema)]
pub struct MfaRequired {
    /// Always `mfa_required`.
    #[schema(example = "mfa_required")]
    pub status: String,
    /// The pending login.
    pub data: MfaChallenge,
}
