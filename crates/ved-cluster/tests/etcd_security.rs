//! The client against a real etcd (one member, started here) with authentication, and
//! with TLS and client certificates (made here with the `openssl` command). Skipped when
//! no `etcd` (or, for TLS, no `openssl`) is on the PATH.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use ved_cluster::etcd::{Etcd, Options, Tls};
use ved_cluster::{Compare, EtcdError, KvStore, Op, WatchEvent};

struct OneMember {
    child: Child,
    dir: PathBuf,
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

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ved-etcd-sec-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Starts etcd in `dir/data` with these extra flags; `scheme` is its client URL's.
fn start_etcd(dir: &Path, scheme: &str, extra: &[&str]) -> Option<OneMember> {
    let (client, peer) = (free_port(), free_port());
    let url = format!("{scheme}://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new("etcd")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
        .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("default={peer_url}")])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(dir.join("etcd.log")).unwrap()))
        .spawn();
    let Ok(child) = child else {
        eprintln!("skipped: no etcd on the PATH");
        let _ = std::fs::remove_dir_all(dir);
        return None;
    };
    Some(OneMember { child, dir: dir.to_path_buf(), url })
}

fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let until = Instant::now() + Duration::from_secs(120);
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn rejected(r: Result<impl std::fmt::Debug, EtcdError>) -> String {
    match r {
        Err(EtcdError::Rejected(m)) => m,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn with_user(url: &str, user: &str, password: &str) -> Etcd {
    let options = Options { auth: Some((user.into(), password.into())), ..Default::default() };
    Etcd::with_options(vec![url.into()], Duration::from_secs(2), options).unwrap()
}

/// Authentication on: no user and a wrong password are refused clearly; the right one
/// puts, reads, runs transactions and watches; and a token that lapsed (simple tokens of
/// one second, unused) is renewed without the caller seeing it.
#[test]
fn a_user_and_password_get_a_token_that_is_renewed() {
    let dir = temp_dir("auth");
    let Some(etcd) = start_etcd(&dir, "http", &["--auth-token", "simple", "--auth-token-ttl", "1"]) else { return };
    let plain = Etcd::new(vec![etcd.url.clone()], Duration::from_secs(2));
    wait_for("etcd to start", || plain.get("probe").is_ok());
    plain.enable_auth("s3cret").unwrap();

    let refused = rejected(plain.get("k"));
    assert!(refused.contains("authentication enabled and no user was given"), "{refused}");
    let wrong = rejected(with_user(&etcd.url, "root", "wrong").get("k"));
    assert!(wrong.starts_with("etcd refused the user `root`: authentication failed"), "{wrong}");
    assert_eq!(with_user(&etcd.url, "root", "wrong").authentications(), 0);

    let kv = with_user(&etcd.url, "root", "s3cret");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    KvStore::watch(&kv, vec!["w/".into()], Box::new(move |ev| s.lock().unwrap().push(ev))).unwrap();
    kv.put("k", b"v", 0).unwrap();
    assert_eq!(kv.get("k").unwrap().unwrap().value, b"v");
    let (ok, _) = kv.txn(&[Compare::ValueIs("k".into(), b"v".to_vec())], &[Op::Delete("k".into())]).unwrap();
    assert!(ok);
    assert_eq!(kv.get("k").unwrap(), None);
    wait_for("the watch's full read", || !seen.lock().unwrap().is_empty());
    kv.put("w/1", b"x", 0).unwrap();
    wait_for("the watched change", || {
        seen.lock().unwrap().iter().any(|e| matches!(e, WatchEvent::Put(kv) if kv.key == "w/1"))
    });
    // One token, or two when the watch and a request both found none (or the first lapsed).
    assert!(kv.authentications() >= 1);
    let before = kv.authentications();

    // etcd forgets a simple token unused for --auth-token-ttl (1 s here). Pauses between
    // reads grow until one outlasts it; every read must succeed all the same, and the
    // client must have got another token.
    let mut pause = Duration::from_millis(100);
    let until = Instant::now() + Duration::from_secs(120);
    while kv.authentications() <= before {
        assert!(Instant::now() < until, "the token was never renewed");
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_secs(4));
        kv.get("k").expect("a read with a lapsed token succeeds after a renewal");
    }
    // The watch goes on (with a new token when its own lapsed).
    kv.put("w/2", b"y", 0).unwrap();
    wait_for("a change watched after the renewal", || {
        seen.lock().unwrap().iter().any(|e| matches!(e, WatchEvent::Put(kv) if kv.key == "w/2"))
    });
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl runs");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA (`ca.pem`), a server certificate for 127.0.0.1 (`server.pem`, `server.key`) and a
/// client certificate (`client.pem`, `client.key`) it signed, plus a CA that signed
/// nothing (`other-ca.pem`). `None` when there is no `openssl`.
fn certificates(dir: &Path) -> Option<()> {
    if Command::new("openssl").arg("version").output().is_err() {
        eprintln!("skipped: no openssl on the PATH");
        return None;
    }
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    for ca in ["ca", "other-ca"] {
        let (key, pem, subj) = (format!("{ca}.key"), format!("{ca}.pem"), format!("/CN=ved test {ca}"));
        let mut args = vec!["req", "-x509"];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &pem, "-days", "2", "-subj", &subj]);
        args.extend([
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(dir, &args);
    }
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
        openssl(
            dir,
            &["x509", "-req", "-in", &csr, "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", &pem]
                .into_iter()
                .chain(["-days", "2", "-extfile", &ext])
                .collect::<Vec<_>>(),
        );
    }
    Some(())
}

fn tls(dir: &Path, ca: &str, client: bool) -> Options {
    Options {
        tls: Some(Tls {
            ca: dir.join(ca),
            cert: client.then(|| dir.join("client.pem")),
            key: client.then(|| dir.join("client.key")),
        }),
        auth: None,
    }
}

/// etcd on https with client certificates required: the client with the CA and its
/// certificate works; with another CA, or without a certificate, it fails within the
/// request timeout and says so; an https URL without TLS options is refused at once.
#[test]
fn tls_with_client_certificates() {
    let dir = temp_dir("tls");
    let Some(()) = certificates(&dir) else {
        let _ = std::fs::remove_dir_all(&dir);
        return;
    };
    let p = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let flags = [
        "--cert-file".to_string(),
        p("server.pem"),
        "--key-file".into(),
        p("server.key"),
        "--trusted-ca-file".into(),
        p("ca.pem"),
        "--client-cert-auth".into(),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let Some(etcd) = start_etcd(&dir, "https", &flags) else { return };
    let url = vec![etcd.url.clone()];
    let timeout = Duration::from_secs(2);

    let kv = Etcd::with_options(url.clone(), timeout, tls(&dir, "ca.pem", true)).unwrap();
    wait_for("etcd to start", || kv.get("probe").is_ok());
    kv.put("k", b"v", 0).unwrap();
    assert_eq!(kv.get("k").unwrap().unwrap().value, b"v");

    let no_tls = Etcd::with_options(url.clone(), timeout, Options::default()).err().expect("refused");
    assert!(no_tls.to_string().contains("needs TLS options"), "{no_tls}");

    for (what, options) in
        [("another CA", tls(&dir, "other-ca.pem", true)), ("no client certificate", tls(&dir, "ca.pem", false))]
    {
        let client = Etcd::with_options(url.clone(), timeout, options).unwrap();
        let start = Instant::now();
        let err = client.get("k").expect_err(what);
        assert!(err.is_unavailable(), "{what}: {err}");
        assert!(start.elapsed() < Duration::from_secs(10), "{what}: took {:?}", start.elapsed());
        if what == "another CA" {
            assert!(err.to_string().contains("invalid peer certificate"), "{err}");
        }
        eprintln!("{what}: {err}");
    }
    drop(etcd);
}
