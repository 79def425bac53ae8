//! One shape for a persisted instance: `ved_runtime::InstanceSnapshot` is what the
//! store writes, and records written before it was (by the hand-kept mirrors that
//! `codec.rs` had) still read, and write back byte for byte.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use ved_runtime::{Instance, InstanceSnapshot, Intent, IntentId, Pending, Phase, Status};
use ved_store::codec::{Record, SnapshotRecord};
use ved_vm::Value;

/// Written by `ved run examples/security_policy.ved --stdin` before the change, with a
/// Firewall adapter that never answered: a step in flight, mid-tick (`tick_cursor`).
const IN_FLIGHT: &str = r#"{"kind":"snapshot","instance":"SecurityPolicy","domain":"SecurityPolicy","fields":[["desired_ports","list<int>"],["actual_ports","list<int>"]],"domain_index":0,"slice":1,"ticks":1,"now_ms":0,"seed":2952260901480542029,"status":"converging","state":[{"l":[{"i":80},{"i":443}]},{"l":[]}],"pending":[{"transition":1,"attempt":0,"phase":{"InFlight":{"outstanding":[[1,0]],"held":[[1,{"l":[{"i":80},{"i":443}]}]],"intents":[{"slice":1,"index":0,"transition":1,"adapter":"Firewall","action":"OpenPorts","args":[{"l":[{"i":80},{"i":443}]}]}]}}}],"retry_attempts":[],"tick_cursor":2,"tick_ran":true,"ticks_since_input":1,"sources":[]}"#;

/// The same program with a Firewall adapter that fails: both transitions backing off.
const BACKING_OFF: &str = r#"{"kind":"snapshot","instance":"SecurityPolicy","domain":"SecurityPolicy","fields":[["desired_ports","list<int>"],["actual_ports","list<int>"]],"domain_index":0,"slice":5,"ticks":2,"now_ms":0,"seed":2952260901480542029,"status":"waiting","state":[{"l":[{"i":80},{"i":443}]},{"l":[{"i":22},{"i":80}]}],"pending":[{"transition":1,"attempt":1,"phase":{"Backoff":{"until_ms":108,"faulted":false,"error":"`sh` failed: exit status 3: firewall down"}}},{"transition":0,"attempt":1,"phase":{"Backoff":{"until_ms":140,"faulted":false,"error":"`sh` failed: exit status 3: firewall down"}}}],"retry_attempts":[],"tick_cursor":null,"tick_ran":false,"ticks_since_input":1,"sources":[]}"#;

fn decode(line: &str) -> SnapshotRecord {
    match serde_json::from_str::<Record>(line).expect("an old record decodes") {
        Record::Snapshot(s) => std::sync::Arc::unwrap_or_clone(s),
        other => panic!("not a snapshot: {other:?}"),
    }
}

