//! The S4E dialect under `<s4e_prefix>` (default `/api/user`): login with
//! captcha and second factors, refresh, logout, "who am I", and the
//! signed-in user's API keys — the seed's request bodies and answers.
//!
//! Answers are `{"status":"success","data":…}` (a login that needs its
//! second factor: `{"status":"mfa_required","data":…}`); failures are the
//! S4E error envelope with the error table's status. The caller's own
//! credential is read in every form `ValidateToken` accepts. A login (and
//! an MFA verification, and the refresh of a cookie session) also sets the
//! browser's session cookie; logout clears it ([`super::browser`]).

use axum::{
    Router,
    extract::{Path, Request, State, rejection::PathRejection},
    response::{IntoResponse as _, Response},
    routing::{get, post},
};
use http::{StatusCode, header, request::Parts};
use secrecy::ExposeSecret as _;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Settings, State as Shared, browser, caller, json, model, route};
use crate::{
    domain::{self, CaptchaInput, Error, IssuedSession, KeyId, LoginInput, LoginOutcome, NewKeyInput},
    errors::Problem,
    request::Call,
};

/// The routes, under `settings.s4e_prefix`.
pub fn routes(settings: &Settings) -> Router<Shared> {
    let prefix = settings.s4e_prefix.as_str();
    let mut router = Router::new();
    for (path, method_router) in [
        ("/auth/login", post(login)),
        ("/auth/mfa/verify", post(verify_mfa)),
        ("/auth/mfa/send", post(send_mfa_code)),
        ("/auth/refresh", post(refresh)),
        ("/auth/logout", post(logout)),
        ("/auth/session", get(session)),
        ("/api-keys", get(list_keys).post(create_key)),
        ("/api-keys/{id}/rotate", post(rotate_key)),
        ("/api-keys/{id}", axum::routing::delete(revoke_key)),
    ] {
        router = route(router, &format!("{prefix}{path}"), method_router);
    }
    router
}

/// The dialect's description, its paths relative to the prefix
/// ([`super::openapi`] nests it there).
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    login,
    verify_mfa,
    send_mfa_code,
    refresh,
    logout,
    session,
    list_keys,
    create_key,
    rotate_key,
    revoke_key
))]
pub struct Api;

// === bodies ===

/// `POST …/auth/login`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// The user's email.
    #[schema(example = "user@example.com")]
    pub email: String,
    /// The password.
    pub password: String,
    /// The captcha widget's response token, when a captcha was shown.
    #[serde(default)]
    pub captcha_response: Option<String>,
    /// Skip the captcha: honoured only for a caller whose own credential
    /// holds `portcullis:admin_login`.
    #[serde(default)]
    pub bypass_captcha: Option<bool>,
    /// The captcha vendor of `captcha_response`.
    #[serde(default)]
    pub vendor: Option<Vendor>,
}

/// A captcha vendor.
#[derive(Clone, Copy, Debug, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Vendor {
    /// Google reCAPTCHA v3.
    Googlev3,
    /// hCaptcha.
    Hcaptcha,
    /// Cloudflare Turnstile.
    Turnstile,
}

impl From<Vendor> for crate::captcha::Vendor {
    fn from(vendor: Vendor) -> Self {
        match vendor {
            Vendor::Googlev3 => crate::captcha::Vendor::GoogleV3,
            Vendor::Hcaptcha => crate::captcha::Vendor::HCaptcha,
            Vendor::Turnstile => crate::captcha::Vendor::Turnstile,
        }
    }
}

impl LoginRequest {
    /// The rules' login input, for a client described by `ctx`.
    fn into_input(self, ctx: &domain::Ctx) -> Result<LoginInput, Problem> {
        let LoginRequest { email, password, captcha_response, bypass_captcha, vendor } = self;
        // An empty response is no captcha (forms send the field empty).
        let captcha = match (captcha_response.filter(|response| !response.is_empty()), vendor) {
            (None, _) => None,
            (Some(response), Some(vendor)) => Some(CaptchaInput { response, vendor: vendor.into() }),
            (Some(_), None) => return Err(Problem::invalid("vendor", "must be set with captcha_response")),
        };
        Ok(LoginInput {
            email,
            password,
            client: model::client(ctx),
            requested_lifetime: None,
            bypass_captcha: bypass_captcha.unwrap_or(false),
            captcha,
        })
    }
}

