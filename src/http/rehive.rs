//! The Rehive dialect: `POST /3/auth/login/`, the admin-authenticated
//! `POST /3/admin/auth/login/`, `POST /3/auth/logout/` and
//! `POST /3/auth/logout/all/`, each with and without the trailing slash.
//!
//! Answers are Rehive's `{"status":"success","data":{"token":…,"user":{…}}}`
//! (logouts: `{"status":"success","message":…}`); failures are
//! `{"status":"error","message":…}` with the error table's status and
//! headers. A login whose user has a second factor answers, as Rehive does,
//! with a token that is unusable until the challenge is completed — here the
//! pending login's token, which `<s4e_prefix>/auth/mfa/verify` exchanges for
//! a session. Rehive logins set no cookie: they are for back ends and apps.

use axum::{
    Router,
    extract::{Request, State},
    response::{IntoResponse, Response},
    routing::post,
};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{State as Shared, caller, json, model, route};
use crate::{
    domain::{LoginInput, LoginOutcome},
    errors::Problem,
    request::Call,
};

/// The routes, each with and without its trailing slash.
pub fn routes() -> Router<Shared> {
    let mut router = Router::new();
    for (path, method_router) in [
        ("/3/auth/login/", post(login)),
        ("/3/admin/auth/login/", post(admin_login)),
        ("/3/auth/logout/", post(logout)),
        ("/3/auth/logout/all/", post(logout_all)),
    ] {
        router = route(router, path, method_router.clone());
        router = route(router, path.trim_end_matches('/'), method_router);
    }
    router
}

/// A failure in Rehive's shape.
pub struct RehiveProblem(Problem);

impl From<Problem> for RehiveProblem {
    fn from(problem: Problem) -> Self {
        Self(problem)
    }
}

impl From<crate::domain::Error> for RehiveProblem {
    fn from(err: crate::domain::Error) -> Self {
        Self(err.into())
    }
}

impl IntoResponse for RehiveProblem {
    fn into_response(self) -> Response {
        let Self(problem) = self;
        problem.json_response(&serde_json::json!({ "status": "error", "message": problem.message }))
    }
}

/// The dialect's description (the paths with the trailing slash;
/// [`super::openapi`] adds those without).
#[derive(utoipa::OpenApi)]
#[openapi(paths(login, admin_login, logout, logout_all))]
pub struct Api;

// === bodies ===

/// `POST /3/auth/login/` and `POST /3/admin/auth/login/`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// The user's email.
    #[schema(example = "joe@example.com")]
    pub user: String,
    /// The password.
    pub password: String,
    /// The Rehive company: accepted and ignored (one deployment, one
    /// company).
    #[serde(default)]
    pub company: Option<String>,
}

/// A Rehive login's answer: the session, or a pending login's token.
#[derive(Debug, Serialize, ToSchema)]
pub struct LoginData {
    /// The token: a session's, or (with `mfa_required`) the pending
    /// login's, usable only to complete it.
    pub token: String,
    /// When the token expires.
    pub expires_at: String,
    /// Who logged in (absent while a second factor is pending).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<model::User>,
    /// A second factor is needed.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub mfa_required: bool,
    /// The methods that can complete a pending login.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<model::Method>,
}

impl From<LoginOutcome> for LoginData {
    fn from(outcome: LoginOutcome) -> Self {
        match outcome {
            LoginOutcome::Session(issued) => {
                let model::Session { token, expires_at, user } = issued.into();
                LoginData { token, expires_at, user: Some(user), mfa_required: false, methods: Vec::new() }
            }
            LoginOutcome::Mfa(challenge) => {
                let model::MfaChallenge { mfa_token, methods, expires_at } = challenge.into();
                LoginData { token: mfa_token, expires_at, user: None, mfa_required: true, methods }
            }
        }
    }
}

/// `{"status":"error","message":…}`: every Rehive failure.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorEnvelope {
    /// Always `error`.
    #[schema(example = "error")]
    pub status: String,
    /// What went wrong; never a secret.
    pub message: String,
}

/// `{"status":"success","message":…}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Done {
    /// Always `success`.
    #[schema(example = "success")]
    pub status: String,
    /// What happened.
    pub message: String,
}

