//! Finds the one credential in an HTTP request (or gRPC metadata, which has
//! the same shape): `Authorization: Bearer …`, `Authorization: Token …`,
//! `X-API-Key: …`, the session cookie, the token query parameter.
//!
//! Header names match case-insensitively. Two places that carry different
//! tokens are refused as ambiguous: a proxy that adds one credential while
//! the client sent another must not have either silently win.

use super::{AuthFailure, Error, Result};

/// Where, besides the fixed headers, a credential may be.
#[derive(Clone, Debug)]
pub struct Sources {
    /// The session cookie's name.
    pub cookie_name: String,
    /// The token query parameter's name.
    pub query_param: String,
}

/// Largest header value or query string inspected; larger is refused.
const MAX_INPUT_BYTES: usize = 16 * 1024;

/// Finds the credential among `headers` (name, value) and the raw `query`.
///
/// # Errors
/// `Unauthenticated(Missing)` when there is none, `Unauthenticated(Ambiguous)`
/// when two differ, `InvalidArgument` for an oversized header or query.
pub fn find<'a, I>(sources: &Sources, headers: I, query: &str) -> Result<String>
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    let mut found: Option<String> = None;
    let mut unsupported_scheme = false;
    let mut offer = |candidate: &str| -> Result<()> {
        let candidate = candidate.trim();
        if candidate.is_empty() {
            return Ok(());
        }
        match &found {
            None => found = Some(candidate.to_owned()),
            Some(existing) if existing == candidate => {}
            Some(_) => return Err(AuthFailure::Ambiguous.into()),
        }
        Ok(())
    };

    for (name, value) in headers {
        if value.len() > MAX_INPUT_BYTES {
            return Err(Error::invalid(
                "headers",
                format!("header {name:?} is longer than {MAX_INPUT_BYTES} bytes"),
            ));
        }
        if name.eq_ignore_ascii_case("authorization") {
            let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
            if scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("token") {
                offer(rest)?;
            } else {
                unsupported_scheme = true;
            }
        } else if name.eq_ignore_ascii_case("x-api-key") {
            offer(value)?;
        } else if name.eq_ignore_ascii_case("cookie") {
            for cookie in cookie::Cookie::split_parse(value).flatten() {
                if cookie.name() == sources.cookie_name {
                    offer(cookie.value())?;
                }
            }
        }
    }

    let query = query.strip_prefix('?').unwrap_or(query);
    if query.len() > MAX_INPUT_BYTES {
        return Err(Error::invalid("query", format!("longer than {MAX_INPUT_BYTES} bytes")));
    }
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        if name == sources.query_param.as_str() {
            offer(&value)?;
        }
    }

    match found {
        Some(token) => Ok(token),
        None if unsupported_scheme => Err(AuthFailure::InvalidToken.into()),
        None => Err(AuthFailure::Missing.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources() -> Sources {
        Sources { cookie_name: "portcullis_session".into(), query_param: "token".into() }
    }

    fn find_in(headers: &[(&str, &str)], query: &str) -> Result<String> {
        find(&sources(), headers.iter().copied(), query)
    }

    #[test]
    fn each_form_is_found() {
        assert_eq!(find_in(&[("Authorization", "Bearer abc")], "").unwrap(), "abc");
        assert_eq!(find_in(&[("authorization", "bearer abc")], "").unwrap(), "abc");
        assert_eq!(find_in(&[("AUTHORIZATION", "Token abc")], "").unwrap(), "abc");
        assert_eq!(find_in(&[("X-Api-Key", "abc")], "").unwrap(), "abc");
        assert_eq!(find_in(&[("Cookie", "theme=dark; portcullis_session=abc; x=1")], "").unwrap(), "abc");
        assert_eq!(find_in(&[], "a=1&token=abc&b=2").unwrap(), "abc");
        assert_eq!(find_in(&[], "?token=ab%2Bc").unwrap(), "ab+c");
    }

    #[test]
    fn the_same_token_twice_is_fine() {
        let headers = [("Authorization", "Bearer abc"), ("X-API-Key", "abc")];
        assert_eq!(find_in(&headers, "token=abc").unwrap(), "abc");
    }

    #[test]
    fn different_tokens_are_ambiguous() {
        let headers = [("Authorization", "Bearer abc"), ("X-API-Key", "xyz")];
        assert!(matches!(find_in(&headers, ""), Err(Error::Unauthenticated(AuthFailure::Ambiguous))));
        assert!(matches!(
            find_in(&[("authorization", "Bearer abc")], "token=xyz"),
            Err(Error::Unauthenticated(AuthFailure::Ambiguous))
        ));
        assert!(matches!(
            find_in(&[], "token=abc&token=xyz"),
            Err(Error::Unauthenticated(AuthFailure::Ambiguous))
        ));
    }

    #[test]
    fn nothing_or_other_schemes_are_missing() {
        assert!(matches!(find_in(&[], ""), Err(Error::Unauthenticated(AuthFailure::Missing))));
        assert!(matches!(
            find_in(&[("Authorization", "Bearer   ")], ""),
            Err(Error::Unauthenticated(AuthFailure::Missing))
        ));
        assert!(matches!(
            find_in(&[("Authorization", "Basic dXNlcjpwYXNz")], ""),
            Err(Error::Unauthenticated(AuthFailure::InvalidToken))
        ));
        assert!(matches!(
            find_in(&[("Cookie", "other=abc")], "tok=abc"),
            Err(Error::Unauthenticated(AuthFailure::Missing))
        ));
    }

    #[test]
    fn oversized_input_is_invalid() {
        let big = "x".repeat(MAX_INPUT_BYTES + 1);
        assert!(matches!(
            find_in(&[("X-API-Key", big.as_str())], ""),
            Err(Error::InvalidArgument { field: "headers", .. })
        ));
        assert!(matches!(find_in(&[], &big), Err(Error::InvalidArgument { field: "query", .. })));
    }
}
