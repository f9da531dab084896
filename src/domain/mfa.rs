//! Second factors: TOTP (RFC 6238 with totp-rs), emailed one-time codes and
//! recovery codes; pending logins and their completion.
//!
//! The rules that matter, each enforced by a compare-and-set in the store:
//! a TOTP step is accepted once (and never one at or before the last
//! accepted); an emailed or recovery code is used once; a pending login gets
//! at most five code attempts, counted before the code is checked, and is
//! completed once. Time comes from the service's clock, never the client.

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use subtle::ConstantTimeEq as _;
use totp_rs::{Algorithm, Totp};
use zeroize::Zeroizing;

use super::{
    Action, Actor, AuthFailure, AuthMethod, ClientInfo, Ctx, Domain, Error, IssuedSession, MfaChallenge,
    MfaMethod, Outcome, Principal, Result, SessionId, SessionState, User, UserId, UserKind,
    limits::Flow,
    password::Password,
    records::{AttemptId, CodePurpose, NewSession, RevokeSessions, Session, SessionMatch},
    scope,
    token::TokenKind,
};

/// Recovery codes per set.
const RECOVERY_CODES: usize = 10;
/// Characters per recovery code (base32: 80 bits).
const RECOVERY_CHARS: usize = 16;
const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
/// Digits of an emailed code.
const EMAIL_DIGITS: usize = 8;
/// Most code attempts, per pending login and per emailed code.
const MAX_CODE_ATTEMPTS: i32 = 5;
/// Bytes of a TOTP secret (160 bits, the RFC 4226 recommendation).
const TOTP_SECRET_BYTES: usize = 20;

/// What `EnrollTotp` hands the user.
pub struct TotpEnrollment {
    /// Base32 secret for manual entry.
    pub secret: SecretString,
    /// The `otpauth://` URI.
    pub uri: SecretString,
    /// A PNG QR code of the URI.
    pub qr_png: Vec<u8>,
}

impl std::fmt::Debug for TotpEnrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpEnrollment(<redacted>)")
    }
}

/// Recovery codes as shown once, and the digests stored for them.
type RecoverySet = (Vec<SecretString>, Vec<[u8; 32]>);

/// A code as the client sent it, checked for shape.
enum Code {
    Totp(String),
    Email(String),
    Recovery(String),
}

impl Code {
    /// Checks a code's shape for `method`; nothing is written for a
    /// malformed code.
    fn parse(method: MfaMethod, code: &str) -> Result<Self> {
        let digits = |n: usize| code.len() == n && code.bytes().all(|b| b.is_ascii_digit());
        match method {
            MfaMethod::Totp if digits(6) => Ok(Code::Totp(code.to_owned())),
            MfaMethod::Totp => Err(Error::invalid("code", "a TOTP code is 6 digits")),
            MfaMethod::Email if digits(EMAIL_DIGITS) => Ok(Code::Email(code.to_owned())),
            MfaMethod::Email => Err(Error::invalid("code", "an emailed code is 8 digits")),
            MfaMethod::RecoveryCode => {
                let normalised: String = code
                    .chars()
                    .filter(|c| !matches!(c, '-' | ' '))
                    .map(|c| c.to_ascii_lowercase())
                    .collect();
                if normalised.len() == RECOVERY_CHARS && normalised.bytes().all(|b| BASE32.contains(&b)) {
                    Ok(Code::Recovery(normalised))
                } else {
                    Err(Error::invalid(
                        "code",
                        "a recovery code is 16 letters and digits, like abcd-efgh-ijkl-mnop",
                    ))
                }
            }
        }
    }
}

/// Builds the TOTP generator: SHA-1, 6 digits, 30 s steps, ±1 step of skew.
fn totp(secret: &[u8], account: &str, issuer: &str) -> Result<Totp> {
    totp_rs::Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(6)
        .with_skew(1)
        .with_step_duration(30)
        .with_secret(secret.to_vec())
        .with_account_name(account)
        .with_issuer(Some(issuer))
        .build()
        .map_err(|e| Error::Internal(format!("totp: {e}")))
}

fn unix_seconds(at: DateTime<Utc>) -> u64 {
    u64::try_from(at.timestamp()).unwrap_or_default()
}

