//! The token format shared by session tokens and API keys:
//! `<prefix>_<kind>_<secret><checksum>`, e.g. `pcs_sess_…`, `pcs_live_…`.
//!
//! The secret is 32 base62 characters drawn from `ring`'s CSPRNG (190 bits);
//! the checksum is the CRC-32 of everything before it, as 6 base62
//! characters. The checksum lets [`TokenFormat::parse`] refuse a mistyped or
//! truncated token without a database read, and lets secret scanners find
//! leaked tokens. Only the SHA-256 of a token is ever stored.

use ring::{
    digest,
    rand::{SecureRandom, SystemRandom},
};
use secrecy::{ExposeSecret, SecretString};

use super::records::{KeyEnvironment, TokenHash};

const ALPHABET: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const SECRET_LEN: usize = 32;
/// Secret characters shown in a key's display prefix; the rest (166 bits)
/// stays unknown.
const DISPLAY_CHARS: usize = 4;
const CHECKSUM_LEN: usize = 6;
/// Longest token this format can produce; longer input is refused unread.
pub const MAX_TOKEN_LEN: usize = 16 + 1 + 4 + 1 + SECRET_LEN + CHECKSUM_LEN;

/// What a token is for; its marker is the second part of the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenKind {
    /// A logged-in session.
    Session,
    /// A login waiting for its second factor.
    MfaPending,
    /// A production API key.
    LiveKey,
    /// A test API key.
    TestKey,
}

impl TokenKind {
    fn marker(self) -> &'static str {
        match self {
            TokenKind::Session => "sess",
            TokenKind::MfaPending => "mfa",
            TokenKind::LiveKey => "live",
            TokenKind::TestKey => "test",
        }
    }

    /// The kind of the keys of `environment`.
    #[must_use]
    pub fn of_key(environment: KeyEnvironment) -> Self {
        match environment {
            KeyEnvironment::Live => TokenKind::LiveKey,
            KeyEnvironment::Test => TokenKind::TestKey,
        }
    }

    fn from_marker(marker: &str) -> Option<Self> {
        [TokenKind::Session, TokenKind::MfaPending, TokenKind::LiveKey, TokenKind::TestKey]
            .into_iter()
            .find(|kind| kind.marker() == marker)
    }
}

/// Hashes a token: SHA-256.
fn hash(token: &str) -> TokenHash {
    let digest = digest::digest(&digest::SHA256, token.as_bytes());
    let mut bytes = [0u8; 32];
    bytes.copy_from_slice(digest.as_ref());
    TokenHash(bytes)
}

/// A token that passed the format and checksum checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedToken {
    /// Its kind.
    pub kind: TokenKind,
    /// Its hash.
    pub hash: TokenHash,
}

/// Why a token string was refused before any lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Not `<prefix>_<kind>_<secret><checksum>` with this server's prefix.
    #[error("not a token of this server")]
    Malformed,
    /// The checksum does not match: mistyped, truncated or altered.
    #[error("token checksum mismatch")]
    Checksum,
}

/// Makes and checks tokens with one configured prefix.
#[derive(Clone)]
pub struct TokenFormat {
    prefix: String,
    rng: SystemRandom,
}

impl std::fmt::Debug for TokenFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenFormat").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl TokenFormat {
    /// A format with `prefix` (validated by the configuration).
    #[must_use]
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_owned(), rng: SystemRandom::new() }
    }

    /// Makes a new random token of `kind`, and its hash.
    ///
    /// # Errors
    /// `Internal` if the system's random source fails.
    pub fn generate(&self, kind: TokenKind) -> super::Result<(SecretString, TokenHash)> {
        let mut token = String::with_capacity(MAX_TOKEN_LEN);
        token.push_str(&self.prefix);
        token.push('_');
        token.push_str(kind.marker());
        token.push('_');
        let mut filled = 0;
        let mut random = [0u8; 64];
        while filled < SECRET_LEN {
            self.rng
                .fill(&mut random)
                .map_err(|_| super::Error::Internal("system random source failed".into()))?;
            // Rejection sampling keeps every character equally likely:
            // 248 = 4 * 62 is the largest multiple of 62 below 256.
            for &byte in &random {
                if filled == SECRET_LEN {
                    break;
                }
                if byte < 248 {
                    token.push(char::from(ALPHABET[usize::from(byte % 62)]));
                    filled += 1;
                }
            }
        }
        let checksum = checksum(&token);
        token.push_str(&checksum);
        let hash = hash(&token);
        Ok((SecretString::from(token), hash))
    }

    /// Checks a token's shape and checksum, without any lookup.
    ///
    /// # Errors
    /// [`FormatError`] when it is not a well-formed token of this server.
    pub fn parse(&self, token: &str) -> Result<ParsedToken, FormatError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(FormatError::Malformed);
        }
        let rest = token
            .strip_prefix(self.prefix.as_str())
            .and_then(|rest| rest.strip_prefix('_'))
            .ok_or(FormatError::Malformed)?;
        let (marker, body) = rest.split_once('_').ok_or(FormatError::Malformed)?;
        let kind = TokenKind::from_marker(marker).ok_or(FormatError::Malformed)?;
        if body.len() != SECRET_LEN + CHECKSUM_LEN || !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(FormatError::Malformed);
        }
        let (signed, given) = token.split_at(token.len() - CHECKSUM_LEN);
        let expected = checksum(signed);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(expected.as_bytes(), given.as_bytes())) {
            return Err(FormatError::Checksum);
        }
        Ok(ParsedToken { kind, hash: hash(token) })
    }

    /// The non-secret start of a token, for recognising it in listings:
    /// `pcs_live_AbCd…`.
    #[must_use]
    pub fn display_prefix(token: &SecretString) -> String {
        let token = token.expose_secret();
        let (_, body_start) = token
            .char_indices()
            .filter(|(_, c)| *c == '_')
            .nth(1)
            .map_or((0, token.len()), |(i, _)| (i, i + 1));
        let end = (body_start + DISPLAY_CHARS).min(token.len());
        format!("{}…", &token[..end])
    }

    /// Parses a secret token; see [`TokenFormat::parse`].
    ///
    /// # Errors
    /// As [`TokenFormat::parse`].
    pub fn parse_secret(&self, token: &SecretString) -> Result<ParsedToken, FormatError> {
        self.parse(token.expose_secret())
    }
}

