//! Network namespaces for tests that need a fixed port, such as 80: the
//! daemon starts in a fresh namespace whose only interface is its own
//! loopback, and its upstreams and clients join it, so whatever the host
//! listens on cannot collide. Names still resolve through the host's
//! /etc/hosts, which the namespace shares. Needs root, util-linux's
//! `unshare` and `nsenter`, and iproute2's `ip`.

/// A wrapper for [`crate::Home::start_wrapped`]: a new network namespace,
/// its loopback brought up, then exec of the daemon (so its pid is the
/// daemon's, and `/proc/<pid>/ns/net` names the namespace).
pub(crate) fn new_netns_wrapper() -> Vec<String> {
    for (tool, package) in [
        ("unshare", "util-linux"),
        ("nsenter", "util-linux"),
        ("ip", "iproute2"),
    ] {
        let found = std::process::Command::new(tool)
            .arg(if tool == "ip" { "-V" } else { "--version" })
            .output()
            .is_ok_and(|out| out.status.success());
        assert!(
            found,
            "{tool} is missing; this test runs in its own network namespace: install {package} (apt-get install {package})"
        );
    }
    [
        "unshare",
        "--net",
        "--",
        "sh",
        "-c",
        r#"ip link set lo up && exec "$0" "$@""#,
    ]
    .map(String::from)
    .to_vec()
}

/// The command prefix that runs a program in the network namespace of the
/// process `pid`.
pub fn enter(pid: u32) -> Vec<String> {
    vec![
        "nsenter".into(),
        format!("--net=/proc/{pid}/ns/net"),
        "--".into(),
    ]
}