impl Domain {
    // === Login ===

    /// Starts a pending login for a user with second factors.
    pub(super) async fn start_mfa(
        &self,
        ctx: &Ctx,
        user: &User,
        client: ClientInfo,
        lifetime: chrono::Duration,
        now: DateTime<Utc>,
        settles: AttemptId,
    ) -> Result<MfaChallenge> {
        let (token, hash) = self.tokens.generate(TokenKind::MfaPending)?;
        let expires_at = now + self.mfa.pending_lifetime;
        let session = self
            .store
            .insert_session(
                NewSession {
                    user_id: user.id,
                    token_hash: hash,
                    state: SessionState::PendingMfa,
                    lifetime,
                    now,
                    expires_at,
                    absolute_expires_at: expires_at,
                    client,
                    auth_methods: vec![AuthMethod::Password],
                    settles: Some(settles),
                },
                &|session: &Session| {
                    let detail = format!("pending session:{}", session.id);
                    vec![
                        ctx.event(
                            now,
                            Action::LoginPendingMfa,
                            Outcome::Success,
                            format!("user:{}", user.id),
                        )
                        .detail(detail),
                    ]
                },
            )
            .await?;
        let mut methods = user.mfa.methods();
        if self.store.unused_recovery_codes(user.id).await? == 0 {
            methods.retain(|m| *m != MfaMethod::RecoveryCode);
        }
        tracing::info!(
            user_id = user.id.get(),
            session_id = session.id.get(),
            "login pending a second factor"
        );
        Ok(MfaChallenge { token, methods, expires_at })
    }

    /// The pending login `mfa_token` names, if it can still be completed.
    async fn pending(&self, mfa_token: &str, now: DateTime<Utc>) -> Result<SessionMatch> {
        if mfa_token.is_empty() {
            return Err(Error::invalid("mfa_token", "must not be empty"));
        }
        let parsed = self.tokens.parse(mfa_token).map_err(|_| AuthFailure::InvalidToken)?;
        if parsed.kind != TokenKind::MfaPending {
            return Err(AuthFailure::InvalidToken.into());
        }
        let found = self.store.session_by_hash(&parsed.hash).await?.ok_or(AuthFailure::InvalidToken)?;
        if found.session.state != SessionState::PendingMfa || found.user.disabled || found.matched_previous {
            return Err(AuthFailure::InvalidToken.into());
        }
        if now >= found.session.expires_at {
            return Err(AuthFailure::Expired.into());
        }
        Ok(found)
    }

    /// Emails a code for a pending login.
    ///
    /// # Errors
    /// `Unauthenticated` for a bad pending token; `FailedPrecondition` when
    /// the user has no email method or the server sends no email;
    /// `Unavailable` when the mail server refuses.
    pub async fn send_mfa_code(&self, ctx: &Ctx, mfa_token: &str) -> Result<DateTime<Utc>> {
        let now = self.clock.now();
        let found = self.pending(mfa_token, now).await?;
        if !found.user.mfa.email {
            return Err(Error::FailedPrecondition("the email method is not enrolled for this user".into()));
        }
        self.check_limits(ctx, Flow::SendMfaCode, Some(found.user.email.as_str())).await?;
        self.email_code(&found.user, Some(found.session.id), CodePurpose::Login, now).await
    }