/// `POST …/auth/mfa/verify`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyMfaRequest {
    /// The pending login's token, from the login's answer.
    pub mfa_token: String,
    /// The code.
    #[schema(example = "123456")]
    pub code: String,
    /// Which method the code is from.
    pub method: model::Method,
}

/// `POST …/auth/mfa/send`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendMfaCodeRequest {
    /// The pending login's token.
    pub mfa_token: String,
}

/// When an emailed code expires.
#[derive(Debug, Serialize, ToSchema)]
pub struct CodeSent {
    /// The code's expiry.
    pub expires_at: String,
}

/// An empty object: `{}`.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct Empty {}

/// `POST …/api-keys`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    /// A name for people.
    #[schema(example = "ci deploys")]
    pub name: String,
    /// Scopes, each held by the caller (no escalation).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// `live` (default) or `test`.
    #[serde(default)]
    pub environment: model::Environment,
    /// Expiry (RFC 3339); none by default.
    #[serde(default)]
    pub expires_at: Option<String>,
}

/// `POST …/api-keys/{id}/rotate` (the body may be left out).
#[derive(Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKeyRequest {
    /// How long the old key keeps working, in seconds (at most 7 days).
    #[serde(default)]
    pub overlap_seconds: u32,
}

/// A page of the caller's keys.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyPage {
    /// The keys, newest first.
    pub api_keys: Vec<model::ApiKey>,
    /// Pass as `page_token` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

/// A rotation: the new key (shown once) and the old one's metadata.
#[derive(Debug, Serialize, ToSchema)]
pub struct RotatedKey {
    /// The new key; only its hash is kept.
    pub key: String,
    /// The new key's metadata.
    pub api_key: model::ApiKey,
    /// The old key, working until its `revoked_at`.
    pub previous: model::ApiKey,
}

/// A revoked key's metadata.
#[derive(Debug, Serialize, ToSchema)]
pub struct RevokedKey {
    /// The key, with its `revoked_at`.
    pub api_key: model::ApiKey,
}

// === handlers ===

/// Log in with email and password.
#[utoipa::path(
    post, path = "/auth/login", tag = "S4E",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in; the session cookie is set", body = model::Success<model::Session>),
        (status = 200, description = "The password was right; a second factor is needed", body = model::MfaRequired),
        (status = 400, description = "Bad input", body = model::ErrorEnvelope),
        (status = 401, description = "`unauthorized` (wrong login), `captcha_required`, `captcha_invalid`", body = model::ErrorEnvelope),
        (status = 403, description = "`forbidden`: `bypass_captcha` without the admin-login scope", body = model::ErrorEnvelope),
        (status = 429, description = "`rate_limited`, with `Retry-After`", body = model::ErrorEnvelope),
        (status = 503, description = "`captcha_unavailable`", body = model::ErrorEnvelope),
    )
)]
async fn login(State(state): State<Shared>, request: Request) -> Result<Response, Problem> {
    let (parts, body) = request.into_parts();
    let body: LoginRequest = json::read(&parts, body).await?;
    // The caller's own credential matters only for `bypass_captcha`: a
    // browser's stale session cookie must not stand in the way of a login.
    let call = if body.bypass_captcha == Some(true) {
        caller::optional(&state, &parts).await?
    } else {
        let Call { ctx, caller: () } = caller::anonymous(&state, &parts);
        Call { ctx, caller: None }
    };
    let input = body.into_input(&call.ctx)?;
    let outcome = state.domain.login(&call.ctx, call.caller.as_ref(), input).await;
    state.metrics.record_login_result(&outcome);
    Ok(match outcome? {
        LoginOutcome::Session(issued) => signed_in(&state, issued),
        LoginOutcome::Mfa(challenge) => json::reply(
            StatusCode::OK,
            &serde_json::json!({ "status": "mfa_required", "data": model::MfaChallenge::from(challenge) }),
        ),
    })
}