#[test]
fn old_records_decode_and_encode_byte_for_byte() {
    for line in [IN_FLIGHT, BACKING_OFF] {
        let rec = decode(line);
        assert_eq!(serde_json::to_string(&Record::snapshot(rec.clone())).unwrap(), line);
        // The record alone (no `kind`) too.
        let alone = serde_json::to_string(&rec).unwrap();
        assert_eq!(alone, line.replacen(r#""kind":"snapshot","#, "", 1));
        assert_eq!(serde_json::from_str::<SnapshotRecord>(&alone).unwrap(), rec);
    }
}

#[test]
fn an_old_in_flight_record_reads_as_the_runtime_sees_it() {
    let rec = decode(IN_FLIGHT);
    assert_eq!((rec.domain(), rec.fields().len()), ("SecurityPolicy", 2));
    let s = &rec.snapshot;
    assert_eq!((s.name.as_str(), s.domain, s.slice, s.status), ("SecurityPolicy", 0, 1, Status::Converging));
    assert_eq!((s.tick_cursor, s.tick_ran, s.ticks_since_input), (Some(2), true, 1));
    let ports = Value::List(Arc::new(vec![Value::Int(80), Value::Int(443)]));
    assert_eq!(s.state, vec![ports.clone(), Value::List(Arc::new(Vec::new()))]);
    let id = IntentId { instance: Arc::from("SecurityPolicy"), slice: 1, index: 0 };
    assert_eq!(
        s.pending,
        vec![Pending {
            transition: 1,
            attempt: 0,
            phase: Phase::InFlight {
                outstanding: vec![id.clone()],
                held: vec![(1, ports.clone())],
                intents: vec![Intent {
                    id,
                    transition: 1,
                    adapter: Arc::from("Firewall"),
                    action: Arc::from("OpenPorts"),
                    args: vec![ports].into(),
                }],
                confirm: Vec::new(),
            },
        }]
    );
    // The restored instance would deliver the intent again, under its old id.
    let inst = Instance::restore(s.clone());
    assert_eq!(inst.undelivered().iter().map(|i| i.id.to_string()).collect::<Vec<_>>(), ["SecurityPolicy/1/0"]);

    let rec = decode(BACKING_OFF);
    assert_eq!(rec.snapshot.status, Status::Waiting);
    assert!(matches!(
        &rec.snapshot.pending[0].phase,
        Phase::Backoff { until_ms: 108, faulted: false, error: Some(e) } if e.contains("firewall down")
    ));
}

fn set(v: &[i64]) -> Value {
    Value::Set(Arc::new(v.iter().map(|i| Value::Int(*i)).collect::<BTreeSet<_>>()))
}

/// A snapshot that uses every part of the shape.
fn everything() -> InstanceSnapshot {
    let name = "pool/eu-1";
    let id = |slice, index| IntentId { instance: Arc::from(name), slice, index };
    let map = Value::Map(Arc::new(BTreeMap::from([
        (Arc::from("a"), Value::Str(Arc::from("x \"quoted\" ✓"))),
        (Arc::from("b"), set(&[3, 1, 2])),
    ])));
    let intent = |slice, index| Intent {
        id: id(slice, index),
        transition: 0,
        adapter: Arc::from("Cloud"),
        action: Arc::from("Scale"),
        args: vec![Value::Int(-7), Value::Bool(true), map.clone()].into(),
    };
    InstanceSnapshot {
        name: name.into(),
        domain: 2,
        slice: 41,
        ticks: 17,
        now_ms: 90_000,
        seed: u64::MAX - 3,
        status: Status::Degraded,
        state: vec![Value::Int(i64::MIN), Value::Bool(false), Value::Str(Arc::from("")), map.clone(), set(&[])],
        pending: vec![
            Pending {
                transition: 0,
                attempt: 2,
                phase: Phase::InFlight {
                    outstanding: vec![id(40, 1)],
                    held: vec![(3, map.clone()), (0, Value::Int(5))],
                    intents: vec![intent(40, 0), intent(40, 1)],
                    confirm: vec![0, 3],
                },
            },
            Pending { transition: 1, attempt: 0, phase: Phase::Confirming { fields: vec![1], until_ms: 99_000 } },
            Pending {
                transition: 2,
                attempt: 6,
                phase: Phase::Backoff { until_ms: 150_000, faulted: false, error: Some("503".into()) },
            },
            Pending {
                transition: 3,
                attempt: 1,
                phase: Phase::Backoff { until_ms: 91_000, faulted: true, error: None },
            },
        ],
        retry_attempts: vec![(4, 3)],
        last_errors: Vec::new(),
        tick_cursor: Some(1),
        tick_ran: true,
        ticks_since_input: 9,
        sources: vec![("watch#1".into(), 12), ("api".into(), 3)],
        watched: vec![0, 1, 3],
    }
}

#[test]
fn an_instance_round_trips_through_its_record() {
    let fields = [
        ("n".to_string(), ved_check::Type::Int),
        ("on".to_string(), ved_check::Type::Bool),
        ("s".to_string(), ved_check::Type::Str),
    ];
    for snap in [everything(), decode(IN_FLIGHT).snapshot, decode(BACKING_OFF).snapshot] {
        let before = Instance::restore(snap.clone());
        let json = serde_json::to_string(&Record::snapshot(SnapshotRecord::new(
            before.snapshot(),
            &ved_store::Schema::of("D", &fields),
        )))
        .unwrap();
        let Record::Snapshot(rec) = serde_json::from_str::<Record>(&json).unwrap() else { panic!("{json}") };
        assert_eq!((rec.domain(), rec.fields()[2].1.as_str()), ("D", "string"));
        assert_eq!(rec.snapshot, snap);
        let after = Instance::restore(std::sync::Arc::unwrap_or_clone(rec).snapshot);
        assert_eq!(after.snapshot(), before.snapshot());
        assert_eq!(
            (&after.name, after.domain, &after.state, &after.pending, after.status),
            (&before.name, before.domain, &before.state, &before.pending, before.status)
        );
        assert_eq!((&after.sources, &after.watched), (&before.sources, &before.watched));
        assert_eq!((after.slice, after.ticks, after.now_ms), (before.slice, before.ticks, before.now_ms));
        assert_eq!(after.undelivered(), before.undelivered());
    }
}

#[test]
fn optional_parts_are_left_out_and_default_when_absent() {
    let mut s = everything();
    s.watched.clear();
    s.pending = vec![
        Pending { transition: 0, attempt: 0, phase: Phase::Backoff { until_ms: 1, faulted: true, error: None } },
        Pending {
            transition: 1,
            attempt: 0,
            phase: Phase::InFlight {
                outstanding: Vec::new(),
                held: Vec::new(),
                intents: Vec::new(),
                confirm: Vec::new(),
            },
        },
    ];
    let json = serde_json::to_string(&SnapshotRecord::new(s.clone(), &ved_store::Schema::of("D", &[]))).unwrap();
    for absent in ["watched", "confirm", "error"] {
        assert!(!json.contains(&format!("\"{absent}\"")), "{absent} in {json}");
    }
    // Records from before `sources` existed.
    let old = json.replacen(r#","sources":[["watch#1",12],["api",3]]"#, "", 1);
    assert_ne!(old, json);
    let back: SnapshotRecord = serde_json::from_str(&old).unwrap();
    assert_eq!(back.snapshot, InstanceSnapshot { sources: Vec::new(), ..s });
}

#[test]
fn a_record_with_an_unknown_status_does_not_decode() {
    let bad = IN_FLIGHT.replacen(r#""status":"converging""#, r#""status":"napping""#, 1);
    assert!(serde_json::from_str::<Record>(&bad).is_err());
}

mod binary {
    //! Format 2: the same snapshots in the binary encoding, with the schema apart.
    use super::*;
    use proptest::prelude::*;
    use ved_store::bin::{encode_schema, encode_snapshot, Schemas};
    use ved_store::Schema;

    fn schema() -> Schema {
        Schema { domain: "D".into(), fields: vec![("n".into(), "int".into()), ("s".into(), "set<int>".into())] }
    }

    fn encoded(s: &InstanceSnapshot) -> (Schemas, Vec<u8>) {
        let mut defs = Schemas::default();
        let mut b = Vec::new();
        encode_schema(&mut b, 3, &schema());
        assert_eq!(defs.define(&b).unwrap(), (3, false));
        b.clear();
        encode_snapshot(&mut b, 3, s);
        (defs, b)
    }

    #[test]
    fn every_part_of_a_snapshot_round_trips_and_is_smaller_than_json() {
        for snap in [everything(), decode(IN_FLIGHT).snapshot, decode(BACKING_OFF).snapshot] {
            let (defs, b) = encoded(&snap);
            let rec = defs.snapshot(&b).unwrap();
            assert_eq!(rec.snapshot, snap);
            assert_eq!(*rec.schema, schema());
            // Intent ids take the instance's name, as the JSON decoder gives them.
            assert_eq!(rec.snapshot.pending, snap.pending);
            let json = serde_json::to_vec(&SnapshotRecord::new(snap.clone(), &Arc::new(schema()))).unwrap();
            assert!(b.len() * 2 < json.len(), "{} binary bytes against {} JSON", b.len(), json.len());
        }
    }

    #[test]
    fn a_snapshot_naming_an_undefined_schema_is_refused() {
        let mut b = Vec::new();
        encode_snapshot(&mut b, 7, &everything());
        let err = Schemas::default().snapshot(&b).unwrap_err();
        assert!(err.to_string().contains("schema 7, which no record before it defines"), "{err}");
    }

    #[test]
    fn every_cut_of_a_record_is_an_error_and_no_byte_flip_panics() {
        let (defs, b) = encoded(&everything());
        for n in 0..b.len() {
            assert!(defs.snapshot(&b[..n]).is_err(), "a record cut to {n} bytes decoded");
        }
        let mut extra = b.clone();
        extra.push(0);
        assert!(defs.snapshot(&extra).unwrap_err().to_string().contains("left over"));
        for i in 0..b.len() {
            for bit in 0..8 {
                let mut d = b.clone();
                d[i] ^= 1 << bit;
                // A flip may still decode (a different number), but never panics;
                // the frame's checksum is what catches it on disk.
                let _ = defs.snapshot(&d);
            }
        }
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<i64>().prop_map(Value::Int),
            any::<bool>().prop_map(Value::Bool),
            ".{0,6}".prop_map(|s| Value::Str(Arc::from(s.as_str()))),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(|l| Value::List(Arc::new(l))),
                prop::collection::btree_set(inner.clone(), 0..4).prop_map(|s| Value::Set(Arc::new(s))),
                prop::collection::btree_map(".{0,3}", inner, 0..4).prop_map(|m| {
                    Value::Map(Arc::new(m.into_iter().map(|(k, v)| (Arc::from(k.as_str()), v)).collect()))
                }),
            ]
        })
    }

    fn phase(name: &'static str) -> impl Strategy<Value = Phase> {
        let id = move |(slice, index): (u64, u32)| IntentId { instance: Arc::from(name), slice, index };
        prop_oneof![
            (
                prop::collection::vec((any::<u64>(), any::<u32>()).prop_map(id), 0..3),
                prop::collection::vec((any::<u16>(), value()), 0..3),
                prop::collection::vec(
                    ((any::<u64>(), any::<u32>()).prop_map(id), 0..9usize, prop::collection::vec(value(), 0..3))
                        .prop_map(|(id, transition, args)| Intent {
                            id,
                            transition,
                            adapter: Arc::from("A"),
                            action: Arc::from("Go"),
                            args: args.into()
                        }),
                    0..3
                ),
                prop::collection::vec(any::<u16>(), 0..3),
            )
                .prop_map(|(outstanding, held, intents, confirm)| Phase::InFlight {
                    outstanding,
                    held,
                    intents,
                    confirm
                }),
            (prop::collection::vec(any::<u16>(), 0..3), any::<u64>())
                .prop_map(|(fields, until_ms)| Phase::Confirming { fields, until_ms }),
            (any::<u64>(), any::<bool>(), prop::option::of(".{0,8}"))
                .prop_map(|(until_ms, faulted, error)| Phase::Backoff { until_ms, faulted, error }),
        ]
    }

    fn snapshot() -> impl Strategy<Value = InstanceSnapshot> {
        let status = prop_oneof![
            Just(Status::Stable),
            Just(Status::Converging),
            Just(Status::Waiting),
            Just(Status::Stuck),
            Just(Status::Livelock),
            Just(Status::Degraded),
        ];
        let counters = (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), 0..1000usize, any::<u64>());
        let pending = prop::collection::vec(
            (0..50usize, any::<u32>(), phase("inst/1")).prop_map(|(transition, attempt, phase)| Pending {
                transition,
                attempt,
                phase,
            }),
            0..3,
        );
        let extras = (
            prop::collection::vec((0..50usize, any::<u32>()), 0..3),
            prop::collection::vec((0..50usize, ".{0,8}"), 0..3),
            prop::option::of(any::<u32>()),
            any::<bool>(),
            prop::collection::vec((".{0,5}", any::<u64>()), 0..3),
            prop::collection::vec(any::<u16>(), 0..3),
        );
        (counters, status, prop::collection::vec(value(), 0..5), pending, extras).prop_map(
            |((slice, ticks, now_ms, seed, domain, since), status, state, pending, extras)| {
                let (retry_attempts, last_errors, tick_cursor, tick_ran, sources, watched) = extras;
                InstanceSnapshot {
                    name: "inst/1".into(),
                    domain,
                    slice,
                    ticks,
                    now_ms,
                    seed,
                    status,
                    state,
                    pending,
                    retry_attempts,
                    last_errors,
                    tick_cursor,
                    tick_ran,
                    ticks_since_input: since,
                    sources,
                    watched,
                }
            },
        )
    }

    fn opt(s: &'static str) -> impl Strategy<Value = Option<String>> {
        prop::option::of(s)
    }

    fn journal() -> impl Strategy<Value = ved_store::JournalEntry> {
        let pairs = || prop::collection::vec((".{0,5}", ".{0,8}"), 0..3);
        let json = prop_oneof![
            any::<i64>().prop_map(serde_json::Value::from),
            any::<bool>().prop_map(serde_json::Value::from),
            ".{0,6}".prop_map(serde_json::Value::from),
            prop::collection::vec(any::<i32>(), 0..3).prop_map(serde_json::Value::from),
        ];
        let origin = prop::option::of(
            (any::<u64>(), ".{0,6}", opt(".{0,6}"), opt(".{0,6}"))
                .prop_map(|(slice, cause, detail, source)| ved_store::Origin { slice, cause, detail, source }),
        );
        (
            (
                ".{0,8}",
                any::<u64>(),
                any::<u64>(),
                // Wall-clock times up to the year 9999, which RFC 3339 can write.
                prop::option::of(0u64..253_402_300_799_999),
                ".{0,8}",
                opt(".{0,8}"),
            ),
            (pairs(), pairs(), pairs()),
            prop::collection::vec((".{0,8}", any::<bool>(), opt(".{0,8}")), 0..3),
            (
                opt(".{0,8}"),
                prop::collection::vec((".{0,4}", json), 0..3),
                prop::collection::vec((".{0,4}", any::<i64>()), 0..3),
            ),
            (opt(".{0,5}"), prop::option::of(any::<u64>()), origin, any::<u64>(), opt(".{0,6}"), opt(".{0,9}")),
        )
            .prop_map(
                |(
                    (instance, slice, at_ms, wall_ms, cause, detail),
                    (changes, held, intents),
                    results,
                    (caused_by, observed, added),
                    (source, batch, origin, quiet, status, reason),
                )| {
                    ved_store::JournalEntry {
                        instance,
                        slice,
                        at_ms,
                        wall_ms,
                        cause,
                        detail,
                        changes,
                        held,
                        intents,
                        results,
                        caused_by,
                        observed,
                        added,
                        source,
                        batch,
                        origin,
                        quiet,
                        status,
                        reason,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn any_journal_entry_round_trips(e in journal()) {
            let mut b = Vec::new();
            ved_store::bin::encode_journal(&mut b, &e);
            prop_assert_eq!(ved_store::bin::decode_journal(&b).unwrap(), e.clone());
            for n in 0..b.len() {
                prop_assert!(ved_store::bin::decode_journal(&b[..n]).is_err());
            }
        }

        #[test]
        fn any_snapshot_round_trips(s in snapshot()) {
            let (defs, b) = encoded(&s);
            prop_assert_eq!(defs.snapshot(&b).unwrap().snapshot, s);
        }

        #[test]
        fn arbitrary_bytes_are_an_error_or_a_snapshot_never_a_panic(tail in prop::collection::vec(any::<u8>(), 0..200)) {
            let (defs, _) = encoded(&everything());
            let mut b = vec![ved_store::bin::SNAPSHOT, 3];
            b.extend(tail);
            let _ = defs.snapshot(&b);
            let mut s = vec![ved_store::bin::SCHEMA];
            s.extend(b.iter().skip(1));
            let _ = Schemas::default().define(&s);
        }
    }
}
