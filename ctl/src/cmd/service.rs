//! `sidekeyctl service install|uninstall|status`: writes the systemd unit or
//! launchd plist for this machine, naming the real `sidekeyd` beside this
//! binary (else on PATH), and has the service manager load it. The system
//! service's master key is made by `sidekeyd --init-master-key`, never here:
//! only the daemon writes its key format.
//!
//! Every action is first planned as a list of [`Step`]s, which is pure and
//! tested; `--dry-run` prints the plan, and otherwise it is carried out.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, anyhow, bail};

use crate::cli::{InitSystem, ServiceArgs, ServiceCommand, ServiceTarget};
use crate::client::{ClientError, ClientResult};

const USER_UNIT: &str = include_str!("../../../systemd/sidekeyd.service");
const SYSTEM_UNIT: &str = include_str!("../../../systemd/system/sidekeyd.service");
const PLIST: &str = include_str!("../../../launchd/io.sidekey.sidekeyd.plist");

/// The binary path the templates carry; replaced with the real one.
const TEMPLATE_BIN: &str = "/usr/local/bin/sidekeyd";
/// The home directory placeholder in the plist (launchd expands neither ~ nor $HOME).
const TEMPLATE_HOME: &str = "@HOME@";

const UNIT_NAME: &str = "sidekeyd.service";
const LABEL: &str = "io.sidekey.sidekeyd";
const SYSTEM_UNIT_PATH: &str = "/etc/systemd/system/sidekeyd.service";
const SYSTEM_MASTER_KEY: &str = "/etc/sidekey/master.key";

pub fn run(command: ServiceCommand) -> ClientResult<()> {
    match command {
        ServiceCommand::Install(args) => install(&args).map_err(ClientError::Other),
        ServiceCommand::Uninstall(args) => uninstall(&args).map_err(ClientError::Other),
        ServiceCommand::Status(target) => status(&target),
    }
}

/// What this machine looks like, read once, so that planning stays pure.
#[derive(Debug, Clone)]
struct Host {
    init: InitSystem,
    system: bool,
    sidekeyd: PathBuf,
    home: PathBuf,
    /// `$XDG_CONFIG_HOME`, else `~/.config`.
    config_home: PathBuf,
    uid: u32,
}

impl Host {
    fn detect(target: &ServiceTarget) -> Result<Host> {
        let init = target.init.unwrap_or(if cfg!(target_os = "macos") {
            InitSystem::Launchd
        } else {
            InitSystem::Systemd
        });
        if target.system && init == InitSystem::Launchd {
            bail!(
                "a system-wide LaunchDaemon is not supported; install the per-user LaunchAgent instead (drop --system)"
            );
        }
        let exe = std::env::current_exe().context("cannot tell where sidekeyctl is installed")?;
        let sidekeyd = find_sidekeyd(&exe).unwrap_or_else(|| exe.with_file_name("sidekeyd"));
        let home = directories::BaseDirs::new()
            .map(|d| d.home_dir().to_path_buf())
            .context("no home directory; set HOME")?;
        let config_home = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .unwrap_or_else(|| home.join(".config"));
        Ok(Host {
            init,
            system: target.system,
            sidekeyd,
            home,
            config_home,
            uid: rustix::process::getuid().as_raw(),
        })
    }

    fn service_file(&self) -> PathBuf {
        match (self.init, self.system) {
            (InitSystem::Systemd, true) => PathBuf::from(SYSTEM_UNIT_PATH),
            (InitSystem::Systemd, false) => self.config_home.join("systemd/user").join(UNIT_NAME),
            (InitSystem::Launchd, _) => self
                .home
                .join("Library/LaunchAgents")
                .join(format!("{LABEL}.plist")),
        }
    }

    fn log_dir(&self) -> PathBuf {
        self.home.join("Library/Logs/sidekey")
    }

    /// `systemctl` or `systemctl --user`, then `args`.
    fn systemctl(&self, args: &[&str]) -> Vec<String> {
        let mut argv = vec!["systemctl".to_string()];
        if !self.system {
            argv.push("--user".into());
        }
        argv.extend(args.iter().map(|a| a.to_string()));
        argv
    }

    fn launchd_target(&self) -> String {
        format!("gui/{}/{LABEL}", self.uid)
    }

