//! The API for fleets against a real `ved run` daemon: thousands of instances created
//! in one call and listed page by page with filters, batches that are all or nothing,
//! observations in a batch, deletion that survives a restart, the instance limit and
//! the name rules.

mod common;

use common::{tempdir, Daemon};
use serde_json::{json, Value as Json};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const TOKEN: &str = "fleet-t0ken";

/// Two domains: `Pool` converges `workers` to 5; `Svc` has nothing to fix a `level` of 10
/// or more with, so an instance observed there is stuck.
const PROGRAM: &str = "domain Pool {\n  state {\n    workers: int\n  }\n  goal workers == 5\n  transition up {\n    step {\n      if workers < 5 {\n        workers += 1\n      }\n    }\n  }\n}\ndomain Svc {\n  state {\n    level: int\n  }\n  goal level < 10\n  transition clamp {\n    step {\n      if level > 100 {\n        level = 100\n      }\n    }\n  }\n}\n";

fn program(dir: &Path) -> PathBuf {
    let p = dir.join("fleet.ved");
    std::fs::write(&p, PROGRAM).unwrap();
    p
}

fn start(dir: &Path, extra: &[&str]) -> Daemon {
    let prog = program(dir);
    let data = dir.join("data");
    let mut args = vec![prog.to_str().unwrap().to_string(), "--data-dir".into(), data.to_str().unwrap().into()];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Daemon::start(&args, Some(TOKEN))
}

fn post(d: &Daemon, path: &str, body: &Json) -> (u16, Json) {
    d.post(path, Some(TOKEN), body.to_string().as_bytes())
}

fn delete(d: &Daemon, name: &str, token: Option<&str>) -> (u16, Json) {
    let mut req = d.agent.delete(&format!("{}/v1/instances/{name}", d.base));
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    let mut r = req.call().unwrap();
    let status = r.status().as_u16();
    (status, serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap())
}

/// Every instance, following `next` from page to page; checks each page's order.
fn all_pages(d: &Daemon, query: &str, limit: usize) -> Vec<Json> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = format!("/v1/instances?limit={limit}{query}");
        if let Some(a) = &after {
            path.push_str(&format!("&after={a}"));
        }
        let (s, page) = d.get(&path);
        assert_eq!(s, 200, "{page}");
        let items = page["instances"].as_array().unwrap().clone();
        assert!(items.len() <= limit);
        let names: Vec<&str> = items.iter().map(|i| i["name"].as_str().unwrap()).collect();
        assert!(names.windows(2).all(|w| w[0] < w[1]), "a page is in ascending order: {names:?}");
        if let (Some(a), Some(first)) = (&after, names.first()) {
            assert!(*first > a.as_str(), "a page starts after `after`");
        }
        out.extend(items);
        match &page["next"] {
            Json::Null => return out,
            Json::String(n) => {
                assert_eq!(out.last().unwrap()["name"], *n, "`next` is the page's last name");
                after = Some(n.clone());
            }
            other => panic!("`next` is a name or null, not {other}"),
        }
    }
}

fn names(list: &[Json]) -> Vec<String> {
    list.iter().map(|i| i["name"].as_str().unwrap().to_string()).collect()
}

fn message(e: &Json) -> &str {
    e["error"]["message"].as_str().unwrap()
}

