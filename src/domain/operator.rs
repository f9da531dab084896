//! The operator's reads and changes that have no API twin to share code
//! with: what the command line (`portcullis user|key|session …`) does on the
//! database directly, with no caller to check — whoever can run the binary
//! with the database's URL holds every power already.
//!
//! The changes follow the same rules as their API calls: each writes its
//! audit row (actor `system:cli`, from [`Ctx::system`]) in the transaction
//! of the change, and each revocation goes through the validator, which
//! clears this process's cache and, on PostgreSQL, announces it to every
//! running replica (the same notification their own revocations send). The
//! `*_unchecked` twins of API calls live beside them (`users.rs`, `keys.rs`,
//! `mfa.rs`, `audit_log.rs`).

use super::{
    Action, Ctx, Domain, Email, Error, Outcome, Page, Result, Session, SessionId, SessionPage, User, UserId,
    UserPage, page_size, parse_page_token, records::RevokeSessions,
};

impl Domain {
    /// The user `who` names: a numeric id, or an email.
    ///
    /// # Errors
    /// `InvalidArgument` for neither; `NotFound`.
    pub async fn find_user_unchecked(&self, who: &str) -> Result<User> {
        let who = who.trim();
        if let Ok(id) = who.parse::<i64>() {
            if id <= 0 {
                return Err(Error::invalid("user", "must be a positive user id or an email"));
            }
            return self.store.user(UserId::new(id)).await?.ok_or(Error::NotFound("user"));
        }
        let email = Email::parse(who, "user")?;
        let (user, _hash) = self.store.user_by_email(&email).await?.ok_or(Error::NotFound("user"))?;
        Ok(user)
    }

    /// Users by ascending id, with no caller.
    ///
    /// # Errors
    /// `InvalidArgument` for a bad page token.
    pub async fn list_users_unchecked(&self, requested_page_size: i32, token: &str) -> Result<UserPage> {
        let after = parse_page_token(token)?.map(UserId::new);
        let limit = page_size(requested_page_size, 50, 500);
        let users = self.store.list_users(after, limit + 1).await?;
        Ok(Page::from_overfetch(users, limit, |u: &User| u.id.get()))
    }

    /// A user's active sessions, newest first, with no caller (none is
    /// "current": the flag is always `false`).
    ///
    /// # Errors
    /// `InvalidArgument` for a bad page token.
    pub async fn list_sessions_unchecked(
        &self,
        user_id: UserId,
        requested_page_size: i32,
        token: &str,
    ) -> Result<SessionPage> {
        let before = parse_page_token(token)?.map(SessionId::new);
        let limit = page_size(requested_page_size, 50, 500);
        let sessions = self.store.list_active_sessions(user_id, self.clock.now(), before, limit + 1).await?;
        let Page { items, next_page_token } = Page::from_overfetch(sessions, limit, |s: &Session| s.id.get());
        Ok(Page { items: items.into_iter().map(|s| (s, false)).collect(), next_page_token })
    }

    /// Revokes one session with no caller. Returns whether it was still
    /// active (revoking a revoked session changes nothing).
    ///
    /// # Errors
    /// `InvalidArgument` for an id that is not positive, `NotFound`.
    pub async fn revoke_session_unchecked(&self, ctx: &Ctx, session_id: SessionId) -> Result<bool> {
        if session_id.get() <= 0 {
            return Err(Error::invalid("session_id", "must be a positive session id"));
        }
        let session = self.store.session(session_id).await?.ok_or(Error::NotFound("session"))?;
        let now = self.clock.now();
        let event =
            ctx.event(now, Action::SessionRevoked, Outcome::Success, format!("session:{}", session.id));
        let changed = self.store.revoke_session(session.id, "revoked", now, &[event]).await?;
        self.validator.forget_session(session.id).await;
        tracing::info!(session_id = session_id.get(), changed, "session revoked");
        Ok(changed)
    }

    /// Revokes every session of a user with no caller. Returns how many
    /// were revoked.
    ///
    /// # Errors
    /// `NotFound` for an unknown user.
    pub async fn revoke_sessions_unchecked(&self, ctx: &Ctx, user_id: UserId) -> Result<u64> {
        self.store.user(user_id).await?.ok_or(Error::NotFound("user"))?;
        let now = self.clock.now();
        let event = ctx
            .event(now, Action::SessionsRevoked, Outcome::Success, format!("user:{user_id}"))
            .detail("all");
        let count = self
            .store
            .revoke_user_sessions(user_id, RevokeSessions { keep: None, reason: "revoked" }, now, &[event])
            .await?;
        self.validator.forget_user(user_id).await;
        tracing::info!(user_id = user_id.get(), count, "sessions revoked");
        Ok(count)
    }
}
