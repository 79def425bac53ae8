//! Membership on the in-memory etcd: leases, fencing, standing down and instance state,
//! with time moved by hand.

use std::sync::Arc;
use ved_cluster::etcd::Etcd;
use ved_cluster::mem::MemEtcd;
use ved_cluster::{
    list_instances, nodes, owners, read_state, InstanceState, InstanceWrite, KvStore, Membership, Renewal,
};

const PREFIX: &str = "/ved";

/// A node with its own connection to the store, so that it alone can be cut off.
struct Node {
    link: MemEtcd,
    m: Arc<Membership>,
}

fn join(etcd: &MemEtcd, name: &str, ttl: i64) -> Node {
    let link = etcd.client();
    let url = Some(format!("http://{name}.test:7001"));
    let m = Membership::join_manual(Arc::new(link.clone()), PREFIX, name, ttl, url, etcd.clock()).expect("joins");
    Node { link, m }
}

/// Moves time on by `ms` in steps of `step`, with the given nodes renewing at each step.
fn run_for(etcd: &MemEtcd, ms: u64, step: u64, renewing: &[&Node]) {
    let mut done = 0;
    while done < ms {
        etcd.advance_ms(step);
        done += step;
        for n in renewing {
            n.m.renew();
        }
    }
}

#[allow(dead_code)]
fn the_etcd_client_is_a_store(etcd: Arc<Etcd>) -> Arc<dyn KvStore> {
    etcd
}

#[test]
fn a_stale_owner_is_fenced_out_after_its_lease_expired_and_another_node_took_over() {
    let etcd = MemEtcd::new();
    let a = join(&etcd, "a", 2);
    let b = join(&etcd, "b", 2);
    let first = a.m.acquire("web").unwrap().expect("web had no owner");
    assert!(a.m.save("web", b"by a").unwrap());

    // a is cut off; b goes on. a stands down while its lease is still alive on the server.
    a.link.set_reachable(false);
    let old_lease = a.m.lease();
    let mut stood_down_with_lease_alive = false;
    for _ in 0..12 {
        run_for(&etcd, 250, 250, &[&a, &b]);
        if !a.m.acting() && etcd.leases().contains(&old_lease) {
            stood_down_with_lease_alive = true;
        }
    }
    assert!(!a.m.acting());
    assert!(stood_down_with_lease_alive, "a acted until its lease lapsed");
    assert!(!etcd.leases().contains(&old_lease), "a's lease expired");
    assert_eq!(b.m.watched_owner("web"), None, "the owner key went with a's lease");
    let second = b.m.acquire("web").unwrap().expect("b takes web");
    assert!(second > first, "fencing tokens grow: {first} then {second}");

    // a is back, with its stale view of things: every write is refused, nothing is written.
    a.link.set_reachable(true);
    let revision = etcd.revision();
    assert!(!a.m.save("web", b"stale").unwrap());
    let stale =
        InstanceWrite { snapshot: Some(b"stale".to_vec()), journal: vec![(1, b"j".to_vec())], ..Default::default() };
    assert!(!a.m.save_state("web", &stale).unwrap());
    assert!(!a.m.release("web").unwrap());
    assert_eq!(etcd.revision(), revision, "nothing written");
    assert_eq!(b.m.load("web").unwrap().as_deref(), Some(&b"by a"[..]));
    assert!(b.m.save("web", b"by b").unwrap());

    // Registered again, a is a member under a new lease, and still not web's owner.
    assert_eq!(a.m.renew(), Renewal::Registered);
    assert!(a.m.acting());
    assert_ne!(a.m.lease(), old_lease);
    assert!(!a.m.save("web", b"stale").unwrap());
    assert_eq!(b.m.owner("web").unwrap(), Some(("b".to_string(), second)));
}

