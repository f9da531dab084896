//! `portcullis.v1.AuthService`: login, sessions, token validation.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{caller, caller_token, convert, optional_caller, to_status};
use crate::{
    domain::{self, Domain, Error, LoginOutcome, credential},
    proto::v1::{self as pb, auth_service_server},
};

/// The AuthService implementation.
#[derive(Clone)]
pub struct AuthService {
    domain: Arc<Domain>,
}

impl AuthService {
    /// Serves the rules in `domain`.
    #[must_use]
    pub fn new(domain: Arc<Domain>) -> Self {
        Self { domain }
    }
}

#[tonic::async_trait]
impl auth_service_server::AuthService for AuthService {
    #[tracing::instrument(skip_all)]
    async fn login(&self, request: Request<pb::LoginRequest>) -> Result<Response<pb::LoginResponse>, Status> {
        let caller = optional_caller(&self.domain, request.metadata()).await?;
        let pb::LoginRequest { email, password, captcha: _, bypass_captcha, client, session_lifetime } =
            request.into_inner();
        let input = domain::LoginInput {
            email,
            password,
            client: client.map(Into::into).unwrap_or_default(),
            requested_lifetime: convert::duration_from(session_lifetime, "session_lifetime")
                .map_err(to_status)?,
            bypass_captcha,
        };
        let outcome = self.domain.login(caller.as_ref(), input).await.map_err(to_status)?;
        let result = match outcome {
            LoginOutcome::Session(issued) => pb::login_response::Result::Session(issued.into()),
            LoginOutcome::Mfa(challenge) => pb::login_response::Result::Mfa(challenge.into()),
        };
        Ok(Response::new(pb::LoginResponse { result: Some(result) }))
    }

    #[tracing::instrument(skip_all)]
    async fn refresh_session(
        &self,
        request: Request<pb::RefreshSessionRequest>,
    ) -> Result<Response<pb::RefreshSessionResponse>, Status> {
        let pb::RefreshSessionRequest { token } = request.into_inner();
        if token.is_empty() {
            return Err(to_status(Error::invalid("token", "must not be empty")));
        }
        let issued = self.domain.refresh(&token).await.map_err(to_status)?;
        Ok(Response::new(pb::RefreshSessionResponse { session: Some(issued.into()) }))
    }

    #[tracing::instrument(skip_all)]
    async fn logout(
        &self,
        request: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        let token = if request.get_ref().token.is_empty() {
            caller_token(&self.domain, request.metadata()).map_err(to_status)?
        } else {
            request.into_inner().token
        };
        self.domain.logout(&token).await.map_err(to_status)?;
        Ok(Response::new(pb::LogoutResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn validate_token(
        &self,
        request: Request<pb::ValidateTokenRequest>,
    ) -> Result<Response<pb::ValidateTokenResponse>, Status> {
        let pb::ValidateTokenRequest { credential, required_scopes } = request.into_inner();
        let token = match credential {
            None => {
                return Err(to_status(Error::invalid("credential", "set `token` or `http`")));
            }
            Some(pb::validate_token_request::Credential::Token(token)) => {
                if token.is_empty() {
                    return Err(to_status(Error::invalid("token", "must not be empty")));
                }
                token
            }
            Some(pb::validate_token_request::Credential::Http(http)) => credential::find(
                self.domain.credential_sources(),
                http.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                &http.query,
            )
            .map_err(to_status)?,
        };
        let principal = self.domain.validate_token(&token, &required_scopes).await.map_err(to_status)?;
        Ok(Response::new(pb::ValidateTokenResponse { principal: Some(principal.into()) }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let caller = caller(&self.domain, request.metadata()).await?;
        let pb::ListSessionsRequest { user_id, page_size, page_token } = request.into_inner();
        let page =
            self.domain.list_sessions(&caller, user_id, page_size, &page_token).await.map_err(to_status)?;
        Ok(Response::new(pb::ListSessionsResponse {
            sessions: page.items.into_iter().map(|(s, current)| convert::session(s, current)).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn revoke_session(
        &self,
        request: Request<pb::RevokeSessionRequest>,
    ) -> Result<Response<pb::RevokeSessionResponse>, Status> {
        let caller = caller(&self.domain, request.metadata()).await?;
        let pb::RevokeSessionRequest { session_id } = request.into_inner();
        self.domain.revoke_session(&caller, session_id).await.map_err(to_status)?;
        Ok(Response::new(pb::RevokeSessionResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn revoke_sessions(
        &self,
        request: Request<pb::RevokeSessionsRequest>,
    ) -> Result<Response<pb::RevokeSessionsResponse>, Status> {
        let caller = caller(&self.domain, request.metadata()).await?;
        let pb::RevokeSessionsRequest { user_id, keep_current } = request.into_inner();
        let (count, at) =
            self.domain.revoke_sessions(&caller, user_id, keep_current).await.map_err(to_status)?;
        Ok(Response::new(pb::RevokeSessionsResponse {
            revoked_count: count as i64,
            revoke_time: Some(convert::timestamp(at)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn send_mfa_code(
        &self,
        request: Request<pb::SendMfaCodeRequest>,
    ) -> Result<Response<pb::SendMfaCodeResponse>, Status> {
        let pb::SendMfaCodeRequest { mfa_token } = request.into_inner();
        let expires_at = self.domain.send_mfa_code(&mfa_token).await.map_err(to_status)?;
        Ok(Response::new(pb::SendMfaCodeResponse { expire_time: Some(convert::timestamp(expires_at)) }))
    }

    #[tracing::instrument(skip_all)]
    async fn verify_mfa(
        &self,
        request: Request<pb::VerifyMfaRequest>,
    ) -> Result<Response<pb::VerifyMfaResponse>, Status> {
        let pb::VerifyMfaRequest { mfa_token, code, method } = request.into_inner();
        let method = convert::mfa_method_from(method, "method").map_err(to_status)?;
        let issued = self.domain.verify_mfa(&mfa_token, method, &code).await.map_err(to_status)?;
        Ok(Response::new(pb::VerifyMfaResponse { session: Some(issued.into()) }))
    }
}
