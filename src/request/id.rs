//! Request ids: the caller's `x-request-id` when it is acceptable, else a
//! fresh UUID (v4), set by tower-http's request-id layers and returned on
//! every response, errors included.
//!
//! [`DropInvalidIdLayer`] runs first and removes an id that is not 1 to 128
//! visible ASCII characters, so such an id is replaced and never echoed;
//! tower-http's `SetRequestId` then keeps the header or makes one with
//! [`MakeUuid`], and records it as a [`RequestId`] extension, where every
//! later layer and handler reads it ([`of`]).

use http::{HeaderName, Request};
use tower_http::request_id::{MakeRequestId, RequestId};

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

/// Makes a fresh id: a random UUID (version 4).
#[derive(Clone, Copy, Debug, Default)]
pub struct MakeUuid;

impl MakeRequestId for MakeUuid {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let id = uuid::Uuid::new_v4().hyphenated().to_string();
        http::HeaderValue::from_str(&id).ok().map(RequestId::new)
    }
}

/// Removes a request's `x-request-id` when [`accept`] refuses it.
#[derive(Clone, Copy, Debug, Default)]
pub struct DropInvalidIdLayer;

impl<S> tower::Layer<S> for DropInvalidIdLayer {
    type Service = DropInvalidId<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DropInvalidId(inner)
    }
}

/// The service of [`DropInvalidIdLayer`].
#[derive(Clone, Copy, Debug)]
pub struct DropInvalidId<S>(S);

impl<S, B> tower::Service<Request<B>> for DropInvalidId<S>
where
    S: tower::Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let headers = request.headers_mut();
        let mut values = headers.get_all(&HEADER).iter();
        let keep =
            matches!((values.next(), values.next()), (Some(one), None) if accept(one.as_bytes()).is_some());
        if !keep {
            headers.remove(&HEADER);
        }
        self.0.call(request)
    }
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
        let request = Request::new(());
        let id = MakeUuid.make_request_id(&request).unwrap();
        let id = id.header_value().to_str().unwrap().to_owned();
        assert_eq!(id.len(), 36);
        assert_eq!(accept(id.as_bytes()), Some(id.as_str()));
        assert_eq!(&id[14..15], "4");
        let other = MakeUuid.make_request_id(&request).unwrap();
        assert_ne!(other.header_value().to_str().unwrap(), id);
    }
}