#[test]
fn lease_expiry_deletes_a_nodes_keys_and_the_watch_says_so() {
    let etcd = MemEtcd::new();
    let a = join(&etcd, "a", 2);
    let b = join(&etcd, "b", 2);
    assert!(a.m.acquire("web").unwrap().is_some());
    assert!(b.m.acquire("db").unwrap().is_some());
    assert_eq!(a.m.live_nodes(), ["a", "b"]);
    assert_eq!(a.m.node_url("b").as_deref(), Some("http://b.test:7001"));
    assert_eq!(a.m.watched_owner("db").map(|o| o.node).as_deref(), Some("b"));
    assert_eq!(owners(&etcd, PREFIX).unwrap().len(), 2);

    // b stops renewing (a stalled process): its lease runs out.
    let changes = a.m.changes();
    run_for(&etcd, 1750, 250, &[&a]);
    assert_eq!(a.m.live_nodes(), ["a", "b"], "not before the TTL");
    run_for(&etcd, 250, 250, &[&a]);
    assert_eq!(a.m.live_nodes(), ["a"]);
    assert_eq!(a.m.node_url("b"), None);
    assert_eq!(a.m.watched_owner("db"), None);
    assert!(a.m.watched_owner("web").is_some());
    assert!(a.m.changes() > changes);
    let left = owners(&etcd, PREFIX).unwrap();
    assert_eq!(left.keys().collect::<Vec<_>>(), ["web"]);
    assert_eq!(left["web"].lease, a.m.lease());
    let members = nodes(&etcd, PREFIX).unwrap();
    assert_eq!(members.into_iter().collect::<Vec<_>>(), [("a".to_string(), Some("http://a.test:7001".to_string()))]);

    // b's next renewal learns that its lease expired; it stands down, then registers anew.
    assert!(b.m.acting());
    assert_eq!(b.m.renew(), Renewal::Expired);
    assert!(!b.m.acting());
    assert_eq!(b.m.renew(), Renewal::Registered);
    assert_eq!(a.m.live_nodes(), ["a", "b"]);
}

#[test]
fn a_node_that_cannot_renew_for_a_ttl_stops_acting_and_registers_again_when_reachable() {
    let etcd = MemEtcd::new();
    let a = join(&etcd, "a", 4);
    let b = join(&etcd, "b", 4);
    run_for(&etcd, 1000, 1000, &[&a, &b]);
    let renewed_at = etcd.now_ms();
    let old_lease = a.m.lease();

    a.link.set_reachable(false);
    let mut stopped_at = None;
    while etcd.now_ms() < renewed_at + 6000 {
        run_for(&etcd, 100, 100, &[&a, &b]);
        if stopped_at.is_none() && !a.m.acting() {
            stopped_at = Some(etcd.now_ms());
        }
    }
    // It stands down a quarter TTL (the margin) before the lease can lapse.
    let stopped_at = stopped_at.expect("a stood down");
    assert_eq!(stopped_at - renewed_at, 3000);
    assert_eq!(b.m.live_nodes(), ["b"], "a's lease expired meanwhile");
    assert_eq!(a.m.renew(), Renewal::Failed, "no registration while unreachable");
    assert!(!a.m.acting());

    a.link.set_reachable(true);
    // Its watch starts again from a fresh read: a sees what happened meanwhile.
    assert_eq!(a.m.live_nodes(), ["b"]);
    assert_eq!(a.m.renew(), Renewal::Registered);
    assert!(a.m.acting());
    assert_ne!(a.m.lease(), old_lease);
    assert_eq!(b.m.live_nodes(), ["a", "b"]);
    assert_eq!(b.m.node_url("a").as_deref(), Some("http://a.test:7001"));
    assert!(a.m.acquire("web").unwrap().is_some());
    run_for(&etcd, 10_000, 1000, &[&a, &b]);
    assert!(a.m.acting() && b.m.acting());
    assert_eq!(a.m.renew(), Renewal::Renewed);
}

