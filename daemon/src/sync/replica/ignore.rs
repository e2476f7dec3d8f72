//! What sync leaves alone: `.sidekeyignore` (gitignore syntax, which itself
//! syncs) and the built-in defaults: our marker and temp files, and OS litter.

use std::path::Path;

use ignore::gitignore::{Gitignore, GitignoreBuilder};

pub const MARKER: &str = ".sidekey-replica";
pub const TEMP_PREFIX: &str = ".sidekey-tmp-";
pub const IGNORE_FILE: &str = ".sidekeyignore";

const BUILT_IN: &[&str] = &[
    ".DS_Store",
    "Thumbs.db",
    "desktop.ini",
    ".#*",
    "*.swp",
    "*.swx",
    "*~.tmp",
];

/// Names no wire path may use: they belong to sidekey.
pub fn is_reserved_name(name: &str) -> bool {
    name == MARKER || name.starts_with(TEMP_PREFIX)
}

pub struct Ignorer {
    rules: Gitignore,
}

impl Ignorer {
    /// Reads `<root>/.sidekeyignore` if present. A broken line is skipped,
    /// and reported in the log, rather than stopping sync.
    pub fn load(root: &Path) -> Ignorer {
        let mut builder = GitignoreBuilder::new(root);
        for pattern in BUILT_IN {
            let _ = builder.add_line(None, pattern);
        }
        let file = root.join(IGNORE_FILE);
        if file.is_file()
            && let Some(e) = builder.add(&file)
        {
            tracing::warn!(error = %e, file = %file.display(), "part of .sidekeyignore does not parse");
        }
        let rules = builder.build().unwrap_or_else(|_| Gitignore::empty());
        Ignorer { rules }
    }

    /// `relative` is the wire path.
    pub fn ignored(&self, relative: &str, is_dir: bool) -> bool {
        let name = relative.rsplit('/').next().unwrap_or(relative);
        is_reserved_name(name)
            || self
                .rules
                .matched_path_or_any_parents(relative, is_dir)
                .is_ignore()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_ins_and_the_ignore_file_apply_but_the_ignore_file_itself_syncs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(IGNORE_FILE), "build/\n*.log\n!keep.log\n").unwrap();
        let ig = Ignorer::load(dir.path());
        assert!(ig.ignored(".DS_Store", false));
        assert!(ig.ignored("a/.sidekey-tmp-123", false));
        assert!(ig.ignored(MARKER, false));
        assert!(ig.ignored("build", true));
        assert!(ig.ignored("build/out.bin", false));
        assert!(ig.ignored("x/debug.log", false));
        assert!(!ig.ignored("keep.log", false));
        assert!(!ig.ignored(IGNORE_FILE, false));
        assert!(!ig.ignored("notes.md", false));
    }
}
