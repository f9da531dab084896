//! Password login (anonymous, and Rehive's admin-authenticated login) and
//! the start of a session.
//!
//! An unknown email, a wrong password, a locked and a disabled account get
//! the same answer after the same hashing work: unknown and locked accounts
//! are checked against a dummy hash. Rate limits and the captcha come before
//! the password; an attempt is counted against the account before its
//! password is checked, so parallel guesses cannot pass the lockout.

use chrono::{DateTime, Utc};

use super::records::{NewSession, Session};
use super::{
    Action, AuthFailure, AuthMethod, ClientInfo, Ctx, Domain, Email, Error, IssuedSession, LoginOutcome,
    Outcome, Principal, Result, SessionState, User, limits::Flow, password::Password, scope,
    token::TokenKind,
};
use crate::captcha;

/// Longest client IP text accepted.
const MAX_IP: usize = 64;
/// Longest user agent accepted.
const MAX_USER_AGENT: usize = 512;
/// Longest device label accepted.
const MAX_DEVICE_LABEL: usize = 128;
/// Longest captcha response accepted (vendors' tokens are about 2 KiB).
const MAX_CAPTCHA_RESPONSE: usize = 4096;

/// A captcha solution as the client sent it.
#[derive(Clone)]
pub struct CaptchaInput {
    /// The vendor's response token.
    pub response: String,
    /// The vendor.
    pub vendor: captcha::Vendor,
}

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
    /// A captcha solution.
    pub captcha: Option<CaptchaInput>,
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

/// When a login must carry a captcha.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaptchaPolicy {
    /// Never.
    Off,
    /// Always (except admin logins and permitted bypasses).
    Always,
    /// After this many recent failures of the account or the client IP.
    AfterFailures(u32),
}

/// The captcha rules.
#[derive(Debug)]
pub struct CaptchaSettings {
    /// When one is needed.
    pub policy: CaptchaPolicy,
    /// The vendors' verification.
    pub verifier: captcha::Verifier,
}

/// How long failures of an account or an IP count toward the captcha policy.
const IP_FAILURE_WINDOW: chrono::Duration = chrono::Duration::hours(1);

impl Domain {
    /// Logs a user in with email and password.
    ///
    /// # Errors
    /// `InvalidArgument` for malformed input (nothing hashed),
    /// `Forbidden` for `bypass_captcha` without the admin-login scope,
    /// `RateLimited`, `Unauthenticated(CaptchaRequired/CaptchaInvalid)`,
    /// `Unauthenticated(InvalidLogin)` for any wrong email, wrong password,
    /// locked or disabled account, `Overloaded` when hashing is saturated.
    pub async fn login(
        &self,
        ctx: &Ctx,
        caller: Option<&Principal>,
        input: LoginInput,
    ) -> Result<LoginOutcome> {
        if input.bypass_captcha {
            let Some(caller) = caller else {
                return Err(Error::Forbidden {
                    message: "bypass_captcha needs a caller credential with the admin-login scope".into(),
                    missing_scope: Some(scope::ADMIN_LOGIN.into()),
                });
            };
            caller.require(scope::ADMIN_LOGIN)?;
        }
        self.password_login(ctx, input, Flow::Login).await
    }

    /// Rehive's admin-authenticated login: a back-end service, holding the
    /// admin-login scope, logs a user in. Exempt from the captcha and the
    /// per-IP limits; per-account limits, lockout and MFA still apply.
    ///
    /// # Errors
    /// `Forbidden` without the admin-login scope; otherwise as [`Domain::login`].
    pub async fn admin_login(
        &self,
        ctx: &Ctx,
        caller: &Principal,
        input: LoginInput,
    ) -> Result<LoginOutcome> {
        caller.require(scope::ADMIN_LOGIN)?;
        self.password_login(&ctx.acting_as(caller), input, Flow::AdminLogin).await
    }

