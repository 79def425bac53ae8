//! Program upgrades: a changed program runs on an existing data directory by migrating
//! its instances (fields matched by name), `ved plan` shows what it would do without
//! writing anything, and a field whose type changed is refused, named.

mod common;

use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// v1: `legacy` goes away in v2, `label` stays, `workers` stays.
const V1: &str = r#"domain Pool {
  state {
    workers: int = 1
    label: string = "a"
    legacy: int = 7
  }
  goal workers == 5
  transition scale_up {
    step {
      if workers < 5 {
        workers += 1
        emit Cloud.Start(label)
      }
    }
  }
}
"#;

/// v2: `target` is new (default 6) and moves the goal, so the upgraded instance acts.
const V2: &str = r#"domain Pool {
  state {
    workers: int = 1
    label: string = "a"
    target: int = 6
  }
  goal workers == target
  transition scale_up {
    step {
      if workers < target {
        workers += 1
        emit Cloud.Start(label)
      }
    }
  }
}
"#;

/// v3: `label` changes type.
const V3: &str = r#"domain Pool {
  state {
    workers: int = 1
    label: int = 0
  }
  goal workers == 5
}
"#;

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

/// Every file under `dir` with its bytes.
fn contents(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

fn json_lines(text: &str) -> Vec<Json> {
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// Runs v1 on a fresh directory: `label` observed as "b", `workers` converged to 5.
fn seeded(tag: &str) -> (PathBuf, String) {
    let root = common::tempdir(tag);
    let data = root.join("data");
    let v1 = write(&root, "v1.ved", V1);
    let input = "{\"instance\":\"Pool\",\"set\":{\"label\":\"b\"}}\n";
    let (code, events, err) = common::ved_events(&["run", &v1, "--stdin", "--data-dir", data.to_str().unwrap()], input);
    assert_eq!(code, 0, "{err}");
    assert_eq!(events.iter().filter(|e| e["event"] == "intent").count(), 4, "{events:?}");
    (root, data.to_str().unwrap().to_string())
}

#[test]
fn a_changed_program_is_planned_then_migrates_the_stored_instances() {
    let (root, d) = seeded("upgrade");
    let v2 = write(&root, "v2.ved", V2);
    let before = contents(Path::new(&d));

    // `ved plan`: the changes and the intents, and not one byte written.
    let (code, out, err) = common::ved_text(&["plan", "--data-dir", &d, &v2, "--json"], "");
    assert_eq!(code, 0, "{out}{err}");
    let plans = json_lines(&out);
    assert_eq!(plans.len(), 1, "{out}");
    let p = &plans[0];
    assert_eq!(p["instance"], "Pool");
    assert_eq!(p["upgraded"], true);
    assert_eq!(p["added"], serde_json::json!([{"field": "target", "type": "int", "default": 6}]));
    assert_eq!(p["removed"], serde_json::json!([{"field": "legacy", "type": "int", "was": 7}]));
    let intents = p["intents"].as_array().unwrap();
    assert_eq!(intents.len(), 1, "{p}");
    assert_eq!(intents[0]["intent"], "Cloud.Start(\"b\")");
    assert_eq!(intents[0]["transition"], "scale_up");
    assert_eq!(p["steps"][0]["cause"], "transition scale_up");
    assert_eq!(p["steps"][0]["held"]["workers"], "6");
    assert_eq!(p["steps"][1]["changes"]["workers"], "6");
    assert_eq!(p["status"], "stable");
    let (code, text, err) = common::ved_text(&["plan", "--data-dir", &d, &v2], "");
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("+ target: int = 6 (added, its default)"), "{text}");
    assert!(text.contains("- legacy: int (removed, was 7)"), "{text}");
    assert!(text.contains("Cloud.Start(\"b\") from scale_up"), "{text}");
    assert!(text.contains("(transition scale_up): no change (held until its intents succeed: workers = 6)"), "{text}");
    assert_eq!(before, contents(Path::new(&d)), "`ved plan` changed the data directory");

    // `ved run` with v2 migrates: matching fields keep their values, the new one gets its
    // default, and the program acts on it as the plan said.
    let (code, events, err) = common::ved_events(&["run", &v2, "--stdin", "--data-dir", &d], "");
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("program upgraded"), "{err}");
    let emitted: Vec<&Json> = events.iter().filter(|e| e["event"] == "intent").collect();
    assert_eq!(emitted.len(), 1, "{events:?}");
    assert_eq!(emitted[0]["action"], "Start");
    let (code, out, err) = common::ved_text(&["inspect", "--data-dir", &d, "Pool", "--json"], "");
    assert_eq!(code, 0, "{err}");
    let snap = &json_lines(&out)[0];
    assert_eq!(snap["state"], serde_json::json!({"workers": 6, "label": "b", "target": 6}));

    // The journal has the migration as a slice of its own, the audit log says it in words.
    let (code, out, err) = common::ved_text(&["journal", "--data-dir", &d, "Pool", "--json"], "");
    assert_eq!(code, 0, "{err}");
    let entries = json_lines(&out);
    let m = entries.iter().find(|e| e["cause"] == "migrate").unwrap_or_else(|| panic!("{out}"));
    assert_eq!(m["detail"], "added target; removed legacy");
    assert!(entries.windows(2).all(|w| w[0]["slice"].as_u64() < w[1]["slice"].as_u64()), "{out}");
    let after = entries.iter().find(|e| e["slice"].as_u64() > m["slice"].as_u64()).unwrap();
    assert_eq!(after["cause"], "transition");
    let (code, out, err) = common::ved_text(&["audit", "--data-dir", &d], "");
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("program upgraded: field `target: int` added with default 6, field `legacy: int` removed (was 7)"),
        "{out}"
    );
    let (code, _, err) = common::ved_text(&["audit", "--data-dir", &d, "verify"], "");
    assert_eq!(code, 0, "{err}");
    // `ved replay` runs one program: across the upgrade it says so instead of a false divergence.
    let (code, _, err) = common::ved_text(&["replay", "--data-dir", &d, "Pool"], "");
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("crosses a program upgrade at slice") && err.contains("added target"), "{err}");

    // Run again: nothing left to migrate, nothing recorded twice.
    let (code, _, err) = common::ved_events(&["run", &v2, "--stdin", "--data-dir", &d], "");
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("program upgraded"), "{err}");
    let (_, out, _) = common::ved_text(&["journal", "--data-dir", &d, "Pool", "--json"], "");
    assert_eq!(json_lines(&out).iter().filter(|e| e["cause"] == "migrate").count(), 1, "{out}");
}

