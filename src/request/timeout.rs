//! The time limit of a call: `request_timeout`, or the gRPC client's own
//! `grpc-timeout` when that is shorter. A call past it is answered here —
//! `DEADLINE_EXCEEDED` for gRPC, 504 with the S4E envelope for HTTP — inside
//! the request-id layers, so the answer carries the request id too.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use http::{HeaderMap, Request, Response};
use tower::{Layer, Service};

use crate::errors::{self, Problem};

/// Bounds every call by a time limit.
#[derive(Clone, Copy, Debug)]
pub struct TimeoutLayer {
    limit: Duration,
}

impl TimeoutLayer {
    /// Calls longer than `limit` are answered with a timeout.
    #[must_use]
    pub fn new(limit: Duration) -> Self {
        Self { limit }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout { inner, limit: self.limit }
    }
}

/// The service of [`TimeoutLayer`].
#[derive(Clone, Debug)]
pub struct Timeout<S> {
    inner: S,
    limit: Duration,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<Request<B>> for Timeout<S>
where
    S: Service<Request<B>, Response = Response<axum::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = Response<axum::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let grpc = super::is_grpc(request.headers());
        let limit = if grpc {
            client_timeout(request.headers()).map_or(self.limit, |t| t.min(self.limit))
        } else {
            self.limit
        };
        let call = self.inner.call(request);
        Box::pin(async move {
            match tokio::time::timeout(limit, call).await {
                Ok(result) => result,
                Err(_elapsed) => {
                    tracing::warn!(timeout = ?limit, "request timed out");
                    let problem = Problem::new(errors::DEADLINE_EXCEEDED, "request timed out");
                    Ok(if grpc { problem.into_grpc_response() } else { problem.into_s4e_response() })
                }
            }
        })
    }
}

/// The client's deadline from `grpc-timeout` (e.g. `100m`, `5S`), if valid.
#[must_use]
pub fn client_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        let headers = |v: &str| {
            let mut map = HeaderMap::new();
            map.insert("grpc-timeout", http::HeaderValue::from_str(v).unwrap());
            map
        };
        assert_eq!(client_timeout(&headers("100m")), Some(Duration::from_millis(100)));
        assert_eq!(client_timeout(&headers("5S")), Some(Duration::from_secs(5)));
        assert_eq!(client_timeout(&headers("2H")), Some(Duration::from_hours(2)));
        assert_eq!(client_timeout(&headers("5x")), None);
        assert_eq!(client_timeout(&headers("m")), None);
        assert_eq!(client_timeout(&headers("+5S")), None);
        assert_eq!(client_timeout(&headers("1234567890S")), None);
    }
}
