//! Conversions between proto messages and domain records. Domain → proto
//! conversions destructure every field, so a new field breaks the build
//! until it is mapped. Wire ids (`int64`) become typed ids here (`UserId`,
//! `SessionId`, `KeyId`) and back, unchanged: the rules check the ids a
//! client sends.

use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;

use crate::{
    domain::{
        self, AuthMethod, CredentialId, Error, KeyEnvironment, KeyId, MfaMethod, Result, Role, UserId,
        UserKind,
    },
    proto::v1 as pb,
};

/// A wire user id where 0 means "the caller": `None` for 0.
#[must_use]
pub fn user_or_caller(id: i64) -> Option<UserId> {
    (id != 0).then_some(UserId::new(id))
}

/// A timestamp for the wire.
pub fn timestamp(at: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: at.timestamp(), nanos: at.timestamp_subsec_nanos() as i32 }
}

/// A duration for the wire.
pub fn duration(d: chrono::Duration) -> prost_types::Duration {
    prost_types::Duration { seconds: d.num_seconds(), nanos: d.subsec_nanos() }
}

/// Reads an optional wire duration; `field` names it in errors.
pub fn duration_from(
    d: Option<prost_types::Duration>,
    field: &'static str,
) -> Result<Option<chrono::Duration>> {
    let Some(d) = d else { return Ok(None) };
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(Error::invalid(field, "must be a non-negative duration"));
    }
    chrono::Duration::try_seconds(d.seconds)
        .and_then(|s| s.checked_add(&chrono::Duration::nanoseconds(i64::from(d.nanos))))
        .map(Some)
        .ok_or_else(|| Error::invalid(field, "is too large"))
}

/// Reads a wire role; `field` names it in errors. Unspecified gives
/// `default`, or an error when there is none.
pub fn role_from(value: i32, field: &'static str, default: Option<Role>) -> Result<Role> {
    match pb::Role::try_from(value) {
        Ok(pb::Role::User) => Ok(Role::User),
        Ok(pb::Role::Admin) => Ok(Role::Admin),
        Ok(pb::Role::Unspecified) => default.ok_or_else(|| Error::invalid(field, "must be set")),
        Err(_) => Err(Error::invalid(field, format!("unknown role value {value}"))),
    }
}

impl From<Role> for pb::Role {
    fn from(role: Role) -> Self {
        match role {
            Role::User => pb::Role::User,
            Role::Admin => pb::Role::Admin,
        }
    }
}

impl From<AuthMethod> for pb::AuthMethod {
    fn from(method: AuthMethod) -> Self {
        match method {
            AuthMethod::Password => pb::AuthMethod::Password,
            AuthMethod::Totp => pb::AuthMethod::Totp,
            AuthMethod::EmailCode => pb::AuthMethod::EmailCode,
            AuthMethod::RecoveryCode => pb::AuthMethod::RecoveryCode,
            AuthMethod::AdminLogin => pb::AuthMethod::AdminLogin,
        }
    }
}

impl From<MfaMethod> for pb::MfaMethod {
    fn from(method: MfaMethod) -> Self {
        match method {
            MfaMethod::Totp => pb::MfaMethod::Totp,
            MfaMethod::Email => pb::MfaMethod::Email,
            MfaMethod::RecoveryCode => pb::MfaMethod::RecoveryCode,
        }
    }
}

/// Reads a wire MFA method; `field` names it in errors.
pub fn mfa_method_from(value: i32, field: &'static str) -> Result<MfaMethod> {
    match pb::MfaMethod::try_from(value) {
        Ok(pb::MfaMethod::Totp) => Ok(MfaMethod::Totp),
        Ok(pb::MfaMethod::Email) => Ok(MfaMethod::Email),
        Ok(pb::MfaMethod::RecoveryCode) => Ok(MfaMethod::RecoveryCode),
        Ok(pb::MfaMethod::Unspecified) => Err(Error::invalid(field, "must be set")),
        Err(_) => Err(Error::invalid(field, format!("unknown method value {value}"))),
    }
}