/// Complete a login with a second factor.
#[utoipa::path(
    post, path = "/auth/mfa/verify", tag = "S4E",
    request_body = VerifyMfaRequest,
    responses(
        (status = 200, description = "Logged in (a new token); the session cookie is set", body = model::Success<model::Session>),
        (status = 400, description = "Bad input, or a method the user has not enrolled", body = model::ErrorEnvelope),
        (status = 401, description = "`unauthorized`: a wrong, used or expired code or pending login", body = model::ErrorEnvelope),
        (status = 429, description = "`rate_limited`", body = model::ErrorEnvelope),
    )
)]
async fn verify_mfa(State(state): State<Shared>, request: Request) -> Result<Response, Problem> {
    let (parts, body) = request.into_parts();
    let Call { ctx, .. } = caller::anonymous(&state, &parts);
    let VerifyMfaRequest { mfa_token, code, method } = json::read(&parts, body).await?;
    let issued = state.domain.verify_mfa(&ctx, &mfa_token, method.into(), &code).await?;
    Ok(signed_in(&state, issued))
}

/// Email a one-time code for a pending login.
#[utoipa::path(
    post, path = "/auth/mfa/send", tag = "S4E",
    request_body = SendMfaCodeRequest,
    responses(
        (status = 200, description = "Sent", body = model::Success<CodeSent>),
        (status = 401, description = "`unauthorized`: a bad pending login", body = model::ErrorEnvelope),
        (status = 412, description = "`failed_precondition`: no email method, or the server sends no email", body = model::ErrorEnvelope),
        (status = 429, description = "`rate_limited`", body = model::ErrorEnvelope),
    )
)]
async fn send_mfa_code(State(state): State<Shared>, request: Request) -> Result<Response, Problem> {
    let (parts, body) = request.into_parts();
    let Call { ctx, .. } = caller::anonymous(&state, &parts);
    let SendMfaCodeRequest { mfa_token } = json::read(&parts, body).await?;
    let expires_at = state.domain.send_mfa_code(&ctx, &mfa_token).await?;
    Ok(json::success(StatusCode::OK, &CodeSent { expires_at: model::time(expires_at) }))
}

/// Exchange the caller's session token for a new one.
#[utoipa::path(
    post, path = "/auth/refresh", tag = "S4E",
    security(("bearer" = []), ("api_key" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "A new token (the cookie is re-set when it carried the old one)", body = model::Success<model::Session>),
        (status = 401, description = "`unauthorized` or `token_expired`", body = model::ErrorEnvelope),
        (status = 403, description = "`forbidden`: a cookie-only request from an origin not allowed", body = model::ErrorEnvelope),
    )
)]
async fn refresh(State(state): State<Shared>, request: Request) -> Result<Response, Problem> {
    let (parts, body) = request.into_parts();
    let (token, from_cookie) = caller::credential(&state, &parts)?;
    json::read_empty(&parts, body).await?;
    let Call { ctx, .. } = caller::anonymous(&state, &parts);
    let issued = state.domain.refresh(&ctx, &token).await?;
    Ok(if from_cookie {
        signed_in(&state, issued)
    } else {
        json::success(StatusCode::OK, &model::Session::from(issued))
    })
}

