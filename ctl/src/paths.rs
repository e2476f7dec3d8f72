//! Finds the daemon's socket the way sidekeyd does: `--socket` or
//! `SIDEKEY_SOCKET_PATH`, else the config file's `socket_path` or `data_dir`,
//! else `$XDG_RUNTIME_DIR/sidekey/sidekeyd.sock`, else `<data_dir>/sidekeyd.sock`.

use std::path::PathBuf;

pub fn socket_path(explicit: Option<PathBuf>) -> PathBuf {
    if let Some(path) = explicit {
        return path;
    }
    let dirs = directories::ProjectDirs::from("io", "sidekey", "sidekey");
    let config_file = std::env::var_os("SIDEKEY_CONFIG")
        .map(PathBuf::from)
        .or_else(|| dirs.as_ref().map(|d| d.config_dir().join("config.toml")));
    let table: toml::Table = config_file
        .and_then(|path| std::fs::read_to_string(path).ok())
        .and_then(|text| text.parse().ok())
        .unwrap_or_default();
    if let Some(path) = table.get("socket_path").and_then(|v| v.as_str()) {
        return PathBuf::from(path);
    }
    let data_dir = std::env::var_os("SIDEKEY_DATA_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            table
                .get("data_dir")
                .and_then(|v| v.as_str())
                .map(PathBuf::from)
        })
        .or_else(|| dirs.as_ref().map(|d| d.data_dir().to_path_buf()))
        .unwrap_or_else(|| PathBuf::from("."));
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(runtime) => PathBuf::from(runtime).join("sidekey").join("sidekeyd.sock"),
        None => data_dir.join("sidekeyd.sock"),
    }
}
