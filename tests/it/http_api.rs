//! The HTTP API through the real server over a socket (reqwest): the seeds'
//! request bodies, byte for byte, give the seeds' answers in the S4E and
//! Rehive dialects; the browser's cookie with its CSRF and CORS rules; the
//! signed-in user's API keys; dialects turned off; the OpenAPI description;
//! MFA, captcha, lockout and rate limits through HTTP; request ids and
//! per-route metrics.

use std::net::SocketAddr;

use chrono::Duration;
use portcullis::{
    config::{CaptchaPolicyName, Config},
    domain::Role,
};
use reqwest::{Method, RequestBuilder};
use serde_json::Value;

use crate::{
    captcha::{ACCEPT, FakeVendor, REJECT, Reply as VendorReply, TOKEN, use_fake},
    mfa::{enable_email, totp_code, user_with_totp, with_smtp},
    smtp::SmtpSink,
    support::{ADMIN_PASSWORD, Backend, TestApp, USER_PASSWORD, count_rows},
};

crate::db_tests!(
    s4e_login_answers_the_seed_shape_and_keeps_a_browser_session,
    the_callers_credential_is_read_in_every_form,
    session_cookie_is_not_secure_only_when_configured,
    cookie_only_state_changes_need_an_allowed_origin_and_cors_names_only_those,
    rehive_logins_and_logouts_answer_in_rehive_shapes,
    api_keys_of_the_signed_in_user_follow_keyservice_rules,
    a_dialect_turned_off_is_404_and_the_prefix_moves_s4e,
    openapi_describes_every_route_served,
    mfa_through_http_with_totp_and_emailed_codes,
    captcha_through_http,
    lockout_and_rate_limits_through_http,
    request_ids_travel_and_metrics_count_each_route,
);

// === the client ===

/// The seed's S4E login body (the admin of `TestApp::admin_token`).
pub const S4E_LOGIN: &str = r#"{"email": "admin@example.com", "password": "admin password 123", "captcha_response": "", "bypass_captcha": false, "vendor": "turnstile"}"#;

/// The seed's Rehive login body.
pub const REHIVE_LOGIN: &str =
    r#"{"user": "admin@example.com", "password": "admin password 123", "company": "acme"}"#;

/// An HTTP client for one server.
pub struct Api {
    base: String,
    client: reqwest::Client,
}

impl Api {
    pub fn new(app: &TestApp) -> Self {
        Self::at(app.addr)
    }

    pub fn at(addr: SocketAddr) -> Self {
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Self { base: format!("http://{addr}"), client }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path))
    }

    pub fn get(&self, path: &str) -> RequestBuilder {
        self.request(Method::GET, path)
    }

    /// A POST with `body` as JSON.
    pub fn post(&self, path: &str, body: &str) -> RequestBuilder {
        self.request(Method::POST, path).header("content-type", "application/json").body(body.to_owned())
    }

    /// A POST with no body.
    pub fn post_empty(&self, path: &str) -> RequestBuilder {
        self.request(Method::POST, path)
    }
}

/// An answer, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    pub json: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The S4E error code.
    pub fn code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or_else(|| panic!("no S4E error in {self:?}"))
    }

    /// `data.token` of a success.
    pub fn token(&self) -> String {
        self.json["data"]["token"].as_str().unwrap_or_else(|| panic!("no token in {self:?}")).to_owned()
    }

    pub fn set_cookie(&self) -> Option<&str> {
        self.header("set-cookie")
    }
}

pub async fn send(request: RequestBuilder) -> Reply {
    let response = request.send().await.expect("the server answers");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply { status, headers, text, json }
}

/// The keys of a JSON object, sorted.
pub fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