    /// Completes a pending login with a second factor.
    ///
    /// # Errors
    /// `InvalidArgument` for a malformed code or an unenrolled method
    /// (nothing counted); `Unauthenticated` for a wrong code, or a pending
    /// token that is unknown, used, expired or out of attempts.
    pub async fn verify_mfa(
        &self,
        ctx: &Ctx,
        mfa_token: &str,
        method: MfaMethod,
        code: &str,
    ) -> Result<IssuedSession> {
        let code = Code::parse(method, code)?;
        let now = self.clock.now();
        let found = self.pending(mfa_token, now).await?;
        let (session, user) = (found.session, found.user);
        if !user.mfa.methods().contains(&method) {
            return Err(Error::invalid("method", "this method is not enrolled for the user"));
        }
        self.check_limits(ctx, Flow::VerifyMfa, Some(user.email.as_str())).await?;
        let ctx = &Ctx { actor: Actor::User(user.id), ..ctx.clone() };
        // Count the attempt (on the pending login and on the account) before
        // checking the code, so parallel guesses cannot exceed the limits.
        if !self.store.reserve_mfa_attempt(session.id, MAX_CODE_ATTEMPTS).await? {
            return Err(AuthFailure::InvalidToken.into());
        }
        let Some(attempt) = self.reserve_attempt(ctx, &user, Action::MfaFailed).await? else {
            return Err(AuthFailure::InvalidCode.into());
        };
        let accepted = self.check_code(&user, Some(session.id), code, now).await?;
        if !accepted {
            self.record_failure(ctx, &user, attempt, Action::MfaFailed, method_label(method)).await?;
            tracing::info!(
                user_id = user.id.get(),
                session_id = session.id.get(),
                "wrong second-factor code"
            );
            return Err(AuthFailure::InvalidCode.into());
        }
        if !self.store.complete_pending(session.id, now).await? {
            self.release_attempt(&user, attempt).await?;
            return Err(AuthFailure::InvalidToken.into());
        }
        self.validator.forget_session(session.id).await;
        let methods = vec![AuthMethod::Password, method.auth_method()];
        // The success is recorded in the session's transaction.
        let issued = self
            .start_session(
                ctx,
                user,
                session.client,
                Some(session.lifetime),
                methods,
                now,
                Action::MfaSucceeded,
                Some(attempt),
            )
            .await;
        self.attempts_settled.notify_waiters();
        issued
    }

    /// Checks a code for `user`, using it up when right.
    async fn check_code(
        &self,
        user: &User,
        session_id: Option<SessionId>,
        code: Code,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        match code {
            Code::Totp(code) => {
                let Some(row) = self.store.totp(user.id).await?.filter(|row| row.confirmed) else {
                    return Ok(false);
                };
                let secret = self.mfa.sealer.open(&totp_context(user.id), &row.sealed)?;
                let generator = totp(&secret, user.email.as_str(), &self.mfa.issuer)?;
                match generator.check(&code, unix_seconds(now)) {
                    Some(step) => self.store.accept_totp_step(user.id, step as i64).await,
                    None => Ok(false),
                }
            }
            Code::Email(code) => {
                let purpose = if session_id.is_some() { CodePurpose::Login } else { CodePurpose::Account };
                let Some(row) = self
                    .store
                    .reserve_code_attempt(user.id, session_id, purpose, now, MAX_CODE_ATTEMPTS)
                    .await?
                else {
                    return Ok(false);
                };
                let digest = self.mfa.sealer.digest(purpose_label(purpose), &code);
                if bool::from(digest.as_slice().ct_eq(&row.digest)) {
                    self.store.consume_code(row.id, now).await
                } else {
                    Ok(false)
                }
            }
            Code::Recovery(code) => {
                let digest = self.mfa.sealer.digest("recovery", &code);
                self.store.use_recovery_code(user.id, &digest, now).await
            }
        }
    }

    /// Makes, stores and emails a one-time code.
    async fn email_code(
        &self,
        user: &User,
        session_id: Option<SessionId>,
        purpose: CodePurpose,
        now: DateTime<Utc>,
    ) -> Result<DateTime<Utc>> {
        if !self.mfa.mailer.is_enabled() {
            return Err(Error::FailedPrecondition(
                "this server sends no email (mail_transport = off)".into(),
            ));
        }
        let code = self.random_digits(EMAIL_DIGITS)?;
        let expires_at = now + self.mfa.email_code_lifetime;
        let digest = self.mfa.sealer.digest(purpose_label(purpose), &code);
        self.store.insert_code(user.id, session_id, purpose, digest, now, expires_at).await?;
        self.mfa
            .mailer
            .send_code(user.email.as_str(), &code, self.mfa.email_code_lifetime.num_minutes())
            .await
            .map_err(|e| Error::Unavailable(Box::new(e)))?;
        tracing::info!(user_id = user.id.get(), "one-time code emailed");
        Ok(expires_at)
    }

    // === Enrolment (the user's own session) ===

