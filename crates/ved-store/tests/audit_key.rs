//! The store authenticates the audit entries it makes once it has a key, in the log's
//! batches as in `audit.log`, through a restart and a compaction; and the anchor it
//! commits is the one `ved audit head` prints.

use ved_store::audit::check_macs;
use ved_store::{read_only, verified_audit, AuditDraft, AuditKey, Durability, Store};

fn draft(text: &str) -> AuditDraft {
    AuditDraft { at_ms: 5, wall_ms: Some(1_796_189_694_005), instance: "WorkerPool".into(), text: text.into() }
}

fn key() -> AuditKey {
    AuditKey::from_bytes(b"a key only the operator holds\n").unwrap()
}

#[test]
fn every_entry_made_with_a_key_carries_a_valid_mac() {
    let dir = std::env::temp_dir().join(format!("ved-store-audit-key-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // One entry before a key was configured, as in a store that predates it.
    let (mut s, _) = Store::open(&dir, Durability::Fsync, false, Box::new(|_| {})).unwrap();
    s.append(Vec::new(), vec![draft("before the key")]);
    s.close().unwrap();
    let (mut s, _) = Store::open(&dir, Durability::Fsync, false, Box::new(|_| {})).unwrap();
    s.set_audit_key(key()).unwrap();
    assert!(s.set_audit_key(key()).is_err(), "set once");
    s.append(Vec::new(), vec![draft("one"), draft("two")]);
    let seq = s.append(Vec::new(), vec![draft("three")]);
    s.wait_durable(seq).unwrap();
    assert!(s.set_audit_key(key()).is_err(), "not after a batch");
    s.compact(Vec::new());
    s.append(Vec::new(), vec![draft("after the compaction")]);
    s.close().unwrap();

    let chain = verified_audit(&dir).unwrap().unwrap();
    assert_eq!(chain.entries.len(), 5);
    assert_eq!(chain.entries[0].mac, None);
    let report = check_macs(&chain.entries, &key()).unwrap();
    assert_eq!((report.first_keyed, report.keyed), (Some(2), 4));
    let anchor = chain.anchor();
    assert_eq!(anchor.count, 5);
    assert_eq!(anchor.hash, chain.entries[4].hash);
    chain.check_anchor(&anchor).unwrap();
    // Recovery reads them back from the files with their macs.
    let rec = read_only(&dir).unwrap();
    assert_eq!(rec.audit, chain.entries);
    // `audit.log` lost its last line (synced only at compaction and close; a machine crash):
    // the next open restores it from the log's batch, mac and all.
    let log = dir.join("audit.log");
    let text = std::fs::read_to_string(&log).unwrap();
    let cut = text.trim_end_matches('\n').rfind('\n').unwrap() + 1;
    std::fs::write(&log, &text[..cut]).unwrap();
    let (s, _) = Store::open(&dir, Durability::Fsync, false, Box::new(|_| {})).unwrap();
    s.close().unwrap();
    assert_eq!(std::fs::read_to_string(&log).unwrap(), text, "restored as it was written");
    let _ = std::fs::remove_dir_all(&dir);
}