#[test]
fn a_fleet_is_created_in_one_call_and_listed_page_by_page_with_filters() {
    let dir = tempdir("fleet-list");
    let d = start(&dir, &[]);
    // Far more than the 64 KiB body limit of the other routes.
    let fleet: Vec<Json> = (0..2000)
        .map(|n| {
            let name = format!("node-{n:04}");
            match n % 4 {
                0 => json!({"name": name, "domain": "Svc", "state": {"level": if n % 100 == 0 { 50 } else { 1 }}}),
                1 => json!({"name": name, "domain": "Pool", "state": {"workers": 2}}),
                _ => json!({"name": name, "domain": "Pool"}),
            }
        })
        .collect();
    let (s, r) = post(&d, "/v1/instances", &Json::Array(fleet));
    assert_eq!(s, 201, "{r}");
    assert_eq!(r["created"], 2000);
    let created = r["instances"].as_array().unwrap();
    assert_eq!(created.len(), 2000);
    assert_eq!(created[0]["name"], "node-0000");
    assert_eq!(created[1999]["name"], "node-1999");

    // The pages cover every instance exactly once, the program's own two included.
    let every = all_pages(&d, "", 300);
    let got = names(&every);
    let mut want: Vec<String> = (0..2000).map(|n| format!("node-{n:04}")).collect();
    want.extend(["Pool".to_string(), "Svc".to_string()]);
    want.sort();
    assert_eq!(got, want);
    // Without `limit`, a page holds up to 1000.
    let (_, first) = d.get("/v1/instances");
    assert_eq!(first["instances"].as_array().unwrap().len(), 1000);
    assert_eq!(first["next"], got[999]);

    // Created instances ran: the pools converged.
    let (_, one) = d.get("/v1/instances/node-0001");
    assert_eq!(one["state"]["workers"], 5);

    // Filters, alone and together, still page.
    let svc = names(&all_pages(&d, "&domain=Svc", 128));
    assert_eq!(svc.len(), 501);
    assert!(svc.iter().all(|n| n == "Svc" || n[5..].parse::<u32>().unwrap() % 4 == 0));
    let stuck = names(&all_pages(&d, "&status=stuck", 7));
    let want_stuck: Vec<String> = (0..2000).step_by(100).map(|n| format!("node-{n:04}")).collect();
    assert_eq!(stuck, want_stuck);
    assert_eq!(names(&all_pages(&d, "&status=stuck&domain=Pool", 10)), Vec::<String>::new());
    let stable_pools = all_pages(&d, "&status=stable&domain=Pool", 10_000);
    assert_eq!(stable_pools.len(), 1501);
    assert!(stable_pools.iter().all(|i| i["domain"] == "Pool" && i["status"] == "stable"));

    // Bad paging parameters say what is allowed.
    for (q, says) in [
        ("limit=0", "between 1 and 10000"),
        ("limit=10001", "between 1 and 10000"),
        ("limit=ten", "positive integer"),
        ("status=sleepy", "the statuses are"),
        ("domain=Nope", "the domains are `Pool`, `Svc`"),
        ("sort=name", "unknown query parameter `sort`"),
    ] {
        let (s, e) = d.get(&format!("/v1/instances?{q}"));
        assert_eq!(s, 400, "{q}: {e}");
        assert!(message(&e).contains(says), "{q}: `{}` should say `{says}`", message(&e));
    }
}

#[test]
fn an_invalid_batch_creates_nothing_and_names_the_element() {
    let dir = tempdir("fleet-invalid");
    let d = start(&dir, &[]);
    let before = all_pages(&d, "", 1000).len();
    let good = |n: u32| json!({"name": format!("ok-{n}"), "domain": "Pool"});
    let cases: Vec<(Json, u16, usize, &str)> = vec![
        (
            json!([good(0), good(1), {"name": "bad", "domain": "Pool", "state": {"wrokers": 1}}]),
            400,
            2,
            "no field `wrokers`",
        ),
        (json!([good(0), {"name": "x", "domain": "Nope"}]), 400, 1, "no domain named `Nope`"),
        (json!([good(0), good(1), good(0)]), 409, 2, "appears twice"),
        (json!([good(0), {"name": "Pool", "domain": "Pool"}]), 409, 1, "already exists"),
        (json!([good(0), 7]), 400, 1, "an instance is an object, not a number"),
        (json!([good(0), {"name": "a/b", "domain": "Pool"}]), 400, 1, "not a valid instance name"),
    ];
    for (body, status, index, says) in cases {
        let (s, e) = post(&d, "/v1/instances", &body);
        assert_eq!(s, status, "{body}: {e}");
        assert_eq!(e["error"]["index"], index, "{e}");
        assert!(message(&e).contains(&format!("element {index}")), "{e}");
        assert!(message(&e).contains(says), "`{}` should say `{says}`", message(&e));
    }
    assert_eq!(all_pages(&d, "", 1000).len(), before, "a refused batch created something");
    let (s, e) = post(&d, "/v1/instances", &json!([]));
    assert_eq!(s, 400);
    assert!(message(&e).contains("empty"), "{e}");
    let (s, e) = post(&d, "/v1/instances", &json!("Pool"));
    assert_eq!(s, 400);
    assert!(message(&e).contains("an array of them, not a string"), "{e}");
    let too_many: Vec<Json> = (0..10_001).map(|n| json!({"name": format!("n{n}"), "domain": "Pool"})).collect();
    let (s, e) = post(&d, "/v1/instances", &Json::Array(too_many));
    assert_eq!(s, 413, "{e}");
    assert!(message(&e).contains("at most 10000"), "{e}");
    // Without the token nothing is created either.
    let (s, _) = d.post("/v1/instances", None, json!([good(9)]).to_string().as_bytes());
    assert_eq!(s, 401);
    assert_eq!(all_pages(&d, "", 1000).len(), before);
}