/// CRC-32 of `signed`, as 6 base62 digits.
fn checksum(signed: &str) -> String {
    let mut value = crc32fast::hash(signed.as_bytes());
    let mut digits = [b'0'; CHECKSUM_LEN];
    for digit in digits.iter_mut().rev() {
        *digit = ALPHABET[(value % 62) as usize];
        value /= 62;
    }
    digits.iter().map(|&b| char::from(b)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_parse_back() {
        let format = TokenFormat::new("pcs");
        for kind in [TokenKind::Session, TokenKind::MfaPending, TokenKind::LiveKey, TokenKind::TestKey] {
            let (token, hash) = format.generate(kind).unwrap();
            let parsed = format.parse_secret(&token).unwrap();
            assert_eq!(parsed.kind, kind);
            assert_eq!(parsed.hash, hash);
            assert!(token.expose_secret().starts_with(&format!("pcs_{}_", kind.marker())));
        }
    }

    #[test]
    fn display_prefix_shows_four_secret_characters() {
        let format = TokenFormat::new("pcs");
        let (token, _) = format.generate(TokenKind::LiveKey).unwrap();
        let shown = TokenFormat::display_prefix(&token);
        assert_eq!(shown.chars().count(), "pcs_live_".len() + 4 + 1, "{shown}");
        assert!(token.expose_secret().starts_with(shown.trim_end_matches('…')));
    }

    #[test]
    fn tokens_are_distinct() {
        let format = TokenFormat::new("pcs");
        let a = format.generate(TokenKind::Session).unwrap().0;
        let b = format.generate(TokenKind::Session).unwrap().0;
        assert_ne!(a.expose_secret(), b.expose_secret());
    }

    #[test]
    fn every_single_character_change_is_caught() {
        let format = TokenFormat::new("pcs");
        let (token, _) = format.generate(TokenKind::Session).unwrap();
        let token = token.expose_secret().to_owned();
        let body_start = "pcs_sess_".len();
        for i in body_start..token.len() {
            let mut bytes = token.clone().into_bytes();
            bytes[i] = if bytes[i] == b'a' { b'b' } else { b'a' };
            let altered = String::from_utf8(bytes).unwrap();
            assert!(format.parse(&altered).is_err(), "change at {i} accepted");
        }
    }

    #[test]
    fn truncated_wrong_prefix_and_junk_are_refused() {
        let format = TokenFormat::new("pcs");
        let (token, _) = format.generate(TokenKind::Session).unwrap();
        let token = token.expose_secret();
        assert_eq!(format.parse(&token[..token.len() - 1]), Err(FormatError::Malformed));
        assert_eq!(TokenFormat::new("s4e").parse(token).unwrap_err(), FormatError::Malformed);
        for junk in ["", "pcs", "pcs_", "pcs_sess_", "pcs_nope_abc", "Bearer x", "ü"] {
            assert!(format.parse(junk).is_err(), "{junk:?} accepted");
        }
        assert!(format.parse(&"a".repeat(10_000)).is_err());
    }

    #[test]
    fn kind_marker_is_covered_by_the_checksum() {
        let format = TokenFormat::new("pcs");
        let (token, _) = format.generate(TokenKind::TestKey).unwrap();
        let as_live = token.expose_secret().replacen("_test_", "_live_", 1);
        assert_eq!(format.parse(&as_live), Err(FormatError::Checksum));
    }
}
