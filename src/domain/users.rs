//! User accounts and passwords.

use super::{
    Action, AuthFailure, Ctx, Domain, Email, Error, Outcome, Page, Principal, Result, Role, SessionId, User,
    UserId, UserKind, page_size, parse_page_token,
    password::Password,
    records::{NewUser, RevokeSessions, UserPatch},
    scope,
};

/// A page of users.
pub type UserPage = Page<User>;

/// A user to create, as the client sent it.
pub struct NewUserInput {
    /// Email as typed.
    pub email: String,
    /// Initial password; must be empty for a service account.
    pub password: String,
    /// Role.
    pub role: Role,
    /// Person or service account.
    pub kind: UserKind,
    /// Per-user session lifetime.
    pub session_lifetime: Option<chrono::Duration>,
}

impl Domain {
    /// Creates a user.
    ///
    /// # Errors
    /// `Forbidden` without the users-write scope, `InvalidArgument` for bad
    /// input, `AlreadyExists` for a taken email.
    pub async fn create_user(&self, ctx: &Ctx, caller: &Principal, input: NewUserInput) -> Result<User> {
        caller.require(scope::USERS_WRITE)?;
        self.create_user_unchecked(&ctx.acting_as(caller), input).await
    }

    /// Creates a user without a caller: the CLI's bootstrap of the first admin.
    ///
    /// # Errors
    /// As [`Domain::create_user`], without the scope check.
    pub async fn create_user_unchecked(&self, ctx: &Ctx, input: NewUserInput) -> Result<User> {
        let email = Email::parse(&input.email, "email")?;
        let password = match input.kind {
            UserKind::Human => Some(Password::parse(&input.password, "password")?),
            UserKind::Service if input.password.is_empty() => None,
            UserKind::Service => {
                return Err(Error::invalid("password", "must be empty: a service account has no password"));
            }
        };
        if let Some(lifetime) = input.session_lifetime {
            self.check_lifetime(lifetime, "session_lifetime")?;
        }
        let password_hash = match password {
            Some(password) => Some(self.hasher.hash(password).await?),
            None => None,
        };
        let now = self.clock.now();
        let user = self
            .store
            .insert_user(
                NewUser {
                    email,
                    password_hash,
                    role: input.role,
                    kind: input.kind,
                    session_lifetime: input.session_lifetime,
                    now,
                },
                &|user: &User| {
                    let detail = format!("role={} kind={}", user.role.as_str(), user.kind.as_str());
                    vec![
                        ctx.event(now, Action::UserCreated, Outcome::Success, format!("user:{}", user.id))
                            .detail(detail),
                    ]
                },
            )
            .await?;
        tracing::info!(user_id = user.id.get(), role = user.role.as_str(), "user created");
        Ok(user)
    }

    /// One user (`None`: the caller itself), or any with the users-read scope.
    ///
    /// # Errors
    /// `Forbidden` or `NotFound`.
    pub async fn get_user(&self, caller: &Principal, user_id: Option<UserId>) -> Result<User> {
        let user_id = super::sessions::target_user(caller, user_id, scope::USERS_READ)?;
        self.store.user(user_id).await?.ok_or(Error::NotFound("user"))
    }

    /// Users by ascending id.
    ///
    /// # Errors
    /// `Forbidden` without the users-read scope; `InvalidArgument` for a bad
    /// page token.
    pub async fn list_users(
        &self,
        caller: &Principal,
        requested_page_size: i32,
        token: &str,
    ) -> Result<UserPage> {
        caller.require(scope::USERS_READ)?;
        let after = parse_page_token(token)?.map(UserId::new);
        let limit = page_size(requested_page_size, 50, 500);
        let users = self.store.list_users(after, limit + 1).await?;
        Ok(Page::from_overfetch(users, limit, |u: &User| u.id.get()))
    }

    /// Changes a user. Disabling revokes every session at once.
    ///
    /// # Errors
    /// `Forbidden`, `InvalidArgument`, `NotFound`.
    pub async fn update_user(
        &self,
        ctx: &Ctx,
        caller: &Principal,
        user_id: UserId,
        patch: UserPatch,
    ) -> Result<User> {
        caller.require(scope::USERS_WRITE)?;
        self.update_user_unchecked(&ctx.acting_as(caller), user_id, patch).await
    }