    /// The caller's user, when the caller is a person's session.
    async fn own_user(&self, caller: &Principal) -> Result<(User, SessionId)> {
        let Some(session_id) = caller.session_id() else {
            return Err(Error::Forbidden {
                message: "second factors are managed with the user's own session".into(),
                missing_scope: None,
            });
        };
        let user = self.store.user(caller.user_id).await?.ok_or(AuthFailure::InvalidToken)?;
        if user.kind == UserKind::Service {
            return Err(Error::FailedPrecondition("a service account has no second factors".into()));
        }
        Ok((user, session_id))
    }

    /// Starts TOTP enrolment: a new secret, its URI and QR code.
    ///
    /// # Errors
    /// `FailedPrecondition` when TOTP is already on.
    pub async fn enroll_totp(&self, caller: &Principal) -> Result<TotpEnrollment> {
        let (user, _) = self.own_user(caller).await?;
        let mut secret = Zeroizing::new([0u8; TOTP_SECRET_BYTES]);
        self.mfa.sealer.random(secret.as_mut())?;
        let sealed = self.mfa.sealer.seal(&totp_context(user.id), secret.as_ref())?;
        if !self.store.begin_totp(user.id, sealed, self.clock.now()).await? {
            return Err(Error::FailedPrecondition(
                "TOTP is already on; disable MFA first to enrol again".into(),
            ));
        }
        let generator = totp(secret.as_ref(), user.email.as_str(), &self.mfa.issuer)?;
        let uri = generator.to_url().map_err(|e| Error::Internal(format!("totp url: {e}")))?;
        let qr_png = generator.to_qr_png().map_err(|e| Error::Internal(format!("totp qr: {e}")))?;
        Ok(TotpEnrollment {
            secret: SecretString::from(generator.secret().to_base32()),
            uri: SecretString::from(uri),
            qr_png,
        })
    }

    /// Turns TOTP on with a first code. Returns recovery codes when this is
    /// the user's first second factor.
    ///
    /// # Errors
    /// `FailedPrecondition` without an enrolment; `Unauthenticated` for a
    /// wrong code.
    pub async fn confirm_totp(&self, ctx: &Ctx, caller: &Principal, code: &str) -> Result<Vec<SecretString>> {
        let Code::Totp(code) = Code::parse(MfaMethod::Totp, code)? else {
            return Err(Error::invalid("code", "a TOTP code is 6 digits"));
        };
        let (user, session_id) = self.own_user(caller).await?;
        let Some(row) = self.store.totp(user.id).await?.filter(|row| !row.confirmed) else {
            return Err(Error::FailedPrecondition("nothing to confirm: call EnrollTotp first".into()));
        };
        let now = self.clock.now();
        let ctx = ctx.acting_as(caller);
        let Some(attempt) = self.reserve_attempt(&ctx, &user, Action::MfaFailed).await? else {
            return Err(AuthFailure::InvalidCode.into());
        };
        let secret = self.mfa.sealer.open(&totp_context(user.id), &row.sealed)?;
        let Some(step) =
            totp(&secret, user.email.as_str(), &self.mfa.issuer)?.check(&code, unix_seconds(now))
        else {
            self.record_failure(&ctx, &user, attempt, Action::MfaFailed, "totp confirmation").await?;
            return Err(AuthFailure::InvalidCode.into());
        };
        self.record_success(&user, attempt).await?;
        let event =
            ctx.event(now, Action::MfaEnabled, Outcome::Success, format!("user:{}", user.id)).detail("totp");
        let (shown, digests) = self.recovery_set_if_first(&user)?.unzip();
        if !self
            .store
            .confirm_totp(
                user.id,
                step as i64,
                digests.as_deref(),
                mfa_changed(Some(session_id)),
                now,
                &[event],
            )
            .await?
        {
            return Err(Error::FailedPrecondition("nothing to confirm: call EnrollTotp first".into()));
        }
        self.validator.forget_user(user.id).await;
        tracing::info!(user_id = user.id.get(), "TOTP turned on");
        Ok(shown.unwrap_or_default())
    }

