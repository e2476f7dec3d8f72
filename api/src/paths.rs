//! Where sidekeyd's config file, data dir and control socket are, decided in
//! one place for both binaries. Pure: each binary reads the environment and
//! its config file, then asks here, so the two can never disagree on where
//! the socket is.

use std::fmt;
use std::path::{Path, PathBuf};

/// The `directories::ProjectDirs::from` arguments that name sidekey's
/// platform dirs (`~/.config/sidekey`, `~/.local/share/sidekey` on Linux).
pub const PROJECT: (&str, &str, &str) = ("io", "sidekey", "sidekey");

/// Names the config file, overriding the platform one.
pub const CONFIG_ENV: &str = "SIDEKEY_CONFIG";
/// Overrides the config file's `data_dir`.
pub const DATA_DIR_ENV: &str = "SIDEKEY_DATA_DIR";
/// Overrides the config file's `socket_path`.
pub const SOCKET_PATH_ENV: &str = "SIDEKEY_SOCKET_PATH";
/// The per-user runtime dir the default socket lives under.
pub const RUNTIME_DIR_ENV: &str = "XDG_RUNTIME_DIR";

/// sidekey's platform dirs, as `directories` found them for this user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformDirs {
    pub config_dir: PathBuf,
    pub data_dir: PathBuf,
}

/// Everything the paths depend on, already read by the caller. An empty
/// value counts as unset, as an empty `XDG_RUNTIME_DIR` does for XDG.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sources {
    /// `--data-dir` or `SIDEKEY_DATA_DIR`.
    pub data_dir: Option<PathBuf>,
    /// `--socket-path` (sidekeyctl's `--socket`) or `SIDEKEY_SOCKET_PATH`.
    pub socket_path: Option<PathBuf>,
    /// The config file's `data_dir`.
    pub file_data_dir: Option<PathBuf>,
    /// The config file's `socket_path`.
    pub file_socket_path: Option<PathBuf>,
    /// `$XDG_RUNTIME_DIR`.
    pub runtime_dir: Option<PathBuf>,
    /// `None` when there is no home directory to find them from.
    pub platform: Option<PlatformDirs>,
}

/// There is no home directory, and nothing else says where the data dir is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoDataDir;

impl fmt::Display for NoDataDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no home directory to put the data dir in; set HOME, data_dir in the config, or {DATA_DIR_ENV}"
        )
    }
}

impl std::error::Error for NoDataDir {}

/// `--config` or `SIDEKEY_CONFIG`, else `config.toml` in the platform config
/// dir (which may not exist: every key has a default).
pub fn config_file(explicit: Option<PathBuf>, platform: Option<&PlatformDirs>) -> Option<PathBuf> {
    set(explicit).or_else(|| platform.map(|dirs| dirs.config_dir.join("config.toml")))
}

impl Sources {
    /// The flag or env, else the config file, else the platform data dir.
    pub fn data_dir(&self) -> Result<PathBuf, NoDataDir> {
        set(self.data_dir.clone())
            .or_else(|| set(self.file_data_dir.clone()))
            .or_else(|| self.platform.as_ref().map(|dirs| dirs.data_dir.clone()))
            .ok_or(NoDataDir)
    }

    /// The flag or env, else the config file, else
    /// `$XDG_RUNTIME_DIR/sidekey/sidekeyd.sock`, else `<data_dir>/sidekeyd.sock`.
    /// Fails only when it falls through to a data dir there is none of.
    pub fn socket_path(&self) -> Result<PathBuf, NoDataDir> {
        if let Some(path) =
            set(self.socket_path.clone()).or_else(|| set(self.file_socket_path.clone()))
        {
            return Ok(path);
        }
        match set(self.runtime_dir.clone()) {
            Some(runtime) => Ok(runtime.join("sidekey").join("sidekeyd.sock")),
            None => Ok(self.data_dir()?.join("sidekeyd.sock")),
        }
    }
}

