//! The time limit of a call: `request_timeout`, or the gRPC client's own
//! `grpc-timeout` when that is shorter. [`super::observe`] enforces it and
//! answers a call past it — `DEADLINE_EXCEEDED` for gRPC, 504 with the S4E
//! envelope for HTTP — with the request id, counted and logged like any
//! other call.

use std::time::Duration;

use http::HeaderMap;

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