    /// Emails the caller a code proving its address.
    ///
    /// # Errors
    /// `FailedPrecondition` when the server sends no email.
    pub async fn send_email_code(&self, caller: &Principal) -> Result<DateTime<Utc>> {
        let (user, _) = self.own_user(caller).await?;
        self.email_code(&user, None, CodePurpose::Account, self.clock.now()).await
    }

    /// Turns the email method on with a code from [`Domain::send_email_code`].
    ///
    /// # Errors
    /// `Unauthenticated` for a wrong code; `FailedPrecondition` when already on.
    pub async fn confirm_email_mfa(
        &self,
        ctx: &Ctx,
        caller: &Principal,
        code: &str,
    ) -> Result<Vec<SecretString>> {
        let code = Code::parse(MfaMethod::Email, code)?;
        let (user, session_id) = self.own_user(caller).await?;
        if user.mfa.email {
            return Err(Error::FailedPrecondition("the email method is already on".into()));
        }
        let now = self.clock.now();
        let ctx = ctx.acting_as(caller);
        let Some(attempt) = self.reserve_attempt(&ctx, &user, Action::MfaFailed).await? else {
            return Err(AuthFailure::InvalidCode.into());
        };
        if !self.check_code(&user, None, code, now).await? {
            self.record_failure(&ctx, &user, attempt, Action::MfaFailed, "email confirmation").await?;
            return Err(AuthFailure::InvalidCode.into());
        }
        self.record_success(&user, attempt).await?;
        let (shown, digests) = self.recovery_set_if_first(&user)?.unzip();
        let event =
            ctx.event(now, Action::MfaEnabled, Outcome::Success, format!("user:{}", user.id)).detail("email");
        self.store
            .enable_email_mfa(user.id, digests.as_deref(), mfa_changed(Some(session_id)), now, &[event])
            .await?;
        self.validator.forget_user(user.id).await;
        tracing::info!(user_id = user.id.get(), "email MFA turned on");
        Ok(shown.unwrap_or_default())
    }

    /// Turns every second factor off, with the password and a valid code.
    ///
    /// # Errors
    /// `FailedPrecondition` without MFA; `Unauthenticated` for a wrong
    /// password or code.
    pub async fn disable_mfa(
        &self,
        ctx: &Ctx,
        caller: &Principal,
        password: &str,
        method: MfaMethod,
        code: &str,
    ) -> Result<()> {
        let code = Code::parse(method, code)?;
        let password = Password::parse(password, "password")?;
        let (user, session_id) = self.own_user(caller).await?;
        if !user.mfa.any() {
            return Err(Error::FailedPrecondition("MFA is not on".into()));
        }
        if !user.mfa.methods().contains(&method) {
            return Err(Error::invalid("method", "this method is not enrolled for the user"));
        }
        let ctx = ctx.acting_as(caller);
        let Some(attempt) = self.reserve_attempt(&ctx, &user, Action::MfaDisabled).await? else {
            return Err(AuthFailure::WrongPassword.into());
        };
        let stored = self.store.password_hash(user.id).await?;
        if !self.hasher.verify(&password, stored.as_deref()).await?.matched {
            self.record_failure(&ctx, &user, attempt, Action::MfaDisabled, "wrong password").await?;
            return Err(AuthFailure::WrongPassword.into());
        }
        let now = self.clock.now();
        if !self.check_code(&user, None, code, now).await? {
            self.record_failure(&ctx, &user, attempt, Action::MfaDisabled, "wrong code").await?;
            return Err(AuthFailure::InvalidCode.into());
        }
        self.record_success(&user, attempt).await?;
        let event = ctx.event(now, Action::MfaDisabled, Outcome::Success, format!("user:{}", user.id));
        self.store.disable_mfa(user.id, mfa_changed(Some(session_id)), now, &[event]).await?;
        self.validator.forget_user(user.id).await;
        tracing::info!(user_id = user.id.get(), "MFA turned off");
        Ok(())
    }

