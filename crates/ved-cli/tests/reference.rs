//! The examples in the docs, checked against the real `ved`, so that an example that drifts
//! from the product fails the suite: every fenced `ved`, `json` and `toml` block in
//! docs/*.md and README.md; the `ved fmt` example; the metrics, route and exit-code tables;
//! the client commands' output; and the VS Code extension's client (with node, if there is one).
//!
//! A ```ved block is a whole program (parsed, and `ved check` accepts it). A block that is not
//! one says so in its info string: ```ved fragment (items or members of a domain: parsed,
//! alone or inside a domain) or ```ved syntax (a schematic with placeholders: counted, and
//! it must not parse, or it would be marked as what it is). Every block is counted.

mod common;

use common::{root, tempdir, ved_text, wait_for, Daemon};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

/// Generous: the machine may be busy. Nothing here sleeps for a fixed time.
const DEADLINE: Duration = Duration::from_secs(120);

const VED: &str = env!("CARGO_BIN_EXE_ved");

/// One fenced code block of a markdown file.
#[derive(Debug)]
struct Block {
    /// `docs/reference.md:21`
    at: String,
    /// The info string after the opening fence: `ved`, `ved fragment`, `json`...
    info: String,
    body: String,
}

/// The fenced blocks of a markdown text, indented ones (in list items) included.
fn blocks_of(name: &str, text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut open: Option<(usize, usize, String, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match &mut open {
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    open = Some((i + 1, indent, info.trim().to_string(), String::new()));
                }
            }
            Some((start, ind, info, body)) => {
                if trimmed == "```" {
                    out.push(Block {
                        at: format!("{name}:{start}"),
                        info: std::mem::take(info),
                        body: std::mem::take(body),
                    });
                    open = None;
                } else {
                    let cut = line.len().min(*ind);
                    assert!(
                        line[..cut].trim().is_empty(),
                        "{name}:{}: a block's line is indented less than its fence",
                        i + 1
                    );
                    body.push_str(&line[cut..]);
                    body.push('\n');
                }
            }
        }
    }
    assert!(open.is_none(), "{name}: a fenced block is never closed");
    out
}

/// docs/*.md, then README.md.
fn doc_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    files.sort();
    files.push(root().join("README.md"));
    files
}

fn all_blocks() -> Vec<Block> {
    let mut out = Vec::new();
    for f in doc_files() {
        let name = f.strip_prefix(root()).unwrap().display().to_string();
        out.extend(blocks_of(&name, &std::fs::read_to_string(&f).unwrap()));
    }
    out
}

fn reference() -> String {
    std::fs::read_to_string(root().join("docs/reference.md")).unwrap()
}

/// The text of reference.md from the first line that starts with `heading` to the next
/// heading of the same or a higher level.
fn section(text: &str, heading: &str) -> String {
    let level = heading.chars().take_while(|c| *c == '#').count();
    let mut out = String::new();
    let mut inside = false;
    for line in text.lines() {
        if inside {
            let l = line.chars().take_while(|c| *c == '#').count();
            if l > 0 && l <= level && line[l..].starts_with(' ') {
                break;
            }
            out.push_str(line);
            out.push('\n');
        } else if line.starts_with(heading) {
            inside = true;
        }
    }
    assert!(inside, "docs/reference.md has no heading `{heading}`");
    out
}

/// The rows of the first markdown table after `marker` in `text`, each split into its cells
/// (`\|` inside a cell is kept as `|`).
fn table_after(text: &str, marker: &str) -> Vec<Vec<String>> {
    let start = text.find(marker).unwrap_or_else(|| panic!("no `{marker}` in the doc"));
    let rows: Vec<Vec<String>> = text[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            let l = l.replace("\\|", "\u{1}");
            let l = l.trim().trim_start_matches('|').trim_end_matches('|');
            l.split('|').map(|c| c.trim().replace('\u{1}', "|")).collect()
        })
        .collect();
    assert!(rows.len() > 2, "no table after `{marker}`");
    // The header and the `|---|` line.
    rows.into_iter().skip(2).collect()
}