/// End the caller's session; clears the session cookie.
#[utoipa::path(
    post, path = "/auth/logout", tag = "S4E",
    security(("bearer" = []), ("api_key" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "Logged out; the cookie is cleared", body = model::Success<Empty>),
        (status = 401, description = "`unauthorized`: no session token", body = model::ErrorEnvelope),
        (status = 403, description = "`forbidden`: a cookie-only request from an origin not allowed", body = model::ErrorEnvelope),
    )
)]
async fn logout(State(state): State<Shared>, request: Request) -> Result<Response, Problem> {
    let (parts, body) = request.into_parts();
    let (token, from_cookie) = caller::credential(&state, &parts)?;
    json::read_empty(&parts, body).await?;
    let Call { ctx, .. } = caller::anonymous(&state, &parts);
    let result = state.domain.logout(&ctx, &token).await;
    // A cookie that names no session is of no use either: clear it too.
    let clear = result.is_ok() || (from_cookie && matches!(result, Err(Error::Unauthenticated(_))));
    let mut response = match result {
        Ok(()) => json::success(StatusCode::OK, &Empty {}),
        Err(err) => Problem::from(err).into_response(),
    };
    if clear && let Some(cookie) = browser::cleared_cookie(&state.settings) {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    Ok(response)
}

/// Who the caller is: the principal of its credential.
#[utoipa::path(
    get, path = "/auth/session", tag = "S4E",
    security(("bearer" = []), ("api_key" = []), ("cookie" = [])),
    responses(
        (status = 200, description = "The caller", body = model::Success<model::Principal>),
        (status = 401, description = "`unauthorized` or `token_expired`", body = model::ErrorEnvelope),
        (status = 403, description = "`mfa_required`: a pending login's token", body = model::ErrorEnvelope),
    )
)]
async fn session(State(state): State<Shared>, request: Request) -> Result<Response, Problem> {
    let (parts, _) = request.into_parts();
    let Call { caller, .. } = caller::authenticated(&state, &parts).await?;
    Ok(json::success(StatusCode::OK, &model::Principal::from(caller)))
}

/// The caller's API keys.
#[utoipa::path(
    get, path = "/api-keys", tag = "S4E",
    security(("bearer" = []), ("api_key" = []), ("cookie" = [])),
    params(
        ("page_size" = Option<i32>, Query, description = "Keys per page (default 50, at most 500)"),
        ("page_token" = Option<String>, Query, description = "`next_page_token` of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of keys", body = model::Success<KeyPage>),
        (status = 401, description = "`unauthorized`", body = model::ErrorEnvelope),
    )
)]
async fn list_keys(State(state): State<Shared>, request: Request) -> Result<Response, Problem> {
    let (parts, _) = request.into_parts();
    let Call { caller, .. } = caller::authenticated(&state, &parts).await?;
    let (page_size, page_token) = page(&parts)?;
    let page = state.domain.list_keys(&caller, None, page_size, &page_token).await?;
    Ok(json::success(
        StatusCode::OK,
        &KeyPage {
            api_keys: page.items.into_iter().map(Into::into).collect(),
            next_page_token: page.next_page_token,
        },
    ))
}

/// Create an API key for the caller.
#[utoipa::path(
    post, path = "/api-keys", tag = "S4E",
    security(("bearer" = []), ("api_key" = []), ("cookie" = [])),
    request_body = CreateKeyRequest,
    responses(
        (status = 201, description = "The key, shown once", body = model::Success<model::NewKey>),
        (status = 400, description = "Bad input", body = model::ErrorEnvelope),
        (status = 401, description = "`unauthorized`", body = model::ErrorEnvelope),
        (status = 403, description = "`forbidden`: a scope the caller does not hold", body = model::ErrorEnvelope),
    )
)]
async fn create_key(State(state): State<Shared>, request: Request) -> Result<Response, Problem> {
    let (parts, body) = request.into_parts();
    let Call { ctx, caller } = caller::authenticated(&state, &parts).await?;
    let CreateKeyRequest { name, scopes, environment, expires_at } = json::read(&parts, body).await?;
    let expires_at = expires_at
        .map(|at| chrono::DateTime::parse_from_rfc3339(&at).map(|at| at.to_utc()))
        .transpose()
        .map_err(|_| Problem::invalid("expires_at", "is not an RFC 3339 time"))?;
    let input = NewKeyInput { name, scopes, environment: environment.into(), expires_at, owner_id: None };
    let issued = state.domain.create_key(&ctx, &caller, input).await?;
    Ok(json::success(StatusCode::CREATED, &model::NewKey::from(issued)))
}