    /// Replaces the caller's recovery codes.
    ///
    /// # Errors
    /// `FailedPrecondition` without MFA.
    pub async fn regenerate_recovery_codes(
        &self,
        ctx: &Ctx,
        caller: &Principal,
    ) -> Result<Vec<SecretString>> {
        let (user, _) = self.own_user(caller).await?;
        if !user.mfa.any() {
            return Err(Error::FailedPrecondition(
                "MFA is not on; recovery codes come with a second factor".into(),
            ));
        }
        let (shown, digests) = self.recovery_set()?;
        let event = ctx.acting_as(caller).event(
            self.clock.now(),
            Action::RecoveryCodesRegenerated,
            Outcome::Success,
            format!("user:{}", user.id),
        );
        self.store.replace_recovery_codes(user.id, &digests, &[event]).await?;
        tracing::info!(user_id = user.id.get(), "recovery codes regenerated");
        Ok(shown)
    }

    /// Turns a user's second factors off (an administrator's reset).
    ///
    /// # Errors
    /// `Forbidden` without the users-write scope; `NotFound`.
    pub async fn reset_mfa(&self, ctx: &Ctx, caller: &Principal, user_id: UserId) -> Result<u64> {
        caller.require(scope::USERS_WRITE)?;
        self.reset_mfa_unchecked(&ctx.acting_as(caller), user_id).await
    }

    /// Turns every second factor of a user off with no caller: the CLI's
    /// `user reset-mfa`.
    ///
    /// # Errors
    /// As [`Domain::reset_mfa`], without the scope check.
    pub async fn reset_mfa_unchecked(&self, ctx: &Ctx, user_id: UserId) -> Result<u64> {
        if user_id.get() <= 0 {
            return Err(Error::invalid("user_id", "must be a positive user id"));
        }
        self.store.user(user_id).await?.ok_or(Error::NotFound("user"))?;
        let now = self.clock.now();
        let event = ctx
            .event(now, Action::MfaDisabled, Outcome::Success, format!("user:{user_id}"))
            .detail("reset by an administrator");
        let revoked = self.store.disable_mfa(user_id, mfa_changed(None), now, &[event]).await?;
        self.validator.forget_user(user_id).await;
        tracing::info!(user_id = user_id.get(), revoked, "MFA reset by an administrator");
        Ok(revoked)
    }

    // === Codes ===

    /// A recovery set when `user` has no second factor yet (its first one
    /// comes with recovery codes); `None` otherwise.
    fn recovery_set_if_first(&self, user: &User) -> Result<Option<RecoverySet>> {
        if user.mfa.any() { Ok(None) } else { self.recovery_set().map(Some) }
    }

    /// A fresh set of recovery codes (shown form) and their digests.
    fn recovery_set(&self) -> Result<RecoverySet> {
        let mut shown = Vec::with_capacity(RECOVERY_CODES);
        let mut digests = Vec::with_capacity(RECOVERY_CODES);
        for _ in 0..RECOVERY_CODES {
            let mut random = Zeroizing::new([0u8; RECOVERY_CHARS]);
            self.mfa.sealer.random(random.as_mut())?;
            let code: Zeroizing<String> =
                Zeroizing::new(random.iter().map(|b| char::from(BASE32[usize::from(b & 31)])).collect());
            digests.push(self.mfa.sealer.digest("recovery", &code));
            let grouped = code
                .as_bytes()
                .chunks(4)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect::<Vec<_>>();
            shown.push(SecretString::from(grouped.join("-")));
        }
        Ok((shown, digests))
    }

    /// `n` uniformly random decimal digits.
    fn random_digits(&self, n: usize) -> Result<String> {
        let mut out = String::with_capacity(n);
        let mut random = [0u8; 32];
        while out.len() < n {
            self.mfa.sealer.random(&mut random)?;
            // 250 = 25 * 10: rejection keeps every digit equally likely.
            for &byte in random.iter().filter(|b| **b < 250) {
                if out.len() == n {
                    break;
                }
                out.push(char::from(b'0' + byte % 10));
            }
        }
        Ok(out)
    }
}

fn method_label(method: MfaMethod) -> &'static str {
    match method {
        MfaMethod::Totp => "totp",
        MfaMethod::Email => "email",
        MfaMethod::RecoveryCode => "recovery_code",
    }
}

/// A change of second factors ends every other session of the user (the
/// caller's own, `keep`, stays).
fn mfa_changed(keep: Option<SessionId>) -> RevokeSessions {
    RevokeSessions { keep, reason: "mfa_changed" }
}