/// The `code` spans of a markdown cell, in order.
fn code_spans(cell: &str) -> Vec<String> {
    cell.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

fn parses(text: &str) -> bool {
    let mut map = ved_syntax::SourceMap::new();
    let file = map.add("doc.ved", text);
    ved_syntax::parse_file(file, text).is_ok()
}

/// `ved ARGS` run from the repository root, without input.
fn ved(args: &[&str]) -> (i32, String, String) {
    ved_text(args, "")
}

#[test]
fn every_ved_block_parses_and_every_whole_program_passes_ved_check() {
    let dir = tempdir("reference-ved");
    let (mut programs, mut fragments, mut schematics) = (0, 0, 0);
    for (i, b) in all_blocks().into_iter().enumerate() {
        let mut words = b.info.split_whitespace();
        if words.next() != Some("ved") {
            continue;
        }
        let kind = words.next();
        assert_eq!(words.next(), None, "{}: info string `{}`", b.at, b.info);
        match kind {
            None => {
                assert!(parses(&b.body), "{}: a ```ved block does not parse:\n{}", b.at, b.body);
                let file = dir.join(format!("block{i}.ved"));
                std::fs::write(&file, &b.body).unwrap();
                let (code, _, err) = ved(&["check", file.to_str().unwrap()]);
                assert_eq!(
                    code, 0,
                    "{}: `ved check` refuses a ```ved block (mark a fragment ```ved fragment):\n{err}",
                    b.at
                );
                programs += 1;
            }
            Some("fragment") => {
                let wrapped = format!("domain Fragment {{\n{}}}\n", b.body);
                assert!(
                    parses(&b.body) || parses(&wrapped),
                    "{}: a ```ved fragment parses neither alone nor inside a domain:\n{}",
                    b.at,
                    b.body
                );
                let file = dir.join(format!("block{i}.ved"));
                std::fs::write(&file, &b.body).unwrap();
                let (code, _, _) = ved(&["check", file.to_str().unwrap()]);
                assert_ne!(code, 0, "{}: this ```ved fragment is a whole program: mark it ```ved", b.at);
                fragments += 1;
            }
            Some("syntax") => {
                let wrapped = format!("domain Fragment {{\n{}}}\n", b.body);
                assert!(
                    !parses(&b.body) && !parses(&wrapped),
                    "{}: this ```ved syntax block parses: mark it ```ved or ```ved fragment",
                    b.at
                );
                schematics += 1;
            }
            Some(other) => panic!("{}: unknown kind of ```ved block `{other}` (ved, ved fragment, ved syntax)", b.at),
        }
    }
    // A block added or removed changes these: update them knowingly.
    assert_eq!((programs, fragments, schematics), (4, 6, 2), "(programs, fragments, schematics) checked");
}

#[test]
fn ved_fmt_turns_the_documented_input_into_the_documented_output() {
    let text = section(&reference(), "### `ved fmt`");
    let example = &text[text.find("For example, `ved fmt -` turns").expect("the fmt example")..];
    let blocks = blocks_of("docs/reference.md (ved fmt)", example);
    assert!(blocks.len() >= 2 && blocks[0].info.starts_with("ved") && blocks[1].info.starts_with("ved"), "{blocks:?}");
    let (input, output) = (&blocks[0].body, &blocks[1].body);
    assert_ne!(input, output);
    let (code, out, err) = ved_text(&["fmt", "-"], input);
    assert_eq!(code, 0, "{err}");
    assert_eq!(&out, output, "`ved fmt -` on the documented input");
    // And the output is a fixed point, as the doc says.
    let (code, again, err) = ved_text(&["fmt", "-"], output);
    assert_eq!((code, &again), (0, output), "{err}");
}

#[test]
fn every_json_block_is_a_sequence_of_json_values_without_elisions() {
    let mut checked = 0;
    for b in all_blocks().into_iter().filter(|b| b.info == "json") {
        // `...` would be an elision, which no output of Ved contains: show real output instead.
        assert!(!b.body.contains("..."), "{}: a ```json block elides with `...`:\n{}", b.at, b.body);
        let values: Vec<Value> = serde_json::Deserializer::from_str(&b.body)
            .into_iter::<Value>()
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("{}: not JSON: {e}\n{}", b.at, b.body));
        assert!(!values.is_empty(), "{}: empty", b.at);
        checked += 1;
    }
    assert_eq!(checked, 4, "```json blocks checked");
}

/// The sections of a `ved.toml`.
const CONFIG_SECTIONS: [&str; 7] = ["adapters", "watch", "instance", "retry", "resync", "api", "store"];

