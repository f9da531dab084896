//! What the two checks a gateway asks portcullis share: Envoy's
//! `ext_authz` `Check` ([`crate::grpc::envoy`]) and forward auth for nginx,
//! Traefik and Caddy ([`crate::http::forward_auth`]).
//!
//! - the credential of the HTTP request the gateway describes: its headers
//!   and the token query parameter of its target ([`credential`],
//!   [`query_of`]), found by [`credential::find`] as for `ValidateToken`;
//! - the scopes a route requires, comma- or space-separated
//!   ([`scope_list`]);
//! - the identity headers an allowed request carries to its upstream, which
//!   replace any the client sent ([`IdentityHeaders::of`]).
//!
//! Both checks then validate with `Domain::validate_token` (the rule and
//! cache of `ValidateToken`) and deny with the error table's `Problem`. No
//! tonic and no axum here: each edge writes its own wire shape.

use std::borrow::Cow;

use crate::domain::{CredentialId, Error, Principal, credential};

/// Names of the headers an allowed request gets for its upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityHeaders {
    /// The user's id.
    pub user_id: String,
    /// The user's role (`admin`, `user`).
    pub role: String,
    /// The credential's scopes, space-separated.
    pub scopes: String,
    /// The session id, for a session token.
    pub session_id: String,
    /// The key id, for an API key.
    pub key_id: String,
}

/// The identity headers of one allowed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity<'a> {
    /// Headers to set, replacing any of the same name; never an empty value.
    pub set: Vec<(&'a str, String)>,
    /// The identity headers that do not apply (the other credential's id,
    /// scopes when there are none): a gateway that can must remove any the
    /// client sent.
    pub absent: Vec<&'a str>,
}

impl IdentityHeaders {
    /// The names `config` gives them (`envoy_*_header`).
    #[must_use]
    pub fn from_config(config: &crate::config::Config) -> Self {
        Self {
            user_id: config.envoy_user_id_header.clone(),
            role: config.envoy_role_header.clone(),
            scopes: config.envoy_scopes_header.clone(),
            session_id: config.envoy_session_id_header.clone(),
            key_id: config.envoy_key_id_header.clone(),
        }
    }

    /// Every name, in a fixed order.
    #[must_use]
    pub fn names(&self) -> [&str; 5] {
        [&self.user_id, &self.role, &self.scopes, &self.session_id, &self.key_id]
    }

    /// The headers that tell an upstream who `principal` is: user id, role,
    /// scopes (space-separated), and the session or the key id.
    #[must_use]
    pub fn of(&self, principal: &Principal) -> Identity<'_> {
        let credential = match principal.credential {
            CredentialId::Session(id) => (self.session_id.as_str(), id.to_string()),
            CredentialId::ApiKey(id) => (self.key_id.as_str(), id.to_string()),
        };
        let set: Vec<(&str, String)> = [
            (self.user_id.as_str(), principal.user_id.to_string()),
            (self.role.as_str(), principal.role.as_str().to_owned()),
            (self.scopes.as_str(), principal.scopes.join(" ")),
            credential,
        ]
        .into_iter()
        .filter(|(_, value)| !value.is_empty())
        .collect();
        let absent = self.names().into_iter().filter(|name| set.iter().all(|(set, _)| set != name)).collect();
        Identity { set, absent }
    }
}

/// The query of a request target — `/path?query#fragment`, or an absolute
/// URI — if it has one.
#[must_use]
pub fn query_of(target: &str) -> Option<&str> {
    let target = target.split_once('#').map_or(target, |(before, _)| before);
    target.split_once('?').map(|(_, query)| query)
}

/// The credential of a request a gateway describes: in its `headers` (name,
/// value), or in the token query parameter of its `queries` (more than one
/// when the gateway names the target twice; they must agree).
///
/// # Errors
/// As [`credential::find`]: `Unauthenticated(Missing)` when there is none,
/// `Unauthenticated(Ambiguous)` when two places differ, `InvalidArgument`
/// for an oversized header or query.
pub fn credential<'a>(
    sources: &credential::Sources,
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    queries: &[&str],
) -> Result<String, Error> {
    let query = match queries {
        [] => Cow::Borrowed(""),
        [one] => Cow::Borrowed(*one),
        many => Cow::Owned(many.join("&")),
    };
    credential::find(sources, headers, &query)
}

