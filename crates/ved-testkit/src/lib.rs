//! Helpers that Ved's test suites in several crates share, so that each is written once: a
//! seeded random source that a failing case's seed replays, and a small tmpfs for tests of
//! a full disk. A dev-dependency only; nothing in the product links it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Randomness for tests that a seed reproduces: SplitMix64, small, fast, and the same on
/// every machine, with the choosing helpers the generators use.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    // Named as the generators have always called it; an endless source, not an iterator.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// True `percent` times in a hundred.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    /// True with probability 1/n.
    pub fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

/// A tmpfs of a given size mounted at a directory of its own; unmounted (lazily, whatever
/// still holds it) and removed when dropped, however the test ends. Mounting needs root:
/// without it [`Tmpfs::mount`] says `SKIPPED` on stderr and returns `None`.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    pub fn mount(at: PathBuf, size: &str) -> Option<Tmpfs> {
        // A mount left by an earlier run that was killed.
        let _ = Command::new("umount").arg("-l").arg(&at).output();
        let _ = std::fs::remove_dir_all(&at);
        std::fs::create_dir_all(&at).ok()?;
        let out = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(&at).output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs(at)),
            Ok(o) => {
                eprintln!("SKIPPED: cannot mount a tmpfs (root is needed): {}", String::from_utf8_lossy(&o.stderr));
                let _ = std::fs::remove_dir_all(&at);
                None
            }
            Err(e) => {
                eprintln!("SKIPPED: cannot run mount: {e}");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Fills the file system holding `path` to its last byte with a file at `path`; returns
/// how many bytes it wrote. Any error but "no space" fails the test.
pub fn fill(path: &Path) -> u64 {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0x5a; 4096];
    let mut n = 0;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(k) => n += k as u64,
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::StorageFull, "filling {}: {e}", path.display());
                break;
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn a_seed_gives_the_same_sequence_and_choices_stay_in_range() {
        let (mut a, mut b) = (Rng(42), Rng(42));
        let xs: Vec<u64> = (0..100).map(|_| a.next()).collect();
        assert_eq!(xs, (0..100).map(|_| b.next()).collect::<Vec<_>>());
        // SplitMix64's first output for seed 0, as published with the algorithm.
        assert_eq!(Rng(0).next(), 0xe220_a839_7b1d_cdaf);
        let mut r = Rng(7);
        assert!((0..1000).all(|_| r.below(5) < 5));
        assert_eq!(r.below(0), 0);
        assert!((0..1000).map(|_| r.percent(30)).filter(|&x| x).count() > 200);
    }
}