/// A program that fits each ved.toml example, by the adapters and watched fields it names, for
/// `ved check --config`. `None`: the example is a schematic (placeholders such as `NAME`), loaded
/// by the config parser only.
fn program_for(config: &toml::Table) -> Option<&'static str> {
    let adapters: BTreeSet<&str> = config
        .get("adapters")
        .and_then(|a| a.as_table())
        .map(|t| t.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let watched: BTreeSet<&str> = config
        .get("watch")
        .and_then(|w| w.as_array())
        .into_iter()
        .flatten()
        .flat_map(|w| w["fields"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()))
        .collect();
    let fits =
        |a: &[&str], w: &[&str]| adapters == a.iter().copied().collect() && watched == w.iter().copied().collect();
    if adapters.contains("NAME") {
        None
    } else if fits(&["Firewall"], &[]) || fits(&["Firewall"], &["actual_ports"]) {
        Some(
            "domain Ports {\n  state {\n    actual_ports: list<int>\n  }\n  goal actual_ports == [22]\n  \
             transition close {\n    step {\n      if actual_ports != [22] {\n        emit Firewall.ClosePorts(actual_ports)\n      }\n    }\n  }\n}\n",
        )
    } else if fits(&[], &["primary_status"]) {
        Some("domain Db {\n  state {\n    primary_status: string\n  }\n  goal primary_status == \"healthy\"\n}\n")
    } else if fits(&["Alerts"], &[]) {
        Some(
            "domain Pager {\n  state {\n    sent: bool\n  }\n  goal sent\n  transition page {\n    step {\n      \
             if !sent {\n        emit Alerts.PageEngineers(\"db down\")\n        sent = true\n      }\n    }\n  }\n}\n",
        )
    } else if fits(&["Workers"], &["workers"]) {
        Some(
            "domain Pool {\n  state {\n    workers: int\n  }\n  goal workers == 5\n  transition grow {\n    step {\n      \
             if workers < 5 {\n        emit Workers.Start()\n        workers += 1\n      }\n    }\n  }\n}\n",
        )
    } else {
        panic!("no program fits this ved.toml example: adapters {adapters:?}, watched fields {watched:?}")
    }
}

#[test]
fn every_toml_block_parses_and_every_ved_toml_loads_and_checks_with_a_program() {
    let dir = tempdir("reference-toml");
    let (mut toml_blocks, mut configs, mut checked) = (0, 0, 0);
    for (i, b) in all_blocks().into_iter().enumerate().filter(|(_, b)| b.info == "toml") {
        let table: toml::Table =
            toml::from_str(&b.body).unwrap_or_else(|e| panic!("{}: not TOML: {e}\n{}", b.at, b.body));
        toml_blocks += 1;
        if !table.keys().all(|k| CONFIG_SECTIONS.contains(&k.as_str())) {
            continue;
        }
        // A ved.toml: the loader takes it, unknown keys refused.
        let mut map = ved_syntax::SourceMap::new();
        let file = map.add("ved.toml", b.body.clone());
        if let Err(d) = ved_adapters::config::parse_config(file, &b.body) {
            panic!("{}: the ved.toml loader refuses this example: {}\n{}", b.at, d.message, b.body);
        }
        configs += 1;
        let Some(program) = program_for(&table) else { continue };
        let config = dir.join(format!("ved{i}.toml"));
        let source = dir.join(format!("program{i}.ved"));
        std::fs::write(&config, &b.body).unwrap();
        std::fs::write(&source, program).unwrap();
        let (code, _, err) = ved(&["check", "--config", config.to_str().unwrap(), source.to_str().unwrap()]);
        assert_eq!(code, 0, "{}: `ved check --config` refuses this example with\n{program}\n{err}", b.at);
        checked += 1;
    }
    assert_eq!((toml_blocks, configs, checked), (7, 7, 6), "(```toml blocks, ved.toml loaded, checked with a program)");
}

