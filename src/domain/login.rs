//! Password login and the start of a session.
//!
//! An unknown email, a wrong password and a disabled account get the same
//! answer after the same hashing work: the unknown email is checked against
//! a dummy hash.

use chrono::{DateTime, Utc};

use super::{
    AuthFailure, AuthMethod, ClientInfo, Domain, Email, Error, IssuedSession, LoginOutcome, Principal,
    Result, SessionState, User, password::Password, scope, token::TokenKind,
};
use crate::store::NewSession;

/// Longest client IP text accepted.
const MAX_IP: usize = 64;
/// Longest user agent accepted.
const MAX_USER_AGENT: usize = 512;
/// Longest device label accepted.
const MAX_DEVICE_LABEL: usize = 128;

/// A login request, as the rules see it.
pub struct LoginInput {
    /// Email as typed.
    pub email: String,
    /// Password as typed.
    pub password: String,
    /// The end user's client.
    pub client: ClientInfo,
    /// A shorter session the client asks for.
    pub requested_lifetime: Option<chrono::Duration>,
    /// Skip the captcha (needs the admin-login scope).
    pub bypass_captcha: bool,
}

impl std::fmt::Debug for LoginInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginInput")
            .field("email", &self.email)
            .field("password", &"<redacted>")
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl Domain {
    /// Logs a user in with email and password.
    ///
    /// # Errors
    /// `InvalidArgument` for malformed input (nothing hashed),
    /// `Forbidden` for `bypass_captcha` without the admin-login scope,
    /// `Unauthenticated(InvalidLogin)` for any wrong email/password/disabled
    /// account, `Overloaded` when the hashing queue is full.
    pub async fn login(&self, caller: Option<&Principal>, input: LoginInput) -> Result<LoginOutcome> {
        let email = Email::parse(&input.email, "email")?;
        let password = Password::parse(&input.password, "password")?;
        check_client(&input.client)?;
        if let Some(lifetime) = input.requested_lifetime
            && lifetime <= chrono::Duration::zero()
        {
            return Err(Error::invalid("session_lifetime", "must be positive"));
        }
        if input.bypass_captcha {
            match caller {
                Some(caller) => caller.require(scope::ADMIN_LOGIN)?,
                None => {
                    return Err(Error::Forbidden {
                        message: "bypass_captcha needs a caller credential with the admin-login scope".into(),
                        missing_scope: Some(scope::ADMIN_LOGIN.into()),
                    });
                }
            }
        }

        let (user, hash) = match self.store.user_by_email(&email).await? {
            Some((user, hash)) => (Some(user), hash),
            None => (None, None),
        };
        let verification = self.hasher.verify(&password, hash.as_deref()).await?;
        let user = match user {
            Some(user) if verification.matched && !user.disabled => user,
            Some(user) => {
                self.store.record_failure(user.id).await?;
                return Err(AuthFailure::InvalidLogin.into());
            }
            None => return Err(AuthFailure::InvalidLogin.into()),
        };
        if let Some(upgraded) = verification.upgraded_hash {
            self.store.upgrade_password_hash(user.id, upgraded).await?;
        }
        let now = self.clock.now();
        if user.mfa.any() {
            // The password alone proves nothing yet: a pending login, which
            // no service accepts, until a second factor completes it.
            let lifetime = self.lifetime_for(&user, input.requested_lifetime);
            return Ok(LoginOutcome::Mfa(self.start_mfa(&user, input.client, lifetime, now).await?));
        }
        self.store.reset_failures(user.id).await?;
        let issued = self
            .start_session(user, input.client, input.requested_lifetime, vec![AuthMethod::Password], now)
            .await?;
        Ok(LoginOutcome::Session(issued))
    }

    /// The session lifetime for `user`: its own or the default, shortened to
    /// what the client asked for.
    fn lifetime_for(&self, user: &User, requested: Option<chrono::Duration>) -> chrono::Duration {
        let lifetime = user.session_lifetime.unwrap_or(self.settings.session_lifetime);
        requested.map_or(lifetime, |requested| lifetime.min(requested))
    }

    /// Creates an active session for `user` and returns its first token.
    pub(super) async fn start_session(
        &self,
        user: User,
        client: ClientInfo,
        requested_lifetime: Option<chrono::Duration>,
        auth_methods: Vec<AuthMethod>,
        now: DateTime<Utc>,
    ) -> Result<IssuedSession> {
        let lifetime = self.lifetime_for(&user, requested_lifetime);
        let absolute_expires_at = now + self.settings.session_absolute_lifetime;
        let expires_at = (now + lifetime).min(absolute_expires_at);
        let (token, hash) = self.tokens.generate(TokenKind::Session)?;
        let session = self
            .store
            .insert_session(NewSession {
                user_id: user.id,
                token_hash: hash,
                state: SessionState::Active,
                lifetime,
                now,
                expires_at,
                absolute_expires_at,
                client,
                auth_methods,
            })
            .await?;
        tracing::info!(user_id = user.id, session_id = session.id, "session started");
        Ok(IssuedSession { token, session_id: session.id, expires_at, user })
    }
}

/// Checks the lengths of the client fields.
fn check_client(client: &ClientInfo) -> Result<()> {
    if client.ip.len() > MAX_IP {
        return Err(Error::invalid("client.ip", format!("must be at most {MAX_IP} bytes")));
    }
    if !client.ip.is_empty() && client.ip.parse::<std::net::IpAddr>().is_err() {
        return Err(Error::invalid("client.ip", "is not an IP address"));
    }
    if client.user_agent.len() > MAX_USER_AGENT {
        return Err(Error::invalid("client.user_agent", format!("must be at most {MAX_USER_AGENT} bytes")));
    }
    if client.device_label.len() > MAX_DEVICE_LABEL {
        return Err(Error::invalid(
            "client.device_label",
            format!("must be at most {MAX_DEVICE_LABEL} bytes"),
        ));
    }
    Ok(())
}
