//! Keeping a daemon small under glibc's allocator. glibc gives each thread
//! that allocates an arena of its own and keeps freed memory inside them:
//! after syncing 10,000 files a peer held four times the memory it was
//! using. One arena, and a trim after each burst of work, give it back.
//! The trim is ours alone: left to glibc, every freed body buffer of the
//! proxy went back to the system and was faulted in again by the next
//! request, a tenth of the proxy's time with 64 KiB answers.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicBool, Ordering};

/// Allocations up to this size come from the heap, not a mapping of their
/// own that each free unmaps.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD_BYTES: libc::c_int = 4 << 20;

/// Call first thing in `main`, before any thread starts.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator tunables, valid at any time.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
        // Never on free; `release_freed` trims once a burst is over.
        libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
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