fn get_text(d: &Daemon, path: &str) -> (u16, String) {
    let mut r = d.agent.get(&format!("{}{path}", d.base)).call().unwrap();
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

#[test]
fn the_metrics_table_lists_exactly_the_metrics_a_scrape_has_with_their_types_and_labels() {
    // metric -> (type, labels, only in cluster mode)
    let mut table: BTreeMap<String, (String, BTreeSet<String>, bool)> = BTreeMap::new();
    for row in table_after(&reference(), "**Metrics.**") {
        let name = code_spans(&row[0]).pop().expect("a metric name");
        // `result` (`ok`, `failed`): the parenthesis lists values, not labels.
        let mut labels_cell = row[2].clone();
        while let (Some(a), Some(b)) = (labels_cell.find('('), labels_cell.find(')')) {
            labels_cell.replace_range(a..=b, "");
        }
        let labels = code_spans(&labels_cell).into_iter().collect();
        table.insert(name, (row[1].clone(), labels, row[3].starts_with("cluster mode:")));
    }
    assert_eq!(table.len(), 9, "metrics in the table: {table:?}");

    let dir = tempdir("reference-metrics");
    let (d, _members, marker) = common::worker_pool_daemon(&dir, true, None);
    let (mut text, mut scrape) = (String::new(), None);
    // Every series is there once the pool is up, an intent came back and the watcher read.
    wait_for("the pool to boot to 5 and be scraped whole", DEADLINE, || {
        if d.get("/v1/instances/WorkerPool").1["status"] != "stable"
            || common::processes_running(&["sleep", &marker]).len() != 5
        {
            return false;
        }
        let (status, t) = get_text(&d, "/metrics");
        assert_eq!(status, 200, "{t}");
        text = t;
        let s = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
        let ok = ["ved_intents_total", "ved_last_reading_age_seconds"]
            .iter()
            .all(|m| s.samples.iter().any(|x| x.metric == *m));
        scrape = Some(s);
        ok
    });
    let scrape = scrape.unwrap();

    // `# TYPE name type`, as the scrape declares it.
    let declared: BTreeMap<&str, &str> =
        text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).map(|l| l.split_once(' ').unwrap()).collect();
    for (name, (ty, labels, cluster_only)) in &table {
        // OpenMetrics declares a counter by its family name, without `_total`.
        let family = if ty == "counter" { name.strip_suffix("_total").unwrap_or(name) } else { name };
        if *cluster_only {
            assert!(!declared.contains_key(family), "{name} is documented as cluster mode only:\n{text}");
            continue;
        }
        assert_eq!(declared.get(family), Some(&ty.as_str()), "`# TYPE {family}` in the scrape:\n{text}");
        let samples: Vec<_> = scrape.samples.iter().filter(|s| s.metric == *name).collect();
        assert!(!samples.is_empty(), "no sample of {name}:\n{text}");
        for s in samples {
            let got: BTreeSet<String> = s.labels.keys().cloned().collect();
            assert_eq!(&got, labels, "the labels of {name} (documented: {labels:?}): {s:?}");
        }
    }
    for family in declared.keys().filter(|f| f.starts_with("ved_")) {
        let documented = table.iter().any(|(name, (ty, _, _))| {
            name == family || (ty == "counter" && name.strip_suffix("_total") == Some(family))
        });
        assert!(documented, "{family} is scraped but not in the metrics table of docs/reference.md");
    }
}

/// Kills a client command (`ved watch`) however the test ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The lines of a child's stdout, as they come.
fn lines_of(out: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    rx
}

/// The ```text block after **Client commands.**: each `$ ` command with the lines it prints.
fn documented_sessions() -> Vec<(String, Vec<String>)> {
    let text = reference();
    let at = text.find("**Client commands.**").expect("the client commands");
    let block = blocks_of("docs/reference.md", &text[at..]).into_iter().next().unwrap();
    assert_eq!(block.info, "text");
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for line in block.body.lines() {
        match line.strip_prefix("$ ") {
            Some(cmd) => out.push((cmd.to_string(), Vec::new())),
            None => out.last_mut().expect("the block starts with a command").1.push(line.to_string()),
        }
    }
    out
}

fn documented(sessions: &[(String, Vec<String>)], prefix: &str) -> Vec<String> {
    let found: Vec<_> = sessions.iter().filter(|(c, _)| c.starts_with(prefix)).collect();
    assert_eq!(found.len(), 1, "one `$ {prefix}` in the client commands' example");
    found[0].1.clone()
}

fn words(l: &str) -> Vec<&str> {
    l.split_whitespace().collect()
}

