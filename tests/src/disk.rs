//! A tiny tmpfs for full-disk tests: mounted for one test, filled from
//! outside, then emptied again. Needs root, as the CI machine gives.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

pub struct SmallDisk {
    _dir: tempfile::TempDir,
    mount: PathBuf,
}

impl SmallDisk {
    pub fn mount() -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let mount = dir.path().join("small");
        std::fs::create_dir_all(&mount).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
            .arg(&mount)
            .status()
            .expect("mount (the tests run as root)");
        assert!(
            status.success(),
            "mounting a small tmpfs failed; these tests need root"
        );
        SmallDisk { _dir: dir, mount }
    }

    pub fn path(&self) -> &Path {
        &self.mount
    }

    /// Writes a filler file until the disk is full.
    pub fn fill(&self) {
        let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        let mut f = std::fs::File::create(self.filler()).unwrap();
        while f.write_all(&chunk).is_ok() {}
    }

    pub fn free(&self) {
        std::fs::remove_file(self.filler()).unwrap();
    }

    fn filler(&self) -> PathBuf {
        self.mount.join("filler")
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}