#[test]
fn bad_names_are_refused_with_the_rule() {
    let dir = tempdir("fleet-names");
    let d = start(&dir, &[]);
    for name in [".", "..", "a/b", "/", "tab\there", "nl\n", "", "sp ace", "é", &"x".repeat(129)] {
        let (s, e) = post(&d, "/v1/instances", &json!({"name": name, "domain": "Pool"}));
        assert_eq!(s, 400, "{name:?}: {e}");
        assert!(message(&e).contains("is not a valid instance name"), "{name:?}: {e}");
        assert!(e["error"].get("index").is_none(), "a single object has no index: {e}");
    }
    // Dots inside a name are fine, as before.
    for name in ["a.b", "...", ".hidden", "v1.2-rc_3", &"x".repeat(128)] {
        let (s, e) = post(&d, "/v1/instances", &json!({"name": name, "domain": "Pool"}));
        assert_eq!(s, 201, "{name:?}: {e}");
        assert_eq!(e["name"], name);
    }
}

#[test]
fn a_deleted_instance_stays_deleted_after_a_restart() {
    let dir = tempdir("fleet-delete");
    let d = start(&dir, &[]);
    let batch: Vec<Json> = ["keep-a", "gone", "keep-b"]
        .iter()
        .map(|n| json!({"name": n, "domain": "Pool", "state": {"workers": 1}}))
        .collect();
    let (s, r) = post(&d, "/v1/instances", &Json::Array(batch));
    assert_eq!(s, 201, "{r}");
    // Give `gone` a journal, so that there is history to forget.
    let (s, r) = post(&d, "/v1/observations", &json!([{"instance": "gone", "set": {"workers": 3}}]));
    assert_eq!(s, 200, "{r}");

    let (s, _) = delete(&d, "gone", None);
    assert_eq!(s, 401);
    let (s, e) = delete(&d, "gone", Some("wrong"));
    assert_eq!(s, 401, "{e}");
    let (s, r) = delete(&d, "gone", Some(TOKEN));
    assert_eq!(s, 200, "{r}");
    assert_eq!(r, json!({"deleted": "gone"}));
    assert_eq!(d.get("/v1/instances/gone").0, 404);
    assert_eq!(d.get("/v1/instances/gone/journal").0, 404);
    let (s, e) = delete(&d, "gone", Some(TOKEN));
    assert_eq!(s, 404, "{e}");
    assert!(message(&e).contains("no instance named `gone`"), "{e}");
    // The program's own instance of a domain would come back at every start.
    let (s, e) = delete(&d, "Pool", Some(TOKEN));
    assert_eq!(s, 409, "{e}");
    assert!(message(&e).contains("take the domain out of the program"), "{e}");
    let (code, _) = d.terminate();
    assert_eq!(code, 0);

    let d = start(&dir, &[]);
    assert_eq!(d.get("/v1/instances/gone").0, 404, "a restart brought a deleted instance back");
    let left = names(&all_pages(&d, "", 1000));
    assert_eq!(left, ["Pool", "Svc", "keep-a", "keep-b"]);
    assert_eq!(d.get("/v1/instances/keep-a").1["state"]["workers"], 5);
    // The name is free again, for a new instance with a history of its own.
    let (s, r) = post(&d, "/v1/instances", &json!({"name": "gone", "domain": "Svc"}));
    assert_eq!(s, 201, "{r}");
    let (_, j) = d.get("/v1/instances/gone/journal");
    assert!(j["entries"].as_array().unwrap().iter().all(|e| e["changes"] != json!([["workers", "3"]])), "{j}");
    let (code, _) = d.terminate();
    assert_eq!(code, 0);
    let d = start(&dir, &[]);
    assert_eq!(d.get("/v1/instances/gone").1["domain"], "Svc");
}