#[test]
fn the_client_commands_print_the_headers_and_labels_the_reference_shows() {
    let sessions = documented_sessions();
    let token = "s3cret";
    let d = Daemon::start(&["examples/worker_pool.ved", "--ephemeral"], Some(token));
    wait_for("the pool to be stable", DEADLINE, || d.get("/v1/instances/WorkerPool").1["status"] == "stable");
    let server = d.base.as_str();

    // `ved get`: the header line as shown (the columns are as wide as the doc's names), then the row.
    let doc = documented(&sessions, "ved get");
    let (code, out, err) = ved(&["get", "--server", server]);
    assert_eq!(code, 0, "{err}");
    let got: Vec<&str> = out.lines().collect();
    assert_eq!(got[0], doc[0], "the header of `ved get`");
    assert_eq!(words(got[1])[..3], words(&doc[1])[..3], "{out}");
    words(got[1])[3].parse::<u64>().expect("a slice number");

    // `ved watch`: its header, then the observation below as the doc shows it.
    let doc_watch = documented(&sessions, "ved watch");
    let mut child = Command::new(VED);
    child.args(["watch", "WorkerPool", "--server", server]).env_remove("VED_SERVER");
    let mut watch = Killed(child.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap());
    let watched = lines_of(watch.0.stdout.take().unwrap());
    let header = watched.recv_timeout(DEADLINE).expect("the header of `ved watch`");
    assert_eq!(words(&header), words(&doc_watch[0]), "the header of `ved watch`");

    // `ved observe`: `NAME: slice N, STATUS`.
    let doc = documented(&sessions, "VED_TOKEN=s3cret ved observe");
    let (code, out, err) =
        ved_with_env(&["observe", "WorkerPool", "workers=3", "--server", server], &[("VED_TOKEN", token)]);
    assert_eq!(code, 0, "{err}");
    let shape = |l: &str| {
        let (name, rest) = l.split_once(": slice ").unwrap_or_else(|| panic!("`{l}`"));
        let (n, status) = rest.split_once(", ").unwrap_or_else(|| panic!("`{l}`"));
        n.parse::<u64>().unwrap_or_else(|_| panic!("`{l}`"));
        (name.to_string(), status.to_string())
    };
    assert_eq!(shape(out.trim_end()).0, shape(&doc[0]).0, "{out}");

    let doc_event = words(&doc_watch[1]);
    let event = loop {
        let l = watched.recv_timeout(DEADLINE).expect("the observation in `ved watch`");
        if l.contains("observe: workers = 3") {
            break l;
        }
    };
    // The slice number depends on the run: `#N`, then the rest as shown.
    let got = words(&event);
    assert_eq!(got.len(), doc_event.len(), "{event}");
    assert!(got[3].starts_with('#') && doc_event[3].starts_with('#'), "{event}");
    assert_eq!(
        [&got[1..3], &got[4..]],
        [&doc_event[1..3], &doc_event[4..]],
        "`ved watch` prints the observation as the doc shows: {event}"
    );
    drop(watch);

    // `ved describe`: the labels, in order, as the doc shows them.
    wait_for("the pool to be stable again", DEADLINE, || d.get("/v1/instances/WorkerPool").1["status"] == "stable");
    let doc = documented(&sessions, "ved describe");
    let labels = |lines: &[&str]| -> Vec<String> {
        lines
            .iter()
            .filter(|l| !l.starts_with(' '))
            .map(|l| l.split_once(':').map(|(k, _)| format!("{k}:")).unwrap_or_else(|| panic!("`{l}`")))
            .collect()
    };
    let want = labels(&doc.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(want, ["Name:", "Domain:", "Status:", "Slice:", "State:", "Goals:", "Pending:", "Recent journal:"]);
    let (code, out, err) = ved(&["describe", "WorkerPool", "--recent", "2", "--server", server]);
    assert_eq!(code, 0, "{err}");
    let got: Vec<&str> = out.lines().collect();
    assert_eq!(labels(&got), want, "{out}");
    // The lines that are the same whatever the run: the state and the goal of a stable pool.
    for line in [
        "Name:     WorkerPool",
        "Domain:   WorkerPool",
        "Status:   stable",
        "  workers: 5",
        "  goal#1: holds",
        "Pending:  none",
    ] {
        assert!(doc.iter().any(|l| l == line), "the doc shows `{line}`");
        assert!(got.contains(&line), "`ved describe` prints `{line}`:\n{out}");
    }
    let journal = got.iter().position(|l| *l == "Recent journal:").unwrap();
    assert_eq!(got.len() - journal - 1, 2, "--recent 2: {out}");
}

fn ved_with_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(VED);
    common::guard_state_home(&mut cmd);
    let out = cmd
        .args(args)
        .envs(env.iter().copied())
        .env_remove("VED_SERVER")
        .env_remove("VED_API_TOKEN")
        .current_dir(root())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_route_in_the_daemon_table_answers_and_is_in_openapi_json_and_back() {
    let text = section(&reference(), "### The daemon");
    let routes: Vec<(String, String)> = table_after(&text, "| route |")
        .iter()
        .map(|row| {
            let spans = code_spans(&row[0]);
            let (method, path) = spans[0].split_once(' ').unwrap_or_else(|| panic!("{row:?}"));
            (method.to_string(), path.to_string())
        })
        .collect();
    assert_eq!(routes.len(), 13, "routes in the table: {routes:?}");

    let openapi: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("docs/openapi.json")).unwrap()).unwrap();
    let mut operations: BTreeSet<(String, String)> = BTreeSet::new();
    for (path, item) in openapi["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            operations.insert((method.to_uppercase(), path.clone()));
        }
    }
    let mut documented = BTreeSet::new();
    for (method, path) in &routes {
        let bare = path.split('?').next().unwrap().to_string();
        documented.insert((method.clone(), bare.clone()));
        // The live page is HTML for people, not part of the JSON API that openapi.json describes.
        if bare == "/" {
            continue;
        }
        assert!(operations.contains(&(method.clone(), bare.clone())), "docs/openapi.json lacks `{method} {bare}`");
    }
    for op in &operations {
        assert!(documented.contains(op), "docs/openapi.json has `{} {}`, the route table does not", op.0, op.1);
    }

    let d = Daemon::start(&["examples/worker_pool.ved", "--ephemeral"], Some("s3cret"));
    for (method, path) in &routes {
        let url = format!(
            "{}{}",
            d.base,
            path.replace("{name}", "WorkerPool")
                .replace("=SEQ", "=0")
                .replace("=NAME", "=WorkerPool")
                .replace("=N", "=10")
        );
        assert!(!url.contains(['{', '}']) && !url.contains("=S") && !url.contains("=N"), "a placeholder left in {url}");
        let status = match method.as_str() {
            "GET" => d.agent.get(&url).call().unwrap().status().as_u16(),
            // No token and no body: refused, but by the route.
            "POST" => d.agent.post(&url).send(&b""[..]).unwrap().status().as_u16(),
            "DELETE" => d.agent.delete(&url).call().unwrap().status().as_u16(),
            other => panic!("method {other}"),
        };
        match method.as_str() {
            "GET" => assert_eq!(status, 200, "{method} {url}"),
            _ => assert!(![404, 405].contains(&status) && status < 500, "{method} {url}: {status}"),
        }
    }
}

