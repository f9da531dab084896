//! Request ids: the caller's `x-request-id` when it is acceptable, else a
//! fresh UUID (v4), kept for the whole call and returned on every response,
//! errors included.
//!
//! [`keep_or_make`] runs first in [`super::observe`]: an id that is not 1 to
//! 128 visible ASCII characters (or that comes twice) is replaced, never
//! echoed; the id is then recorded as tower-http's [`RequestId`] extension,
//! where every later layer and handler reads it ([`of`]).

use http::{HeaderMap, HeaderName, HeaderValue, Request};
use tower_http::request_id::RequestId;

/// The header that carries a request id, in and out.
pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Longest request id kept, in bytes.
pub const MAX_BYTES: usize = 128;

/// `candidate` as a request id, when it is 1 to 128 bytes of visible ASCII
/// (`!` to `~`: no spaces, no control characters, nothing beyond ASCII).
#[must_use]
pub fn accept(candidate: &[u8]) -> Option<&str> {
    if candidate.is_empty()
        || candidate.len() > MAX_BYTES
        || !candidate.iter().all(|b| (0x21..=0x7e).contains(b))
    {
        return None;
    }
    std::str::from_utf8(candidate).ok()
}

/// The request id of `request`, once the request-id layers ran.
#[must_use]
pub fn of<B>(request: &Request<B>) -> Option<&str> {
    from_extensions(request.extensions())
}

/// The request id in a request's extensions (tonic handlers see those).
#[must_use]
pub fn from_extensions(extensions: &http::Extensions) -> Option<&str> {
    extensions.get::<RequestId>().and_then(|id| id.header_value().to_str().ok())
}

/// A fresh id: a random UUID (version 4), from a thread-local generator
/// seeded by the OS (no system call per id). Marked sensitive, so HTTP/2
/// sends it as a literal that is never indexed: an id seen once would only
/// push the response headers every call repeats out of the HPACK table.
#[must_use]
pub fn make() -> HeaderValue {
    let mut text = [0_u8; uuid::fmt::Hyphenated::LENGTH];
    let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
    let mut value = HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("-"));
    value.set_sensitive(true);
    value
}

/// The request's id: its `x-request-id` when that is one acceptable value,
/// else a fresh one that replaces it in `headers`.
pub fn keep_or_make(headers: &mut HeaderMap) -> HeaderValue {
    let mut values = headers.get_all(&HEADER).iter();
    if let (Some(one), None) = (values.next(), values.next())
        && accept(one.as_bytes()).is_some()
    {
        let mut kept = one.clone();
        kept.set_sensitive(true);
        return kept;
    }
    let made = make();
    headers.insert(HEADER, made.clone());
    made
}

/// Records `id` as the request's [`RequestId`] extension.
pub fn record<B>(request: &mut Request<B>, id: HeaderValue) {
    request.extensions_mut().insert(RequestId::new(id));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_ids_are_kept_and_bad_ones_refused() {
        assert_eq!(accept(b"abc-123_XYZ.~!"), Some("abc-123_XYZ.~!"));
        assert_eq!(accept("x".repeat(128).as_bytes()).map(str::len), Some(128));
        assert_eq!(accept("x".repeat(129).as_bytes()), None);
        assert_eq!(accept("x".repeat(10 * 1024).as_bytes()), None);
        assert_eq!(accept(b""), None);
        assert_eq!(accept(b"has space"), None);
        assert_eq!(accept(b"tab\there"), None);
        assert_eq!(accept(b"new\nline"), None);
        assert_eq!(accept("caf\u{e9}".as_bytes()), None);
        assert_eq!(accept(b"\x7f"), None);
    }

    #[test]
    fn made_ids_are_acceptable_uuids() {
        let id = make().to_str().unwrap().to_owned();
        assert_eq!(id.len(), 36);
        assert_eq!(accept(id.as_bytes()), Some(id.as_str()));
        assert_eq!(&id[14..15], "4");
        assert_ne!(make().to_str().unwrap(), id);
    }

    #[test]
    fn one_good_id_is_kept_and_anything_else_replaced() {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER, HeaderValue::from_static("caller-1"));
        assert_eq!(keep_or_make(&mut headers), "caller-1");
        assert_eq!(headers.get(HEADER).unwrap(), "caller-1");
        headers.append(HEADER, HeaderValue::from_static("caller-2"));
        let made = keep_or_make(&mut headers);
        assert_eq!(made.len(), 36);
        assert_eq!(headers.get_all(HEADER).iter().collect::<Vec<_>>(), [&made]);
        let mut headers = HeaderMap::new();
        headers.insert(HEADER, HeaderValue::from_static("two words"));
        let made = keep_or_make(&mut headers);
        assert_eq!(made.len(), 36);
        assert_eq!(headers.get(HEADER).unwrap(), &made);
        let mut headers = HeaderMap::new();
        assert_eq!(keep_or_make(&mut headers).len(), 36);
    }
}