    async fn password_login(&self, ctx: &Ctx, input: LoginInput, flow: Flow) -> Result<LoginOutcome> {
        let email = Email::parse(&input.email, "email")?;
        let password = Password::parse(&input.password, "password")?;
        check_client(&input.client)?;
        if let Some(lifetime) = input.requested_lifetime
            && lifetime <= chrono::Duration::zero()
        {
            return Err(Error::invalid("session_lifetime", "must be positive"));
        }
        if let Some(captcha) = &input.captcha
            && captcha.response.len() > MAX_CAPTCHA_RESPONSE
        {
            return Err(Error::invalid("captcha.response", "is too long"));
        }
        self.check_limits(ctx, flow, Some(email.as_str())).await?;

        let (user, hash) = match self.store.user_by_email(&email).await? {
            Some((user, hash)) => (Some(user), hash),
            None => (None, None),
        };
        if flow == Flow::Login && !input.bypass_captcha {
            self.check_captcha(ctx, &email, input.captcha.clone()).await?;
        }
        // Count the attempt before checking the password; a locked account
        // is checked against the dummy hash, for the same work and answer.
        let reserved = match &user {
            Some(user) => self.reserve_attempt(user).await?,
            None => false,
        };
        let stored = if reserved { hash.as_deref() } else { None };
        let verification = self.hasher.verify(&password, stored).await?;
        let now = self.clock.now();
        let user = match user {
            Some(user) if reserved && verification.matched && !user.disabled => user,
            failed => {
                let reason = match &failed {
                    None => "unknown email",
                    Some(_) if !reserved => "account locked",
                    Some(user) if user.disabled => "account disabled",
                    Some(_) => "wrong password",
                };
                self.note_failure(ctx, &email).await?;
                match failed {
                    Some(user) if reserved => {
                        self.record_failure(ctx, &user, Action::LoginFailed, reason).await?;
                    }
                    Some(user) => {
                        let event = ctx.event(
                            now,
                            Action::LoginFailed,
                            Outcome::Failure,
                            format!("user:{}", user.id),
                        );
                        self.store.audit(&[event.detail(reason)]).await?;
                    }
                    None => {
                        let subject = format!("email:{}", email.as_str());
                        self.store
                            .audit(&[ctx
                                .event(now, Action::LoginFailed, Outcome::Failure, subject)
                                .detail(reason)])
                            .await?;
                    }
                }
                return Err(AuthFailure::InvalidLogin.into());
            }
        };
        if let Some(upgraded) = verification.upgraded_hash {
            self.store.upgrade_password_hash(user.id, upgraded).await?;
        }
        self.store.reset_failures(user.id).await?;
        if let CaptchaPolicy::AfterFailures(_) = self.captcha.policy {
            self.store.clear_rate_limit(&format!("failures:acct:{}", email.as_str())).await?;
        }
        let ctx = &Ctx {
            actor: if flow == Flow::AdminLogin { ctx.actor } else { super::Actor::User(user.id) },
            ..ctx.clone()
        };
        let lifetime = self.lifetime_for(&user, input.requested_lifetime);
        if user.mfa.any() {
            // The password alone proves nothing yet: a pending login, which
            // no service accepts, until a second factor completes it.
            return Ok(LoginOutcome::Mfa(self.start_mfa(ctx, &user, input.client, lifetime, now).await?));
        }
        let mut methods = vec![AuthMethod::Password];
        if flow == Flow::AdminLogin {
            methods.push(AuthMethod::AdminLogin);
        }
        let issued = self
            .start_session(ctx, user, input.client, Some(lifetime), methods, now, Action::LoginSucceeded)
            .await?;
        Ok(LoginOutcome::Session(issued))
    }

