//! Seed 001 with real parts: a real PostgreSQL (started here as a non-root
//! user) watched by `pg_isready`, DNS as a hosts-format file rewritten by the
//! `Network` adapter, and paging through an HTTP webhook to a receiver this
//! test runs.

mod common;

use common::{root, tempdir, wait_for, Daemon, Webhook};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The directory holding `initdb`, `pg_ctl` and `postgres` (Debian keeps them off `PATH`).
fn pg_bin() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.filter_map(Result::ok).map(|e| e.path().join("bin")).filter(|p| p.join("pg_ctl").exists()).collect())
        .unwrap_or_default();
    found.sort();
    found.pop().expect("PostgreSQL is not installed under /usr/lib/postgresql; run .ci/deps")
}

/// PostgreSQL refuses to run as root, and should not: as root, run it as `postgres`.
fn as_db_user(args: &[&str]) -> Command {
    let root = is_root();
    let mut c = if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]);
        c
    } else {
        Command::new(args[0])
    };
    c.args(if root { args } else { &args[1..] });
    c
}

fn is_root() -> bool {
    String::from_utf8_lossy(&Command::new("id").arg("-u").output().unwrap().stdout).trim() == "0"
}

fn run(mut c: Command, what: &str) {
    let out = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A throwaway cluster on a free loopback port.
struct Postgres {
    dir: PathBuf,
    port: u16,
    bin: PathBuf,
}

impl Postgres {
    fn init(dir: &Path) -> Postgres {
        let bin = pg_bin();
        std::fs::create_dir_all(dir).unwrap();
        if is_root() {
            run(
                {
                    let mut c = Command::new("chown");
                    c.args(["-R", "postgres:postgres", dir.to_str().unwrap()]);
                    c
                },
                "chown",
            );
        }
        let data = dir.join("data");
        let initdb = bin.join("initdb");
        run(
            as_db_user(&[initdb.to_str().unwrap(), "-D", data.to_str().unwrap(), "-A", "trust", "-U", "postgres"]),
            "initdb",
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Postgres { dir: dir.to_path_buf(), port, bin }
    }

    fn pg_ctl(&self, args: &[&str]) -> Command {
        let pg_ctl = self.bin.join("pg_ctl");
        let data = self.dir.join("data");
        let mut all = vec![pg_ctl.to_str().unwrap(), "-D", data.to_str().unwrap()];
        all.extend_from_slice(args);
        let all: Vec<String> = all.iter().map(|s| s.to_string()).collect();
        as_db_user(&all.iter().map(String::as_str).collect::<Vec<_>>())
    }

    fn start(&self) {
        let opts = format!("-p {} -c listen_addresses=127.0.0.1 -k {}", self.port, self.dir.display());
        let log = self.dir.join("postgres.log");
        run(self.pg_ctl(&["-o", &opts, "-l", log.to_str().unwrap(), "-w", "-t", "60", "start"]), "pg_ctl start");
    }

    fn stop(&self) {
        run(self.pg_ctl(&["-m", "fast", "-w", "stop"]), "pg_ctl stop");
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["-m", "immediate", "-w", "stop"]).output();
    }
}

fn route_in(hosts: &Path) -> Option<String> {
    let text = std::fs::read_to_string(hosts).ok()?;
    text.lines().find(|l| l.ends_with(" db.internal")).map(|l| l.split(' ').next().unwrap_or("").to_string())
}

#[test]
fn a_real_postgres_outage_fails_over_pages_once_and_restores() {
    let dir = tempdir("pg");
    let pg = Postgres::init(&dir.join("pg"));
    pg.start();
    // The pager answers 500 twice before it accepts.
    let pager = Webhook::start(vec![500, 500]);
    let demo = root().join("examples/demo/database_routing");
    let toml = std::fs::read_to_string(demo.join("ved.toml")).unwrap();
    // The demo's own configuration, moved beside the test's files: its scripts by absolute path,
    // the pager URL pointing at this test's receiver.
    let config = dir.join("ved.toml");
    let toml =
        toml.replace("http://127.0.0.1:8025/page", &pager.url).replace("\"./", &format!("\"{}/", demo.display()));
    std::fs::write(&config, toml).unwrap();
    let hosts = dir.join("hosts");
    std::env::set_var("PGHOST", "127.0.0.1");
    std::env::set_var("PGPORT", pg.port.to_string());
    std::env::set_var("VED_HOSTS_FILE", &hosts);
    let data = dir.join("data");
    let d = Daemon::start(
        &["examples/database_routing.ved", "--config", config.to_str().unwrap(), "--data-dir", data.to_str().unwrap()],
        None,
    );
    let state = |d: &Daemon| d.get("/v1/instances/DatabaseRouting").1;
    wait_for("the probe to see a healthy primary", Duration::from_secs(120), || {
        let s = state(&d);
        s["state"]["primary_status"] == "healthy" && s["status"] == "stable"
    });
    assert!(pager.hits().is_empty(), "nobody is paged while the primary is healthy");

    // The primary goes down for real.
    let stopped = Instant::now();
    pg.stop();
    wait_for("DNS to point at the replica", Duration::from_secs(120), || {
        route_in(&hosts).as_deref() == Some("127.0.0.2")
    });
    let failed_over = Instant::now();
    wait_for("the page to be accepted", Duration::from_secs(120), || pager.hits().iter().any(|h| h.status == 200));
    wait_for("the routing to be stable", Duration::from_secs(120), || state(&d)["status"] == "stable");
    let hits = pager.hits();
    let statuses: Vec<u16> = hits.iter().map(|h| h.status).collect();
    assert_eq!(statuses, vec![500, 500, 200], "paging retried until accepted, and accepted exactly once");
    assert!(hits.iter().all(|h| h.body["action"] == "PageEngineers" && h.body["args"][0] == "Primary DB Down"));
    // The failover did not wait for the pager: DNS switched before the page got through.
    let accepted = hits[2].at;
    assert!(failed_over <= accepted, "DNS switched only after the page was accepted");
    eprintln!(
        "failover {} ms after the stop; page accepted {} ms after the stop",
        (failed_over - stopped).as_millis(),
        (accepted - stopped).as_millis()
    );
    let s = state(&d);
    assert_eq!(s["state"]["active_route"], "replica");
    assert_eq!(s["state"]["alert_sent"], true);

    // The primary comes back: the route is restored, and nobody is paged again.
    pg.start();
    wait_for("DNS to point at the primary again", Duration::from_secs(120), || {
        route_in(&hosts).as_deref() == Some("127.0.0.1")
    });
    wait_for("the routing to be stable", Duration::from_secs(120), || {
        let s = state(&d);
        s["status"] == "stable" && s["state"]["active_route"] == "primary"
    });
    assert_eq!(state(&d)["state"]["alert_sent"], false);
    assert_eq!(pager.hits().len(), 3);

    let (_, audit) = d.get("/v1/audit");
    let texts: Vec<&str> = audit["entries"].as_array().unwrap().iter().filter_map(|e| e["text"].as_str()).collect();
    assert!(texts.iter().any(|t| t.contains("primary_status drifted to \"failed\"")), "{texts:#?}");
    assert_eq!(d.terminate().0, 0);
}