// === handlers ===

/// Log in with email and password.
#[utoipa::path(
    post, path = "/3/auth/login/", tag = "Rehive",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in (or a pending login's token, with `mfa_required`)", body = model::Success<LoginData>),
        (status = 400, description = "Bad input", body = ErrorEnvelope),
        (status = 401, description = "Wrong login, or a captcha is required", body = ErrorEnvelope),
        (status = 429, description = "Too many attempts, with `Retry-After`", body = ErrorEnvelope),
    )
)]
async fn login(State(state): State<Shared>, request: Request) -> Result<Response, RehiveProblem> {
    let (parts, body) = request.into_parts();
    let Call { ctx, .. } = caller::anonymous(&state, &parts);
    let body: LoginRequest = json::read(&parts, body).await?;
    let outcome = state.domain.login(&ctx, None, input(body, &ctx)).await;
    state.metrics.record_login_result(&outcome);
    Ok(json::success(StatusCode::OK, &LoginData::from(outcome?)))
}

/// A back-end service logs a user in with its own API key (holding
/// `portcullis:admin_login`): exempt from the captcha and per-IP limits.
#[utoipa::path(
    post, path = "/3/admin/auth/login/", tag = "Rehive",
    security(("token" = [])),
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in (or a pending login's token, with `mfa_required`)", body = model::Success<LoginData>),
        (status = 401, description = "No valid caller key, or a wrong login", body = ErrorEnvelope),
        (status = 403, description = "The caller's key lacks `portcullis:admin_login`", body = ErrorEnvelope),
        (status = 429, description = "Too many attempts for the account", body = ErrorEnvelope),
    )
)]
async fn admin_login(State(state): State<Shared>, request: Request) -> Result<Response, RehiveProblem> {
    let (parts, body) = request.into_parts();
    let Call { ctx, caller } = caller::authenticated(&state, &parts).await?;
    let body: LoginRequest = json::read(&parts, body).await?;
    let outcome = state.domain.admin_login(&ctx, &caller, input(body, &ctx)).await;
    state.metrics.record_login_result(&outcome);
    Ok(json::success(StatusCode::OK, &LoginData::from(outcome?)))
}

/// End the caller's session.
#[utoipa::path(
    post, path = "/3/auth/logout/", tag = "Rehive",
    security(("token" = [])),
    responses(
        (status = 200, description = "Logged out", body = Done),
        (status = 401, description = "No session token", body = ErrorEnvelope),
    )
)]
async fn logout(State(state): State<Shared>, request: Request) -> Result<Response, RehiveProblem> {
    let (parts, body) = request.into_parts();
    let (token, _) = caller::credential(&state, &parts)?;
    json::read_empty(&parts, body).await?;
    let Call { ctx, .. } = caller::anonymous(&state, &parts);
    state.domain.logout(&ctx, &token).await?;
    Ok(done("Successfully logged out."))
}

/// End every session of the caller's user.
#[utoipa::path(
    post, path = "/3/auth/logout/all/", tag = "Rehive",
    security(("token" = [])),
    responses(
        (status = 200, description = "Every session of the user ended", body = Done),
        (status = 401, description = "No valid credential", body = ErrorEnvelope),
    )
)]
async fn logout_all(State(state): State<Shared>, request: Request) -> Result<Response, RehiveProblem> {
    let (parts, body) = request.into_parts();
    let Call { ctx, caller } = caller::authenticated(&state, &parts).await?;
    json::read_empty(&parts, body).await?;
    state.domain.revoke_sessions(&ctx, &caller, None, false).await?;
    Ok(done("Successfully logged out of all sessions."))
}

fn input(body: LoginRequest, ctx: &crate::domain::Ctx) -> LoginInput {
    let LoginRequest { user, password, company: _ } = body;
    LoginInput {
        email: user,
        password,
        client: model::client(ctx),
        requested_lifetime: None,
        bypass_captcha: false,
        captcha: None,
    }
}

fn done(message: &str) -> Response {
    json::reply(StatusCode::OK, &serde_json::json!({ "status": "success", "message": message }))
}
