//! Secrets at rest: TOTP secrets are sealed with an AEAD
//! (ChaCha20-Poly1305 from `ring`, a random nonce per seal, the row's
//! identity as associated data), and one-time codes are stored as
//! HMAC-SHA-256 digests. Both keys are derived from one 32-byte master key.

use ring::{
    aead::{self, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey},
    hmac,
    rand::{SecureRandom, SystemRandom},
};
use zeroize::Zeroizing;

use super::{Error, Result};

/// Length of the master key, in bytes.
pub const KEY_LEN: usize = 32;
const NONCE_LEN: usize = aead::NONCE_LEN;

/// Seals secrets and digests codes with keys derived from the master key.
pub struct Sealer {
    aead: LessSafeKey,
    mac: hmac::Key,
    rng: SystemRandom,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<keys redacted>)")
    }
}

impl Sealer {
    /// Derives the sealing and digest keys from `master`.
    ///
    /// # Errors
    /// `Internal` if `ring` refuses the derived key (it cannot).
    pub fn new(master: &[u8; KEY_LEN]) -> Result<Self> {
        let root = hmac::Key::new(hmac::HMAC_SHA256, master);
        let derive = |label: &[u8]| Zeroizing::new(hmac::sign(&root, label).as_ref().to_vec());
        let aead_key = derive(b"portcullis seal v1");
        let mac_key = derive(b"portcullis code digest v1");
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &aead_key)
            .map_err(|_| Error::Internal("could not build the sealing key".into()))?;
        Ok(Self {
            aead: LessSafeKey::new(unbound),
            mac: hmac::Key::new(hmac::HMAC_SHA256, &mac_key),
            rng: SystemRandom::new(),
        })
    }

    /// Encrypts `plaintext`, bound to `context` (e.g. `totp:42`).
    ///
    /// # Errors
    /// `Internal` if the random source fails.
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| Error::Internal("system random source failed".into()))?;
        let mut buffer = plaintext.to_vec();
        self.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut buffer,
            )
            .map_err(|_| Error::Internal("sealing failed".into()))?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&buffer);
        Ok(sealed)
    }

    /// Decrypts what [`Sealer::seal`] made with the same `context`.
    ///
    /// # Errors
    /// `Internal` when the data was altered, sealed for another context, or
    /// sealed with another key (a changed `mfa_key`).
    pub fn open(&self, context: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        if sealed.len() < NONCE_LEN {
            return Err(Error::Internal("sealed value too short".into()));
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| Error::Internal("bad nonce".into()))?;
        let mut buffer = Zeroizing::new(ciphertext.to_vec());
        let plaintext_len = self
            .aead
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut buffer)
            .map_err(|_| Error::Internal("a sealed secret could not be opened: was mfa_key changed?".into()))?
            .len();
        buffer.truncate(plaintext_len);
        Ok(buffer)
    }

    /// The digest stored for a one-time code of `purpose`.
    #[must_use]
    pub fn digest(&self, purpose: &str, code: &str) -> [u8; 32] {
        let mut context = hmac::Context::with_key(&self.mac);
        context.update(purpose.as_bytes());
        context.update(b":");
        context.update(code.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(context.sign().as_ref());
        out
    }

    /// Fills `out` from the CSPRNG.
    ///
    /// # Errors
    /// `Internal` if the random source fails.
    pub fn random(&self, out: &mut [u8]) -> Result<()> {
        self.rng.fill(out).map_err(|_| Error::Internal("system random source failed".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_in_their_context_and_key() {
        let sealer = Sealer::new(&[7u8; KEY_LEN]).unwrap();
        let boxed = sealer.seal("totp:1", b"secret bytes").unwrap();
        assert!(!boxed.windows(12).any(|w| w == b"secret bytes"));
        assert_eq!(&*sealer.open("totp:1", &boxed).unwrap(), b"secret bytes");
        assert!(sealer.open("totp:2", &boxed).is_err(), "moved to another user's row");
        let other = Sealer::new(&[8u8; KEY_LEN]).unwrap();
        assert!(other.open("totp:1", &boxed).is_err(), "another key");
        let mut altered = boxed.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        assert!(sealer.open("totp:1", &altered).is_err());
        assert!(sealer.open("totp:1", &[1, 2, 3]).is_err());
    }

    #[test]
    fn seals_differ_each_time() {
        let sealer = Sealer::new(&[7u8; KEY_LEN]).unwrap();
        assert_ne!(sealer.seal("c", b"x").unwrap(), sealer.seal("c", b"x").unwrap());
    }

    #[test]
    fn digests_depend_on_key_purpose_and_code() {
        let a = Sealer::new(&[1u8; KEY_LEN]).unwrap();
        let b = Sealer::new(&[2u8; KEY_LEN]).unwrap();
        assert_eq!(a.digest("email", "12345678"), a.digest("email", "12345678"));
        assert_ne!(a.digest("email", "12345678"), a.digest("recovery", "12345678"));
        assert_ne!(a.digest("email", "12345678"), a.digest("email", "12345679"));
        assert_ne!(a.digest("email", "12345678"), b.digest("email", "12345678"));
    }
}
