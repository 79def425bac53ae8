//! `ved run --cluster` and `ved inspect --cluster` against an etcd with TLS, client
//! certificates and authentication (one member, certificates made here with `openssl`):
//! the `--etcd-*` flags reach it, and a missing CA or a wrong password is a clear error.
//! Skipped when `etcd` or `openssl` is not on the PATH.

mod common;

use common::{tempdir, wait_for};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const LOADED: Duration = Duration::from_secs(120);

/// Kills the process when the test ends, passed or not.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Removes the test's directory at the end (after the processes, declared later, are gone).
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl runs");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// `ca.pem`, and `server.pem`/`server.key` (for 127.0.0.1) and `client.pem`/`client.key`
/// signed by it.
fn certificates(dir: &Path) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let mut args = vec!["req", "-x509"];
    args.extend(ec);
    args.extend(["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=ved test ca"]);
    args.extend(["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
    openssl(dir, &args);
    std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n")
        .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for who in ["server", "client"] {
        let (key, csr, pem, ext) =
            (format!("{who}.key"), format!("{who}.csr"), format!("{who}.pem"), format!("{who}.ext"));
        let subj = format!("/CN=ved test {who}");
        let mut args = vec!["req"];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        openssl(dir, &args);
        let mut args = vec!["x509", "-req", "-in", &csr, "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial"];
        args.extend(["-out", &pem, "-days", "2", "-extfile", &ext]);
        openssl(dir, &args);
    }
}

fn on_path(cmd: &str, arg: &str) -> bool {
    Command::new(cmd).arg(arg).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

#[test]
fn run_and_inspect_reach_an_etcd_with_tls_client_certificates_and_a_password() {
    if !on_path("etcd", "--version") || !on_path("openssl", "version") {
        eprintln!("skipped: etcd or openssl is not on the PATH");
        return;
    }
    let dir = Dir(tempdir("cluster-tls"));
    let d = |f: &str| dir.0.join(f).to_string_lossy().into_owned();
    certificates(&dir.0);
    let (client, peer) = (free_port(), free_port());
    let url = format!("https://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let _etcd = Killed(
        Command::new("etcd")
            .args(["--data-dir", &d("data"), "--listen-client-urls", &url, "--advertise-client-urls", &url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("default={peer_url}")])
            .args(["--cert-file", &d("server.pem"), "--key-file", &d("server.key")])
            .args(["--trusted-ca-file", &d("ca.pem"), "--client-cert-auth"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let tls = ved_cluster::etcd::Options {
        tls: Some(ved_cluster::etcd::Tls {
            ca: dir.0.join("ca.pem"),
            cert: Some(dir.0.join("client.pem")),
            key: Some(dir.0.join("client.key")),
        }),
        auth: None,
    };
    let admin = ved_cluster::etcd::Etcd::with_options(vec![url.clone()], Duration::from_secs(2), tls).unwrap();
    wait_for("etcd to start", LOADED, || admin.get("probe").is_ok());
    admin.enable_auth("pa55").unwrap();
    std::fs::write(dir.0.join("password"), "pa55\n").unwrap();

    let program = dir.0.join("count.ved");
    std::fs::write(
        &program,
        "domain Count {\n  state { n: int }\n  goal n == 3\n  transition up {\n    step {\n      if n < 3 {\n        n += 1\n      }\n    }\n  }\n}\n",
    )
    .unwrap();
    let flags = |password_file: bool| {
        let mut f = vec!["--cluster".to_string(), url.clone()];
        for (flag, file) in [("--etcd-ca", "ca.pem"), ("--etcd-cert", "client.pem"), ("--etcd-key", "client.key")] {
            f.extend([flag.to_string(), d(file)]);
        }
        f.extend(["--etcd-user".to_string(), "root".to_string()]);
        if password_file {
            f.extend(["--etcd-password-file".to_string(), d("password")]);
        }
        f
    };

    let mut node = Command::new(env!("CARGO_BIN_EXE_ved"))
        .arg("run")
        .arg(&program)
        .args(flags(true))
        .args(["--node-id", "a", "--listen", "127.0.0.1:0"])
        .env_remove("VED_ETCD_PASSWORD")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = node.stdout.take().unwrap();
    let _node = Killed(node);
    let events = Arc::new(Mutex::new(Vec::<serde_json::Value>::new()));
    let sink = events.clone();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&l) {
                sink.lock().unwrap().push(v);
            }
        }
    });
    wait_for("the node to acquire Count", LOADED, || {
        events.lock().unwrap().iter().any(|e| e["event"] == "acquired" && e["instance"] == "Count")
    });

    // The password from the environment this time.
    let inspect = |args: Vec<String>, password: &str| {
        Command::new(env!("CARGO_BIN_EXE_ved"))
            .arg("inspect")
            .args(args)
            .env("VED_ETCD_PASSWORD", password)
            .output()
            .unwrap()
    };
    // The node saved Count's state in etcd through TLS with its password; inspect reads it.
    wait_for("inspect to show Count", LOADED, || {
        let out = inspect(flags(false), "pa55");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).contains("Count (Count) at slice")
    });

    let wrong = inspect(flags(false), "nope");
    assert_eq!(wrong.status.code(), Some(1));
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(err.contains("etcd refused the user `root`: authentication failed"), "{err}");

    let no_ca = inspect(vec!["--cluster".into(), url.clone(), "--etcd-user".into(), "root".into()], "pa55");
    assert_eq!(no_ca.status.code(), Some(1));
    let err = String::from_utf8_lossy(&no_ca.stderr);
    assert!(err.contains("needs TLS options") && err.contains("--etcd-ca"), "{err}");
}
