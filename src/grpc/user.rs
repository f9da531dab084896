//! `portcullis.v1.UserService`: accounts and passwords.

use std::sync::Arc;

use secrecy::ExposeSecret;
use tonic::{Request, Response, Status};

use super::{authenticated, convert, to_status};
use crate::{
    domain::{Domain, Error, NewUserInput, Role, UserId, UserPatch},
    proto::v1::{self as pb, user_service_server},
    request::Call,
};

/// The UserService implementation.
#[derive(Clone)]
pub struct UserService {
    domain: Arc<Domain>,
}

impl UserService {
    /// Serves the rules in `domain`.
    #[must_use]
    pub fn new(domain: Arc<Domain>) -> Self {
        Self { domain }
    }
}

#[tonic::async_trait]
impl user_service_server::UserService for UserService {
    #[tracing::instrument(skip_all)]
    async fn create_user(
        &self,
        request: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::CreateUserResponse>, Status> {
        let Call { ctx, caller } = authenticated(&self.domain, &request).await?;
        let pb::CreateUserRequest { email, password, role, session_lifetime, kind } = request.into_inner();
        let input = NewUserInput {
            kind: convert::user_kind_from(kind, "kind").map_err(to_status)?,
            email,
            password,
            role: convert::role_from(role, "role", Some(Role::User)).map_err(to_status)?,
            session_lifetime: convert::duration_from(session_lifetime, "session_lifetime")
                .map_err(to_status)?,
        };
        let user = self.domain.create_user(&ctx, &caller, input).await.map_err(to_status)?;
        Ok(Response::new(pb::CreateUserResponse { user: Some(user.into()) }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_user(
        &self,
        request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::GetUserResponse>, Status> {
        let Call { caller, .. } = authenticated(&self.domain, &request).await?;
        let pb::GetUserRequest { user_id } = request.into_inner();
        let user =
            self.domain.get_user(&caller, convert::user_or_caller(user_id)).await.map_err(to_status)?;
        Ok(Response::new(pb::GetUserResponse { user: Some(user.into()) }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<Response<pb::ListUsersResponse>, Status> {
        let Call { caller, .. } = authenticated(&self.domain, &request).await?;
        let pb::ListUsersRequest { page_size, page_token } = request.into_inner();
        let page = self.domain.list_users(&caller, page_size, &page_token).await.map_err(to_status)?;
        Ok(Response::new(pb::ListUsersResponse {
            users: page.items.into_iter().map(Into::into).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn update_user(
        &self,
        request: Request<pb::UpdateUserRequest>,
    ) -> Result<Response<pb::UpdateUserResponse>, Status> {
        let Call { ctx, caller } = authenticated(&self.domain, &request).await?;
        let pb::UpdateUserRequest { user, update_mask } = request.into_inner();
        let user = user.ok_or_else(|| to_status(Error::invalid("user", "must be set")))?;
        let paths = update_mask.map(|mask| mask.paths).unwrap_or_default();
        if paths.is_empty() {
            return Err(to_status(Error::invalid("update_mask", "must name at least one field")));
        }
        let mut patch = UserPatch::default();
        for path in &paths {
            match path.as_str() {
                "role" => {
                    patch.role = Some(convert::role_from(user.role, "user.role", None).map_err(to_status)?);
                }
                "disabled" => patch.disabled = Some(user.disabled),
                "session_lifetime" => {
                    patch.session_lifetime = Some(
                        convert::duration_from(user.session_lifetime, "user.session_lifetime")
                            .map_err(to_status)?,
                    );
                }
                other => {
                    return Err(to_status(Error::invalid(
                        "update_mask",
                        format!("{other:?} cannot be updated; use role, disabled or session_lifetime"),
                    )));
                }
            }
        }
        let user =
            self.domain.update_user(&ctx, &caller, UserId::new(user.id), patch).await.map_err(to_status)?;
        Ok(Response::new(pb::UpdateUserResponse { user: Some(user.into()) }))
    }

    #[tracing::instrument(skip_all)]
    async fn change_password(
        &self,
        request: Request<pb::ChangePasswordRequest>,
    ) -> Result<Response<pb::ChangePasswordResponse>, Status> {
        let Call { ctx, caller } = authenticated(&self.domain, &request).await?;
        let pb::ChangePasswordRequest { current_password, new_password } = request.into_inner();
        let revoked = self
            .domain
            .change_password(&ctx, &caller, &current_password, &new_password)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::ChangePasswordResponse { revoked_sessions: revoked as i64 }))
    }

    #[tracing::instrument(skip_all)]
    async fn set_password(
        &self,
        request: Request<pb::SetPasswordRequest>,
    ) -> Result<Response<pb::SetPasswordResponse>, Status> {
        let Call { ctx, caller } = authenticated(&self.domain, &request).await?;
        let pb::SetPasswordRequest { user_id, new_password } = request.into_inner();
        let revoked = self
            .domain
            .set_password(&ctx, &caller, UserId::new(user_id), &new_password)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::SetPasswordResponse { revoked_sessions: revoked as i64 }))
    }

    #[tracing::instrument(skip_all)]
    async fn enroll_totp(
        &self,
        request: Request<pb::EnrollTotpRequest>,
    ) -> Result<Response<pb::EnrollTotpResponse>, Status> {
        let Call { caller, .. } = authenticated(&self.domain, &request).await?;
        let pb::EnrollTotpRequest {} = request.into_inner();
        let enrollment = self.domain.enroll_totp(&caller).await.map_err(to_status)?;
        Ok(Response::new(pb::EnrollTotpResponse {
            secret: enrollment.secret.expose_secret().to_owned(),
            otpauth_uri: enrollment.uri.expose_secret().to_owned(),
            qr_code_png: enrollment.qr_png,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn confirm_totp(
        &self,
        request: Request<pb::ConfirmTotpRequest>,
    ) -> Result<Response<pb::ConfirmTotpResponse>, Status> {
        let Call { ctx, caller } = authenticated(&self.domain, &request).await?;
        let pb::ConfirmTotpRequest { code } = request.into_inner();
        let codes = self.domain.confirm_totp(&ctx, &caller, &code).await.map_err(to_status)?;
        Ok(Response::new(pb::ConfirmTotpResponse { recovery_codes: convert::exposed(&codes) }))
    }

    #[tracing::instrument(skip_all)]
    async fn send_email_code(
        &self,
        request: Request<pb::SendEmailCodeRequest>,
    ) -> Result<Response<pb::SendEmailCodeResponse>, Status> {
        let Call { caller, .. } = authenticated(&self.domain, &request).await?;
        let pb::SendEmailCodeRequest {} = request.into_inner();
        let expires_at = self.domain.send_email_code(&caller).await.map_err(to_status)?;
        Ok(Response::new(pb::SendEmailCodeResponse { expire_time: Some(convert::timestamp(expires_at)) }))
    }

    #[tracing::instrument(skip_all)]
    async fn confirm_email_mfa(
        &self,
        request: Request<pb::ConfirmEmailMfaRequest>,
    ) -> Result<Response<pb::ConfirmEmailMfaResponse>, Status> {
        let Call { ctx, caller } = authenticated(&self.domain, &request).await?;
        let pb::ConfirmEmailMfaRequest { code } = request.into_inner();
        let codes = self.domain.confirm_email_mfa(&ctx, &caller, &code).await.map_err(to_status)?;
        Ok(Response::new(pb::ConfirmEmailMfaResponse { recovery_codes: convert::exposed(&codes) }))
    }

    #[tracing::instrument(skip_all)]
    async fn disable_mfa(
        &self,
        request: Request<pb::DisableMfaRequest>,
    ) -> Result<Response<pb::DisableMfaResponse>, Status> {
        let Call { ctx, caller } = authenticated(&self.domain, &request).await?;
        let pb::DisableMfaRequest { password, code, method } = request.into_inner();
        let method = convert::mfa_method_from(method, "method").map_err(to_status)?;
        self.domain.disable_mfa(&ctx, &caller, &password, method, &code).await.map_err(to_status)?;
        Ok(Response::new(pb::DisableMfaResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn regenerate_recovery_codes(
        &self,
        request: Request<pb::RegenerateRecoveryCodesRequest>,
    ) -> Result<Response<pb::RegenerateRecoveryCodesResponse>, Status> {
        let Call { ctx, caller } = authenticated(&self.domain, &request).await?;
        let pb::RegenerateRecoveryCodesRequest {} = request.into_inner();
        let codes = self.domain.regenerate_recovery_codes(&ctx, &caller).await.map_err(to_status)?;
        Ok(Response::new(pb::RegenerateRecoveryCodesResponse { recovery_codes: convert::exposed(&codes) }))
    }

    #[tracing::instrument(skip_all)]
    async fn reset_mfa(
        &self,
        request: Request<pb::ResetMfaRequest>,
    ) -> Result<Response<pb::ResetMfaResponse>, Status> {
        let Call { ctx, caller } = authenticated(&self.domain, &request).await?;
        let pb::ResetMfaRequest { user_id } = request.into_inner();
        let revoked = self.domain.reset_mfa(&ctx, &caller, UserId::new(user_id)).await.map_err(to_status)?;
        Ok(Response::new(pb::ResetMfaResponse { revoked_sessions: revoked as i64 }))
    }
}
