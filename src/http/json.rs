//! JSON in and out of the HTTP API: request bodies read strictly, answers
//! in the dialects' success envelopes.
//!
//! A body is accepted only as `content-type: application/json` (a missing
//! or other type, form encoding included, is 415 `unsupported_media_type`:
//! this also keeps cross-site HTML forms, which cannot send JSON, from
//! reaching a handler), at most `max_message_bytes` long (413
//! `message_too_large`, from the router's body limit), UTF-8 JSON that
//! decodes into the handler's type with no unknown field and no field twice
//! (400 `invalid_argument` naming the field). Messages never echo a value
//! the client sent: a password in the wrong place stays out of the answer.

use axum::{
    body::{Body, Bytes},
    extract::{FromRequest as _, Request},
    response::{IntoResponse, Response},
};
use http::{StatusCode, header, request::Parts};
use serde::{Serialize, de::DeserializeOwned};

use crate::errors::{self, Problem};

/// Every field name a request body of the API has: a decoding error names
/// the field at fault when it is one of these, else `body`.
const FIELDS: &[&str] = &[
    "email",
    "password",
    "captcha_response",
    "bypass_captcha",
    "vendor",
    "mfa_token",
    "code",
    "method",
    "user",
    "company",
    "name",
    "scopes",
    "environment",
    "expires_at",
    "overlap_seconds",
];

/// The body of the request whose head is `parts`, decoded as `T`.
///
/// # Errors
/// 415 without a JSON content type, 413 over the body limit, 400 for a body
/// that does not decode as `T`.
pub async fn read<T: DeserializeOwned>(parts: &Parts, body: Body) -> Result<T, Problem> {
    let bytes = bytes(parts, body).await?;
    if !is_json(parts) {
        return Err(unsupported_media_type());
    }
    decode(&bytes)
}

/// For a call that takes no body: an empty body, or a JSON object with
/// nothing in it (`{}`), is accepted.
///
/// # Errors
/// As [`read`], for a body that is not empty.
pub async fn read_empty(parts: &Parts, body: Body) -> Result<(), Problem> {
    read_optional::<Nothing>(parts, body).await.map(|Nothing {}| ())
}

/// A body that may be left out: an empty body gives `T::default()`.
///
/// # Errors
/// As [`read`], for a body that is not empty.
pub async fn read_optional<T: DeserializeOwned + Default>(parts: &Parts, body: Body) -> Result<T, Problem> {
    let bytes = bytes(parts, body).await?;
    if bytes.is_empty() {
        return Ok(T::default());
    }
    if !is_json(parts) {
        return Err(unsupported_media_type());
    }
    decode(&bytes)
}

/// An empty JSON object.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Nothing {}

/// The whole body, within the router's limit (`DefaultBodyLimit`, read
/// from the request's extensions).
async fn bytes(parts: &Parts, body: Body) -> Result<Bytes, Problem> {
    let request = Request::from_parts(parts.clone(), body);
    match Bytes::from_request(request, &()).await {
        Ok(bytes) => Ok(bytes),
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(Problem::new(
            errors::MESSAGE_TOO_LARGE,
            "the request body is larger than the server accepts (max_message_bytes)",
        )),
        Err(rejection) => {
            tracing::debug!(%rejection, "request body could not be read");
            Err(Problem::invalid("body", "could not be read"))
        }
    }
}

/// Whether the request says its body is JSON (`application/json`, with or
/// without parameters, or an `application/*+json` type).
fn is_json(parts: &Parts) -> bool {
    let Some(value) = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn unsupported_media_type() -> Problem {
    Problem::new(
        errors::UNSUPPORTED_MEDIA_TYPE,
        "the request body must be JSON, sent with `content-type: application/json`",
    )
}

/// Decodes `bytes` as `T`, naming the field at fault.
fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let field = field_of(err.path());
        Problem::invalid(field, redact(&err.into_inner().to_string()))
    })?;
    deserializer.end().map_err(|err| Problem::invalid("body", redact(&err.to_string())))?;
    Ok(value)
}

