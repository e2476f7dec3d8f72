//! All of the AES-256-GCM code. A sealed value is `nonce(12) || ciphertext`,
//! with a fresh random nonce each time and the record's id as AAD, so a
//! ciphertext moved to another record fails to open.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use zeroize::Zeroizing;

pub const MASTER_KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;

pub struct Cipher(Aes256Gcm);

#[derive(Debug, thiserror::Error)]
#[error("the value does not decrypt with this master key")]
pub struct OpenError;

impl Cipher {
    pub fn new(master_key: &Zeroizing<[u8; MASTER_KEY_LEN]>) -> Cipher {
        Cipher(Aes256Gcm::new_from_slice(master_key.as_ref()).expect("a 32-byte key"))
    }

    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("the OS random number generator failed");
        let ciphertext = self
            .0
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut out = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        out
    }

    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, OpenError> {
        if sealed.len() < NONCE_LEN {
            return Err(OpenError);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| OpenError)?;
        self.0
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| OpenError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher(byte: u8) -> Cipher {
        Cipher::new(&Zeroizing::new([byte; MASTER_KEY_LEN]))
    }

    #[test]
    fn round_trip_with_fresh_nonces() {
        let c = cipher(7);
        let a = c.seal(b"conn:1", b"hello");
        let b = c.seal(b"conn:1", b"hello");
        assert_ne!(a, b);
        assert_eq!(c.open(b"conn:1", &a).unwrap().as_slice(), b"hello");
    }

    #[test]
    fn ciphertext_cannot_move_between_records() {
        let c = cipher(7);
        let sealed = c.seal(b"conn:1", b"hello");
        assert!(c.open(b"conn:2", &sealed).is_err());
    }

    #[test]
    fn wrong_key_and_truncation_fail_cleanly() {
        let sealed = cipher(7).seal(b"x", b"hello");
        assert!(cipher(8).open(b"x", &sealed).is_err());
        assert!(cipher(7).open(b"x", &sealed[..5]).is_err());
        assert!(cipher(7).open(b"x", &sealed[..sealed.len() - 1]).is_err());
    }
}
