//! Finds the 32-byte master key, in DESIGN.md's order: systemd's
//! `LoadCredential`, then `SIDEKEY_MASTER_KEY_FILE`, then `<data_dir>/master.key`,
//! which is created with mode 0600 on first start. The only code that writes
//! a key file (`sidekeyd --init-master-key` included). Never logs the key.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::StoreError;
use super::crypto::MASTER_KEY_LEN;

pub struct MasterKey {
    pub bytes: Zeroizing<[u8; MASTER_KEY_LEN]>,
    pub path: PathBuf,
}

/// Where the master key comes from, before any file is read.
pub fn locate(data_dir: &Path) -> (PathBuf, bool) {
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        let path = Path::new(&dir).join("sidekey-master-key");
        if path.exists() {
            return (path, false);
        }
    }
    if let Some(path) = std::env::var_os("SIDEKEY_MASTER_KEY_FILE") {
        return (PathBuf::from(path), false);
    }
    (data_dir.join("master.key"), true)
}

pub fn load_or_create(data_dir: &Path) -> Result<MasterKey, StoreError> {
    let (path, may_create) = locate(data_dir);
    if may_create && !path.exists() {
        create(&path)?;
    }
    let raw = Zeroizing::new(fs::read(&path).map_err(|source| StoreError::MasterKeyRead {
        path: path.clone(),
        source,
    })?);
    let bytes = decode(&raw).ok_or_else(|| StoreError::MasterKeyFormat { path: path.clone() })?;
    Ok(MasterKey { bytes, path })
}

/// Accepts 64 hex characters (with optional surrounding whitespace) or exactly
/// 32 raw bytes.
fn decode(raw: &[u8]) -> Option<Zeroizing<[u8; MASTER_KEY_LEN]>> {
    let mut out = Zeroizing::new([0u8; MASTER_KEY_LEN]);
    let text = raw.trim_ascii();
    if text.len() == MASTER_KEY_LEN * 2 && hex::decode_to_slice(text, out.as_mut()).is_ok() {
        return Some(out);
    }
    if raw.len() == MASTER_KEY_LEN {
        out.copy_from_slice(raw);
        return Some(out);
    }
    None
}

/// `sidekeyd --init-master-key`: a new key at `path`, whose directory must
/// already exist. An existing key is never replaced, since whatever it sealed
/// could not be opened again.
pub fn init(path: &Path) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(dir) if dir != Path::new("") => dir,
        _ => Path::new("."),
    };
    let Err(source) = write_new(path) else {
        return Ok(());
    };
    let (path, dir) = (path.display(), dir.display());
    Err(match source.kind() {
        ErrorKind::AlreadyExists => anyhow::anyhow!(
            "a master key already exists at {path} and is left as it is; \
             sidekeyd never replaces one, since the store it sealed could not be opened again"
        ),
        ErrorKind::NotFound => anyhow::anyhow!(
            "cannot create the master key {path}: the directory {dir} does not exist; \
             create it first (mkdir -m 0700 {dir}), or choose another --master-key-file"
        ),
        ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem => anyhow::anyhow!(
            "cannot create the master key {path}: {dir} is not writable ({source}); \
             run this as a user who may write there, or choose another --master-key-file"
        ),
        _ => anyhow::anyhow!("cannot create the master key {path}: {source}"),
    })
}

fn create(path: &Path) -> Result<(), StoreError> {
    write_new(path).map_err(|source| StoreError::MasterKeyWrite {
        path: path.to_path_buf(),
        source,
    })
}

/// A fresh key in hex at `path`, which must not exist yet.
fn write_new(path: &Path) -> std::io::Result<()> {
    let mut bytes = Zeroizing::new([0u8; MASTER_KEY_LEN]);
    getrandom::fill(bytes.as_mut()).expect("the OS random number generator failed");
    let text = Zeroizing::new(format!("{}\n", hex::encode(bytes.as_ref())));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    let filled = (|| {
        // The mode above is filtered by the umask; set it exactly.
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()
    })();
    // A half-written key would be refused at start and block a retry.
    if filled.is_err() {
        let _ = fs::remove_file(path);
    }
    filled
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_hex_and_raw_forms() {
        let hex_form = format!("{}\n", "ab".repeat(32));
        assert_eq!(decode(hex_form.as_bytes()).unwrap()[0], 0xab);
        assert_eq!(decode(&[9u8; 32]).unwrap()[31], 9);
        assert!(decode(b"short").is_none());
        assert!(decode("zz".repeat(32).as_bytes()).is_none());
    }
}
