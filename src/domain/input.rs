//! Hygiene of free text from outside: every string a client sends that can
//! reach the database or the logs (emails, names, the client's user agent,
//! device label and IP, captcha responses, audit filters) passes
//! [`check_text`] before any database work, whichever edge — gRPC or HTTP —
//! it came through. A NUL byte is refused by PostgreSQL's text columns, and
//! control characters forge log lines; both are refused here, as
//! `INVALID_ARGUMENT` naming the field, instead of failing later halfway
//! through a change (or its audit row).

use super::{Error, Result};

/// Checks that `value` holds no NUL or other control character (C0, DEL,
/// C1) and is at most `max_bytes` long.
///
/// # Errors
/// `INVALID_ARGUMENT` on `field`; the message never echoes the value.
pub fn check_text(field: &'static str, value: &str, max_bytes: usize) -> Result<()> {
    if value.len() > max_bytes {
        return Err(Error::invalid(field, format!("must be at most {max_bytes} bytes")));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::invalid(field, "must not contain NUL or control characters"));
    }
    Ok(())
}

/// `value` without control characters, cut to at most `max_bytes` on a
/// character boundary: for text the server takes from request headers
/// rather than from a field the client can be told about.
#[must_use]
pub fn printable_prefix(value: &str, max_bytes: usize) -> String {
    let mut out = String::with_capacity(value.len().min(max_bytes));
    for c in value.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > max_bytes {
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_and_control_characters_are_refused_and_named() {
        for bad in ["a\0b", "\0", "line\nbreak", "tab\there", "del\u{7f}", "c1\u{85}", "esc\u{1b}[31m"] {
            let err = check_text("client.user_agent", bad, 512).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument { field: "client.user_agent", .. }), "{bad:?}");
        }
        check_text("client.user_agent", "Mozilla/5.0 (X11; Linux) é ü 漢字", 512).unwrap();
        check_text("f", "", 0).unwrap();
    }

    #[test]
    fn length_is_in_bytes() {
        check_text("f", &"é".repeat(4), 8).unwrap();
        assert!(check_text("f", &"é".repeat(5), 8).is_err());
    }

    #[test]
    fn printable_prefix_drops_controls_and_cuts_on_a_boundary() {
        assert_eq!(printable_prefix("a\tb\0c", 10), "abc");
        assert_eq!(printable_prefix("ééé", 5), "éé");
        assert_eq!(printable_prefix("", 5), "");
    }
}