/// The known field a decoding error is about, else `body`.
fn field_of(path: &serde_path_to_error::Path) -> &'static str {
    let first = path.iter().next().and_then(|segment| match segment {
        serde_path_to_error::Segment::Map { key } => Some(key.as_str()),
        _ => None,
    });
    first.and_then(|key| FIELDS.iter().copied().find(|known| *known == key)).unwrap_or("body")
}

/// A serde message without the value the client sent: `invalid type:
/// string "hunter2", expected a boolean` becomes `invalid type: string,
/// expected a boolean`.
fn redact(message: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: ", "invalid length "] {
        if let Some(rest) = message.strip_prefix(prefix)
            && let Some((got, expected)) = rest.split_once(", expected ")
        {
            let kind = got.split([' ', '`', '"']).next().unwrap_or_default();
            let kind = if got.starts_with("floating point") { "floating point" } else { kind };
            return format!("{prefix}{kind}, expected {expected}");
        }
    }
    message.to_owned()
}

// === answers ===

/// `{"status":"success","data":…}` with `status`.
#[must_use]
pub fn success<T: Serialize>(status: StatusCode, data: &T) -> Response {
    reply(status, &serde_json::json!({ "status": "success", "data": data }))
}

/// `value` as a JSON answer with `status`. Answers may hold tokens and keys:
/// no cache keeps them.
#[must_use]
pub fn reply(status: StatusCode, value: &serde_json::Value) -> Response {
    let headers = [(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-store")];
    (status, headers, value.to_string()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Login {
        email: String,
        #[allow(dead_code)]
        bypass_captcha: Option<bool>,
    }

    fn problem(body: &str) -> Problem {
        decode::<Login>(body.as_bytes()).unwrap_err()
    }

    #[test]
    fn a_good_body_decodes() {
        let login: Login = decode(br#"{"email": "a@b.c", "bypass_captcha": null}"#).unwrap();
        assert_eq!(login.email, "a@b.c");
    }

    #[test]
    fn errors_name_the_field_and_never_echo_the_value() {
        let bad = problem(r#"{"email": "a@b.c", "bypass_captcha": "hunter2"}"#);
        assert_eq!(bad.violation.as_ref().unwrap().0, "bypass_captcha");
        assert!(!bad.message.contains("hunter2"), "{}", bad.message);
        assert!(bad.message.contains("invalid type: string, expected a boolean"), "{}", bad.message);
        let bad = problem(r#"{"email": 12345678}"#);
        assert_eq!(bad.violation.as_ref().unwrap().0, "email");
        assert!(!bad.message.contains("12345678"), "{}", bad.message);
    }

    #[test]
    fn unknown_duplicate_and_trailing_input_is_refused() {
        assert!(problem(r#"{"email": "a@b.c", "admin": true}"#).message.contains("unknown field `admin`"));
        assert!(problem(r#"{"email": "a@b.c", "email": "x@y.z"}"#).message.contains("duplicate field"));
        assert_eq!(problem(r#"{"email": "a@b.c"} {}"#).violation.unwrap().0, "body");
        assert_eq!(problem("email=a@b.c").violation.unwrap().0, "body");
        assert!(decode::<Login>(b"{\"email\": \"\xff\xfe\"}").is_err());
    }

    #[test]
    fn json_content_types() {
        let parts = |ct: Option<&str>| {
            let mut builder = http::Request::builder();
            if let Some(ct) = ct {
                builder = builder.header(header::CONTENT_TYPE, ct);
            }
            builder.body(()).unwrap().into_parts().0
        };
        assert!(is_json(&parts(Some("application/json"))));
        assert!(is_json(&parts(Some("Application/JSON; charset=utf-8"))));
        assert!(is_json(&parts(Some("application/merge-patch+json"))));
        assert!(!is_json(&parts(Some("application/x-www-form-urlencoded"))));
        assert!(!is_json(&parts(Some("text/plain"))));
        assert!(!is_json(&parts(None)));
    }
}