#[test]
fn observations_in_a_batch_are_checked_first_and_applied_together() {
    let dir = tempdir("fleet-observe");
    let d = start(&dir, &[]);
    let svcs: Vec<Json> = (0..3).map(|n| json!({"name": format!("s{n}"), "domain": "Svc"})).collect();
    assert_eq!(post(&d, "/v1/instances", &Json::Array(svcs)).0, 201);
    let slices = |d: &Daemon| -> Vec<Json> {
        (0..3).map(|n| d.get(&format!("/v1/instances/s{n}")).1["slice"].clone()).collect()
    };
    let before = slices(&d);

    let refused: Vec<(Json, usize, &str)> = vec![
        (
            json!([{"instance": "s0", "set": {"level": 1}}, {"instance": "nobody", "set": {"level": 1}}]),
            1,
            "no instance named `nobody`",
        ),
        (json!([{"instance": "s0", "set": {"level": "high"}}]), 0, "field `level`"),
        (json!([{"instance": "s0", "set": {"level": 1}}, {"instance": "s1", "set": {"lvl": 1}}]), 1, "no field `lvl`"),
        (json!([{"instance": "s0", "add": {"level": 1}, "source": "a", "version": 1}]), 0, "stands alone"),
        (json!([{"instance": "s0", "add": {"level": 1.5}}]), 0, "must be an integer"),
        (json!([{"instance": "s0", "set": {"level": 1}, "add": {"level": 1}}]), 0, "not both"),
        (json!([{"instance": "s0"}]), 0, "missing `set`"),
        (json!([{"instance": "s0", "set": {}}]), 0, "`set` is empty"),
        (json!([{"instance": "s0", "set": {"level": 1}, "source": "a"}]), 0, "go together"),
        (json!([{"instance": "s0", "set": {"level": 1}, "source": "a", "version": -1}]), 0, "non-negative"),
        (json!([{"instance": "s0", "set": {"level": 1}, "when": 3}]), 0, "unknown key `when`"),
        (json!([{"instance": "s0", "set": {"level": 1}}, "s1"]), 1, "an observation is an object"),
    ];
    for (body, index, says) in refused {
        let (s, e) = post(&d, "/v1/observations", &body);
        assert_eq!(s, 400, "{body}: {e}");
        assert_eq!(e["error"]["index"], index, "{e}");
        assert!(message(&e).contains(says), "`{}` should say `{says}`", message(&e));
    }
    assert_eq!(slices(&d), before, "a refused batch applied something");
    let (s, e) = post(&d, "/v1/observations", &json!({"instance": "s0", "set": {"level": 1}}));
    assert_eq!(s, 400);
    assert!(message(&e).contains("must be an array of observations"), "{e}");

    let (s, r) = post(
        &d,
        "/v1/observations",
        &json!([
            {"instance": "s0", "set": {"level": 3}},
            {"instance": "s1", "add": {"level": 2}},
            {"instance": "s1", "add": {"level": 2}},
            {"instance": "s2", "set": {"level": 7}, "source": "probe", "version": 5},
        ]),
    );
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["applied"], 4);
    assert_eq!(names(r["instances"].as_array().unwrap()), ["s0", "s1", "s2"]);
    let level = |d: &Daemon, n: &str| d.get(&format!("/v1/instances/{n}")).1["state"]["level"].clone();
    assert_eq!((level(&d, "s0"), level(&d, "s1"), level(&d, "s2")), (json!(3), json!(4), json!(7)));
    // An older version from the same source is stale; a newer one applies.
    let (s, _) = post(
        &d,
        "/v1/observations",
        &json!([{"instance": "s2", "set": {"level": 1}, "source": "probe", "version": 4}]),
    );
    assert_eq!(s, 200);
    assert_eq!(level(&d, "s2"), 7);
    let (s, _) = post(
        &d,
        "/v1/observations",
        &json!([{"instance": "s2", "set": {"level": 50}, "source": "probe", "version": 6}]),
    );
    assert_eq!(s, 200);
    assert_eq!(level(&d, "s2"), 50);
    let (_, stuck) = d.get("/v1/instances?status=stuck");
    assert_eq!(names(stuck["instances"].as_array().unwrap()), ["s2"]);
    // Observations applied together were journaled as one batch.
    let (_, j) = d.get("/v1/instances/s1/journal");
    let adds: Vec<&Json> = j["entries"].as_array().unwrap().iter().filter(|e| e["cause"] == "observe").collect();
    assert_eq!(adds.len(), 2, "{j}");
    assert_eq!(adds[1]["batch"], adds[0]["slice"], "{j}");
}

