//! Sessions after login: validation, refresh with rotation and reuse
//! detection, logout, listing and revocation.

use chrono::{DateTime, Utc};

use super::{
    Action, Actor, AuthFailure, Ctx, Domain, Error, IssuedSession, Outcome, Page, Principal, Result, Session,
    SessionId, SessionState, UserId,
    limits::Flow,
    page_size, parse_page_token,
    records::{RevokeSessions, Rotation},
    scope,
    token::TokenKind,
};

/// A page of sessions, each with whether it is the caller's own.
pub type SessionPage = Page<(Session, bool)>;

impl Domain {
    /// The principal behind `token`, if it holds every scope in `required`.
    ///
    /// # Errors
    /// As [`super::Validator::validate`].
    pub async fn validate_token(&self, token: &str, required: &[String]) -> Result<Principal> {
        self.validator.validate(token, required, self.clock.now()).await
    }

    /// Exchanges a session token for a new one with a fresh expiry window.
    ///
    /// The old token keeps working until the grace ends. Refreshing with it
    /// during the grace (a lost response) issues another new token; after the
    /// grace it is taken as theft: the whole session is revoked.
    ///
    /// # Errors
    /// `Unauthenticated` for an invalid, expired or reused token.
    pub async fn refresh(&self, ctx: &Ctx, token: &str) -> Result<IssuedSession> {
        let parsed = self.tokens.parse(token).map_err(|_| AuthFailure::InvalidToken)?;
        if parsed.kind != TokenKind::Session {
            return Err(AuthFailure::InvalidToken.into());
        }
        // Two attempts: a concurrent refresh of the same token can win the
        // compare-and-set, after which ours is a refresh within the grace.
        for _ in 0..2 {
            let now = self.clock.now();
            let Some(found) = self.store.session_by_hash(&parsed.hash).await? else {
                return Err(AuthFailure::InvalidToken.into());
            };
            let session = &found.session;
            if session.state != SessionState::Active || found.user.disabled {
                return Err(AuthFailure::InvalidToken.into());
            }
            self.check_limits(ctx, Flow::Refresh, Some(found.user.email.as_str())).await?;
            let ctx = &Ctx { actor: Actor::User(found.user.id), ..ctx.clone() };
            let subject = format!("session:{}", session.id);
            let (expected, previous_hash, previous_valid_until) = if found.matched_previous {
                let grace_end = session.previous_valid_until.unwrap_or(DateTime::<Utc>::MIN_UTC);
                if now >= grace_end {
                    let event = ctx
                        .event(now, Action::RefreshReuse, Outcome::Failure, subject)
                        .detail("session revoked");
                    self.store.revoke_session(session.id, "refresh_token_reuse", now, &[event]).await?;
                    self.validator.forget_session(session.id).await;
                    tracing::warn!(
                        session_id = session.id.get(),
                        user_id = found.user.id.get(),
                        "refresh token reused after its grace; session revoked"
                    );
                    return Err(AuthFailure::RefreshReuse.into());
                }
                // Keep the presented token's grace; the token issued by the
                // lost refresh is replaced.
                (found.current_hash, parsed.hash, grace_end)
            } else {
                (parsed.hash, parsed.hash, now + self.settings.refresh_grace)
            };
            if now >= session.expires_at || now >= session.absolute_expires_at {
                return Err(AuthFailure::Expired.into());
            }
            let expires_at = (now + session.lifetime).min(session.absolute_expires_at);
            let (new_token, new_hash) = self.tokens.generate(TokenKind::Session)?;
            let applied = self
                .store
                .rotate_session(
                    Rotation {
                        session_id: session.id,
                        expected,
                        new_hash,
                        previous_hash,
                        previous_valid_until: previous_valid_until.min(expires_at),
                        expires_at,
                    },
                    &[ctx.event(now, Action::SessionRefreshed, Outcome::Success, subject)],
                )
                .await?;
            if applied {
                self.validator.forget_session(session.id).await;
                return Ok(IssuedSession {
                    token: new_token,
                    session_id: session.id,
                    expires_at,
                    user: found.user,
                });
            }
        }
        Err(Error::Overloaded { what: "session refresh", retry_after: std::time::Duration::from_secs(1) })
    }

