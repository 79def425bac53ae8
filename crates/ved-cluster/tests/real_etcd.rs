//! The same requests to a real etcd (one member, started here) and to `MemEtcd`: the fake
//! must answer as etcd does where `Membership` relies on it. Skipped when no `etcd` is
//! on the PATH.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use ved_cluster::etcd::Etcd;
use ved_cluster::mem::MemEtcd;
use ved_cluster::{read_state, Compare, EtcdError, InstanceWrite, KvStore, Membership, Op, Range};

struct OneMember {
    child: Child,
    dir: std::path::PathBuf,
    url: String,
}

impl Drop for OneMember {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start_etcd(tag: &str) -> Option<OneMember> {
    let dir = std::env::temp_dir().join(format!("ved-cluster-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (client, peer) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new("etcd")
        .arg("--data-dir")
        .arg(&dir)
        .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
        .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("default={peer_url}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(child) = child else {
        eprintln!("skipped: no etcd on the PATH");
        return None;
    };
    let member = OneMember { child, dir, url };
    let probe = Etcd::new(vec![member.url.clone()], Duration::from_millis(500));
    let until = Instant::now() + Duration::from_secs(120);
    while probe.get("probe").is_err() {
        assert!(Instant::now() < until, "etcd did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(member)
}

fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let until = Instant::now() + Duration::from_secs(120);
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn put(key: &str, value: &str) -> Op {
    Op::Put { key: key.into(), value: value.into(), lease: 0 }
}

/// What a store answers to requests Membership relies on, with revisions made relative.
fn answers(kv: &dyn KvStore) -> Vec<String> {
    let mut out = Vec::new();
    let mut say = |s: String| out.push(s);
    let base = kv.put("t/base", b"0", 0).unwrap();
    let rel = |r: i64| r - base;
    for i in 0..5 {
        kv.put(&format!("t/j/{i:020}"), b"x", 0).unwrap();
    }
    let (ok, rev) = kv
        .txn(
            &[Compare::Exists("t/base".into()), Compare::ValueIs("t/base".into(), b"0".to_vec())],
            &[
                put("t/j/00000000000000000009", "y"),
                Op::DeleteRange { from: "t/j/".into(), to: format!("t/j/{:020}", 3) },
            ],
        )
        .unwrap();
    say(format!("trim: {ok} at +{}", rel(rev)));
    let keys: Vec<String> = kv.get_prefix("t/j/").unwrap().into_iter().map(|kv| kv.key).collect();
    say(format!("left: {keys:?}"));
    let (ok, rev) = kv.txn(&[Compare::ValueIs("t/missing".into(), Vec::new())], &[put("t/no", "1")]).unwrap();
    say(format!("value of a missing key: {ok} at +{}", rel(rev)));
    let (ok, _) = kv.txn(&[Compare::LeaseIs("t/missing".into(), 0)], &[]).unwrap();
    say(format!("lease of a missing key is 0: {ok}"));
    let (ok, rev) = kv.txn(&[Compare::Absent("t/base".into())], &[put("t/no", "1")]).unwrap();
    say(format!("absent: {ok} at +{}", rel(rev)));
    let refused = |r: Result<(bool, i64), EtcdError>| match r {
        Err(EtcdError::Rejected(m)) => format!("rejected ({})", m.contains("duplicate key")),
        other => format!("{other:?}"),
    };
    say(format!("put twice: {}", refused(kv.txn(&[], &[put("t/d", "1"), put("t/d", "2")]))));
    let covered = kv.txn(&[], &[put("t/j/1", "1"), Op::DeleteRange { from: "t/j/".into(), to: "t/j/2".into() }]);
    say(format!("put under a delete: {}", refused(covered)));
    let unknown = kv.txn(&[], &[Op::Put { key: "t/l".into(), value: vec![], lease: 12345 }]);
    say(format!("unknown lease: {}", matches!(unknown, Err(EtcdError::Rejected(_)))));
    let read = kv
        .read(&[
            Range::Key("t/base".into()),
            Range::Key("t/nothing".into()),
            Range::Prefix("t/j/0000000000000000000".into()),
        ])
        .unwrap();
    say(format!("read: {:?}", read.iter().map(|kv| kv.key.as_str()).collect::<Vec<_>>()));
    let lease = kv.grant(30).unwrap();
    kv.put("t/leased", b"1", lease).unwrap();
    let before = kv.get("t/leased").unwrap().unwrap();
    say(format!("leased: {}", before.lease == lease));
    kv.revoke(lease).unwrap();
    say(format!("revoked: {:?}", kv.get("t/leased").unwrap()));
    say(format!("keepalive of a revoked lease: {}", kv.keepalive(lease).unwrap() <= 0));
    say(format!("revoke again: {}", matches!(kv.revoke(lease), Err(EtcdError::Rejected(_)))));
    out
}

#[test]
fn the_fake_answers_as_etcd_does() {
    let Some(etcd) = start_etcd("conformance") else { return };
    let real = Etcd::new(vec![etcd.url.clone()], Duration::from_secs(2));
    let fake = MemEtcd::new();
    assert_eq!(answers(&fake), answers(&real));
}

#[test]
fn membership_on_etcd_advertises_its_url_and_keeps_instance_state() {
    let Some(etcd) = start_etcd("membership") else { return };
    let client = || Arc::new(Etcd::new(vec![etcd.url.clone()], Duration::from_secs(2)));
    let a = Membership::join_with(client(), "/t", "a", 5, Some("http://127.0.0.1:7001".into())).unwrap();
    let b = Membership::join(client(), "/t", "b", 5).unwrap();
    wait_for("both nodes in a's view", || a.live_nodes() == ["a", "b"]);
    wait_for("a's URL in b's view", || b.node_url("a").as_deref() == Some("http://127.0.0.1:7001"));
    assert_eq!(a.node_url("b"), None);

    a.acquire("web").unwrap().unwrap();
    let first = InstanceWrite {
        snapshot: Some(b"s1".to_vec()),
        journal: (1..=5).map(|n| (n, vec![n as u8])).collect(),
        trim_journal_before: None,
        audit: vec![(1, b"r1".to_vec())],
    };
    assert!(a.save_state("web", &first).unwrap());
    let second = InstanceWrite {
        snapshot: Some(b"s2".to_vec()),
        journal: vec![(2, vec![2]), (6, vec![6])],
        trim_journal_before: Some(4),
        audit: vec![(2, b"r2".to_vec())],
    };
    assert!(a.save_state("web", &second).unwrap());
    assert!(!b.save_state("web", &second).unwrap(), "b does not own web");
    let state = read_state(&*client(), "/t", "web").unwrap();
    assert_eq!(state.snapshot.as_deref(), Some(&b"s2"[..]));
    assert_eq!(state.journal, [(4, vec![4]), (5, vec![5]), (6, vec![6])]);
    assert_eq!(state.audit, [(1, b"r1".to_vec()), (2, b"r2".to_vec())]);
    assert_eq!(a.load_state("web").unwrap(), state);

    a.leave().unwrap();
    wait_for("a gone from b's view", || b.live_nodes() == ["b"] && b.watched_owner("web").is_none());
    b.leave().unwrap();
}

/// A watch's full read goes in pages, all at the revision of the first, and the watch
/// reports the changes after that revision: with pages of 3 keys, 10 keys under the
/// prefix arrive in one `Reset`, in key order, and a later write as a change.
#[test]
fn a_watch_reads_everything_in_pages_at_one_revision() {
    let Some(etcd) = start_etcd("paged") else { return };
    let kv = Etcd::new(vec![etcd.url.clone()], Duration::from_secs(2)).with_watch_page(3);
    for i in 0..10 {
        kv.put(&format!("p/{i:02}"), b"v", 0).unwrap();
    }
    kv.put("q/outside", b"v", 0).unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    KvStore::watch(&kv, vec!["p/".into()], Box::new(move |ev| s.lock().unwrap().push(ev))).unwrap();
    wait_for("the full read", || !seen.lock().unwrap().is_empty());
    let revision = kv.put("p/10", b"w", 0).unwrap();
    wait_for("the change", || seen.lock().unwrap().len() == 2);
    let seen = seen.lock().unwrap();
    match &seen[0] {
        ved_cluster::WatchEvent::Reset { revision: at, kvs } => {
            let keys: Vec<String> = kvs.iter().map(|kv| kv.key.clone()).collect();
            let expected: Vec<String> = (0..10).map(|i| format!("p/{i:02}")).collect();
            assert_eq!(keys, expected);
            assert_eq!(*at, revision - 1);
        }
        e => panic!("expected a reset, got {e:?}"),
    }
    assert!(matches!(&seen[1], ved_cluster::WatchEvent::Put(kv) if kv.key == "p/10" && kv.mod_revision == revision));
}
