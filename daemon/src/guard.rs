//! Keeps the daemon's memory, where secrets lie unsealed, to itself. Agents
//! usually run as the daemon's own user, which would otherwise let them read
//! it through `/proc/<pid>/mem` or a debugger; and a crash would write it to
//! a core file.

use std::io;

use rustix::process::{Resource, Rlimit, setrlimit};

/// Call first thing in `main`, before any secret is read.
pub fn keep_memory_private() -> io::Result<()> {
    // Also what keeps `/proc/<pid>/{mem,environ,fd}` and ptrace from other
    // processes without CAP_SYS_PTRACE, whatever their uid.
    #[cfg(target_os = "linux")]
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)?;
    let none = Rlimit {
        current: Some(0),
        maximum: Some(0),
    };
    setrlimit(Resource::Core, none)?;
    Ok(())
}