/// Replace one of the caller's keys; the old one works for the overlap.
#[utoipa::path(
    post, path = "/api-keys/{id}/rotate", tag = "S4E",
    security(("bearer" = []), ("api_key" = []), ("cookie" = [])),
    params(("id" = i64, Path, description = "The key's id")),
    request_body(content = Option<RotateKeyRequest>, description = "May be left out"),
    responses(
        (status = 200, description = "The new key, shown once", body = model::Success<RotatedKey>),
        (status = 400, description = "Bad input, or a revoked key", body = model::ErrorEnvelope),
        (status = 403, description = "`forbidden`: the key holds a scope the caller does not", body = model::ErrorEnvelope),
        (status = 404, description = "`not_found`", body = model::ErrorEnvelope),
    )
)]
async fn rotate_key(
    State(state): State<Shared>,
    id: Result<Path<String>, PathRejection>,
    request: Request,
) -> Result<Response, Problem> {
    let (parts, body) = request.into_parts();
    let Call { ctx, caller } = caller::authenticated(&state, &parts).await?;
    let key_id = key_id(id)?;
    let RotateKeyRequest { overlap_seconds } = json::read_optional(&parts, body).await?;
    let overlap = chrono::Duration::seconds(i64::from(overlap_seconds));
    let (issued, previous) = state.domain.rotate_key(&ctx, &caller, KeyId::new(key_id), overlap).await?;
    let model::NewKey { key, api_key } = issued.into();
    Ok(json::success(StatusCode::OK, &RotatedKey { key, api_key, previous: previous.into() }))
}

/// Revoke one of the caller's keys at once (revoking again changes nothing).
#[utoipa::path(
    delete, path = "/api-keys/{id}", tag = "S4E",
    security(("bearer" = []), ("api_key" = []), ("cookie" = [])),
    params(("id" = i64, Path, description = "The key's id")),
    responses(
        (status = 200, description = "Revoked", body = model::Success<RevokedKey>),
        (status = 401, description = "`unauthorized`", body = model::ErrorEnvelope),
        (status = 404, description = "`not_found`", body = model::ErrorEnvelope),
    )
)]
async fn revoke_key(
    State(state): State<Shared>,
    id: Result<Path<String>, PathRejection>,
    request: Request,
) -> Result<Response, Problem> {
    let (parts, body) = request.into_parts();
    let Call { ctx, caller } = caller::authenticated(&state, &parts).await?;
    let key_id = key_id(id)?;
    json::read_empty(&parts, body).await?;
    let key = state.domain.revoke_key(&ctx, &caller, KeyId::new(key_id)).await?;
    Ok(json::success(StatusCode::OK, &RevokedKey { api_key: key.into() }))
}

// === helpers ===

/// The answer to a login: the session, and the cookie that keeps it in a
/// browser for as long as the token lives.
fn signed_in(state: &Shared, issued: IssuedSession) -> Response {
    let max_age = (issued.expires_at - state.domain.now()).num_seconds();
    let cookie = browser::session_cookie(&state.settings, issued.token.expose_secret(), max_age);
    let mut response = json::success(StatusCode::OK, &model::Session::from(issued));
    if let Some(cookie) = cookie {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// The key id of the path.
fn key_id(path: Result<Path<String>, PathRejection>) -> Result<i64, Problem> {
    path.ok()
        .and_then(|Path(id)| id.parse::<i64>().ok())
        .filter(|id| *id > 0)
        .ok_or_else(|| Problem::invalid("id", "must be a key id (a positive integer)"))
}

/// `page_size` and `page_token` from the query.
fn page(parts: &Parts) -> Result<(i32, String), Problem> {
    let (mut size, mut token) = (0, String::new());
    for (name, value) in form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes()) {
        match name.as_ref() {
            "page_size" => {
                size = value.parse().map_err(|_| Problem::invalid("page_size", "must be an integer"))?;
            }
            "page_token" => token = value.into_owned(),
            _ => {}
        }
    }
    Ok((size, token))
}