#[test]
fn verify_exits_66_on_a_missing_file_and_64_on_an_unknown_option_as_the_exit_code_table_says() {
    let rows = table_after(&reference(), "**Exit codes.**");
    let meaning =
        |code: &str| rows.iter().find(|r| r[0] == code).unwrap_or_else(|| panic!("no exit code {code}"))[1].clone();
    assert!(meaning("64").contains("an unknown option"), "{}", meaning("64"));
    assert!(meaning("66").contains("a file") && meaning("66").contains("not there"), "{}", meaning("66"));
    let dir = tempdir("reference-exit");
    let missing = dir.join("missing.ved");
    let (code, _, err) = ved(&["verify", missing.to_str().unwrap()]);
    assert_eq!(code, 66, "{err}");
    let (code, _, err) = ved(&["verify", "examples/worker_pool.ved", "--no-such-option"]);
    assert_eq!(code, 64, "{err}");
}

/// Stand-ins for the two modules the extension requires, and a script that activates it and
/// prints what it handed to the LanguageClient.
const FAKE_VSCODE: &str = r#"
module.exports = {
  workspace: {
    getConfiguration: (section) => ({
      get: (key) => (section === "ved" && key === "path" ? process.env.VED_TEST_PATH : undefined),
    }),
    onDidChangeConfiguration: () => ({ dispose() {} }),
  },
};
"#;

const FAKE_CLIENT: &str = r#"
class LanguageClient {
  constructor(id, name, serverOptions, clientOptions) {
    global.vedClient = { id, name, serverOptions, clientOptions };
  }
  start() { return Promise.resolve(); }
  stop() { return Promise.resolve(); }
}
module.exports = { LanguageClient, TransportKind: { stdio: 0, ipc: 1, pipe: 2, socket: 3 } };
"#;