impl From<domain::MfaChallenge> for pb::MfaChallenge {
    fn from(challenge: domain::MfaChallenge) -> Self {
        let domain::MfaChallenge { token, methods, expires_at } = challenge;
        pb::MfaChallenge {
            mfa_token: token.expose_secret().to_owned(),
            methods: methods.into_iter().map(|m| pb::MfaMethod::from(m) as i32).collect(),
            expire_time: Some(timestamp(expires_at)),
        }
    }
}

/// Secret strings for the wire (shown once).
pub fn exposed(secrets: &[secrecy::SecretString]) -> Vec<String> {
    secrets.iter().map(|s| s.expose_secret().to_owned()).collect()
}

fn methods(list: &[AuthMethod]) -> Vec<i32> {
    list.iter().map(|m| pb::AuthMethod::from(*m) as i32).collect()
}

impl From<domain::User> for pb::User {
    fn from(user: domain::User) -> Self {
        let domain::User { id, email, role, disabled, session_lifetime, created_at, updated_at, kind, mfa } =
            user;
        pb::User {
            id: id.get(),
            email: email.as_str().to_owned(),
            role: pb::Role::from(role) as i32,
            kind: match kind {
                UserKind::Human => pb::UserKind::Human,
                UserKind::Service => pb::UserKind::Service,
            } as i32,
            mfa_methods: mfa.methods().into_iter().map(|m| pb::MfaMethod::from(m) as i32).collect(),
            disabled,
            session_lifetime: session_lifetime.map(duration),
            create_time: Some(timestamp(created_at)),
            update_time: Some(timestamp(updated_at)),
        }
    }
}

impl From<domain::Principal> for pb::Principal {
    fn from(principal: domain::Principal) -> Self {
        let domain::Principal { credential, user_id, email, role, scopes, expires_at, auth_methods } =
            principal;
        let (kind, credential_id) = match credential {
            CredentialId::Session(id) => {
                (pb::PrincipalKind::Session, pb::principal::CredentialId::SessionId(id.get()))
            }
            CredentialId::ApiKey(id) => {
                (pb::PrincipalKind::ApiKey, pb::principal::CredentialId::KeyId(id.get()))
            }
        };
        pb::Principal {
            kind: kind as i32,
            user_id: user_id.get(),
            email: email.as_str().to_owned(),
            role: pb::Role::from(role) as i32,
            credential_id: Some(credential_id),
            scopes,
            expire_time: expires_at.map(timestamp),
            auth_methods: methods(&auth_methods),
        }
    }
}

/// A session for the wire, marked `current` when it made the request.
pub fn session(session: domain::Session, current: bool) -> pb::Session {
    let domain::Session {
        id,
        user_id,
        state: _,
        lifetime: _,
        created_at,
        last_seen_at,
        expires_at,
        absolute_expires_at,
        previous_valid_until: _,
        client,
        auth_methods,
    } = session;
    pb::Session {
        id: id.get(),
        user_id: user_id.get(),
        create_time: Some(timestamp(created_at)),
        last_seen_time: Some(timestamp(last_seen_at)),
        expire_time: Some(timestamp(expires_at)),
        absolute_expire_time: Some(timestamp(absolute_expires_at)),
        ip: client.ip,
        user_agent: client.user_agent,
        device_label: client.device_label,
        auth_methods: methods(&auth_methods),
        current,
    }
}

impl From<domain::IssuedSession> for pb::IssuedSession {
    fn from(issued: domain::IssuedSession) -> Self {
        let domain::IssuedSession { token, session_id, expires_at, user } = issued;
        pb::IssuedSession {
            token: token.expose_secret().to_owned(),
            expire_time: Some(timestamp(expires_at)),
            session_id: session_id.get(),
            user: Some(user.into()),
        }
    }
}