    /// Changes a user with no caller: the CLI's `user disable|enable|set-role`.
    ///
    /// # Errors
    /// As [`Domain::update_user`], without the scope check.
    pub async fn update_user_unchecked(&self, ctx: &Ctx, user_id: UserId, patch: UserPatch) -> Result<User> {
        if user_id.get() <= 0 {
            return Err(Error::invalid("user.id", "must be a positive user id"));
        }
        if let Some(Some(lifetime)) = patch.session_lifetime {
            self.check_lifetime(lifetime, "user.session_lifetime")?;
        }
        let now = self.clock.now();
        let mut changed = Vec::new();
        if let Some(role) = patch.role {
            changed.push(format!("role={}", role.as_str()));
        }
        if let Some(disabled) = patch.disabled {
            changed.push(format!("disabled={disabled}"));
        }
        if patch.session_lifetime.is_some() {
            changed.push("session_lifetime".to_owned());
        }
        let event = ctx
            .event(now, Action::UserUpdated, Outcome::Success, format!("user:{user_id}"))
            .detail(changed.join(" "));
        // Disabling a user ends its sessions at once.
        let revoke =
            (patch.disabled == Some(true)).then_some(RevokeSessions { keep: None, reason: "user_disabled" });
        let user = self
            .store
            .update_user(user_id, &patch, revoke, now, &[event])
            .await?
            .ok_or(Error::NotFound("user"))?;
        // Role and disabled flag are cached with each token.
        self.validator.forget_user(user_id).await;
        tracing::info!(user_id = user_id.get(), "user updated");
        Ok(user)
    }

    /// Changes the caller's own password; revokes its other sessions.
    ///
    /// # Errors
    /// `InvalidArgument` for a bad new password or a caller that is not a
    /// session; `Unauthenticated(WrongPassword)` for a wrong current one.
    pub async fn change_password(
        &self,
        ctx: &Ctx,
        caller: &Principal,
        current: &str,
        new: &str,
    ) -> Result<u64> {
        let Some(session_id) = caller.session_id() else {
            return Err(Error::Forbidden {
                message: "ChangePassword needs the user's own session".into(),
                missing_scope: None,
            });
        };
        let current = Password::parse(current, "current_password")?;
        let new = Password::parse(new, "new_password")?;
        let ctx = ctx.acting_as(caller);
        let user = self.store.user(caller.user_id).await?.ok_or(Error::NotFound("user"))?;
        // A wrong current password counts toward the lockout like a wrong login.
        let Some(attempt) = self.reserve_attempt(&ctx, &user, Action::PasswordChanged).await? else {
            return Err(AuthFailure::WrongPassword.into());
        };
        let stored = self.store.password_hash(caller.user_id).await?;
        if !self.hasher.verify(&current, stored.as_deref()).await?.matched {
            self.record_failure(&ctx, &user, attempt, Action::PasswordChanged, "wrong current password")
                .await?;
            return Err(AuthFailure::WrongPassword.into());
        }
        self.record_success(&user, attempt).await?;
        let hash = self.hasher.hash(new).await?;
        let now = self.clock.now();
        let event = ctx.event(now, Action::PasswordChanged, Outcome::Success, format!("user:{}", user.id));
        let revoked = self
            .store
            .set_password(caller.user_id, hash, password_changed(Some(session_id)), now, &[event])
            .await?
            .ok_or(Error::NotFound("user"))?;
        self.validator.forget_user(caller.user_id).await;
        tracing::info!(user_id = caller.user_id.get(), revoked, "password changed");
        Ok(revoked)
    }

    /// Sets a user's password (admin reset); revokes all its sessions.
    ///
    /// # Errors
    /// `Forbidden`, `InvalidArgument`, `NotFound`.
    pub async fn set_password(
        &self,
        ctx: &Ctx,
        caller: &Principal,
        user_id: UserId,
        new: &str,
    ) -> Result<u64> {
        caller.require(scope::USERS_WRITE)?;
        self.set_password_unchecked(&ctx.acting_as(caller), user_id, new).await
    }

    /// Sets a user's password with no caller: the CLI's `user set-password`,
    /// the way back for an admin who lost the only admin password.
    ///
    /// # Errors
    /// As [`Domain::set_password`], without the scope check.
    pub async fn set_password_unchecked(&self, ctx: &Ctx, user_id: UserId, new: &str) -> Result<u64> {
        if user_id.get() <= 0 {
            return Err(Error::invalid("user_id", "must be a positive user id"));
        }
        let new = Password::parse(new, "new_password")?;
        match self.store.user(user_id).await? {
            None => return Err(Error::NotFound("user")),
            Some(user) if user.kind == UserKind::Service => {
                return Err(Error::invalid("user_id", "is a service account, which has no password"));
            }
            Some(_) => {}
        }
        let hash = self.hasher.hash(new).await?;
        let now = self.clock.now();
        let event = ctx.event(now, Action::PasswordSet, Outcome::Success, format!("user:{user_id}"));
        let revoked = self
            .store
            .set_password(user_id, hash, password_changed(None), now, &[event])
            .await?
            .ok_or(Error::NotFound("user"))?;
        self.validator.forget_user(user_id).await;
        tracing::info!(user_id = user_id.get(), revoked, "password set");
        Ok(revoked)
    }

    fn check_lifetime(&self, lifetime: chrono::Duration, field: &'static str) -> Result<()> {
        if lifetime < chrono::Duration::minutes(1) || lifetime > self.settings.session_absolute_lifetime {
            return Err(Error::invalid(field, "must be between 1 minute and the absolute session lifetime"));
        }
        Ok(())
    }
}

/// A new password ends every other session of the user (the caller's own,
/// `keep`, stays).
fn password_changed(keep: Option<SessionId>) -> RevokeSessions {
    RevokeSessions { keep, reason: "password_changed" }
}
