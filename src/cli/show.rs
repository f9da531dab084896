//! What the command line prints: a line per record for people, or JSON for
//! scripts (`--json`: one object, or an array for lists). Never a secret: a
//! user's password hash and a key's hash are not records here at all; the
//! one secret ever printed is a new key, once, by `key create|rotate`.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::domain::{ApiKey, AuditRecord, Session, User};

fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn maybe_time(at: Option<DateTime<Utc>>) -> Value {
    at.map_or(Value::Null, |at| Value::String(time(at)))
}

/// A user as JSON.
#[must_use]
pub fn user_json(user: &User) -> Value {
    let mut mfa = Vec::new();
    if user.mfa.totp {
        mfa.push("totp");
    }
    if user.mfa.email {
        mfa.push("email");
    }
    json!({
        "id": user.id.get(),
        "email": user.email.as_str(),
        "role": user.role.as_str(),
        "kind": user.kind.as_str(),
        "disabled": user.disabled,
        "mfa": mfa,
        "session_lifetime_seconds": user.session_lifetime.map(|d| d.num_seconds()),
        "created_at": time(user.created_at),
        "updated_at": time(user.updated_at),
    })
}

/// A user on one line.
#[must_use]
pub fn user_line(user: &User) -> String {
    let mut flags = Vec::new();
    if user.disabled {
        flags.push("disabled".to_owned());
    }
    if user.mfa.totp {
        flags.push("totp".to_owned());
    }
    if user.mfa.email {
        flags.push("email-mfa".to_owned());
    }
    format!(
        "{:>6}  {:<40}  {:<5}  {:<7}  {}",
        user.id.get(),
        user.email.as_str(),
        user.role.as_str(),
        user.kind.as_str(),
        flags.join(",")
    )
}

/// A key as JSON (its display prefix only, never the key).
#[must_use]
pub fn key_json(key: &ApiKey, now: DateTime<Utc>) -> Value {
    json!({
        "id": key.id.get(),
        "owner_id": key.owner_id.get(),
        "name": key.name,
        "display_prefix": key.display_prefix,
        "environment": key.environment.as_str(),
        "scopes": key.scopes,
        "created_at": time(key.created_at),
        "expires_at": maybe_time(key.expires_at),
        "last_used_at": maybe_time(key.last_used_at),
        "revoked_at": maybe_time(key.revoked_at),
        "revoked": key.is_revoked(now),
        "rotated_from_id": key.rotated_from_id.map(crate::domain::KeyId::get),
    })
}

/// A key on one line.
#[must_use]
pub fn key_line(key: &ApiKey, now: DateTime<Utc>) -> String {
    let state = match key.revoked_at {
        Some(_) if key.is_revoked(now) => "revoked".to_owned(),
        Some(at) => format!("stops {}", time(at)),
        None => "active".to_owned(),
    };
    format!(
        "{:>6}  owner {:<6}  {:<24}  {:<16}  {:<22}  {}",
        key.id.get(),
        key.owner_id.get(),
        key.name,
        format!("{}…", key.display_prefix),
        state,
        key.scopes.join(" ")
    )
}

/// A session as JSON.
#[must_use]
pub fn session_json(session: &Session) -> Value {
    json!({
        "id": session.id.get(),
        "user_id": session.user_id.get(),
        "state": session.state.as_str(),
        "created_at": time(session.created_at),
        "last_seen_at": time(session.last_seen_at),
        "expires_at": time(session.expires_at),
        "absolute_expires_at": time(session.absolute_expires_at),
        "ip": session.client.ip,
        "user_agent": session.client.user_agent,
        "device_label": session.client.device_label,
        "auth_methods": session.auth_methods.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
    })
}

/// A session on one line.
#[must_use]
pub fn session_line(session: &Session) -> String {
    let methods: Vec<&str> = session.auth_methods.iter().map(|m| m.as_str()).collect();
    format!(
        "{:>6}  user {:<6}  created {}  expires {}  ip {}  {}  {}",
        session.id.get(),
        session.user_id.get(),
        time(session.created_at),
        time(session.expires_at),
        if session.client.ip.is_empty() { "-" } else { &session.client.ip },
        methods.join("+"),
        session.client.user_agent
    )
}

/// An audit row as JSON.
#[must_use]
pub fn audit_json(row: &AuditRecord) -> Value {
    json!({
        "id": row.id,
        "time": time(row.at),
        "action": row.action,
        "outcome": row.outcome,
        "actor": row.actor,
        "subject": row.subject,
        "client_ip": row.client_ip,
        "user_agent": row.user_agent,
        "request_id": row.request_id,
        "detail": row.detail,
        "count": row.count,
    })
}

/// An audit row on one line.
#[must_use]
pub fn audit_line(row: &AuditRecord) -> String {
    let mut line = format!(
        "{:>8}  {}  {:<30}  {:<7}  {:<12}  {}",
        row.id,
        time(row.at),
        row.action,
        row.outcome,
        row.actor,
        row.subject
    );
    if !row.client_ip.is_empty() {
        let _ = write!(line, "  ip={}", row.client_ip);
    }
    if !row.detail.is_empty() {
        let _ = write!(line, "  {}", row.detail);
    }
    if row.count > 1 {
        let _ = write!(line, "  (x{})", row.count);
    }
    line
}