impl From<pb::ClientInfo> for domain::ClientInfo {
    fn from(client: pb::ClientInfo) -> Self {
        let pb::ClientInfo { ip, user_agent, device_label } = client;
        domain::ClientInfo { ip, user_agent, device_label }
    }
}

/// Reads a wire user kind; unspecified means a person.
pub fn user_kind_from(value: i32, field: &'static str) -> Result<UserKind> {
    match pb::UserKind::try_from(value) {
        Ok(pb::UserKind::Unspecified | pb::UserKind::Human) => Ok(UserKind::Human),
        Ok(pb::UserKind::Service) => Ok(UserKind::Service),
        Err(_) => Err(Error::invalid(field, format!("unknown user kind value {value}"))),
    }
}

/// Reads a wire key environment; unspecified means live.
pub fn environment_from(value: i32, field: &'static str) -> Result<KeyEnvironment> {
    match pb::KeyEnvironment::try_from(value) {
        Ok(pb::KeyEnvironment::Unspecified | pb::KeyEnvironment::Live) => Ok(KeyEnvironment::Live),
        Ok(pb::KeyEnvironment::Test) => Ok(KeyEnvironment::Test),
        Err(_) => Err(Error::invalid(field, format!("unknown environment value {value}"))),
    }
}

/// Reads an optional wire timestamp; `field` names it in errors.
pub fn timestamp_from(
    at: Option<prost_types::Timestamp>,
    field: &'static str,
) -> Result<Option<DateTime<Utc>>> {
    let Some(at) = at else { return Ok(None) };
    u32::try_from(at.nanos)
        .ok()
        .and_then(|nanos| DateTime::from_timestamp(at.seconds, nanos))
        .map(Some)
        .ok_or_else(|| Error::invalid(field, "is not a valid timestamp"))
}

impl From<domain::ApiKey> for pb::ApiKey {
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
        pb::ApiKey {
            id: id.get(),
            name,
            owner_id: owner_id.get(),
            scopes,
            environment: match environment {
                KeyEnvironment::Live => pb::KeyEnvironment::Live,
                KeyEnvironment::Test => pb::KeyEnvironment::Test,
            } as i32,
            display_prefix,
            create_time: Some(timestamp(created_at)),
            expire_time: expires_at.map(timestamp),
            last_used_time: last_used_at.map(timestamp),
            revoke_time: revoked_at.map(timestamp),
            rotated_from_id: rotated_from_id.map_or(0, KeyId::get),
        }
    }
}

/// Reads a captcha solution; an unspecified or unknown vendor names
/// `captcha.vendor`.
pub fn captcha_from(captcha: pb::Captcha) -> Result<domain::CaptchaInput> {
    let pb::Captcha { response, vendor } = captcha;
    let vendor = match pb::CaptchaVendor::try_from(vendor) {
        Ok(pb::CaptchaVendor::Googlev3) => crate::captcha::Vendor::GoogleV3,
        Ok(pb::CaptchaVendor::Hcaptcha) => crate::captcha::Vendor::HCaptcha,
        Ok(pb::CaptchaVendor::Turnstile) => crate::captcha::Vendor::Turnstile,
        Ok(pb::CaptchaVendor::Unspecified) => return Err(Error::invalid("captcha.vendor", "must be set")),
        Err(_) => return Err(Error::invalid("captcha.vendor", format!("unknown vendor value {vendor}"))),
    };
    Ok(domain::CaptchaInput { response, vendor })
}

impl From<domain::AuditRecord> for pb::AuditEvent {
    fn from(record: domain::AuditRecord) -> Self {
        let domain::AuditRecord {
            id,
            at,
            action,
            outcome,
            actor,
            subject,
            client_ip,
            user_agent,
            request_id,
            detail,
            count,
        } = record;
        pb::AuditEvent {
            id,
            event_time: Some(timestamp(at)),
            action,
            outcome,
            actor,
            subject,
            client_ip,
            user_agent,
            request_id,
            detail,
            count,
        }
    }
}