#[test]
fn creating_past_the_instance_limit_is_refused_and_creates_nothing() {
    let dir = tempdir("fleet-limit");
    let config = dir.join("ved.toml");
    std::fs::write(&config, "[api]\nmax_instances = 5\n").unwrap();
    let d = start(&dir, &["--config", config.to_str().unwrap()]);
    // The program's two instances count.
    let batch = |ns: std::ops::Range<u32>| -> Json {
        Json::Array(ns.map(|n| json!({"name": format!("p{n}"), "domain": "Pool"})).collect())
    };
    let (s, e) = post(&d, "/v1/instances", &batch(0..4));
    assert_eq!(s, 422, "{e}");
    assert!(message(&e).contains("past the limit of 5"), "{e}");
    assert!(message(&e).contains("`[api] max_instances`"), "{e}");
    assert_eq!(all_pages(&d, "", 100).len(), 2);
    assert_eq!(post(&d, "/v1/instances", &batch(0..3)).0, 201);
    let (s, e) = post(&d, "/v1/instances", &json!({"name": "one-more", "domain": "Pool"}));
    assert_eq!(s, 422, "{e}");
    // Deleting makes room again.
    assert_eq!(delete(&d, "p0", Some(TOKEN)).0, 200);
    assert_eq!(post(&d, "/v1/instances", &json!({"name": "one-more", "domain": "Pool"})).0, 201);
    assert_eq!(all_pages(&d, "", 100).len(), 5);
}

#[test]
fn the_openapi_document_describes_the_fleet_routes() {
    let dir = tempdir("fleet-doc");
    let d = start(&dir, &[]);
    let (_, doc) = d.get("/v1/openapi.json");
    let paths = &doc["paths"];
    assert!(paths["/v1/observations"]["post"]["security"].is_array());
    assert!(paths["/v1/instances/{name}"]["delete"]["security"].is_array());
    let params: BTreeSet<&str> = paths["/v1/instances"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(params, BTreeSet::from(["after", "domain", "limit", "status"]));
    assert!(paths["/v1/instances"]["post"]["responses"]["422"].is_object());
    // The routes are served, not the fallback's 404.
    let (s, _) = post(&d, "/v1/observations", &json!([]));
    assert_eq!(s, 400);
    assert_eq!(delete(&d, "nobody", Some(TOKEN)).0, 404);
    let (s, e) = delete(&d, "nobody", Some(TOKEN));
    assert!(message(&e).contains("no instance named"), "{s}: {e}");
}

#[test]
fn the_largest_batch_is_accepted_in_one_call() {
    let dir = tempdir("fleet-max");
    let d = start(&dir, &[]);
    let fleet: Vec<Json> = (0..10_000).map(|n| json!({"name": format!("n{n:05}"), "domain": "Pool"})).collect();
    let (s, r) = post(&d, "/v1/instances", &Json::Array(fleet));
    assert_eq!(s, 201, "{r}");
    assert_eq!(r["created"], 10_000);
    let obs: Vec<Json> = (0..10_000).map(|n| json!({"instance": format!("n{n:05}"), "add": {"workers": -1}})).collect();
    let (s, r) = post(&d, "/v1/observations", &Json::Array(obs));
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["applied"], 10_000);
    let (_, page) = d.get("/v1/instances?limit=10000&domain=Pool&status=stable");
    assert_eq!(page["instances"].as_array().unwrap().len(), 10_000);
    assert_eq!(page["next"], "n09998", "the program's own `Pool` comes first, so one is left over");
    assert_eq!(d.get("/v1/instances/n04321").1["state"]["workers"], 5);
}
