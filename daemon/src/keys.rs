//! Access keys and proxy tokens: minting, parsing, hashing and the display
//! form. A key's plaintext lives only in [`Secret`], which never prints it.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// The three key families. Each is its prefix plus 64 lowercase hex characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPrefix {
    /// An agent connection's key.
    Live,
    /// A sync connection's key.
    Cli,
    /// A proxy token for one (connection, credential) grant.
    Pxr,
}

impl KeyPrefix {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyPrefix::Live => "sk_live_",
            KeyPrefix::Cli => "cli_",
            KeyPrefix::Pxr => "pxr_",
        }
    }
}

const KEY_HEX_LEN: usize = 64;

/// A secret string: a key, a token or a credential value. `Debug` and
/// `Display` print `[redacted]`, and the bytes are zeroed on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(Zeroizing::new(value))
    }

    /// The plaintext. Call it only where the value is written into an
    /// outgoing request, encrypted, or shown to the daemon's owner.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// SHA-256 of a key's text: what the store and the index keep.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyHash(pub [u8; 32]);

impl KeyHash {
    pub fn of(key: &str) -> KeyHash {
        KeyHash(Sha256::digest(key.as_bytes()).into())
    }

    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(text: &str) -> Option<KeyHash> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out).ok()?;
        Some(KeyHash(out))
    }

    /// Constant-time equality, so that comparing hashes leaks no timing.
    pub fn ct_eq(&self, other: &KeyHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl std::fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyHash({}…)", &hex::encode(&self.0[..4]))
    }
}

/// A fresh key with 256 bits from the OS RNG.
pub fn mint(prefix: KeyPrefix) -> Secret {
    let mut bytes = Zeroizing::new([0u8; 32]);
    getrandom::fill(bytes.as_mut()).expect("the OS random number generator failed");
    let mut key = String::with_capacity(prefix.as_str().len() + KEY_HEX_LEN);
    key.push_str(prefix.as_str());
    key.push_str(&hex::encode(bytes.as_ref()));
    Secret::new(key)
}

/// Which family a presented key belongs to, if it is well formed.
pub fn parse(key: &str) -> Option<KeyPrefix> {
    [KeyPrefix::Live, KeyPrefix::Cli, KeyPrefix::Pxr]
        .into_iter()
        .find(|prefix| {
            key.strip_prefix(prefix.as_str()).is_some_and(|rest| {
                rest.len() == KEY_HEX_LEN
                    && rest
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            })
        })
}

/// `sk_live_…x7z9`: the prefix and the last four characters.
pub fn display(prefix: KeyPrefix, last4: &str) -> String {
    format!("{}…{}", prefix.as_str(), last4)
}

pub fn last4(key: &Secret) -> String {
    let text = key.expose();
    text[text.len() - 4..].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_keys_parse_and_differ() {
        for prefix in [KeyPrefix::Live, KeyPrefix::Cli, KeyPrefix::Pxr] {
            let a = mint(prefix);
            let b = mint(prefix);
            assert_eq!(parse(a.expose()), Some(prefix));
            assert_eq!(a.expose().len(), prefix.as_str().len() + 64);
            assert_ne!(a, b);
        }
    }

    #[test]
    fn malformed_keys_are_rejected() {
        let hex64 = "a".repeat(64);
        assert_eq!(parse(&format!("sk_live_{hex64}")), Some(KeyPrefix::Live));
        assert_eq!(parse(&format!("sk_live_{}", "A".repeat(64))), None);
        assert_eq!(parse(&format!("sk_live_{}", "a".repeat(63))), None);
        assert_eq!(parse(&format!("sk_live_{}", "a".repeat(65))), None);
        assert_eq!(parse(&format!("sk_test_{hex64}")), None);
        assert_eq!(parse(&format!("sk_live_{}g", "a".repeat(63))), None);
        assert_eq!(parse(""), None);
        assert_eq!(parse("cli_"), None);
    }

    #[test]
    fn secrets_never_print() {
        let key = mint(KeyPrefix::Live);
        assert_eq!(format!("{key:?} {key}"), "[redacted] [redacted]");
    }

    #[test]
    fn display_form_shows_prefix_and_last_four() {
        let key = Secret::new(format!("cli_{}x7z9", "0".repeat(60)));
        assert_eq!(display(KeyPrefix::Cli, &last4(&key)), "cli_…x7z9");
    }
}
