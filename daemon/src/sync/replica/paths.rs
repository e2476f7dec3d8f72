//! Paths from the wire: relative, normalized, and checked before they touch
//! a disk. `..`, absolute paths, NUL, empty or dot components and our own
//! reserved names are refused.

use std::path::{Component, PathBuf};

use crate::sync::replica::ignore::is_reserved_name;

const MAX_PATH_BYTES: usize = 4096;

/// Checks a wire path and returns it as a relative `PathBuf`.
pub fn check(path: &str) -> Result<PathBuf, String> {
    if path.is_empty() || path.len() > MAX_PATH_BYTES {
        return Err(format!("path must be 1 to {MAX_PATH_BYTES} bytes"));
    }
    if path.contains('\0') {
        return Err("path holds a NUL byte".into());
    }
    if path.starts_with('/') || path.contains('\\') {
        return Err("path must be relative, with '/' separators".into());
    }
    for component in path.split('/') {
        match component {
            "" => return Err("path has an empty component".into()),
            "." | ".." => return Err("path has a '.' or '..' component".into()),
            name if is_reserved_name(name) => {
                return Err(format!("'{name}' is reserved for sidekey"));
            }
            _ => {}
        }
    }
    let relative = PathBuf::from(path);
    if !relative
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err("path is not normalized".into());
    }
    Ok(relative)
}

/// The key two names collide on, on a case-insensitive file system.
pub fn case_key(path: &str) -> String {
    path.to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_and_odd_paths_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/./b",
            "a//b",
            "a/",
            "a\0b",
            "a\\b",
            ".sidekey-replica",
            "d/.sidekey-tmp-1",
        ] {
            assert!(check(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(check(&"a".repeat(5000)).is_err());
    }

    #[test]
    fn ordinary_paths_pass() {
        for good in [
            "a",
            "a/b/c.txt",
            "name with spaces/ünïcødé.md",
            ".env",
            "skills/x.sh",
            "a/..b",
            "...",
            "dir.d/f",
        ] {
            assert_eq!(check(good).unwrap(), PathBuf::from(good));
        }
    }
}