fn totp_context(user_id: UserId) -> String {
    format!("totp:{user_id}")
}

fn purpose_label(purpose: CodePurpose) -> &'static str {
    match purpose {
        CodePurpose::Login => "email-login",
        CodePurpose::Account => "email-account",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rfc_totp(algorithm: Algorithm, secret: &[u8], digits: u8, step: u64) -> Totp {
        totp_rs::Builder::new()
            .with_algorithm(algorithm)
            .with_digits(digits)
            .with_skew(0)
            .with_step_duration(step)
            .with_secret(secret.to_vec())
            .build()
            .unwrap()
    }

    /// RFC 6238 Appendix B: the test vectors for SHA-1, SHA-256 and SHA-512.
    #[test]
    fn rfc6238_appendix_b_vectors() {
        let sha1 = b"12345678901234567890";
        let sha256 = b"12345678901234567890123456789012";
        let sha512 = b"1234567890123456789012345678901234567890123456789012345678901234";
        let vectors: [(u64, &str, &str, &str); 6] = [
            (59, "94287082", "46119246", "90693936"),
            (1_111_111_109, "07081804", "68084774", "25091201"),
            (1_111_111_111, "14050471", "67062674", "99943326"),
            (1_234_567_890, "89005924", "91819424", "93441116"),
            (2_000_000_000, "69279037", "90698825", "38618901"),
            (20_000_000_000, "65353130", "77737706", "47863826"),
        ];
        for (time, one, two_five_six, five_twelve) in vectors {
            assert_eq!(rfc_totp(Algorithm::SHA1, sha1, 8, 30).generate(time).to_string(), one, "{time}");
            assert_eq!(rfc_totp(Algorithm::SHA256, sha256, 8, 30).generate(time).to_string(), two_five_six);
            assert_eq!(rfc_totp(Algorithm::SHA512, sha512, 8, 30).generate(time).to_string(), five_twelve);
        }
    }

    /// RFC 4226 Appendix D: HOTP values for counters 0 to 9 (a TOTP with a
    /// one-second step at time = counter is HOTP at that counter).
    #[test]
    fn rfc4226_appendix_d_vectors() {
        let expected = [
            "755224", "287082", "359152", "969429", "338314", "254676", "287922", "162583", "399871",
            "520489",
        ];
        let hotp = rfc_totp(Algorithm::SHA1, b"12345678901234567890", 6, 1);
        for (counter, code) in expected.iter().enumerate() {
            assert_eq!(hotp.generate(counter as u64).to_string(), *code, "counter {counter}");
        }
    }

    #[test]
    fn our_totp_accepts_one_step_of_skew_and_no_more() {
        let generator = totp(b"12345678901234567890", "a@b.c", "portcullis").unwrap();
        let now = 1_800_000_000;
        let code = generator.generate(now).to_string();
        assert_eq!(generator.check(&code, now), Some(now / 30));
        assert!(generator.check(&code, now + 30).is_some());
        assert!(generator.check(&code, now - 30).is_some());
        assert!(generator.check(&code, now + 60).is_none());
        assert!(generator.check(&code, now - 60).is_none());
    }

    #[test]
    fn code_shapes() {
        assert!(Code::parse(MfaMethod::Totp, "123456").is_ok());
        for bad in ["12345", "1234567", "12345a", "", "１２３４５６"] {
            assert!(Code::parse(MfaMethod::Totp, bad).is_err(), "{bad:?}");
        }
        assert!(Code::parse(MfaMethod::Email, "12345678").is_ok());
        assert!(Code::parse(MfaMethod::Email, "123456").is_err());
        let Ok(Code::Recovery(code)) = Code::parse(MfaMethod::RecoveryCode, "ABCD-efgh-2345-7zzz") else {
            panic!("recovery code refused");
        };
        assert_eq!(code, "abcdefgh23457zzz");
        for bad in ["abcd-efgh", "abcd-efgh-ijkl-mno1", "abcd-efgh-ijkl-mnop-q"] {
            assert!(Code::parse(MfaMethod::RecoveryCode, bad).is_err(), "{bad:?}");
        }
    }
}
