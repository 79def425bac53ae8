//! Shared by the adapter tests that start real processes: each test marks its own
//! with an argument no other process on the machine has, and finds them by it.
#![allow(dead_code)]

use std::time::{Duration, Instant};

/// A `sleep` argument no other process has: `BASE.<pid><tag>`.
pub fn marker(base: u32, tag: u32) -> String {
    format!("{base}.{}{tag:03}", std::process::id())
}

/// Pids of live processes with `marker` among their arguments (zombies have none).
pub fn with_marker(marker: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else { continue };
        if raw.split(|b| *b == 0).any(|a| a == marker.as_bytes()) {
            out.push(pid);
        }
    }
    out
}

/// SIGKILL to every process that carries `marker`.
pub fn kill_marked(marker: &str) {
    for pid in with_marker(marker) {
        let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    }
}

/// Polls `ok` until it holds; fails after a generous deadline.
pub fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits (generously) until no process carries `marker`; otherwise kills the
/// survivors, so that a failing test leaves nothing running, and fails naming them.
pub fn wait_gone(marker: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = with_marker(marker);
        if left.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            kill_marked(marker);
            panic!("{what}: processes left behind: {left:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