const ACTIVATE: &str = r#"
const ext = require(process.argv[2]);
const context = { subscriptions: [] };
Promise.resolve(ext.activate(context)).then(() => {
  const c = global.vedClient;
  console.log(JSON.stringify({
    id: c.id,
    command: c.serverOptions.command,
    args: c.serverOptions.args,
    transport: c.serverOptions.transport,
    documentSelector: c.clientOptions.documentSelector,
    subscriptions: context.subscriptions.length,
  }));
});
"#;

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

fn lsp_send(to: &mut impl Write, msg: Value) {
    let body = msg.to_string();
    write!(to, "Content-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    to.flush().unwrap();
}

#[test]
fn the_vscode_extension_starts_ved_lsp_from_its_setting_and_the_server_initializes() {
    let ext = root().join("editors/vscode");
    let package: Value = serde_json::from_str(&std::fs::read_to_string(ext.join("package.json")).unwrap()).unwrap();
    // The contributions point at files that exist, and agree with each other.
    let language = &package["contributes"]["languages"][0];
    assert_eq!(language["id"], "ved");
    let config = ext.join(language["configuration"].as_str().unwrap());
    serde_json::from_str::<Value>(&std::fs::read_to_string(&config).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", config.display()));
    let grammar = &package["contributes"]["grammars"][0];
    assert_eq!(grammar["language"], "ved");
    let tm: Value =
        serde_json::from_str(&std::fs::read_to_string(ext.join(grammar["path"].as_str().unwrap())).unwrap()).unwrap();
    assert_eq!(tm["scopeName"], grammar["scopeName"], "the grammar's scopeName");
    assert_eq!(package["contributes"]["configuration"]["properties"]["ved.path"]["default"], "ved");

    if !on_path("node") {
        println!("SKIPPED: node is not on PATH, so the extension's client was not activated");
        return;
    }
    let dir = tempdir("reference-vscode");
    let modules = dir.join("node_modules");
    std::fs::create_dir_all(modules.join("vscode")).unwrap();
    std::fs::create_dir_all(modules.join("vscode-languageclient")).unwrap();
    std::fs::write(modules.join("vscode/index.js"), FAKE_VSCODE).unwrap();
    std::fs::write(modules.join("vscode-languageclient/node.js"), FAKE_CLIENT).unwrap();
    std::fs::write(dir.join("activate.js"), ACTIVATE).unwrap();
    let out = Command::new("node")
        .arg(dir.join("activate.js"))
        .arg(ext.join("extension.js"))
        .env("NODE_PATH", &modules)
        .env("VED_TEST_PATH", VED)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "node: {}", String::from_utf8_lossy(&out.stderr));
    let client: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    assert_eq!(client["command"], VED, "the command is the `ved.path` setting: {client}");
    assert_eq!(client["args"], json!(["lsp"]), "{client}");
    assert_eq!(client["transport"], 0, "stdio: {client}");
    let selector = client["documentSelector"].as_array().unwrap();
    assert!(selector.iter().any(|s| s["language"] == "ved"), "{client}");
    assert_eq!(client["subscriptions"], 1, "the listener for a new `ved.path`: {client}");

    // The command line the extension would start, spoken to as the client would.
    let args: Vec<&str> = client["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    let mut server = Killed(
        Command::new(client["command"].as_str().unwrap())
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let incoming = common::lsp_messages(server.0.stdout.take().unwrap());
    let mut stdin = server.0.stdin.take().unwrap();
    lsp_send(
        &mut stdin,
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"processId": null, "rootUri": null, "capabilities": {}}}),
    );
    let reply = loop {
        let m = incoming.recv_timeout(DEADLINE).expect("the reply to initialize");
        if m["id"] == 1 {
            break m;
        }
    };
    let caps = reply["result"]["capabilities"].as_object().unwrap_or_else(|| panic!("{reply}"));
    assert!(!caps.is_empty() && caps.contains_key("textDocumentSync"), "{reply}");
    lsp_send(&mut stdin, json!({"jsonrpc": "2.0", "method": "initialized", "params": {}}));
    lsp_send(&mut stdin, json!({"jsonrpc": "2.0", "id": 2, "method": "shutdown", "params": null}));
    lsp_send(&mut stdin, json!({"jsonrpc": "2.0", "method": "exit", "params": null}));
    let mut code = None;
    wait_for("the server to exit", DEADLINE, || {
        code = server.0.try_wait().unwrap().map(|s| s.code());
        code.is_some()
    });
    assert_eq!(code, Some(Some(0)), "`ved lsp` exits 0 after shutdown and exit");
}
