//! `portcullis.v1.AuthService`: login, sessions, token validation.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{anonymous, authenticated, convert, source, to_status};
use crate::{
    domain::{self, Domain, Error, LoginOutcome, credential},
    errors,
    metrics::Metrics,
    proto::v1::{self as pb, auth_service_server},
    request::Call,
};

/// The AuthService implementation.
#[derive(Clone)]
pub struct AuthService {
    domain: Arc<Domain>,
    metrics: Arc<Metrics>,
}

impl AuthService {
    /// Serves the rules in `domain`, counting logins and validations in
    /// `metrics`.
    #[must_use]
    pub fn new(domain: Arc<Domain>, metrics: Arc<Metrics>) -> Self {
        Self { domain, metrics }
    }
}

impl AuthService {
    /// `ValidateToken`'s work: find the credential, validate it.
    async fn validate(&self, request: pb::ValidateTokenRequest) -> Result<domain::Principal, Error> {
        let pb::ValidateTokenRequest { credential, required_scopes } = request;
        let token = match credential {
            None => return Err(Error::invalid("credential", "set `token` or `http`")),
            Some(pb::validate_token_request::Credential::Token(token)) if token.is_empty() => {
                return Err(Error::invalid("token", "must not be empty"));
            }
            Some(pb::validate_token_request::Credential::Token(token)) => token,
            Some(pb::validate_token_request::Credential::Http(http)) => credential::find(
                self.domain.credential_sources(),
                http.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                &http.query,
            )?,
        };
        self.domain.validate_token(&token, &required_scopes).await
    }
}

#[tonic::async_trait]
impl auth_service_server::AuthService for AuthService {
    #[tracing::instrument(skip_all)]
    async fn login(&self, request: Request<pb::LoginRequest>) -> Result<Response<pb::LoginResponse>, Status> {
        // A login is anonymous; the caller matters only for bypass_captcha.
        let claimed = request.get_ref().client.clone().unwrap_or_default();
        let call = Call::optional(&self.domain, &source(&request).claiming(&claimed.ip, &claimed.user_agent))
            .await
            .map_err(to_status)?;
        let pb::LoginRequest { email, password, captcha, bypass_captcha, client, session_lifetime } =
            request.into_inner();
        let input = domain::LoginInput {
            email,
            password,
            client: client.map(Into::into).unwrap_or_default(),
            requested_lifetime: convert::duration_from(session_lifetime, "session_lifetime")
                .map_err(to_status)?,
            bypass_captcha,
            captcha: captcha.map(convert::captcha_from).transpose().map_err(to_status)?,
        };
        let outcome = self.domain.login(&call.ctx, call.caller.as_ref(), input).await;
        self.metrics.record_login_result(&outcome);
        let outcome = outcome.map_err(to_status)?;
        Ok(Response::new(pb::LoginResponse { result: Some(login_result(outcome)) }))
    }

    #[tracing::instrument(skip_all)]
    async fn admin_login(
        &self,
        request: Request<pb::AdminLoginRequest>,
    ) -> Result<Response<pb::AdminLoginResponse>, Status> {
        let claimed = request.get_ref().client.clone().unwrap_or_default();
        let Call { ctx, caller } =
            Call::authenticated(&self.domain, &source(&request).claiming(&claimed.ip, &claimed.user_agent))
                .await
                .map_err(to_status)?;
        let pb::AdminLoginRequest { email, password, client, session_lifetime } = request.into_inner();
        let input = domain::LoginInput {
            email,
            password,
            client: client.map(Into::into).unwrap_or_default(),
            requested_lifetime: convert::duration_from(session_lifetime, "session_lifetime")
                .map_err(to_status)?,
            bypass_captcha: false,
            captcha: None,
        };
        let outcome = self.domain.admin_login(&ctx, &caller, input).await;
        self.metrics.record_login_result(&outcome);
        let outcome = outcome.map_err(to_status)?;
        let result = match login_result(outcome) {
            pb::login_response::Result::Session(s) => pb::admin_login_response::Result::Session(s),
            pb::login_response::Result::Mfa(m) => pb::admin_login_response::Result::Mfa(m),
        };
        Ok(Response::new(pb::AdminLoginResponse { result: Some(result) }))
    }