#[test]
fn instance_state_round_trips_trims_its_journal_and_moves_with_the_instance() {
    let etcd = MemEtcd::new();
    let a = join(&etcd, "a", 2);
    a.m.acquire("web").unwrap().unwrap();
    a.m.acquire("web/x").unwrap().unwrap();
    let entry = |n: u64| (n, format!("entry {n}").into_bytes());
    let record = |n: u64| (n, format!("record {n}").into_bytes());
    let first = InstanceWrite {
        snapshot: Some(b"snapshot 1".to_vec()),
        journal: (1..=5).map(entry).collect(),
        trim_journal_before: None,
        audit: (1..=3).map(record).collect(),
    };
    assert!(a.m.save_state("web", &first).unwrap());
    // Another instance whose name extends this one's keeps its own keys.
    let other = InstanceWrite { journal: vec![entry(1)], audit: vec![record(9)], ..Default::default() };
    assert!(a.m.save_state("web/x", &other).unwrap());
    let state = a.m.load_state("web").unwrap();
    assert_eq!(
        state,
        InstanceState {
            snapshot: Some(b"snapshot 1".to_vec()),
            journal: (1..=5).map(entry).collect(),
            audit: (1..=3).map(record).collect()
        }
    );

    // A new snapshot covers slices below 4; an entry below the trim is not written.
    let revision = etcd.revision();
    let second = InstanceWrite {
        snapshot: Some(b"snapshot 2".to_vec()),
        journal: vec![entry(2), entry(6), entry(7)],
        trim_journal_before: Some(4),
        audit: vec![record(4)],
    };
    assert!(a.m.save_state("web", &second).unwrap());
    assert_eq!(etcd.revision(), revision + 1, "one transaction");
    let state = a.m.load_state("web").unwrap();
    assert_eq!(state.snapshot.as_deref(), Some(&b"snapshot 2"[..]));
    assert_eq!(state.journal, [4, 5, 6, 7].map(entry));
    assert_eq!(state.audit, (1..=4).map(record).collect::<Vec<_>>());
    assert_eq!(read_state(&etcd, "/ved/", "web/x").unwrap().journal, vec![entry(1)]);

    // Too big a write is refused whole.
    let huge = InstanceWrite {
        snapshot: Some(b"huge".to_vec()),
        audit: (10..200).map(record).collect(),
        ..Default::default()
    };
    assert!(a.m.save_state("web", &huge).is_err());
    assert_eq!(a.m.load_state("web").unwrap(), state);

    // Handed over, the state goes with the instance; a read-only tool sees the same.
    assert!(a.m.release("web").unwrap());
    let b = join(&etcd, "b", 2);
    b.m.acquire("web").unwrap().unwrap();
    assert_eq!(b.m.load_state("web").unwrap(), state);
    assert_eq!(read_state(&etcd.client(), PREFIX, "web").unwrap(), state);
    assert_eq!(list_instances(&etcd, PREFIX).unwrap(), ["web"], "web/x has no snapshot");
    assert!(b.m.save_state("web", &InstanceWrite { trim_journal_before: Some(100), ..Default::default() }).unwrap());
    assert!(b.m.load_state("web").unwrap().journal.is_empty());
    assert!(!a.m.save_state("web", &second).unwrap(), "a released it");
}

#[test]
fn a_node_key_without_a_url_still_names_a_live_node() {
    let etcd = MemEtcd::new();
    let lease = etcd.grant(10).unwrap();
    etcd.put("/ved/nodes/old", b"old", lease).unwrap();
    let a = join(&etcd, "a", 2);
    assert_eq!(a.m.live_nodes(), ["a", "old"]);
    assert_eq!(a.m.node_url("old"), None);
    assert_eq!(nodes(&etcd, PREFIX).unwrap()["old"], None);
    let plain =
        Membership::join_manual(Arc::new(etcd.client()), PREFIX, "plain", 2, None, etcd.clock()).expect("joins");
    assert_eq!(plain.live_nodes(), ["a", "old", "plain"]);
    assert_eq!(a.m.node_url("plain"), None);
    assert_eq!(etcd.get("/ved/nodes/plain").unwrap().unwrap().value, b"plain");
}

#[test]
fn leaving_deletes_the_nodes_keys_at_once() {
    let etcd = MemEtcd::new();
    let a = join(&etcd, "a", 2);
    let b = join(&etcd, "b", 2);
    a.m.acquire("web").unwrap().unwrap();
    a.m.leave().unwrap();
    assert!(!a.m.acting());
    assert_eq!(a.m.renew(), Renewal::Left);
    assert_eq!(b.m.live_nodes(), ["b"]);
    assert_eq!(b.m.watched_owner("web"), None);
    assert!(b.m.acquire("web").unwrap().is_some());
}

#[test]
fn joining_fails_when_etcd_is_unreachable() {
    let etcd = MemEtcd::new();
    let link = etcd.client();
    link.set_reachable(false);
    let r = Membership::join_manual(Arc::new(link), PREFIX, "a", 2, None, etcd.clock());
    assert!(r.err().is_some_and(|e| e.is_unavailable()));
    assert!(etcd.leases().is_empty());
}
