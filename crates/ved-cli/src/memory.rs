//! The memory `ved` holds after a burst of work.
//!
//! `ved` runs on mimalloc (the `#[global_allocator]` in main.rs). mimalloc keeps pages a
//! thread freed for a while before it returns them, and the pages of a thread that ended
//! wait for another thread to adopt them. A restart is exactly that burst: the store's
//! recovery decodes on both cores in threads that end, and the engine builds a fleet of
//! instances from what they decoded. Without a collection after it, a restarted daemon of
//! 10^6 instances held about 1,000 bytes per instance of RSS instead of about 500
//! (BENCHMARKS.md, "Scale").

/// Returns the memory freed so far to the operating system, adopting the pages of threads
/// that have ended. Called once an engine has started; it takes milliseconds, so it is not
/// for a hot path. Harmless under another allocator: mimalloc's own heaps are then empty.
pub fn return_freed() {
    // SAFETY: `mi_collect` only releases pages that hold no live allocation; it may be
    // called from any thread at any time.
    unsafe { libmimalloc_sys::mi_collect(true) }
}