    #[tracing::instrument(skip_all)]
    async fn refresh_session(
        &self,
        request: Request<pb::RefreshSessionRequest>,
    ) -> Result<Response<pb::RefreshSessionResponse>, Status> {
        let Call { ctx, .. } = anonymous(&self.domain, &request);
        let pb::RefreshSessionRequest { token } = request.into_inner();
        if token.is_empty() {
            return Err(to_status(Error::invalid("token", "must not be empty")));
        }
        let issued = self.domain.refresh(&ctx, &token).await.map_err(to_status)?;
        Ok(Response::new(pb::RefreshSessionResponse { session: Some(issued.into()) }))
    }

    #[tracing::instrument(skip_all)]
    async fn logout(
        &self,
        request: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        let Call { ctx, .. } = anonymous(&self.domain, &request);
        let token = if request.get_ref().token.is_empty() {
            source(&request).credential(&self.domain).map_err(to_status)?
        } else {
            request.into_inner().token
        };
        self.domain.logout(&ctx, &token).await.map_err(to_status)?;
        Ok(Response::new(pb::LogoutResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn validate_token(
        &self,
        request: Request<pb::ValidateTokenRequest>,
    ) -> Result<Response<pb::ValidateTokenResponse>, Status> {
        let peer = source(&request).peer();
        match self.validate(request.into_inner()).await {
            Ok(principal) => {
                self.metrics.record_validation("validate_token", "valid");
                Ok(Response::new(pb::ValidateTokenResponse { principal: Some(principal.into()) }))
            }
            Err(err) => {
                self.metrics.record_validation("validate_token", errors::classify(&err).reason);
                // Floods of bad tokens are audited in aggregate, per source.
                if let Error::Unauthenticated(failure) = &err {
                    self.domain.note_invalid_token(peer, failure.label());
                }
                Err(to_status(err))
            }
        }
    }

    #[tracing::instrument(skip_all)]
    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let Call { caller, .. } = authenticated(&self.domain, &request).await?;
        let pb::ListSessionsRequest { user_id, page_size, page_token } = request.into_inner();
        let page = self
            .domain
            .list_sessions(&caller, convert::user_or_caller(user_id), page_size, &page_token)
            .await
            .map_err(to_status)?;
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
        let Call { ctx, caller } = authenticated(&self.domain, &request).await?;
        let pb::RevokeSessionRequest { session_id } = request.into_inner();
        self.domain
            .revoke_session(&ctx, &caller, domain::SessionId::new(session_id))
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::RevokeSessionResponse {}))
    }

    #[tracing::instrument(skip_all)]
    async fn revoke_sessions(
        &self,
        request: Request<pb::RevokeSessionsRequest>,
    ) -> Result<Response<pb::RevokeSessionsResponse>, Status> {
        let Call { ctx, caller } = authenticated(&self.domain, &request).await?;
        let pb::RevokeSessionsRequest { user_id, keep_current } = request.into_inner();
        let (count, at) = self
            .domain
            .revoke_sessions(&ctx, &caller, convert::user_or_caller(user_id), keep_current)
            .await
            .map_err(to_status)?;
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
        let Call { ctx, .. } = anonymous(&self.domain, &request);
        let pb::SendMfaCodeRequest { mfa_token } = request.into_inner();
        let expires_at = self.domain.send_mfa_code(&ctx, &mfa_token).await.map_err(to_status)?;
        Ok(Response::new(pb::SendMfaCodeResponse { expire_time: Some(convert::timestamp(expires_at)) }))
    }

    #[tracing::instrument(skip_all)]
    async fn verify_mfa(
        &self,
        request: Request<pb::VerifyMfaRequest>,
    ) -> Result<Response<pb::VerifyMfaResponse>, Status> {
        let Call { ctx, .. } = anonymous(&self.domain, &request);
        let pb::VerifyMfaRequest { mfa_token, code, method } = request.into_inner();
        let method = convert::mfa_method_from(method, "method").map_err(to_status)?;
        let issued = self.domain.verify_mfa(&ctx, &mfa_token, method, &code).await.map_err(to_status)?;
        Ok(Response::new(pb::VerifyMfaResponse { session: Some(issued.into()) }))
    }
}

fn login_result(outcome: LoginOutcome) -> pb::login_response::Result {
    match outcome {
        LoginOutcome::Session(issued) => pb::login_response::Result::Session(issued.into()),
        LoginOutcome::Mfa(challenge) => pb::login_response::Result::Mfa(challenge.into()),
    }
}