#[test]
fn a_field_whose_type_changed_is_refused_and_named() {
    let (root, d) = seeded("upgrade-type");
    let v3 = write(&root, "v3.ved", V3);
    let before = contents(Path::new(&d));

    let (code, out, _) = common::ved_text(&["plan", "--data-dir", &d, &v3, "--json"], "");
    assert_eq!(code, 1, "{out}");
    let p = &json_lines(&out)[0];
    assert_eq!(p["conflict"], serde_json::json!({"field": "label", "old": "string", "new": "int"}));
    assert!(p["error"]["hint"].as_str().unwrap().contains("keep `label: string`"), "{p}");
    assert_eq!(before, contents(Path::new(&d)), "`ved plan` changed the data directory");

    let (code, _, err) = common::ved_events(&["run", &v3, "--stdin", "--data-dir", &d], "");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("instance `Pool`: field `label` was `string` and the program declares it `int`"), "{err}");
    assert!(err.contains("hint: values are not converted between types"), "{err}");
    // Refused before anything ran: the stored state is v1's still.
    let (_, out, _) = common::ved_text(&["inspect", "--data-dir", &d, "Pool", "--json"], "");
    assert_eq!(json_lines(&out)[0]["state"]["label"], "b");
}

#[test]
fn an_instance_whose_domain_is_gone_is_refused() {
    let (root, d) = seeded("upgrade-domain");
    let other = write(&root, "other.ved", &V2.replace("domain Pool", "domain Fleet"));
    let (code, out, _) = common::ved_text(&["plan", "--data-dir", &d, &other], "");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("instance `Pool` belongs to domain `Pool`, which is not in the program"), "{out}");
    assert!(out.contains("Fleet (Fleet): new instance"), "{out}");
    let (code, _, err) = common::ved_events(&["run", &other, "--stdin", "--data-dir", &d], "");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("keep domain `Pool` in the program"), "{err}");
}

#[test]
fn a_plan_for_a_directory_that_does_not_exist_yet_creates_every_instance_and_writes_nothing() {
    let root = common::tempdir("upgrade-fresh");
    let v1 = write(&root, "v1.ved", V1);
    let data = root.join("data");
    let (code, out, err) = common::ved_text(&["plan", "--data-dir", data.to_str().unwrap(), &v1], "");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Pool (Pool): new instance, starting from its defaults"), "{out}");
    assert!(out.contains("would emit Pool/1/0 Cloud.Start(\"a\") from scale_up"), "{out}");
    assert!(!data.exists(), "`ved plan` created the data directory");
}