    fn render(&self) -> String {
        match (self.init, self.system) {
            (InitSystem::Systemd, system) => {
                let template = if system { SYSTEM_UNIT } else { USER_UNIT };
                template.replace(
                    &format!("ExecStart={TEMPLATE_BIN}"),
                    &format!("ExecStart={}", systemd_quote(&self.sidekeyd)),
                )
            }
            (InitSystem::Launchd, _) => PLIST
                .replace(
                    &format!("<string>{TEMPLATE_BIN}</string>"),
                    &format!("<string>{}</string>", xml_escape(&self.sidekeyd)),
                )
                .replace(TEMPLATE_HOME, &xml_escape(&self.home)),
        }
    }

    /// How the user starts it by hand, for messages.
    fn start_hint(&self) -> String {
        match self.init {
            InitSystem::Systemd => self.systemctl(&["start", UNIT_NAME]).join(" "),
            InitSystem::Launchd => format!("launchctl kickstart {}", self.launchd_target()),
        }
    }
}

/// sidekeyd beside this binary, where an install puts both, else the first
/// executable one on PATH. Relative PATH entries are skipped: the unit must
/// name the same file whatever directory it is started from.
fn find_sidekeyd(exe: &Path) -> Option<PathBuf> {
    let is_executable = |path: &Path| {
        fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let beside = exe.with_file_name("sidekeyd");
    if is_executable(&beside) {
        return Some(beside);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("sidekeyd"))
        .find(|candidate| candidate.is_absolute() && is_executable(candidate))
}

#[derive(Debug, PartialEq, Eq)]
enum Step {
    CreateDir(PathBuf),
    Write {
        path: PathBuf,
        contents: String,
    },
    Remove(PathBuf),
    /// A command; `must_succeed: false` for ones that fail when there is
    /// nothing to undo, like stopping a service that is not loaded.
    Run {
        argv: Vec<String>,
        must_succeed: bool,
    },
}

fn run_step(argv: Vec<String>) -> Step {
    Step::Run {
        argv,
        must_succeed: true,
    }
}

fn try_step(argv: Vec<String>) -> Step {
    Step::Run {
        argv,
        must_succeed: false,
    }
}

/// `already` says whether the service file exists now; `key_exists` whether
/// the system master key does.
fn plan_install(host: &Host, already: bool, key_exists: bool) -> Vec<Step> {
    let file = host.service_file();
    let mut steps = Vec::new();
    if let Some(dir) = file.parent() {
        steps.push(Step::CreateDir(dir.to_path_buf()));
    }
    match host.init {
        InitSystem::Systemd => {
            if host.system && !key_exists {
                let key = Path::new(SYSTEM_MASTER_KEY);
                if let Some(dir) = key.parent() {
                    steps.push(Step::CreateDir(dir.to_path_buf()));
                }
                steps.push(run_step(vec![
                    host.sidekeyd.display().to_string(),
                    "--init-master-key".into(),
                    "--master-key-file".into(),
                    key.display().to_string(),
                ]));
            }
            steps.push(Step::Write {
                path: file,
                contents: host.render(),
            });
            steps.push(run_step(host.systemctl(&["daemon-reload"])));
            steps.push(run_step(host.systemctl(&["enable", "--now", UNIT_NAME])));
            if already {
                // enable --now leaves a running daemon alone; an updated unit
                // (or binary) takes effect only after a restart.
                steps.push(run_step(host.systemctl(&["restart", UNIT_NAME])));
            }
        }
        InitSystem::Launchd => {
            steps.push(Step::CreateDir(host.log_dir()));
            if already {
                steps.push(try_step(vec![
                    "launchctl".into(),
                    "bootout".into(),
                    host.launchd_target(),
                ]));
            }
            steps.push(Step::Write {
                path: file.clone(),
                contents: host.render(),
            });
            steps.push(run_step(vec![
                "launchctl".into(),
                "enable".into(),
                host.launchd_target(),
            ]));
            steps.push(run_step(vec![
                "launchctl".into(),
                "bootstrap".into(),
                format!("gui/{}", host.uid),
                file.display().to_string(),
            ]));
        }
    }
    steps
}

fn plan_uninstall(host: &Host) -> Vec<Step> {
    let file = host.service_file();
    match host.init {
        InitSystem::Systemd => vec![
            try_step(host.systemctl(&["disable", "--now", UNIT_NAME])),
            Step::Remove(file),
            run_step(host.systemctl(&["daemon-reload"])),
        ],
        InitSystem::Launchd => vec![
            try_step(vec![
                "launchctl".into(),
                "bootout".into(),
                host.launchd_target(),
            ]),
            Step::Remove(file),
        ],
    }
}

fn install(args: &ServiceArgs) -> Result<()> {
    let host = Host::detect(&args.target)?;
    if !host.sidekeyd.is_file() {
        bail!(
            "cannot find sidekeyd: it is not beside sidekeyctl (no {}) nor on PATH; install both binaries in the same directory, then run this again",
            host.sidekeyd.display()
        );
    }
    if host.system && !args.dry_run && host.uid != 0 {
        bail!(
            "installing the system service needs root; run: sudo sidekeyctl service install --system"
        );
    }
    if host.system
        && [Path::new("/home"), Path::new("/root")]
            .iter()
            .any(|p| host.sidekeyd.starts_with(p))
    {
        eprintln!(
            "sidekeyctl: warning: the system service runs as a dynamic user, which may not be allowed to run {}; copy sidekeyd and sidekeyctl to /usr/local/bin and install from there",
            host.sidekeyd.display()
        );
    }
    let already = host.service_file().exists();
    let key_exists = Path::new(SYSTEM_MASTER_KEY).exists();
    let steps = plan_install(&host, already, key_exists);
    if args.dry_run {
        print!("{}", describe(&steps));
        return Ok(());
    }
    execute(&steps)?;
    println!(
        "sidekeyd is installed as a {} service and running: {}",
        match (host.init, host.system) {
            (InitSystem::Systemd, true) => "systemd system",
            (InitSystem::Systemd, false) => "systemd user",
            (InitSystem::Launchd, _) => "launchd",
        },
        host.service_file().display()
    );
    println!("check it with: sidekeyctl service status");
    Ok(())
}

fn uninstall(args: &ServiceArgs) -> Result<()> {
    let host = Host::detect(&args.target)?;
    let file = host.service_file();
    if !file.exists() {
        println!(
            "sidekeyd is not installed as a service (no {}); nothing to do",
            file.display()
        );
        return Ok(());
    }
    if host.system && !args.dry_run && host.uid != 0 {
        bail!(
            "removing the system service needs root; run: sudo sidekeyctl service uninstall --system"
        );
    }
    let steps = plan_uninstall(&host);
    if args.dry_run {
        print!("{}", describe(&steps));
        return Ok(());
    }
    execute(&steps)?;
    println!(
        "sidekeyd's service is stopped and removed; its data dir is kept ({} removed)",
        file.display()
    );
    Ok(())
}

fn status(target: &ServiceTarget) -> ClientResult<()> {
    let host = Host::detect(target)?;
    let file = host.service_file();
    if !file.exists() {
        return Err(ClientError::NotRunning(format!(
            "sidekeyd is not installed as a service (no {}); install it with: sidekeyctl service install{}",
            file.display(),
            if host.system { " --system" } else { "" }
        )));
    }
    println!("service file: {}", file.display());
    let argv = match host.init {
        InitSystem::Systemd => host.systemctl(&["status", "--no-pager", UNIT_NAME]),
        InitSystem::Launchd => vec!["launchctl".into(), "print".into(), host.launchd_target()],
    };
    let status = command(&argv)
        .status()
        .with_context(|| format!("cannot run {}", argv[0]))?;
    if status.success() {
        Ok(())
    } else {
        Err(ClientError::NotRunning(format!(
            "the sidekeyd service is not running; start it with: {}",
            host.start_hint()
        )))
    }
}

fn command(argv: &[String]) -> Command {
    let mut command = Command::new(&argv[0]);
    command.args(&argv[1..]);
    command
}

fn describe(steps: &[Step]) -> String {
    let mut out = String::new();
    for step in steps {
        let _ = match step {
            Step::CreateDir(dir) => writeln!(out, "# would create directory {}", dir.display()),
            Step::Write { path, contents } => writeln!(
                out,
                "# would write {}:\n{contents}# end of {}",
                path.display(),
                path.display()
            ),
            Step::Remove(path) => writeln!(out, "# would remove {}", path.display()),
            Step::Run { argv, .. } => writeln!(out, "# would run: {}", shell_words(argv)),
        };
    }
    out
}

fn execute(steps: &[Step]) -> Result<()> {
    for step in steps {
        match step {
            Step::CreateDir(dir) => fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?,
            Step::Write { path, contents } => {
                fs::write(path, contents)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                fs::set_permissions(path, fs::Permissions::from_mode(0o644))?;
                println!("wrote {}", path.display());
            }
            Step::Remove(path) => match fs::remove_file(path) {
                Ok(()) => println!("removed {}", path.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot remove {}", path.display()));
                }
            },
            Step::Run { argv, must_succeed } => {
                let shown = shell_words(argv);
                println!("running: {shown}");
                let result = command(argv).status();
                let failure = match result {
                    Ok(status) if status.success() => None,
                    Ok(status) => Some(format!("{shown} failed ({status})")),
                    Err(e) => Some(format!("cannot run {}: {e}", argv[0])),
                };
                match failure {
                    Some(failure) if *must_succeed => {
                        return Err(anyhow!(
                            "{failure}; fix what it reported, then run this command again"
                        ));
                    }
                    Some(failure) => println!("({failure}; continuing)"),
                    None => {}
                }
            }
        }
    }
    Ok(())
}

/// systemd's command-line quoting: specifiers (`%`) and variables (`$`) are
/// escaped, and a path with spaces or quotes is double-quoted.
fn systemd_quote(path: &Path) -> String {
    let text = path.display().to_string();
    let escaped = text.replace('%', "%%").replace('$', "$$");
    if escaped
        .chars()
        .any(|c| c.is_whitespace() || c == '"' || c == '\'' || c == '\\')
    {
        format!("\"{}\"", escaped.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        escaped
    }
}

fn xml_escape(path: &Path) -> String {
    path.display()
        .to_string()
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&apos;")
}

fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if a.is_empty()
                || a.chars()
                    .any(|c| c.is_whitespace() || "'\"\\$`".contains(c))
            {
                format!("'{}'", a.replace('\'', "'\\''"))
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(init: InitSystem, system: bool) -> Host {
        Host {
            init,
            system,
            sidekeyd: PathBuf::from("/opt/side key/bin/sidekeyd"),
            home: PathBuf::from("/home/ada"),
            config_home: PathBuf::from("/home/ada/.config"),
            uid: 1000,
        }
    }

    fn argvs(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Run { argv, .. } => Some(argv.join(" ")),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn user_unit_names_the_real_binary_quoted() {
        let unit = host(InitSystem::Systemd, false).render();
        assert!(
            unit.contains("\nExecStart=\"/opt/side key/bin/sidekeyd\"\n"),
            "{unit}"
        );
        assert!(!unit.contains(TEMPLATE_BIN));
        assert!(unit.contains("Type=notify") && unit.contains("Restart=on-failure"));
    }

    #[test]
    fn system_unit_is_hardened_and_loads_the_master_key() {
        let unit = host(InitSystem::Systemd, true).render();
        for line in [
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ProtectHome=read-only",
            "PrivateTmp=yes",
            "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
            "StateDirectory=sidekey",
            "RuntimeDirectory=sidekey",
            "LoadCredential=sidekey-master-key:/etc/sidekey/master.key",
            "Type=notify",
            "Restart=on-failure",
        ] {
            assert!(unit.lines().any(|l| l == line), "missing {line}");
        }
    }

    #[test]
    fn plist_gets_the_binary_and_an_absolute_home() {
        let mut h = host(InitSystem::Launchd, false);
        h.home = PathBuf::from("/Users/a&b");
        let plist = h.render();
        assert!(plist.contains("<string>/opt/side key/bin/sidekeyd</string>"));
        assert!(
            plist.contains("<string>/Users/a&amp;b/Library/Logs/sidekey/sidekeyd.log</string>")
        );
        assert!(!plist.contains(TEMPLATE_HOME));
    }

    #[test]
    fn systemd_quoting_escapes_specifiers_and_variables() {
        assert_eq!(
            systemd_quote(Path::new("/usr/bin/sidekeyd")),
            "/usr/bin/sidekeyd"
        );
        assert_eq!(systemd_quote(Path::new("/a%b/$x")), "/a%%b/$$x");
        assert_eq!(systemd_quote(Path::new("/a b/\"c\"")), "\"/a b/\\\"c\\\"\"");
    }

    #[test]
    fn user_install_enables_and_starts_and_restarts_an_update() {
        let h = host(InitSystem::Systemd, false);
        let fresh = plan_install(&h, false, false);
        assert_eq!(
            fresh[0],
            Step::CreateDir(PathBuf::from("/home/ada/.config/systemd/user"))
        );
        assert!(matches!(&fresh[1], Step::Write { path, .. }
            if path == Path::new("/home/ada/.config/systemd/user/sidekeyd.service")));
        assert_eq!(
            argvs(&fresh),
            [
                "systemctl --user daemon-reload",
                "systemctl --user enable --now sidekeyd.service"
            ]
        );
        let update = plan_install(&h, true, false);
        assert_eq!(
            argvs(&update).last().unwrap(),
            "systemctl --user restart sidekeyd.service"
        );
    }

    #[test]
    fn system_install_has_sidekeyd_create_a_missing_master_key_only() {
        let h = host(InitSystem::Systemd, true);
        let steps = plan_install(&h, false, false);
        let init = "/opt/side key/bin/sidekeyd --init-master-key --master-key-file /etc/sidekey/master.key";
        assert_eq!(
            argvs(&steps),
            [
                init,
                "systemctl daemon-reload",
                "systemctl enable --now sidekeyd.service"
            ]
        );
        // Its directory first; the unit goes in only once the key is there.
        let at = |wanted: &dyn Fn(&Step) -> bool| steps.iter().position(wanted).unwrap();
        let key_dir = at(&|s| *s == Step::CreateDir(PathBuf::from("/etc/sidekey")));
        let key = at(&|s| matches!(s, Step::Run { argv, .. } if argv.join(" ") == init));
        let unit = at(&|s| matches!(s, Step::Write { .. }));
        assert!(key_dir < key && key < unit, "{steps:?}");
        assert!(matches!(
            &steps[key],
            Step::Run {
                must_succeed: true,
                ..
            }
        ));

        let steps = plan_install(&h, false, true);
        assert_eq!(
            argvs(&steps),
            [
                "systemctl daemon-reload",
                "systemctl enable --now sidekeyd.service"
            ]
        );
        assert!(!steps.contains(&Step::CreateDir(PathBuf::from("/etc/sidekey"))));
    }

    #[test]
    fn launchd_install_bootstraps_into_the_gui_domain() {
        let h = host(InitSystem::Launchd, false);
        let steps = plan_install(&h, false, false);
        assert!(steps.contains(&Step::CreateDir(PathBuf::from(
            "/home/ada/Library/Logs/sidekey"
        ))));
        assert_eq!(
            argvs(&steps),
            [
                "launchctl enable gui/1000/io.sidekey.sidekeyd",
                "launchctl bootstrap gui/1000 /home/ada/Library/LaunchAgents/io.sidekey.sidekeyd.plist"
            ]
        );
        let update = plan_install(&h, true, false);
        assert_eq!(
            argvs(&update)[0],
            "launchctl bootout gui/1000/io.sidekey.sidekeyd"
        );
    }

    #[test]
    fn uninstall_stops_then_removes() {
        let steps = plan_uninstall(&host(InitSystem::Systemd, false));
        assert_eq!(
            steps[0],
            try_step(
                [
                    "systemctl",
                    "--user",
                    "disable",
                    "--now",
                    "sidekeyd.service"
                ]
                .map(String::from)
                .to_vec()
            )
        );
        assert_eq!(
            steps[1],
            Step::Remove(PathBuf::from(
                "/home/ada/.config/systemd/user/sidekeyd.service"
            ))
        );
    }

    #[test]
    fn dry_run_shows_files_and_commands() {
        let text = describe(&plan_install(
            &host(InitSystem::Systemd, false),
            false,
            false,
        ));
        assert!(text.contains(
            "# would write /home/ada/.config/systemd/user/sidekeyd.service:\n# sidekeyd as a systemd user service.\n"
        ));
        assert!(text.contains("# would run: systemctl --user enable --now sidekeyd.service\n"));
        assert_eq!(
            shell_words(&["a b".to_string(), "it's".to_string()]),
            "'a b' 'it'\\''s'"
        );
    }
}