    /// Ends the session `token` belongs to. Idempotent for a session that is
    /// already revoked.
    ///
    /// # Errors
    /// `Unauthenticated` for a token that names no session.
    pub async fn logout(&self, ctx: &Ctx, token: &str) -> Result<()> {
        let parsed = self.tokens.parse(token).map_err(|_| AuthFailure::InvalidToken)?;
        // A pending login is not a session: it works only with the MFA calls.
        if parsed.kind != TokenKind::Session {
            return Err(AuthFailure::InvalidToken.into());
        }
        let Some(found) = self.store.session_by_hash(&parsed.hash).await? else {
            return Err(AuthFailure::InvalidToken.into());
        };
        let now = self.clock.now();
        let ctx = Ctx { actor: Actor::User(found.user.id), ..ctx.clone() };
        let event = ctx.event(now, Action::Logout, Outcome::Success, format!("session:{}", found.session.id));
        self.store.revoke_session(found.session.id, "logout", now, &[event]).await?;
        self.validator.forget_session(found.session.id).await;
        Ok(())
    }

    /// Lists a user's active sessions (`user_id` `None`: the caller's own).
    ///
    /// # Errors
    /// `Forbidden` for another user's sessions without the sessions-read
    /// scope; `InvalidArgument` for a bad page token.
    pub async fn list_sessions(
        &self,
        caller: &Principal,
        user_id: Option<UserId>,
        requested_page_size: i32,
        token: &str,
    ) -> Result<SessionPage> {
        let user_id = target_user(caller, user_id, scope::SESSIONS_READ)?;
        let before = parse_page_token(token)?.map(SessionId::new);
        let limit = page_size(requested_page_size, 50, 500);
        let now = self.clock.now();
        let sessions = self.store.list_active_sessions(user_id, now, before, limit + 1).await?;
        let Page { items, next_page_token } = Page::from_overfetch(sessions, limit, |s: &Session| s.id.get());
        let items = items
            .into_iter()
            .map(|session| {
                let current = caller.session_id() == Some(session.id);
                (session, current)
            })
            .collect();
        Ok(Page { items, next_page_token })
    }

    /// Revokes one session: the caller's own, or any with the sessions-write
    /// scope. Idempotent for an already revoked session.
    ///
    /// # Errors
    /// `NotFound` when the session does not exist or is another user's and
    /// the caller may not manage it.
    pub async fn revoke_session(&self, ctx: &Ctx, caller: &Principal, session_id: SessionId) -> Result<()> {
        if session_id.get() <= 0 {
            return Err(Error::invalid("session_id", "must be a positive session id"));
        }
        let session = self.store.session(session_id).await?;
        let allowed = caller.has_scope(scope::SESSIONS_WRITE);
        let Some(session) = session.filter(|s| allowed || s.user_id == caller.user_id) else {
            return Err(Error::NotFound("session"));
        };
        let now = self.clock.now();
        let event =
            ctx.event(now, Action::SessionRevoked, Outcome::Success, format!("session:{}", session.id));
        self.store.revoke_session(session.id, "revoked", now, &[event]).await?;
        self.validator.forget_session(session.id).await;
        Ok(())
    }

    /// Revokes all sessions of a user (`user_id` `None`: the caller), or all but
    /// the caller's own with `keep_current`.
    ///
    /// # Errors
    /// `Forbidden` for another user without the sessions-write scope;
    /// `InvalidArgument` for `keep_current` from a caller that is not a
    /// session.
    pub async fn revoke_sessions(
        &self,
        ctx: &Ctx,
        caller: &Principal,
        user_id: Option<UserId>,
        keep_current: bool,
    ) -> Result<(u64, DateTime<Utc>)> {
        let user_id = target_user(caller, user_id, scope::SESSIONS_WRITE)?;
        let keep = if keep_current {
            match caller.session_id() {
                Some(id) if user_id == caller.user_id => Some(id),
                _ => {
                    return Err(Error::invalid(
                        "keep_current",
                        "only a session can keep itself, and only among its own user's sessions",
                    ));
                }
            }
        } else {
            None
        };
        let now = self.clock.now();
        let event = ctx
            .event(now, Action::SessionsRevoked, Outcome::Success, format!("user:{user_id}"))
            .detail(if keep.is_some() { "all but the current" } else { "all" });
        let count = self
            .store
            .revoke_user_sessions(user_id, RevokeSessions { keep, reason: "revoked" }, now, &[event])
            .await?;
        self.validator.forget_user(user_id).await;
        Ok((count, now))
    }
}

/// Resolves `None` to the caller, and checks `needed` for others.
pub(super) fn target_user(caller: &Principal, user_id: Option<UserId>, needed: &str) -> Result<UserId> {
    match user_id {
        None => Ok(caller.user_id),
        Some(id) if id == caller.user_id => Ok(id),
        Some(id) if id.get() <= 0 => {
            Err(Error::invalid("user_id", "must be a positive user id, or 0 for yourself"))
        }
        Some(id) => {
            caller.require(needed)?;
            Ok(id)
        }
    }
}
