//! Secrets handed out once (agent keys, admin tokens) and the hashes kept in their place.

use rand::distr::{Alphanumeric, SampleString};
use sha2::{Digest, Sha256};

/// Random characters in a secret: 43 alphanumerics carry about 256 bits.
const SECRET_CHARS: usize = 43;
/// How much of a secret is kept in clear to tell keys apart in listings.
const DISPLAY_PREFIX_CHARS: usize = 10;

/// Lowercase hex SHA-256 of a secret: what the store keeps and compares. The same as
/// `key_sha256` in `palisade.toml`.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A fresh secret: `kind` (such as `pk_`) and random alphanumerics from the thread-local CSPRNG.
pub(crate) fn generate(kind: &str) -> String {
    let mut s = String::with_capacity(kind.len() + SECRET_CHARS);
    s.push_str(kind);
    Alphanumeric.append_string(&mut rand::rng(), &mut s, SECRET_CHARS);
    s
}

/// The part of a secret shown in listings.
pub(crate) fn display_prefix(secret: &str) -> String {
    secret.chars().take(DISPLAY_PREFIX_CHARS).collect()
}

/// A fresh row id: `kind` and 16 random alphanumerics.
pub(crate) fn new_id(kind: &str) -> String {
    let mut s = String::with_capacity(kind.len() + 16);
    s.push_str(kind);
    Alphanumeric.append_string(&mut rand::rng(), &mut s, 16);
    s
}

/// Whether `s` looks like a hex SHA-256; returns it lowercased.
pub(crate) fn normalize_sha256(s: &str) -> Option<String> {
    let s = s.trim();
    (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())).then(|| s.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_distinct_and_shaped() {
        let a = generate("pk_");
        let b = generate("pk_");
        assert_ne!(a, b);
        assert_eq!(a.len(), 3 + SECRET_CHARS);
        assert!(a[3..].chars().all(|c| c.is_ascii_alphanumeric()));
        assert_eq!(display_prefix(&a), a[..DISPLAY_PREFIX_CHARS]);
    }

    #[test]
    fn hash_is_hex_sha256() {
        assert_eq!(
            hash_secret("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            normalize_sha256(" BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD "),
            Some(hash_secret("abc"))
        );
        assert_eq!(normalize_sha256("abc"), None);
    }
}
