//! Keeping a daemon small under glibc's allocator. glibc gives each thread
//! that allocates an arena of its own and keeps freed memory inside them:
//! after syncing 10,000 files a peer held four times the memory it was
//! using. One arena, and a trim after each burst of work, give it back.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicBool, Ordering};

/// Call first thing in `main`, before any thread starts.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator tunable, valid at any time.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Returns freed heap memory to the system, on the blocking pool so the
/// caller does not wait. A trim already under way makes this a no-op.
pub fn release_freed_soon() {
    static RUNNING: AtomicBool = AtomicBool::new(false);
    if RUNNING.swap(true, Ordering::AcqRel) {
        return;
    }
    tokio::task::spawn_blocking(|| {
        release_freed();
        RUNNING.store(false, Ordering::Release);
    });
}

/// Returns freed heap memory to the system.
pub fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory that no allocation owns.
    unsafe {
        libc::malloc_trim(0);
    }
}
