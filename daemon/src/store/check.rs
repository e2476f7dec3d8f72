//! `store.check`: a small file beside the store that holds the schema version
//! and a value sealed with the master key. It is read before sled opens, so a
//! wrong key or a too-new store is refused without touching the store.

use std::io::Write;
use std::path::Path;

use super::SCHEMA_VERSION;
use super::crypto::Cipher;

const AAD: &[u8] = b"store.check";
const PLAINTEXT: &[u8] = b"sidekey master key check v1";

pub enum Failure {
    WrongKey,
    TooNew(u32),
    Unreadable,
}

/// The file is `<schema version> <hex of sealed value>\n`.
pub fn verify(bytes: &[u8], cipher: &Cipher) -> Result<(), Failure> {
    let text = std::str::from_utf8(bytes).map_err(|_| Failure::Unreadable)?;
    let (version, sealed) = text.trim().split_once(' ').ok_or(Failure::Unreadable)?;
    let version: u32 = version.parse().map_err(|_| Failure::Unreadable)?;
    if version > SCHEMA_VERSION {
        return Err(Failure::TooNew(version));
    }
    let sealed = hex::decode(sealed).map_err(|_| Failure::Unreadable)?;
    match cipher.open(AAD, &sealed) {
        Ok(plain) if plain.as_slice() == PLAINTEXT => Ok(()),
        _ => Err(Failure::WrongKey),
    }
}

/// Written once, when the store is created: temp file, fsync, rename.
pub fn write(path: &Path, cipher: &Cipher) -> std::io::Result<()> {
    let text = format!(
        "{SCHEMA_VERSION} {}\n",
        hex::encode(cipher.seal(AAD, PLAINTEXT))
    );
    let tmp = path.with_extension("check.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
