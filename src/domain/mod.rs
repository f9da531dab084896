//! The rules of portcullis: users, passwords, login, sessions, token
//! validation, scopes, limits, audit. Time comes from a [`Clock`],
//! randomness from `ring`, persistence from a [`ports::Store`] (the seam).
//!
//! Must not import tonic, prost or sea-orm, nor `crate::store`: `grpc`
//! converts at its edge; `store` implements the seam with the records
//! (`records`), ids (`ids`) and errors (`error`) defined here, and may
//! import nothing else of `domain`.

pub mod audit;
mod audit_log;
mod clock;
pub mod credential;
pub mod error;
mod events;
pub mod ids;
pub mod input;
mod keys;
pub mod limits;
mod login;
mod mfa;
mod operator;
pub mod password;
pub mod ports;
pub mod records;
pub mod scope;
pub mod seal;
mod sessions;
pub mod token;
mod types;
mod users;
pub mod validate;

use std::sync::Arc;

pub use audit::{Actor, Ctx};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{AuthFailure, Error, Result};
pub use events::{Events, NoEvents};
pub use ids::{KeyId, SessionId, UserId};
pub use keys::{KeyPage, KeyPatch, NewKeyInput};
pub use login::{CaptchaInput, CaptchaPolicy, CaptchaSettings, LoginInput};
pub use mfa::TotpEnrollment;
pub use records::*;
pub use sessions::SessionPage;
pub use types::*;
pub use users::{NewUserInput, UserPage};
pub use validate::Validator;

use crate::config::Config;
use ports::Store;

/// Everything the rules need, shared by all requests.
pub struct Domain {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    hasher: password::Hasher,
    tokens: token::TokenFormat,
    validator: Validator,
    settings: Settings,
    mfa: MfaSettings,
    limits: limits::LimitSettings,
    captcha: CaptchaSettings,
    invalid_tokens: audit_log::InvalidTokenCounts,
    events: Arc<dyn Events>,
    /// Woken whenever an attempt of this replica is decided, for
    /// reservations waiting on attempts in flight.
    attempts_settled: tokio::sync::Notify,
}

/// What the second-factor rules need besides the store.
#[derive(Debug)]
pub struct MfaSettings {
    /// Seals TOTP secrets and digests codes.
    pub sealer: seal::Sealer,
    /// Delivers emailed codes.
    pub mailer: crate::mail::Mailer,
    /// Issuer shown in authenticator apps.
    pub issuer: String,
    /// How long a pending login waits for its second factor.
    pub pending_lifetime: chrono::Duration,
    /// How long an emailed code is valid.
    pub email_code_lifetime: chrono::Duration,
}

/// The subset of [`Config`] the rules read, as domain types.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Default session lifetime.
    pub session_lifetime: chrono::Duration,
    /// Latest a session can be refreshed to, from its login.
    pub session_absolute_lifetime: chrono::Duration,
    /// How long a refreshed-away token keeps working.
    pub refresh_grace: chrono::Duration,
    /// Where credentials are looked for in an HTTP request.
    pub credential_sources: credential::Sources,
    /// Peers whose `client.ip` is believed (e.g. the API gateway).
    pub trusted_peers: Vec<ipnet::IpNet>,
}

impl Settings {
    /// Takes the rules' settings from the service configuration.
    ///
    /// # Errors
    /// A duration too large to represent.
    pub fn from_config(config: &Config) -> std::result::Result<Self, crate::config::ConfigError> {
        let duration = |d: std::time::Duration| {
            chrono::Duration::from_std(d)
                .map_err(|_| crate::config::ConfigError::from_message(format!("duration {d:?} is too large")))
        };
        Ok(Self {
            session_lifetime: duration(config.session_lifetime)?,
            session_absolute_lifetime: duration(config.session_absolute_lifetime)?,
            refresh_grace: duration(config.refresh_grace)?,
            credential_sources: credential::Sources {
                cookie_name: config.session_cookie_name.clone(),
                query_param: config.token_query_param.clone(),
            },
            trusted_peers: config.trusted_peers.clone(),
        })
    }
}

impl Domain {
    /// Wires the rules to their store, clock and password hasher.
    #[must_use]
    #[allow(clippy::too_many_arguments, reason = "the one constructor, called by app.rs")]
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        hasher: password::Hasher,
        tokens: token::TokenFormat,
        validator: Validator,
        settings: Settings,
        mfa: MfaSettings,
        limits: limits::LimitSettings,
        captcha: CaptchaSettings,
    ) -> Self {
        Self {
            store,
            clock,
            hasher,
            tokens,
            validator,
            settings,
            mfa,
            limits,
            captcha,
            invalid_tokens: audit_log::InvalidTokenCounts::default(),
            events: Arc::new(NoEvents),
            attempts_settled: tokio::sync::Notify::new(),
        }
    }

    /// Reports what happens to `events` (the server's metrics).
    #[must_use]
    pub fn with_events(mut self, events: Arc<dyn Events>) -> Self {
        self.events = events;
        self
    }

    /// The password hasher (its counters are observable).
    #[must_use]
    pub fn hasher(&self) -> &password::Hasher {
        &self.hasher
    }

    /// The rules' current time, for edges that state durations relative to
    /// it (a session cookie's `Max-Age`).
    #[must_use]
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.clock.now()
    }

    /// The store, for health checks.
    #[must_use]
    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// Where credentials are looked for in an HTTP request.
    #[must_use]
    pub fn credential_sources(&self) -> &credential::Sources {
        &self.settings.credential_sources
    }

    /// Whether `ip` is a configured trusted peer, whose `client.ip` is believed.
    #[must_use]
    pub fn is_trusted_peer(&self, ip: std::net::IpAddr) -> bool {
        self.settings.trusted_peers.iter().any(|net| net.contains(&ip))
    }
}
