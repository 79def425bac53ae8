//! Issue 13, defect 5: whoever can write the data directory can forge the audit log. The
//! attack, done here as an attacker would (remove an entry, re-chain the ones after it,
//! patch the manifest's count, head and checksum), fools the chain alone, which is its
//! known limit; it does not fool an anchor recorded before the attack, nor a key kept
//! outside the directory. The real `ved` binary writes the log and checks it.

mod common;

use common::{guard_state_home, root, tempdir, wait_for, Daemon};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::process::{Command, Output, Stdio};

const PROGRAM: &str = "examples/database_routing.ved";
/// The primary fails and comes back: Ved writes an audit entry for each episode, one or two
/// (whether the failover's result lands before the second line is the scheduler's choice, so
/// the tests count entries with `ved audit head` rather than assume them).
const EPISODE: &str = "{\"instance\": \"DatabaseRouting\", \"set\": {\"primary_status\": \"failed\"}}\n\
                       {\"instance\": \"DatabaseRouting\", \"set\": {\"primary_status\": \"healthy\"}}\n";

fn ved(args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ved"));
    guard_state_home(&mut cmd);
    cmd.args(args).current_dir(root()).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("ved starts");
    // A `ved` that refuses to start exits without reading: a broken pipe is its answer, not an error.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    // Waits for the exit: `ved run --stdin` exits once its input is done and durable.
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// One `ved run` of [`EPISODE`] on `dir`.
fn run_episode(dir: &Path, key: Option<&Path>) {
    let d = dir.to_str().unwrap();
    let mut args = vec!["run", "--stdin", "--data-dir", d, "--durability", "none", PROGRAM];
    if let Some(k) = key {
        args.extend(["--audit-key", k.to_str().unwrap()]);
    }
    let out = ved(&args, EPISODE);
    assert!(out.status.success(), "ved run failed: {}", text(&out.stderr));
}

fn audit(dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["audit"];
    args.extend_from_slice(extra);
    args.extend(["--data-dir", dir.to_str().unwrap()]);
    ved(&args, "")
}

/// The committed entries an anchor counts.
fn count(anchor: &str) -> u64 {
    anchor.split(':').next().unwrap().parse().unwrap()
}

fn head(dir: &Path) -> String {
    let out = audit(dir, &["head"]);
    assert!(out.status.success(), "ved audit head failed: {}", text(&out.stderr));
    text(&out.stdout).trim().to_string()
}

/// The attacker's copy of the entry hash (`docs/store.md`): SHA-256 over the length-prefixed
/// fields. Nothing secret: the format is public.
fn entry_hash(e: &Json) -> String {
    let mut h = Sha256::new();
    let seq = e["seq"].as_u64().unwrap().to_string();
    let at = e["at_ms"].as_u64().unwrap().to_string();
    // The wall-clock `time` is hashed after `at_ms` when the entry has one.
    let time = e["time"].as_str();
    let parts =
        [Some(seq.as_str()), Some(at.as_str()), time, e["instance"].as_str(), e["text"].as_str(), e["prev"].as_str()];
    for part in parts.into_iter().flatten() {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The attack: entry `remove` goes, the entries after it are renumbered and re-chained
/// (their macs, which need the key, are kept as they were unless `strip_macs`), `forged`
/// entries are appended, and the manifest is patched to match.
fn forge(dir: &Path, remove: u64, forged: &[&str], strip_macs: bool) {
    let log = dir.join("audit.log");
    let old: Vec<Json> =
        std::fs::read_to_string(&log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let old_head = old.last().unwrap()["hash"].as_str().unwrap().to_string();
    let mut new: Vec<Json> = old.into_iter().filter(|e| e["seq"] != remove).collect();
    for t in forged {
        let mut e = new.last().unwrap().clone();
        e["text"] = Json::from(*t);
        new.push(e);
    }
    // The chain starts where the original did (the genesis is whatever its first `prev` was).
    let mut prev = new[0]["prev"].as_str().unwrap().to_string();
    for (i, e) in new.iter_mut().enumerate() {
        e["seq"] = Json::from(i as u64 + 1);
        e["prev"] = Json::from(prev.clone());
        let h = entry_hash(e);
        e["hash"] = Json::from(h.clone());
        if strip_macs {
            e.as_object_mut().unwrap().remove("mac");
        }
        prev = h;
    }
    let lines: String = new.iter().map(|e| format!("{e}\n")).collect();
    std::fs::write(&log, lines).unwrap();

    // The manifest: the committed count is the 8 bytes before the head (64 hex digits), and a
    // CRC-32 of everything after the file header ends it. The attacker finds both in the bytes.
    let mpath = dir.join("manifest");
    let mut m = std::fs::read(&mpath).unwrap();
    let at = m.windows(64).position(|w| w == old_head.as_bytes()).expect("the manifest holds the head");
    let crc_at = m.len() - 4;
    let stored = u32::from_le_bytes(m[crc_at..].try_into().unwrap());
    let covered = (0..crc_at).find(|&s| crc32fast::hash(&m[s..crc_at]) == stored).expect("the checksum's start");
    m[at - 8..at].copy_from_slice(&(new.len() as u64).to_le_bytes());
    m[at..at + 64].copy_from_slice(prev.as_bytes());
    let crc = crc32fast::hash(&m[covered..crc_at]);
    m[crc_at..].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&mpath, m).unwrap();
}

/// Entries from three runs written with a key; the anchor taken after them, and their count.
fn keyed_store(tag: &str) -> (std::path::PathBuf, std::path::PathBuf, String, u64) {
    let base = tempdir(tag);
    let key = base.join("audit.key");
    std::fs::write(&key, "5f2b8c0e1d7a4936b8e2f0c4a6d9e1b37c5a0f8e2d4b6a19\n").unwrap();
    let dir = base.join("data");
    for _ in 0..3 {
        run_episode(&dir, Some(&key));
    }
    let anchor = head(&dir);
    let n = count(&anchor);
    assert!(n >= 4, "a boot entry and at least one per run: {anchor}");
    let ok = audit(&dir, &["verify", "--head", &anchor, "--key", key.to_str().unwrap()]);
    assert!(ok.status.success(), "the honest log verifies: {}", text(&ok.stderr));
    let says = format!("ok: {n} audit entries, hash chain intact, entry {n} matches the anchor, {n} macs valid");
    assert!(text(&ok.stdout).contains(&says), "{}", text(&ok.stdout));
    (dir, key, anchor, n)
}

fn fails(out: &Output, says: &str) {
    assert_eq!(out.status.code(), Some(1), "should fail with exit 1: {}", text(&out.stderr));
    assert!(text(&out.stderr).contains(says), "should say `{says}`: {}", text(&out.stderr));
}

#[test]
fn a_removed_and_rechained_entry_fools_the_chain_but_not_the_anchor_or_the_key() {
    let (dir, key, anchor, n) = keyed_store("forge-remove");
    forge(&dir, 2, &[], false);

    // The known limit: the chain alone is consistent again.
    let plain = audit(&dir, &["verify"]);
    assert!(plain.status.success(), "the forgery fools the chain alone: {}", text(&plain.stderr));
    let says = format!("ok: {} audit entries, hash chain intact", n - 1);
    assert!(text(&plain.stdout).starts_with(&says), "{}", text(&plain.stdout));
    assert!(text(&plain.stderr).contains("the chain alone does not show a log rewritten"), "{}", text(&plain.stderr));

    // The anchor recorded before the attack names entry n, which is gone.
    let out = audit(&dir, &["verify", "--head", &anchor]);
    fails(&out, &format!("the anchor names entry {n}, but the log ends after {} entries", n - 1));

    // Entry 2 is now the old entry 3, re-chained: its mac was made for another hash.
    let out = audit(&dir, &["verify", "--key", key.to_str().unwrap()]);
    fails(&out, "audit.log line 2: its mac does not match the key");

    // `--json` says the same on stdout.
    let out = audit(&dir, &["verify", "--head", &anchor, "--json"]);
    let j: Json = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!((j["ok"].as_bool(), j["line"].as_u64()), (Some(false), Some(n)), "{j}");
}

#[test]
fn a_forgery_that_keeps_the_count_still_misses_the_anchor_and_stripped_macs_are_caught() {
    let (dir, key, anchor, n) = keyed_store("forge-count");
    // Entry 2 removed, a harmless-looking entry appended: as many entries as before, macs stripped.
    forge(&dir, 2, &["started at slice 0; stable again after 0 ticks"], true);
    assert!(audit(&dir, &["verify"]).status.success(), "the chain alone is fooled");
    let out = audit(&dir, &["verify", "--head", &anchor]);
    fails(&out, &format!("entry {n} has hash"));
    fails(&out, &format!("the log was rewritten at or before entry {n}"));
    let out = audit(&dir, &["verify", "--key", key.to_str().unwrap()]);
    fails(&out, "no entry carries a mac");
}

#[test]
fn an_anchor_holds_while_the_log_grows_and_old_logs_without_a_key_verify_as_before() {
    let base = tempdir("anchor-grow");
    let dir = base.join("data");
    run_episode(&dir, None);
    let anchor = head(&dir);
    let a = count(&anchor);
    assert!(a >= 2, "{anchor}");
    let j: Json = serde_json::from_slice(&audit(&dir, &["head", "--json"]).stdout).unwrap();
    assert_eq!(j["anchor"].as_str(), Some(anchor.as_str()));
    assert_eq!(j["count"].as_u64(), Some(a));
    // The key is configured only now: the entries before it carry no mac.
    let key = base.join("audit.key");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef").unwrap();
    run_episode(&dir, Some(&key));
    let out = audit(&dir, &["verify", "--head", &anchor, "--key", key.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let says = format!("entry {a} matches the anchor, ");
    let predate = format!("macs valid (entries 1-{a} predate the key; entry {}'s mac covers them)", a + 1);
    assert!(text(&out.stdout).contains(&says) && text(&out.stdout).contains(&predate), "{}", text(&out.stdout));
    let keyed_up_to = count(&head(&dir));
    // Another key does not verify.
    let other = base.join("other.key");
    std::fs::write(&other, "fedcba9876543210fedcba9876543210").unwrap();
    let says = format!("audit.log line {}: its mac does not match the key", a + 1);
    fails(&audit(&dir, &["verify", "--key", other.to_str().unwrap()]), &says);
    // Once keyed, `ved run` goes on only with that key: without one, or with another, it
    // refuses before writing (an unkeyed entry would fail `verify --key` for good).
    let d = dir.to_str().unwrap();
    for with in [None, Some(&other)] {
        let mut args = vec!["run", "--stdin", "--data-dir", d, PROGRAM];
        if let Some(k) = with {
            args.extend(["--audit-key", k.to_str().unwrap()]);
        }
        let out = ved(&args, EPISODE);
        assert_eq!(out.status.code(), Some(64), "{}", text(&out.stderr));
        let says = if with.is_none() { "no audit key is given" } else { "does not match the one the log was written" };
        assert!(text(&out.stderr).contains(says), "{}", text(&out.stderr));
    }
    assert_eq!(count(&head(&dir)), keyed_up_to, "the refused runs wrote nothing");
    // Entries written without the key anyway (as a forger would) fail `--key`, named.
    let log = dir.join("audit.log");
    let last: Json = serde_json::from_str(std::fs::read_to_string(&log).unwrap().lines().last().unwrap()).unwrap();
    let mut forged = last.clone();
    forged.as_object_mut().unwrap().remove("mac");
    forged["seq"] = Json::from(keyed_up_to + 1);
    forged["prev"] = last["hash"].clone();
    forged["hash"] = Json::from(entry_hash(&forged));
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::io::Write::write_all(&mut f, format!("{forged}\n").as_bytes()).unwrap();
    let says = format!("audit.log line {}: it carries no mac, but entry {} before it does", keyed_up_to + 1, a + 1);
    fails(&audit(&dir, &["verify", "--key", key.to_str().unwrap()]), &says);
}

#[test]
fn unusable_keys_and_anchors_are_usage_errors() {
    let base = tempdir("anchor-usage");
    let dir = base.join("data");
    run_episode(&dir, None);
    let before = head(&dir);
    let d = dir.to_str().unwrap();
    // A key inside the data directory defeats its purpose: refused by `ved run` and by `verify`.
    let inside = dir.join("audit.key");
    std::fs::write(&inside, "0123456789abcdef0123456789abcdef").unwrap();
    let out = ved(&["run", "--stdin", "--data-dir", d, "--audit-key", inside.to_str().unwrap(), PROGRAM], "");
    assert_eq!(out.status.code(), Some(64), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("is inside the data directory"), "{}", text(&out.stderr));
    let out = audit(&dir, &["verify", "--key", inside.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out.stderr));
    let empty = base.join("empty.key");
    std::fs::write(&empty, "\n").unwrap();
    let out = ved(&["run", "--stdin", "--data-dir", d, "--audit-key", empty.to_str().unwrap(), PROGRAM], "");
    assert_eq!(out.status.code(), Some(64));
    assert!(text(&out.stderr).contains("cannot be used: it is empty"), "{}", text(&out.stderr));
    let out = audit(&dir, &["verify", "--key", base.join("missing.key").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    assert!(text(&out.stderr).contains("cannot read the audit key"), "{}", text(&out.stderr));
    for bad in ["4", "x:ab", "4:abc"] {
        let out = audit(&dir, &["verify", "--head", bad]);
        assert_eq!(out.status.code(), Some(64), "`{bad}`: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains("--head"), "{}", text(&out.stderr));
    }
    // Nothing was written by the refused runs.
    assert_eq!(head(&dir), before);
}

#[test]
fn a_running_daemon_keys_its_entries_and_its_anchor_can_be_taken_while_it_runs() {
    const TOKEN: &str = "t0ken-for-tests";
    let base = tempdir("anchor-daemon");
    let key = base.join("audit.key");
    std::fs::write(&key, "9d1c3f5e7a2b4d6f8e0a1c3e5f7b9d2a\n").unwrap();
    let dir = base.join("data");
    let (d, k) = (dir.to_str().unwrap(), key.to_str().unwrap());
    let daemon = Daemon::start(&["examples/worker_pool.ved", "--data-dir", d, "--audit-key", k], Some(TOKEN));
    let (s, r) = daemon.post("/v1/instances/WorkerPool/observations", Some(TOKEN), br#"{"workers": 2}"#);
    assert_eq!(s, 200, "{r}");
    // The boot entry and the drift's episode, committed while the daemon runs.
    let mut anchor = String::new();
    wait_for("two committed audit entries", std::time::Duration::from_secs(120), || {
        anchor = head(&dir);
        count(&anchor) >= 2
    });
    let out = audit(&dir, &["verify", "--head", &anchor, "--key", k]);
    assert!(out.status.success(), "verified while the daemon runs: {}", text(&out.stderr));
    let (s, a) = daemon.get("/v1/audit");
    assert_eq!(s, 200);
    let entries = a["entries"].as_array().unwrap();
    assert!(entries.iter().all(|e| e["mac"].as_str().is_some_and(|m| m.len() == 64)), "{a}");
    let (code, _) = daemon.terminate();
    assert_eq!(code, 0);
    let out = audit(&dir, &["verify", "--head", &anchor, "--key", k]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn a_key_others_can_read_is_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let base = tempdir("anchor-mode");
    let key = base.join("audit.key");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef").unwrap();
    let dir = base.join("data");
    let (d, k) = (dir.to_str().unwrap(), key.to_str().unwrap());
    for (mode, warned) in [(0o644, true), (0o400, false)] {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
        let out = ved(&["run", "--stdin", "--data-dir", d, "--audit-key", k, PROGRAM], "");
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stderr).contains("is readable or writable by others"), warned, "{mode:o}");
    }
}