/// The scopes in `list`, comma- or space-separated, empty parts dropped.
#[must_use]
pub fn scope_list(list: &str) -> Vec<String> {
    list.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|scope| !scope.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AuthFailure, Email, Role};

    fn names() -> IdentityHeaders {
        IdentityHeaders {
            user_id: "x-user".into(),
            role: "x-role".into(),
            scopes: "x-scopes".into(),
            session_id: "x-session".into(),
            key_id: "x-key".into(),
        }
    }

    fn principal(credential: CredentialId, scopes: &[&str]) -> Principal {
        Principal {
            credential,
            user_id: crate::domain::UserId::new(7),
            email: Email::parse("a@example.com", "email").unwrap(),
            role: Role::User,
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            expires_at: None,
            auth_methods: Vec::new(),
        }
    }

    #[test]
    fn a_session_sets_its_id_and_removes_the_key_id() {
        let names = names();
        let identity = names.of(&principal(CredentialId::Session(crate::domain::SessionId::new(3)), &[]));
        assert_eq!(
            identity.set,
            [("x-user", "7".to_owned()), ("x-role", "user".to_owned()), ("x-session", "3".to_owned())]
        );
        assert_eq!(identity.absent, ["x-scopes", "x-key"]);
    }

    #[test]
    fn a_key_sets_its_id_and_scopes() {
        let names = names();
        let identity =
            names.of(&principal(CredentialId::ApiKey(crate::domain::KeyId::new(9)), &["a:read", "b:write"]));
        assert_eq!(
            identity.set,
            [
                ("x-user", "7".to_owned()),
                ("x-role", "user".to_owned()),
                ("x-scopes", "a:read b:write".to_owned()),
                ("x-key", "9".to_owned()),
            ]
        );
        assert_eq!(identity.absent, ["x-session"]);
    }

    #[test]
    fn queries_of_targets() {
        assert_eq!(query_of("/a?token=x&b=1"), Some("token=x&b=1"));
        assert_eq!(query_of("/a?token=x#frag?no"), Some("token=x"));
        assert_eq!(query_of("https://h.example/a?token=x"), Some("token=x"));
        assert_eq!(query_of("/a#x?token=y"), None);
        assert_eq!(query_of("/a"), None);
        assert_eq!(query_of(""), None);
    }

    #[test]
    fn the_credential_is_found_in_headers_or_queries() {
        let sources = credential::Sources { cookie_name: "s".into(), query_param: "token".into() };
        let found = |headers: &[(&str, &str)], queries: &[&str]| {
            credential(&sources, headers.iter().copied(), queries)
        };
        assert_eq!(found(&[("authorization", "Bearer abc")], &[]).unwrap(), "abc");
        assert_eq!(found(&[], &["a=1&token=abc"]).unwrap(), "abc");
        assert_eq!(found(&[], &["token=abc", "token=abc"]).unwrap(), "abc");
        assert!(matches!(
            found(&[], &["token=abc", "token=xyz"]),
            Err(Error::Unauthenticated(AuthFailure::Ambiguous))
        ));
        assert!(matches!(
            found(&[("x-api-key", "abc")], &["token=xyz"]),
            Err(Error::Unauthenticated(AuthFailure::Ambiguous))
        ));
        assert!(matches!(found(&[], &[""]), Err(Error::Unauthenticated(AuthFailure::Missing))));
    }

    #[test]
    fn scopes_split_on_commas_and_spaces() {
        assert_eq!(
            scope_list(" assets:read,assets:write  billing:read ,"),
            ["assets:read", "assets:write", "billing:read"]
        );
        assert!(scope_list("").is_empty());
        assert!(scope_list(" , ").is_empty());
    }
}
