//! The component boundaries, checked on the source: what each part may
//! name is a fact the build keeps, not a convention a review must catch.
//! (A crate per component would make these compile errors; at today's size
//! a test over the tree costs nothing and says the same.)

use std::path::{Path, PathBuf};

fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("the source tree is readable") {
            let path = entry.expect("a readable entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files
}

fn src(part: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(part)
}

/// Every file under `part` that names one of `names`, with the first name.
fn naming(part: &str, names: &[&str]) -> Vec<String> {
    let root = src(part);
    let files = if root.is_dir() {
        sources(&root)
    } else {
        vec![root]
    };
    files
        .into_iter()
        .filter_map(|file| {
            let text = std::fs::read_to_string(&file).expect("a readable source file");
            let code: String = text
                .lines()
                .filter(|line| !line.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            names
                .iter()
                .find(|name| code.contains(*name))
                .map(|name| format!("{} names {name}", file.display()))
        })
        .collect()
}

#[test]
fn the_proxy_and_sync_never_import_each_other() {
    assert_eq!(
        naming("proxy", &["crate::sync", "super::sync"]),
        Vec::<String>::new()
    );
    assert_eq!(
        naming("sync", &["crate::proxy", "super::proxy"]),
        Vec::<String>::new()
    );
}

#[test]
fn sled_and_aes_gcm_stay_inside_the_store() {
    let all = sources(&src(""));
    assert!(all.len() > 20, "the source tree was found");
    for file in all {
        let text = std::fs::read_to_string(&file).unwrap();
        let in_store = file.starts_with(src("store"));
        assert!(
            in_store || !text.contains("sled::"),
            "{} uses sled",
            file.display()
        );
        let in_crypto = file == src("store/crypto.rs");
        assert!(
            in_crypto || !text.contains("aes_gcm"),
            "{} uses aes_gcm",
            file.display()
        );
    }
}

#[test]
fn no_component_takes_the_whole_daemon() {
    // lib.rs composes the daemon and main.rs runs it; every other part is
    // handed the few parts it uses.
    let mut taking = Vec::new();
    for part in [
        "proxy",
        "sync",
        "control",
        "registry",
        "audit",
        "store",
        "service.rs",
    ] {
        taking.extend(naming(part, &["crate::Daemon", "Arc<Daemon>", "&Daemon"]));
    }
    assert_eq!(taking, Vec::<String>::new());
}
