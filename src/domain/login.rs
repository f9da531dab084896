//! Password login (anonymous, and Rehive's admin-authenticated login) and
//! the start of a session.
//!
//! An unknown email, a wrong password, a locked and a disabled account get
//! the same answer after the same hashing work: unknown and locked accounts
//! are checked against a dummy hash. The order of a login:
//! 1. the input is checked (nothing else has happened yet);
//! 2. room in the hashing queue is asked for, before any database read or
//!    write: a refused login (`RESOURCE_EXHAUSTED`) costs nothing and
//!    counts nothing;
//! 3. rate limits, the user, the captcha;
//! 4. an attempt is reserved against the account before its password is
//!    checked, so parallel guesses cannot pass the lockout; a correct
//!    password gives its reservation back, so correct logins in flight
//!    never lock an account. The reservation writes the attempt's
//!    provisional audit row (a failure), in its own transaction;
//! 5. the password is checked and the attempt recorded: a failure with its
//!    row and counters; a success in the transaction that starts the
//!    session (or the pending login). Either replaces the provisional row.
//!
//! Steps 3–5 run in a task of their own that the call awaits: a client that
//! goes away cannot cut an attempt between the check of its password and
//! its record. A database error while recording is retried; the attempt's
//! record commits, or the call fails and the attempt stays what the
//! reservation wrote: a failure in the audit log, and a reservation that
//! counts as a failure once it is stale. No password is checked without an
//! audit row that says so.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::records::{AttemptId, NewSession, Session};
use super::{
    Action, AuthFailure, AuthMethod, ClientInfo, Ctx, Domain, Email, Error, IssuedSession, LoginOutcome,
    Outcome, Principal, Result, SessionState, User,
    input::{check_text, printable_prefix},
    limits::{Flow, Reservation},
    password::{HashPermit, Password},
    scope,
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

/// How many times the record of a checked attempt is tried.
const ACCOUNTING_TRIES: u32 = 5;
/// The first wait before trying again; each further wait doubles (0.1 + 0.2
/// + 0.4 + 0.8 s in all).
const ACCOUNTING_FIRST_RETRY: std::time::Duration = std::time::Duration::from_millis(100);

/// A login that passed its input checks and got room to hash.
struct LoginAttempt {
    email: Email,
    password: Password,
    input: LoginInput,
    flow: Flow,
    permit: HashPermit,
}

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
        self: &Arc<Self>,
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
        self: &Arc<Self>,
        ctx: &Ctx,
        caller: &Principal,
        input: LoginInput,
    ) -> Result<LoginOutcome> {
        caller.require(scope::ADMIN_LOGIN)?;
        self.password_login(&ctx.acting_as(caller), input, Flow::AdminLogin).await
    }

    async fn password_login(
        self: &Arc<Self>,
        ctx: &Ctx,
        input: LoginInput,
        flow: Flow,
    ) -> Result<LoginOutcome> {
        let email = Email::parse(&input.email, "email")?;
        let password = Password::parse(&input.password, "password")?;
        check_client(&input.client)?;
        if let Some(lifetime) = input.requested_lifetime
            && lifetime <= chrono::Duration::zero()
        {
            return Err(Error::invalid("session_lifetime", "must be positive"));
        }
        if let Some(captcha) = &input.captcha {
            check_text("captcha.response", &captcha.response, MAX_CAPTCHA_RESPONSE)?;
        }
        // Room to hash, before any database work: a refused login costs
        // nothing and counts nothing.
        let permit = self.hasher.admit()?;
        let domain = Arc::clone(self);
        let ctx = ctx.clone();
        let attempt = LoginAttempt { email, password, input, flow, permit };
        tokio::spawn(async move { domain.attempt_login(&ctx, attempt).await })
            .await
            .map_err(|e| Error::Internal(format!("login task failed: {e}")))?
    }

    /// Steps 3–5 of a login (see the module docs), in a task of its own.
    async fn attempt_login(&self, ctx: &Ctx, attempt: LoginAttempt) -> Result<LoginOutcome> {
        let LoginAttempt { email, password, input, flow, permit } = attempt;
        self.check_limits(ctx, flow, Some(email.as_str())).await?;

        let (user, hash) = match self.store.user_by_email(&email).await? {
            Some((user, hash)) => (Some(user), hash),
            None => (None, None),
        };
        if flow == Flow::Login && !input.bypass_captcha {
            self.check_captcha(ctx, &email, input.captcha.clone()).await?;
        }
        // Reserve the attempt before checking the password; a locked account
        // is checked against the dummy hash, for the same work and answer.
        let reservation = match &user {
            Some(user) => Some(self.reserve(ctx, user, Action::LoginFailed).await?),
            None => None,
        };
        let attempt = match reservation {
            Some(Reservation::Reserved(attempt)) => Some(attempt),
            _ => None,
        };
        let stored = if attempt.is_some() { hash.as_deref() } else { None };
        let verification = match permit.verify(&password, stored).await {
            Ok(verification) => verification,
            Err(err) => {
                if let (Some(user), Some(attempt)) = (&user, attempt) {
                    self.accounting("release", || self.release_attempt(user, attempt)).await?;
                }
                return Err(err);
            }
        };
        let now = self.clock.now();
        let (user, attempt) = match (user, attempt) {
            (Some(user), Some(attempt)) if verification.matched && !user.disabled => (user, attempt),
            (failed, attempt) => {
                let reason = match (&failed, reservation) {
                    (None, _) => "unknown email",
                    (Some(_), Some(Reservation::Busy)) => "too many attempts in flight",
                    (Some(_), _) if attempt.is_none() => "account locked",
                    (Some(user), _) if user.disabled => "account disabled",
                    (Some(_), _) => "wrong password",
                };
                match (failed, attempt) {
                    (Some(user), Some(attempt)) => {
                        self.accounting("failure", || {
                            self.record_failure(ctx, &user, attempt, Action::LoginFailed, reason)
                        })
                        .await?;
                    }
                    (Some(user), None) => {
                        let event = ctx
                            .event(now, Action::LoginFailed, Outcome::Failure, format!("user:{}", user.id))
                            .detail(reason);
                        self.accounting("audit", || self.store.audit(std::slice::from_ref(&event))).await?;
                    }
                    (None, _) => {
                        let subject = format!("email:{}", email.as_str());
                        let event =
                            ctx.event(now, Action::LoginFailed, Outcome::Failure, subject).detail(reason);
                        self.accounting("audit", || self.store.audit(std::slice::from_ref(&event))).await?;
                    }
                }
                self.note_failure(ctx, &email).await?;
                return Err(AuthFailure::InvalidLogin.into());
            }
        };
        let ctx = &Ctx {
            actor: if flow == Flow::AdminLogin { ctx.actor } else { super::Actor::User(user.id) },
            ..ctx.clone()
        };
        let lifetime = self.lifetime_for(&user, input.requested_lifetime);
        let client = session_client(ctx, input.client);
        // The success is recorded (reservation released, failures cleared,
        // provisional row replaced) in the transaction that starts the
        // session or the pending login: both commit, or neither.
        let outcome = if user.mfa.any() {
            // The password alone proves nothing yet: a pending login, which
            // no service accepts, until a second factor completes it.
            let challenge = self
                .accounting("success", || self.start_mfa(ctx, &user, client.clone(), lifetime, now, attempt))
                .await;
            self.attempts_settled.notify_waiters();
            LoginOutcome::Mfa(challenge?)
        } else {
            let mut methods = vec![AuthMethod::Password];
            if flow == Flow::AdminLogin {
                methods.push(AuthMethod::AdminLogin);
            }
            let issued = self
                .accounting("success", || {
                    self.start_session(
                        ctx,
                        user.clone(),
                        client.clone(),
                        Some(lifetime),
                        methods.clone(),
                        now,
                        Action::LoginSucceeded,
                        Some(attempt),
                    )
                })
                .await;
            self.attempts_settled.notify_waiters();
            LoginOutcome::Session(issued?)
        };
        // After the login is recorded, and not worth failing it for: a hash
        // not upgraded now is upgraded at the next login; failures not
        // forgotten only ask for a captcha sooner.
        if let Some(upgraded) = verification.upgraded_hash
            && let Err(err) = self.store.upgrade_password_hash(user.id, upgraded).await
        {
            tracing::warn!(error = %err, user_id = user.id.get(), "could not store the upgraded password hash");
        }
        if let CaptchaPolicy::AfterFailures(_) = self.captcha.policy
            && let Err(err) = self.store.clear_rate_limit(&format!("failures:acct:{}", email.as_str())).await
        {
            tracing::warn!(error = %err, user_id = user.id.get(), "could not clear the account's failure count");
        }
        Ok(outcome)
    }

    /// Runs the record of an attempt whose password was checked, retrying
    /// while the database is unavailable: the record commits, or the
    /// failure is logged (with what was lost) and returned.
    async fn accounting<'a, T, F, Fut>(&'a self, what: &'static str, mut record: F) -> Result<T>
    where
        F: FnMut() -> Fut + 'a,
        Fut: std::future::Future<Output = Result<T>> + 'a,
    {
        let mut delay = ACCOUNTING_FIRST_RETRY;
        let mut tries = 1;
        loop {
            match record().await {
                Ok(recorded) => return Ok(recorded),
                Err(err @ Error::Unavailable(_)) if tries < ACCOUNTING_TRIES => {
                    tracing::warn!(error = %err, what, tries, "recording a login attempt failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    tries += 1;
                }
                Err(err) => {
                    tracing::error!(error = %err, what, tries, "a login attempt could not be recorded");
                    return Err(err);
                }
            }
        }
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
    /// the audit row (`action`) is written with it, and the success of the
    /// attempt it `settles` recorded with it.
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
        settles: Option<AttemptId>,
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
                    settles,
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

/// Checks the client fields: no control characters, lengths, an IP that
/// parses.
fn check_client(client: &ClientInfo) -> Result<()> {
    check_text("client.ip", &client.ip, MAX_IP)?;
    if !client.ip.is_empty() && client.ip.parse::<std::net::IpAddr>().is_err() {
        return Err(Error::invalid("client.ip", "is not an IP address"));
    }
    check_text("client.user_agent", &client.user_agent, MAX_USER_AGENT)?;
    check_text("client.device_label", &client.device_label, MAX_DEVICE_LABEL)?;
    Ok(())
}

/// The client a session records: the IP the request context decided (the
/// peer's, or a trusted caller's claim — the one the audit rows and the
/// limits use, never an untrusted caller's claim), the user agent (the
/// claimed one, else the request's own), and the device label sent.
fn session_client(ctx: &Ctx, claimed: ClientInfo) -> ClientInfo {
    ClientInfo {
        ip: ctx.client_ip.map(|ip| ip.to_string()).unwrap_or_default(),
        user_agent: printable_prefix(&ctx.user_agent, MAX_USER_AGENT),
        device_label: claimed.device_label,
    }
}