/// Asserts an S4E failure: its status and code, the envelope's shape.
#[track_caller]
pub fn assert_s4e_error(reply: &Reply, status: u16, code: &str) {
    assert_eq!(reply.status, status, "{reply:?}");
    assert_eq!(keys(&reply.json), ["error", "status"], "{reply:?}");
    assert_eq!(reply.json["status"], "error");
    assert_eq!(reply.code(), code, "{reply:?}");
    assert!(reply.json["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{reply:?}");
    assert!(reply.header("content-type").unwrap().starts_with("application/json"), "{reply:?}");
}

/// Asserts a session answer `{"status":"success","data":{"token","expires_at","user":{…}}}`.
#[track_caller]
pub fn assert_session_shape(reply: &Reply, email: &str, role: &str) {
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(keys(&reply.json), ["data", "status"], "{reply:?}");
    assert_eq!(reply.json["status"], "success");
    let data = &reply.json["data"];
    assert_eq!(keys(data), ["expires_at", "token", "user"], "{reply:?}");
    assert!(data["token"].as_str().unwrap().starts_with("pcs_sess_"), "{reply:?}");
    assert_eq!(keys(&data["user"]), ["email", "id", "role"]);
    assert!(data["user"]["id"].is_i64());
    assert_eq!(data["user"]["email"], email);
    assert_eq!(data["user"]["role"], role);
    chrono::DateTime::parse_from_rfc3339(data["expires_at"].as_str().unwrap()).unwrap();
}

/// `Cookie: portcullis_session=<token>`.
pub fn cookie(token: &str) -> String {
    format!("portcullis_session={token}")
}

/// The S4E session of `token` (`GET …/auth/session` with a Bearer token).
pub async fn whoami(api: &Api, token: &str) -> Reply {
    send(api.get("/api/user/auth/session").bearer_auth(token)).await
}

/// A user's session over S4E.
pub async fn s4e_login(api: &Api, email: &str, password: &str) -> Reply {
    send(api.post("/api/user/auth/login", &format!(r#"{{"email": "{email}", "password": "{password}"}}"#)))
        .await
}

// === the tests ===

async fn s4e_login_answers_the_seed_shape_and_keeps_a_browser_session(backend: Backend) {
    let app = TestApp::start(&backend).await;
    app.admin_token().await;
    let api = Api::new(&app);

    let login = send(api.post("/api/user/auth/login", S4E_LOGIN)).await;
    assert_session_shape(&login, "admin@example.com", "admin");
    assert_eq!(
        login.text.find(r#""status":"success""#),
        Some(1),
        "status first, as the seed: {}",
        login.text
    );
    assert_eq!(login.header("cache-control"), Some("no-store"));
    // The token expires with the session lifetime, in the cookie too.
    let expires =
        chrono::DateTime::parse_from_rfc3339(login.json["data"]["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!(expires.timestamp(), (crate::support::epoch() + Duration::hours(24)).timestamp());
    let token = login.token();
    assert_eq!(
        login.set_cookie(),
        Some(
            format!("portcullis_session={token}; HttpOnly; Secure; SameSite=Lax; Path=/; Max-Age=86400")
                .as_str()
        )
    );

    // Who am I: the principal, in every credential form.
    let me = whoami(&api, &token).await;
    assert_eq!(me.status, 200, "{me:?}");
    assert_eq!(me.json["data"]["kind"], "session");
    assert_eq!(me.json["data"]["user"]["email"], "admin@example.com");
    assert_eq!(me.json["data"]["auth_methods"], serde_json::json!(["password"]));
    assert_eq!(me.json["data"]["scopes"], serde_json::json!(["*"]));

    // Refresh with the cookie (from an allowed page) re-sets it; with a
    // header it answers the token alone.
    let app = app.restart_with(|c| c.allowed_origins = vec!["http://app.example".into()]).await;
    let api = Api::new(&app);
    let refreshed = send(
        api.post_empty("/api/user/auth/refresh")
            .header("cookie", cookie(&token))
            .header("origin", "http://app.example"),
    )
    .await;
    assert_session_shape(&refreshed, "admin@example.com", "admin");
    let fresh = refreshed.token();
    assert_ne!(fresh, token);
    assert!(refreshed.set_cookie().unwrap().starts_with(&format!("portcullis_session={fresh}; HttpOnly;")));
    let again = send(api.post_empty("/api/user/auth/refresh").bearer_auth(&fresh)).await;
    assert_session_shape(&again, "admin@example.com", "admin");
    assert_eq!(again.set_cookie(), None);
    let current = again.token();

    // Logout revokes and clears the cookie; the token is refused after.
    let out = send(
        api.post_empty("/api/user/auth/logout")
            .header("cookie", cookie(&current))
            .header("origin", "http://app.example"),
    )
    .await;
    assert_eq!(out.status, 200, "{out:?}");
    assert_eq!(out.text, r#"{"status":"success","data":{}}"#);
    assert_eq!(
        out.set_cookie(),
        Some("portcullis_session=; HttpOnly; Secure; SameSite=Lax; Path=/; Max-Age=0")
    );
    assert_s4e_error(&whoami(&api, &current).await, 401, "unauthorized");
    // An expired session answers token_expired.
    let user = send(api.post("/api/user/auth/login", S4E_LOGIN)).await.token();
    app.clock.advance(Duration::hours(25));
    assert_s4e_error(&whoami(&api, &user).await, 401, "token_expired");
    app.stop().await;
}

async fn the_callers_credential_is_read_in_every_form(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let token = app.admin_token().await;
    let other = app.login("admin@example.com", ADMIN_PASSWORD).await.token;
    let api = Api::new(&app);
    let path = "/api/user/auth/session";
    for request in [
        api.get(path).header("authorization", format!("Bearer {token}")),
        api.get(path).header("authorization", format!("Token {token}")),
        api.get(path).header("x-api-key", &token),
        api.get(path).header("cookie", format!("theme=dark; {}", cookie(&token))),
        api.get(&format!("{path}?token={token}")),
        // The same token twice is one credential.
        api.get(path).bearer_auth(&token).header("cookie", cookie(&token)),
    ] {
        let reply = send(request).await;
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    // Two different tokens: refused, whichever forms carry them.
    for request in [
        api.get(path).bearer_auth(&token).header("cookie", cookie(&other)),
        api.get(path).header("x-api-key", &token).header("authorization", format!("Token {other}")),
        api.get(&format!("{path}?token={other}")).bearer_auth(&token),
    ] {
        let reply = send(request).await;
        assert_s4e_error(&reply, 401, "unauthorized");
        assert!(reply.json["error"]["message"].as_str().unwrap().contains("ambiguous"), "{reply:?}");
        assert!(reply.header("www-authenticate").unwrap().starts_with("Bearer realm=\"portcullis\""));
    }
    // None at all: 401 with a bare challenge.
    let none = send(api.get(path)).await;
    assert_s4e_error(&none, 401, "unauthorized");
    assert_eq!(none.header("www-authenticate"), Some(r#"Bearer realm="portcullis""#));
    app.stop().await;
}

async fn session_cookie_is_not_secure_only_when_configured(backend: Backend) {
    let app = TestApp::start_with(&backend, |c| c.session_cookie_secure = false).await;
    app.admin_token().await;
    let login = send(Api::new(&app).post("/api/user/auth/login", S4E_LOGIN)).await;
    let set = login.set_cookie().unwrap();
    assert!(set.ends_with("; HttpOnly; SameSite=Lax; Path=/; Max-Age=86400"), "{set}");
    assert!(!set.contains("Secure"), "{set}");
    app.stop().await;
}

async fn cookie_only_state_changes_need_an_allowed_origin_and_cors_names_only_those(backend: Backend) {
    const ALLOWED: &str = "http://127.0.0.1:8080";
    let app = TestApp::start_with(&backend, |c| c.allowed_origins = vec![ALLOWED.into()]).await;
    app.admin_token().await;
    let api = Api::new(&app);
    let token = send(api.post("/api/user/auth/login", S4E_LOGIN)).await.token();
    let keys_before = count_rows(&app.db, "api_keys").await;

    // Reading with the cookie alone needs no origin.
    assert_eq!(send(api.get("/api/user/auth/session").header("cookie", cookie(&token))).await.status, 200);
    // Changing state with the cookie alone: only from an allowed origin.
    let create = |origin: Option<&str>| {
        let mut request =
            api.post("/api/user/api-keys", r#"{"name": "from a page"}"#).header("cookie", cookie(&token));
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request
    };
    for origin in [None, Some("http://evil.example"), Some("null"), Some("http://127.0.0.1:8081")] {
        let reply = send(create(origin)).await;
        assert_s4e_error(&reply, 403, "forbidden");
        assert_eq!(reply.header("access-control-allow-origin"), None, "{reply:?}");
    }
    for path in ["/api/user/auth/logout", "/api/user/auth/refresh", "/3/auth/logout/"] {
        let reply = send(
            api.post_empty(path).header("cookie", cookie(&token)).header("origin", "http://evil.example"),
        )
        .await;
        assert_s4e_forbidden_or_rehive(&reply);
    }
    assert_eq!(count_rows(&app.db, "api_keys").await, keys_before);
    assert_eq!(whoami(&api, &token).await.status, 200, "a refused logout logged out");

    let made = send(create(Some(ALLOWED))).await;
    assert_eq!(made.status, 201, "{made:?}");
    assert_eq!(made.header("access-control-allow-origin"), Some(ALLOWED));
    assert_eq!(made.header("access-control-allow-credentials"), Some("true"));
    // A program holding the token needs no origin: it is no browser.
    let made = send(api.post("/api/user/api-keys", r#"{"name": "program"}"#).bearer_auth(&token)).await;
    assert_eq!(made.status, 201, "{made:?}");

    // CORS preflight: allowed origin gets the grant, others nothing.
    let preflight = |origin: &str| {
        api.request(Method::OPTIONS, "/api/user/auth/login")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
    };
    let granted = send(preflight(ALLOWED)).await;
    assert_eq!(granted.header("access-control-allow-origin"), Some(ALLOWED), "{granted:?}");
    assert_eq!(granted.header("access-control-allow-credentials"), Some("true"));
    assert!(granted.header("access-control-allow-methods").unwrap().contains("POST"));
    assert!(granted.header("access-control-allow-headers").unwrap().contains("content-type"));
    let refused = send(preflight("http://evil.example")).await;
    assert_eq!(refused.header("access-control-allow-origin"), None, "{refused:?}");
    app.stop().await;
}

#[track_caller]
fn assert_s4e_forbidden_or_rehive(reply: &Reply) {
    assert_eq!(reply.status, 403, "{reply:?}");
    assert!(reply.json["error"]["code"] == "forbidden" || reply.json["message"].is_string(), "{reply:?}");
}

async fn rehive_logins_and_logouts_answer_in_rehive_shapes(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let admin = app.admin_token().await;
    let api = Api::new(&app);

    for path in ["/3/auth/login/", "/3/auth/login"] {
        let login = send(api.post(path, REHIVE_LOGIN)).await;
        assert_session_shape(&login, "admin@example.com", "admin");
        assert_eq!(login.set_cookie(), None, "Rehive sets no cookie");
    }
    let wrong =
        send(api.post("/3/auth/login/", r#"{"user": "admin@example.com", "password": "wrong password 1"}"#))
            .await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.text, r#"{"status":"error","message":"invalid email or password"}"#);
    let unknown =
        send(api.post("/3/auth/login/", r#"{"user": "admin@example.com", "password": "x", "extra": 1}"#))
            .await;
    assert_eq!(unknown.status, 400);
    assert_eq!(keys(&unknown.json), ["message", "status"]);

    // Admin login: a back end's key with portcullis:admin_login.
    app.create_user("dana@example.com", USER_PASSWORD, Role::User).await;
    let body = format!(r#"{{"user": "dana@example.com", "password": "{USER_PASSWORD}", "company": "acme"}}"#);
    let no_key = send(api.post("/3/admin/auth/login/", &body)).await;
    assert_eq!(no_key.status, 401, "{no_key:?}");
    assert_eq!(keys(&no_key.json), ["message", "status"]);
    let weak = new_key(&api, &admin, r#"{"name": "weak", "scopes": ["assets:read"]}"#).await;
    let denied =
        send(api.post("/3/admin/auth/login/", &body).header("authorization", format!("Token {weak}"))).await;
    assert_eq!(denied.status, 403, "{denied:?}");
    assert_eq!(denied.json["status"], "error");
    let gateway = new_key(&api, &admin, r#"{"name": "gateway", "scopes": ["portcullis:admin_login"]}"#).await;
    for path in ["/3/admin/auth/login/", "/3/admin/auth/login"] {
        let login = send(api.post(path, &body).header("authorization", format!("Token {gateway}"))).await;
        assert_session_shape(&login, "dana@example.com", "user");
        let me = whoami(&api, &login.token()).await;
        assert_eq!(me.json["data"]["auth_methods"], serde_json::json!(["password", "admin_login"]));
    }

    // Logout ends one session; logout/all every session of the user.
    let one = send(api.post("/3/auth/login/", REHIVE_LOGIN)).await.token();
    let two = send(api.post("/3/auth/login/", REHIVE_LOGIN)).await.token();
    let out = send(api.post_empty("/3/auth/logout/").header("authorization", format!("Token {one}"))).await;
    assert_eq!(out.text, r#"{"status":"success","message":"Successfully logged out."}"#);
    assert_eq!(whoami(&api, &one).await.status, 401);
    assert_eq!(whoami(&api, &two).await.status, 200);
    let three = send(api.post("/3/auth/login", REHIVE_LOGIN)).await.token();
    let all =
        send(api.post_empty("/3/auth/logout/all").header("authorization", format!("Token {three}"))).await;
    assert_eq!(all.status, 200, "{all:?}");
    assert_eq!(all.json["status"], "success");
    for token in [&two, &three, &admin] {
        assert_eq!(whoami(&api, token).await.status, 401);
    }
    let gone =
        send(api.post_empty("/3/auth/logout/").header("authorization", format!("Token {three}"))).await;
    assert_eq!(gone.status, 200, "logging a revoked session out again changes nothing: {gone:?}");
    app.stop().await;
}

/// Makes a key with `body` for the holder of `token`; returns the key.
pub async fn new_key(api: &Api, token: &str, body: &str) -> String {
    let made = send(api.post("/api/user/api-keys", body).bearer_auth(token)).await;
    assert_eq!(made.status, 201, "{made:?}");
    made.json["data"]["key"].as_str().unwrap().to_owned()
}

async fn api_keys_of_the_signed_in_user_follow_keyservice_rules(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let admin = app.admin_token().await;
    app.create_user("erin@example.com", USER_PASSWORD, Role::User).await;
    let api = Api::new(&app);
    let erin = s4e_login(&api, "erin@example.com", USER_PASSWORD).await.token();

    let made =
        send(api.post("/api/user/api-keys", r#"{"name": "ci", "environment": "test"}"#).bearer_auth(&erin))
            .await;
    assert_eq!(made.status, 201, "{made:?}");
    assert_eq!(keys(&made.json["data"]), ["api_key", "key"]);
    let key = made.json["data"]["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("pcs_test_"), "{key}");
    let meta = &made.json["data"]["api_key"];
    assert_eq!(
        keys(meta),
        [
            "created_at",
            "display_prefix",
            "environment",
            "expires_at",
            "id",
            "last_used_at",
            "name",
            "owner_id",
            "revoked_at",
            "rotated_from_id",
            "scopes"
        ]
    );
    assert_eq!(meta["environment"], "test");
    let id = meta["id"].as_i64().unwrap();
    // The key works as a credential, and lists its owner's keys.
    let listed = send(api.get("/api/user/api-keys").header("x-api-key", &key)).await;
    assert_eq!(listed.status, 200, "{listed:?}");
    assert_eq!(listed.json["data"]["api_keys"].as_array().unwrap().len(), 1);
    assert!(!listed.text.contains(&key), "a listing never shows the key");

    // No escalation: a user holds no scope to give.
    let escalate = send(
        api.post("/api/user/api-keys", r#"{"name": "x", "scopes": ["assets:read"]}"#).bearer_auth(&erin),
    )
    .await;
    assert_s4e_error(&escalate, 403, "forbidden");
    let expired = send(
        api.post("/api/user/api-keys", r#"{"name": "x", "expires_at": "2001-01-01T00:00:00Z"}"#)
            .bearer_auth(&erin),
    )
    .await;
    assert_s4e_error(&expired, 400, "invalid_argument");
    let badtime =
        send(api.post("/api/user/api-keys", r#"{"name": "x", "expires_at": "tomorrow"}"#).bearer_auth(&erin))
            .await;
    assert_s4e_error(&badtime, 400, "invalid_argument");
    assert_eq!(badtime.json["error"]["field"], "expires_at");

    // Rotate with an overlap: both work until it ends.
    let rotated = send(
        api.post(&format!("/api/user/api-keys/{id}/rotate"), r#"{"overlap_seconds": 60}"#).bearer_auth(&erin),
    )
    .await;
    assert_eq!(rotated.status, 200, "{rotated:?}");
    assert_eq!(keys(&rotated.json["data"]), ["api_key", "key", "previous"]);
    let new = rotated.json["data"]["key"].as_str().unwrap().to_owned();
    let new_id = rotated.json["data"]["api_key"]["id"].as_i64().unwrap();
    assert_eq!(rotated.json["data"]["api_key"]["rotated_from_id"], id);
    assert_eq!(whoami(&api, &key).await.status, 200);
    app.clock.advance(Duration::seconds(61));
    assert_eq!(whoami(&api, &key).await.status, 401);
    assert_eq!(whoami(&api, &new).await.status, 200);
    // Rotate without a body: no overlap.
    let plain = send(api.post_empty(&format!("/api/user/api-keys/{new_id}/rotate")).bearer_auth(&erin)).await;
    assert_eq!(plain.status, 200, "{plain:?}");
    assert_eq!(whoami(&api, &new).await.status, 401);
    let newest_id = plain.json["data"]["api_key"]["id"].as_i64().unwrap();

    // Another user's key is not found; a bad id is bad input.
    let admins = send(api.post("/api/user/api-keys", r#"{"name": "admin's"}"#).bearer_auth(&admin)).await;
    let admins_id = admins.json["data"]["api_key"]["id"].as_i64().unwrap();
    let theirs =
        send(api.request(Method::DELETE, &format!("/api/user/api-keys/{admins_id}")).bearer_auth(&erin))
            .await;
    assert_s4e_error(&theirs, 404, "not_found");
    for bad in ["abc", "0", "-1", "99999999999999999999"] {
        let reply =
            send(api.request(Method::DELETE, &format!("/api/user/api-keys/{bad}")).bearer_auth(&erin)).await;
        assert_s4e_error(&reply, 400, "invalid_argument");
    }
    // Revoke: at once, and again changes nothing.
    for _ in 0..2 {
        let revoked =
            send(api.request(Method::DELETE, &format!("/api/user/api-keys/{newest_id}")).bearer_auth(&erin))
                .await;
        assert_eq!(revoked.status, 200, "{revoked:?}");
        assert!(revoked.json["data"]["api_key"]["revoked_at"].is_string());
    }
    let page = send(api.get("/api/user/api-keys?page_size=1").bearer_auth(&erin)).await;
    assert_eq!(page.json["data"]["api_keys"].as_array().unwrap().len(), 1);
    let next = page.json["data"]["next_page_token"].as_str().unwrap();
    let rest =
        send(api.get(&format!("/api/user/api-keys?page_size=1&page_token={next}")).bearer_auth(&erin)).await;
    assert_eq!(rest.status, 200, "{rest:?}");
    let bad_page = send(api.get("/api/user/api-keys?page_size=x").bearer_auth(&erin)).await;
    assert_s4e_error(&bad_page, 400, "invalid_argument");
    app.stop().await;
}

async fn a_dialect_turned_off_is_404_and_the_prefix_moves_s4e(backend: Backend) {
    let app = TestApp::start_with(&backend, |c| c.s4e_api = false).await;
    app.admin_token().await;
    let api = Api::new(&app);
    assert_s4e_error(&send(api.post("/api/user/auth/login", S4E_LOGIN)).await, 404, "not_found");
    assert_s4e_error(&send(api.get("/api/user/api-keys")).await, 404, "not_found");
    assert_eq!(send(api.post("/3/auth/login/", REHIVE_LOGIN)).await.status, 200);
    let doc = send(api.get("/openapi.json")).await.json;
    assert!(!doc["paths"].as_object().unwrap().keys().any(|p| p.starts_with("/api/user")), "{doc}");

    let app = app
        .restart_with(|c| {
            c.s4e_api = true;
            c.rehive_api = false;
            c.s4e_prefix = "/s4e/v1".into();
        })
        .await;
    let api = Api::new(&app);
    for path in ["/3/auth/login/", "/3/auth/login", "/3/admin/auth/login/", "/3/auth/logout/all/"] {
        assert_s4e_error(&send(api.post(path, REHIVE_LOGIN)).await, 404, "not_found");
    }
    assert_s4e_error(&send(api.post("/api/user/auth/login", S4E_LOGIN)).await, 404, "not_found");
    let login = send(api.post("/s4e/v1/auth/login", S4E_LOGIN)).await;
    assert_session_shape(&login, "admin@example.com", "admin");
    let doc = send(api.get("/openapi.json")).await.json;
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.contains_key("/s4e/v1/auth/login"), "{doc}");
    assert!(!paths.keys().any(|p| p.starts_with("/3/")), "{doc}");
    app.stop().await;
}

/// Every route the HTTP API serves (default configuration), with its method.
pub const SERVED: &[(&str, &str)] = &[
    ("post", "/api/user/auth/login"),
    ("post", "/api/user/auth/mfa/verify"),
    ("post", "/api/user/auth/mfa/send"),
    ("post", "/api/user/auth/refresh"),
    ("post", "/api/user/auth/logout"),
    ("get", "/api/user/auth/session"),
    ("get", "/api/user/api-keys"),
    ("post", "/api/user/api-keys"),
    ("post", "/api/user/api-keys/{id}/rotate"),
    ("delete", "/api/user/api-keys/{id}"),
    ("post", "/3/auth/login/"),
    ("post", "/3/auth/login"),
    ("post", "/3/admin/auth/login/"),
    ("post", "/3/admin/auth/login"),
    ("post", "/3/auth/logout/"),
    ("post", "/3/auth/logout"),
    ("post", "/3/auth/logout/all/"),
    ("post", "/3/auth/logout/all"),
    ("get", "/openapi.json"),
];

async fn openapi_describes_every_route_served(backend: Backend) {
    let app = TestApp::start(&backend).await;
    let api = Api::new(&app);
    let reply = send(api.get("/openapi.json")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let doc = reply.json;
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    for (method, path) in SERVED {
        let operation = &doc["paths"][path][method];
        assert!(operation.is_object(), "{method} {path} is not described");
        assert!(operation["responses"].is_object(), "{method} {path} has no responses");
        // Each route really is served: neither the 404 fallback nor a 405.
        let probe =
            send(api.request(method.to_uppercase().parse().unwrap(), &path.replace("{id}", "1"))).await;
        assert!(![404, 405].contains(&probe.status), "{method} {path}: {probe:?}");
    }
    // Every `$ref` resolves.
    let text = doc.to_string();
    for reference in text.split(r##""$ref":"#/"##).skip(1) {
        let pointer = format!("/{}", reference.split('"').next().unwrap());
        assert!(doc.pointer(&pointer).is_some(), "dangling $ref {pointer}");
    }
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    assert_eq!(schemes["cookie"]["name"], "portcullis_session");
    app.stop().await;
}

async fn mfa_through_http_with_totp_and_emailed_codes(backend: Backend) {
    let sink = SmtpSink::start().await;
    let app = TestApp::start_with(&backend, with_smtp(&sink)).await;
    let api = Api::new(&app);
    let (_, secret, recovery) = user_with_totp(&app, "fay@example.com").await;

    let login = s4e_login(&api, "fay@example.com", USER_PASSWORD).await;
    assert_eq!(login.status, 200, "{login:?}");
    assert_eq!(keys(&login.json), ["data", "status"]);
    assert_eq!(login.json["status"], "mfa_required");
    assert_eq!(keys(&login.json["data"]), ["expires_at", "methods", "mfa_token"]);
    assert_eq!(login.json["data"]["methods"], serde_json::json!(["totp", "recovery_code"]));
    assert_eq!(login.set_cookie(), None, "a pending login is no session");
    let pending = login.json["data"]["mfa_token"].as_str().unwrap().to_owned();
    assert_s4e_error(&whoami(&api, &pending).await, 403, "mfa_required");
    // Email is not enrolled for this user.
    let send_code =
        |token: &str| api.post("/api/user/auth/mfa/send", &format!(r#"{{"mfa_token": "{token}"}}"#));
    assert_s4e_error(&send(send_code(&pending)).await, 412, "failed_precondition");

    let verify = |token: &str, code: &str, method: &str| {
        api.post(
            "/api/user/auth/mfa/verify",
            &format!(r#"{{"mfa_token": "{token}", "code": "{code}", "method": "{method}"}}"#),
        )
    };
    let right = totp_code(&app, &secret);
    let wrong = if right == "123456" { "654321" } else { "123456" };
    assert_s4e_error(&send(verify(&pending, wrong, "totp")).await, 401, "unauthorized");
    assert_s4e_error(&send(verify(&pending, &right, "sms")).await, 400, "invalid_argument");
    let done = send(verify(&pending, &right, "totp")).await;
    assert_session_shape(&done, "fay@example.com", "user");
    assert!(
        done.set_cookie().unwrap().starts_with(&format!("portcullis_session={}; HttpOnly;", done.token()))
    );
    let me = whoami(&api, &done.token()).await;
    assert_eq!(me.json["data"]["auth_methods"], serde_json::json!(["password", "totp"]));
    // The code and the pending login are used up.
    assert_s4e_error(&send(verify(&pending, &right, "totp")).await, 401, "unauthorized");
    // A recovery code completes another login.
    let pending = s4e_login(&api, "fay@example.com", USER_PASSWORD).await.json["data"]["mfa_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let done = send(verify(&pending, &recovery[0], "recovery_code")).await;
    assert_session_shape(&done, "fay@example.com", "user");

    // Emailed codes over SMTP.
    enable_email(&app, &sink, "gus@example.com").await;
    let login = s4e_login(&api, "gus@example.com", USER_PASSWORD).await;
    assert_eq!(login.json["data"]["methods"], serde_json::json!(["email", "recovery_code"]));
    let pending = login.json["data"]["mfa_token"].as_str().unwrap().to_owned();
    let sent = send(send_code(&pending)).await;
    assert_eq!(sent.status, 200, "{sent:?}");
    assert_eq!(keys(&sent.json["data"]), ["expires_at"]);
    let code = sink.code_for("gus@example.com").await;
    let done = send(verify(&pending, &code, "email")).await;
    assert_session_shape(&done, "gus@example.com", "user");
    app.stop().await;
}

async fn captcha_through_http(backend: Backend) {
    let fake = FakeVendor::start(VendorReply::Http(200, ACCEPT.into())).await;
    let app = TestApp::start_with(&backend, |c| use_fake(c, &fake, CaptchaPolicyName::Always)).await;
    app.create_user("admin@example.com", ADMIN_PASSWORD, Role::Admin).await;
    app.create_user("hal@example.com", USER_PASSWORD, Role::User).await;
    let api = Api::new(&app);
    let admin = send(api.post(
        "/api/user/auth/login",
        &format!(r#"{{"email": "admin@example.com", "password": "{ADMIN_PASSWORD}", "captcha_response": "t", "vendor": "hcaptcha"}}"#),
    ))
    .await
    .token();
    let before = fake.count();
    let body = |captcha: &str, vendor: &str, bypass: bool| {
        format!(
            r#"{{"email": "hal@example.com", "password": "{USER_PASSWORD}", "captcha_response": "{captcha}", "bypass_captcha": {bypass}, "vendor": "{vendor}"}}"#
        )
    };
    let login = |body: String| api.post("/api/user/auth/login", &body);
    let token = TOKEN.replace('"', "");

    assert_s4e_error(&send(login(body("", "turnstile", false))).await, 401, "captcha_required");
    assert_eq!(fake.count(), before);
    assert_session_shape(&send(login(body(&token, "turnstile", false))).await, "hal@example.com", "user");
    assert_eq!(fake.count(), before + 1);
    assert_s4e_error(&send(login(body(&token, "recaptcha", false))).await, 400, "invalid_argument");
    let no_vendor =
        format!(r#"{{"email": "hal@example.com", "password": "{USER_PASSWORD}", "captcha_response": "x"}}"#);
    let reply = send(login(no_vendor)).await;
    assert_s4e_error(&reply, 400, "invalid_argument");
    assert_eq!(reply.json["error"]["field"], "vendor");
    fake.answer_json(REJECT);
    assert_s4e_error(&send(login(body(&token, "hcaptcha", false))).await, 401, "captcha_invalid");
    fake.answer(VendorReply::Raw(b"garbage"));
    assert_s4e_error(&send(login(body(&token, "googlev3", false))).await, 503, "captcha_unavailable");

    // bypass_captcha: only for a caller holding admin_login.
    let before = fake.count();
    assert_s4e_error(&send(login(body("", "turnstile", true))).await, 403, "forbidden");
    let weak = new_key(&api, &admin, r#"{"name": "weak", "scopes": ["assets:read"]}"#).await;
    assert_s4e_error(&send(login(body("", "turnstile", true)).bearer_auth(&weak)).await, 403, "forbidden");
    let gateway = new_key(&api, &admin, r#"{"name": "gateway", "scopes": ["portcullis:admin_login"]}"#).await;
    assert_session_shape(
        &send(login(body("", "turnstile", true)).bearer_auth(&gateway)).await,
        "hal@example.com",
        "user",
    );
    assert_eq!(fake.count(), before, "a bypass asks no vendor");
    // Without bypass, a stale browser cookie does not stand in the way.
    let stale =
        send(login(body(&token, "turnstile", false)).header("cookie", cookie("pcs_sess_stale"))).await;
    assert_eq!(stale.status, 503, "the vendor answers garbage, but the cookie was ignored: {stale:?}");
    app.stop().await;
}

async fn lockout_and_rate_limits_through_http(backend: Backend) {
    let app = TestApp::start_with(&backend, |c: &mut Config| {
        c.rate_limit_pair = 3;
        c.rate_limit_ip = 8;
        c.lockout_threshold = 5;
    })
    .await;
    let admin = app.admin_token().await;
    app.create_user("ivy@example.com", USER_PASSWORD, Role::User).await;
    let api = Api::new(&app);

    // The (account, IP) limit: the fourth try is refused before the password.
    for _ in 0..3 {
        assert_s4e_error(&s4e_login(&api, "ivy@example.com", "wrong password 1").await, 401, "unauthorized");
    }
    let limited = s4e_login(&api, "ivy@example.com", USER_PASSWORD).await;
    assert_s4e_error(&limited, 429, "rate_limited");
    let after: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&after), "{after}");
    // Rehive's anonymous login counts against the same limits.
    let rehive =
        send(api.post(
            "/3/auth/login/",
            &format!(r#"{{"user": "ivy@example.com", "password": "{USER_PASSWORD}"}}"#),
        ))
        .await;
    assert_eq!(rehive.status, 429);
    assert_eq!(rehive.json["status"], "error");
    assert!(rehive.header("retry-after").is_some());

    // Lockout: wrong passwords lock the account; then even the right one fails.
    app.clock.advance(Duration::minutes(1));
    for _ in 0..2 {
        assert_s4e_error(&s4e_login(&api, "ivy@example.com", "wrong password 1").await, 401, "unauthorized");
    }
    app.clock.advance(Duration::minutes(1));
    let locked = s4e_login(&api, "ivy@example.com", USER_PASSWORD).await;
    assert_s4e_error(&locked, 401, "unauthorized");
    assert_eq!(
        locked.json["error"]["message"], "invalid email or password",
        "a lock looks like a wrong password"
    );
    app.clock.advance(Duration::minutes(6));
    assert_session_shape(&s4e_login(&api, "ivy@example.com", USER_PASSWORD).await, "ivy@example.com", "user");

    // The per-IP limit (8 a minute) holds across accounts, but not for
    // Rehive's admin login.
    app.clock.advance(Duration::minutes(1));
    for i in 0..8 {
        let reply = s4e_login(&api, &format!("nobody{i}@example.com"), "wrong password 1").await;
        assert_s4e_error(&reply, 401, "unauthorized");
        app.clock.advance(Duration::seconds(1));
    }
    assert_s4e_error(&s4e_login(&api, "ivy@example.com", USER_PASSWORD).await, 429, "rate_limited");
    let gateway = new_key(&api, &admin, r#"{"name": "gateway", "scopes": ["portcullis:admin_login"]}"#).await;
    let body = format!(r#"{{"user": "ivy@example.com", "password": "{USER_PASSWORD}"}}"#);
    let admin_login =
        send(api.post("/3/admin/auth/login/", &body).header("authorization", format!("Token {gateway}")))
            .await;
    assert_session_shape(&admin_login, "ivy@example.com", "user");
    app.stop().await;
}

async fn request_ids_travel_and_metrics_count_each_route(backend: Backend) {
    let app =
        TestApp::start_with(&backend, |c| c.metrics_addr = Some(SocketAddr::from(([127, 0, 0, 1], 0)))).await;
    app.admin_token().await;
    let api = Api::new(&app);
    let login =
        send(api.post("/api/user/auth/login", S4E_LOGIN).header("x-request-id", "req-http-7f3a")).await;
    assert_eq!(login.status, 200);
    assert_eq!(login.header("x-request-id"), Some("req-http-7f3a"));
    // Errors carry it too; one is made when none is sent.
    let failed = send(api.post("/api/user/auth/login", "{").header("x-request-id", "req-bad-1")).await;
    assert_eq!(failed.header("x-request-id"), Some("req-bad-1"));
    let made = send(api.get("/nowhere")).await;
    assert_eq!(made.header("x-request-id").map(str::len), Some(36), "{made:?}");
    // The audit row of the login carries the id.
    let ids = audit_request_ids(&app, "login.succeeded").await;
    assert!(ids.contains(&"req-http-7f3a".to_owned()), "{ids:?}");

    send(api.get("/api/user/auth/login")).await;
    send(api.post("/3/auth/login", REHIVE_LOGIN)).await;
    let scraped = crate::http::request(app.metrics_addr.unwrap(), "GET", "/metrics", &[]).await.body;
    for line in [
        r#"portcullis_http_server_handled_total{route="/api/user/auth/login",method="POST",status="200"} 1"#,
        r#"portcullis_http_server_handled_total{route="/api/user/auth/login",method="POST",status="400"} 1"#,
        r#"portcullis_http_server_handled_total{route="/api/user/auth/login",method="GET",status="405"} 1"#,
        r#"portcullis_http_server_handled_total{route="/3/auth/login",method="POST",status="200"} 1"#,
        r#"portcullis_http_server_handled_total{route="unknown",method="GET",status="404"} 1"#,
        r#"portcullis_logins_total{outcome="success"} 3"#,
    ] {
        assert!(scraped.contains(line), "no {line} in\n{scraped}");
    }
    app.stop().await;
}

/// The request ids of the audit rows of `action`.
async fn audit_request_ids(app: &TestApp, action: &str) -> Vec<String> {
    use sea_orm::{ConnectionTrait, Database, Statement};
    let conn = Database::connect(&app.db.url).await.unwrap();
    let backend = conn.get_database_backend();
    let sql = match backend {
        sea_orm::DatabaseBackend::Postgres => "SELECT request_id FROM audit_events WHERE action = $1",
        _ => "SELECT request_id FROM audit_events WHERE action = ?",
    };
    let rows =
        conn.query_all_raw(Statement::from_sql_and_values(backend, sql, [action.into()])).await.unwrap();
    conn.close().await.unwrap();
    rows.iter().map(|row| row.try_get::<String>("", "request_id").unwrap()).collect()
}