fn set(path: Option<PathBuf>) -> Option<PathBuf> {
    path.filter(|p| p != Path::new(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(path: &str) -> Option<PathBuf> {
        Some(PathBuf::from(path))
    }

    fn platform() -> Option<PlatformDirs> {
        Some(PlatformDirs {
            config_dir: "/home/ada/.config/sidekey".into(),
            data_dir: "/home/ada/.local/share/sidekey".into(),
        })
    }

    #[test]
    fn socket_and_data_dir_precedence() {
        let all = Sources {
            data_dir: p("/env/data"),
            socket_path: p("/env/s.sock"),
            file_data_dir: p("/file/data"),
            file_socket_path: p("/file/s.sock"),
            runtime_dir: p("/run/user/1000"),
            platform: platform(),
        };
        let none = Sources::default();
        type Expected = Result<&'static str, NoDataDir>;
        // (what is set, expected data dir, expected socket)
        let table: Vec<(Sources, Expected, Expected)> = vec![
            (all.clone(), Ok("/env/data"), Ok("/env/s.sock")),
            (
                Sources {
                    data_dir: None,
                    socket_path: None,
                    ..all.clone()
                },
                Ok("/file/data"),
                Ok("/file/s.sock"),
            ),
            (
                Sources {
                    socket_path: None,
                    file_socket_path: None,
                    ..all.clone()
                },
                Ok("/env/data"),
                Ok("/run/user/1000/sidekey/sidekeyd.sock"),
            ),
            (
                Sources {
                    socket_path: None,
                    file_socket_path: None,
                    runtime_dir: None,
                    ..all.clone()
                },
                Ok("/env/data"),
                Ok("/env/data/sidekeyd.sock"),
            ),
            (
                Sources {
                    runtime_dir: p("/run/user/1000"),
                    file_data_dir: p("/file/data"),
                    ..none.clone()
                },
                Ok("/file/data"),
                Ok("/run/user/1000/sidekey/sidekeyd.sock"),
            ),
            (
                Sources {
                    platform: platform(),
                    ..none.clone()
                },
                Ok("/home/ada/.local/share/sidekey"),
                Ok("/home/ada/.local/share/sidekey/sidekeyd.sock"),
            ),
            // Empty values are unset, not the current directory.
            (
                Sources {
                    data_dir: p(""),
                    socket_path: p(""),
                    runtime_dir: p(""),
                    platform: platform(),
                    ..none.clone()
                },
                Ok("/home/ada/.local/share/sidekey"),
                Ok("/home/ada/.local/share/sidekey/sidekeyd.sock"),
            ),
            // No home: only a socket that needs no data dir is found.
            (none.clone(), Err(NoDataDir), Err(NoDataDir)),
            (
                Sources {
                    runtime_dir: p("/run/user/0"),
                    ..none.clone()
                },
                Err(NoDataDir),
                Ok("/run/user/0/sidekey/sidekeyd.sock"),
            ),
            (
                Sources {
                    socket_path: p("/s.sock"),
                    ..none.clone()
                },
                Err(NoDataDir),
                Ok("/s.sock"),
            ),
        ];
        for (i, (sources, data_dir, socket)) in table.into_iter().enumerate() {
            assert_eq!(
                sources.data_dir(),
                data_dir.map(PathBuf::from),
                "row {i}: data dir of {sources:?}"
            );
            assert_eq!(
                sources.socket_path(),
                socket.map(PathBuf::from),
                "row {i}: socket of {sources:?}"
            );
        }
    }

    #[test]
    fn config_file_is_explicit_else_the_platform_one() {
        let platform = platform();
        assert_eq!(
            config_file(p("/etc/sidekey/config.toml"), platform.as_ref()),
            p("/etc/sidekey/config.toml")
        );
        assert_eq!(
            config_file(None, platform.as_ref()),
            p("/home/ada/.config/sidekey/config.toml")
        );
        assert_eq!(
            config_file(p(""), platform.as_ref()),
            p("/home/ada/.config/sidekey/config.toml")
        );
        assert_eq!(config_file(None, None), None);
    }

    #[test]
    fn no_data_dir_says_what_to_set() {
        let message = NoDataDir.to_string();
        assert!(
            message.contains("HOME") && message.contains("SIDEKEY_DATA_DIR"),
            "{message}"
        );
    }
}
