//! glibc allocator tuning, so that Argon2's memory goes back to the system.
//!
//! Each password hash allocates one block of `memory_kib` (19 MiB by default). glibc
//! serves a block that size from mmap only while it is above the mmap threshold, and the
//! threshold is dynamic: the first such block freed raises it to the block's size, so
//! every later hash takes its 19 MiB from the heap of whichever arena its blocking thread
//! uses, and an arena's heap is seldom trimmed. Measured before this: a 10 s login burst
//! left `corral serve` at 457 MiB RSS, never returned (one 19 MiB block per arena, up to
//! 8 arenas per core). Setting the threshold explicitly turns the dynamic adjustment off:
//! every block above it is mmapped and unmapped on free, so RSS falls back after a burst.
//! This is the simplest setting that meets the goal (< 64 MiB after 1,000 logins); a
//! dedicated hashing pool or another global allocator would also work, with more code or
//! a heavier build. Small allocations, the hot path of the API, are unaffected.

/// Allocations of at least this many bytes go straight to mmap. glibc's own default
/// starting point is 128 KiB; 1 MiB keeps request buffers on the heap and sends Argon2's
/// blocks (and any other large, short-lived buffer) to mmap.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 1024 * 1024;

/// Call once at start-up, before threads allocate.
pub fn return_large_blocks() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before other threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}
