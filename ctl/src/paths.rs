//! Reads what [`sidekey_api::paths`] needs to find the daemon's socket: the
//! environment and the two path keys of sidekeyd's config file.
//!
//! The file is read leniently: a file sidekeyd would refuse keeps sidekeyd
//! from starting, and then the "not running" error (with its socket path)
//! says more than a parse error here would.

use std::path::PathBuf;

use sidekey_api::paths::{self, NoDataDir, PlatformDirs, Sources};

/// `explicit` is `--socket` or `SIDEKEY_SOCKET_PATH`.
pub fn socket_path(explicit: Option<PathBuf>) -> Result<PathBuf, NoDataDir> {
    let (qualifier, organization, application) = paths::PROJECT;
    let platform = directories::ProjectDirs::from(qualifier, organization, application).map(|d| {
        PlatformDirs {
            config_dir: d.config_dir().to_path_buf(),
            data_dir: d.data_dir().to_path_buf(),
        }
    });
    let table: toml::Table = paths::config_file(env(paths::CONFIG_ENV), platform.as_ref())
        .and_then(|path| std::fs::read_to_string(path).ok())
        .and_then(|text| text.parse().ok())
        .unwrap_or_default();
    let key = |name: &str| table.get(name).and_then(|v| v.as_str()).map(PathBuf::from);
    Sources {
        data_dir: env(paths::DATA_DIR_ENV),
        socket_path: explicit,
        file_data_dir: key("data_dir"),
        file_socket_path: key("socket_path"),
        runtime_dir: env(paths::RUNTIME_DIR_ENV),
        platform,
    }
    .socket_path()
}

fn env(name: &str) -> Option<PathBuf> {
    std::env::var_os(name).map(PathBuf::from)
}
