//! Who asked, from where, and what the audit log says about it.
//!
//! Every rule that changes state takes a [`Ctx`] (request id, client, actor)
//! and hands the store an [`AuditEvent`] to write in the same transaction
//! as the change, so a change is never without its row, nor a row without
//! its change. Events never hold a secret.

use std::net::IpAddr;

use chrono::{DateTime, Utc};

use super::{Action, AuditEvent, CredentialId, KeyId, Outcome, Principal, UserId};

/// Who is acting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Actor {
    /// No credential (a login, a token validation).
    Anonymous,
    /// A user's session.
    User(UserId),
    /// An API key.
    Key(KeyId),
    /// The operator, through the command line (`system:cli`).
    System,
}

impl Actor {
    /// The actor of a principal.
    #[must_use]
    pub fn of(principal: &Principal) -> Self {
        match principal.credential {
            CredentialId::Session(_) => Actor::User(principal.user_id),
            CredentialId::ApiKey(id) => Actor::Key(id),
        }
    }

    /// As stored: `user:1`, `key:3`, `anonymous`, `system:cli`.
    #[must_use]
    pub fn label(self) -> String {
        match self {
            Actor::Anonymous => "anonymous".into(),
            Actor::User(id) => format!("user:{id}"),
            Actor::Key(id) => format!("key:{id}"),
            Actor::System => "system:cli".into(),
        }
    }
}

/// The request a rule runs for.
#[derive(Clone, Debug)]
pub struct Ctx {
    /// The caller's `x-request-id` (or a generated one).
    pub request_id: String,
    /// The end user's IP: the peer's, or `client.ip` from a trusted caller.
    pub client_ip: Option<IpAddr>,
    /// The end user's user agent, when known.
    pub user_agent: String,
    /// Who is acting.
    pub actor: Actor,
}

impl Ctx {
    /// A context for work the operator starts (the CLI) or tests.
    #[must_use]
    pub fn system() -> Self {
        Self { request_id: String::new(), client_ip: None, user_agent: String::new(), actor: Actor::System }
    }

    /// The same request, acting as `principal`.
    #[must_use]
    pub fn acting_as(&self, principal: &Principal) -> Self {
        Self { actor: Actor::of(principal), ..self.clone() }
    }

    /// An event of this request.
    #[must_use]
    pub fn event(
        &self,
        at: DateTime<Utc>,
        action: Action,
        outcome: Outcome,
        subject: impl Into<String>,
    ) -> AuditEvent {
        AuditEvent {
            at,
            action,
            outcome,
            actor: self.actor.label(),
            subject: subject.into(),
            client_ip: self.client_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            user_agent: self.user_agent.chars().take(512).collect(),
            request_id: self.request_id.clone(),
            detail: String::new(),
            count: 1,
        }
    }
}