    /// Requires and verifies a captcha when the policy says so.
    async fn check_captcha(&self, ctx: &Ctx, email: &Email, captcha: Option<CaptchaInput>) -> Result<()> {
        // Failures are counted by normalised email, for known and unknown
        // emails alike, so the policy never tells one from the other.
        let required = match self.captcha.policy {
            CaptchaPolicy::Off => false,
            CaptchaPolicy::Always => true,
            CaptchaPolicy::AfterFailures(n) => {
                let (account, ip) = self.recent_failures(ctx, email).await?;
                account >= i64::from(n) || ip >= i64::from(n)
            }
        };
        if !required {
            return Ok(());
        }
        let Some(captcha) = captcha else {
            return Err(AuthFailure::CaptchaRequired.into());
        };
        match self.captcha.verifier.verify(captcha.vendor, &captcha.response, ctx.client_ip).await {
            Ok(()) => Ok(()),
            Err(captcha::CaptchaError::VendorNotEnabled(_)) => {
                Err(Error::invalid("captcha.vendor", "this vendor is not configured on the server"))
            }
            Err(captcha::CaptchaError::Malformed(why)) => Err(Error::invalid("captcha.response", why)),
            Err(err @ captcha::CaptchaError::Unavailable(_)) => {
                // Not the client's failure: nothing is counted or written.
                tracing::warn!(error = %err, "captcha vendor unavailable; failing closed");
                Err(AuthFailure::CaptchaUnavailable.into())
            }
            Err(err) => {
                let event = ctx
                    .event(
                        self.clock.now(),
                        Action::CaptchaFailed,
                        Outcome::Failure,
                        format!("email:{}", email.as_str()),
                    )
                    .detail(err.to_string());
                self.store.audit(&[event]).await?;
                self.note_failure(ctx, email).await?;
                Err(AuthFailure::CaptchaInvalid.into())
            }
        }
    }

    /// Counts a failed login of `email` and of the client's IP, for the
    /// captcha policy.
    async fn note_failure(&self, ctx: &Ctx, email: &Email) -> Result<()> {
        if let CaptchaPolicy::AfterFailures(_) = self.captcha.policy {
            let window = self.failure_window();
            self.store.hit_rate_limit(&format!("failures:acct:{}", email.as_str()), window).await?;
            if let Some(ip) = ctx.client_ip {
                self.store.hit_rate_limit(&format!("failures:ip:{ip}"), window).await?;
            }
        }
        Ok(())
    }

    /// Recent failures of `email` and of the client's IP.
    async fn recent_failures(&self, ctx: &Ctx, email: &Email) -> Result<(i64, i64)> {
        let window = self.failure_window();
        let account =
            self.store.rate_limit_hits(&format!("failures:acct:{}", email.as_str()), window).await?;
        let ip = match ctx.client_ip {
            Some(ip) => self.store.rate_limit_hits(&format!("failures:ip:{ip}"), window).await?,
            None => 0,
        };
        Ok((account, ip))
    }

    /// The current window of the captcha policy's failure counts.
    fn failure_window(&self) -> i64 {
        let length = IP_FAILURE_WINDOW.num_seconds();
        self.clock.now().timestamp().div_euclid(length) * length
    }

    /// The session lifetime for `user`: its own or the default, shortened to
    /// what the client asked for.
    pub(super) fn lifetime_for(&self, user: &User, requested: Option<chrono::Duration>) -> chrono::Duration {
        let lifetime = user.session_lifetime.unwrap_or(self.settings.session_lifetime);
        requested.map_or(lifetime, |requested| lifetime.min(requested))
    }

    /// Creates an active session for `user` and returns its first token;
    /// the audit row (`action`) is written with it.
    #[allow(clippy::too_many_arguments, reason = "one private constructor of sessions")]
    pub(super) async fn start_session(
        &self,
        ctx: &Ctx,
        user: User,
        client: ClientInfo,
        requested_lifetime: Option<chrono::Duration>,
        auth_methods: Vec<AuthMethod>,
        now: DateTime<Utc>,
        action: Action,
    ) -> Result<IssuedSession> {
        let lifetime = self.lifetime_for(&user, requested_lifetime);
        let absolute_expires_at = now + self.settings.session_absolute_lifetime;
        let expires_at = (now + lifetime).min(absolute_expires_at);
        let (token, hash) = self.tokens.generate(TokenKind::Session)?;
        let methods = AuthMethod::join(&auth_methods);
        let session = self
            .store
            .insert_session(
                NewSession {
                    user_id: user.id,
                    token_hash: hash,
                    state: SessionState::Active,
                    lifetime,
                    now,
                    expires_at,
                    absolute_expires_at,
                    client,
                    auth_methods,
                },
                &|session: &Session| {
                    let detail = format!("session:{} methods={methods}", session.id);
                    vec![ctx.event(now, action, Outcome::Success, format!("user:{}", user.id)).detail(detail)]
                },
            )
            .await?;
        tracing::info!(user_id = user.id.get(), session_id = session.id.get(), "session started");
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
