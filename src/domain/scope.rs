//! Scopes: `resource:action` strings, with `resource:*` and `*` as
//! wildcards. portcullis's own management permissions live in the reserved
//! `portcullis:` namespace.

/// Every scope (the admin role's).
pub const ALL: &str = "*";
/// Every management permission of portcullis.
pub const PORTCULLIS_ALL: &str = "portcullis:*";
/// Read users.
pub const USERS_READ: &str = "portcullis:users:read";
/// Create and change users, set passwords.
pub const USERS_WRITE: &str = "portcullis:users:write";
/// List any user's sessions.
pub const SESSIONS_READ: &str = "portcullis:sessions:read";
/// Revoke any user's sessions.
pub const SESSIONS_WRITE: &str = "portcullis:sessions:write";
/// Read the audit log.
pub const AUDIT_READ: &str = "portcullis:audit:read";
/// Read the API keys of other owners.
pub const KEYS_READ: &str = "portcullis:keys:read";
/// Create, change, rotate and revoke the API keys of other owners.
pub const KEYS_WRITE: &str = "portcullis:keys:write";
/// Log users in on their behalf and bypass the captcha (Rehive's admin login).
pub const ADMIN_LOGIN: &str = "portcullis:admin_login";

/// Whether `held` grants `wanted`. A held scope grants `wanted` when equal to
/// it, when it is `*`, or when it ends in `:*` and `wanted` starts with the
/// part before the `*` (so `portcullis:*` grants `portcullis:users:read`).
#[must_use]
pub fn grants(held: &[String], wanted: &str) -> bool {
    held.iter().any(|scope| {
        scope == wanted
            || scope == "*"
            || scope.strip_suffix('*').is_some_and(|stem| stem.ends_with(':') && wanted.starts_with(stem))
    })
}

/// The first of `required` that `held` does not grant.
#[must_use]
pub fn first_missing<'a>(held: &[String], required: &'a [String]) -> Option<&'a str> {
    required.iter().map(String::as_str).find(|wanted| !grants(held, wanted))
}

/// Checks a scope string's shape: `resource:action`, lower-case letters,
/// digits, `_`, `-`, `.`, with `:` separators; `*` only as the whole last part.
///
/// # Errors
/// A description of what is wrong.
pub fn check_syntax(scope: &str) -> Result<(), String> {
    if scope == "*" {
        return Ok(());
    }
    if scope.is_empty() || scope.len() > 128 {
        return Err("must be 1 to 128 characters".into());
    }
    let parts: Vec<&str> = scope.split(':').collect();
    if parts.len() < 2 {
        return Err(format!("{scope:?} is not of the form resource:action"));
    }
    for (i, part) in parts.iter().enumerate() {
        let last = i == parts.len() - 1;
        let ok = (last && *part == "*")
            || (!part.is_empty()
                && part.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'.')
                }));
        if !ok {
            return Err(format!("{scope:?} has an invalid part {part:?}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(scopes: &[&str]) -> Vec<String> {
        scopes.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn exact_and_wildcard_grants() {
        assert!(grants(&held(&["assets:read"]), "assets:read"));
        assert!(!grants(&held(&["assets:read"]), "assets:write"));
        assert!(grants(&held(&["assets:*"]), "assets:write"));
        assert!(!grants(&held(&["assets:*"]), "assetsx:write"));
        assert!(grants(&held(&["*"]), "anything:at_all"));
        assert!(grants(&held(&[PORTCULLIS_ALL]), USERS_WRITE));
        assert!(!grants(&held(&[]), "assets:read"));
        // A wildcard must follow a separator: `asse*` is not a prefix match.
        assert!(!grants(&held(&["asse*"]), "assets:read"));
    }

    #[test]
    fn first_missing_names_the_gap() {
        let required = held(&["a:read", "b:write"]);
        assert_eq!(first_missing(&held(&["a:read"]), &required), Some("b:write"));
        assert_eq!(first_missing(&held(&["a:*", "b:*"]), &required), None);
    }

    #[test]
    fn scope_syntax() {
        for good in ["*", "assets:read", "assets:*", "portcullis:users:read", "a-b.c:d_e"] {
            check_syntax(good).unwrap();
        }
        for bad in ["", "assets", "Assets:read", "assets:", ":read", "a:*:b", "a b:c", "a:re*d"] {
            assert!(check_syntax(bad).is_err(), "{bad:?} accepted");
        }
    }
}
