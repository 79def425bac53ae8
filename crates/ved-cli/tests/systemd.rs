//! `Type=notify` under systemd, with a datagram socket standing in for it: the daemon says
//! READY=1 once it serves, pings WATCHDOG=1 at half the interval asked for, and says
//! STOPPING=1 when SIGTERM starts a clean stop.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn the_daemon_speaks_systemds_notify_protocol() {
    let dir = common::tempdir("systemd");
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ved"));
    cmd.args(["run", "examples/worker_pool.ved", "--ephemeral", "--listen", "127.0.0.1:0"])
        .current_dir(common::root())
        .env("NOTIFY_SOCKET", &path)
        // 400 ms: a ping every 200 ms.
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    common::guard_state_home(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    let recv = || -> String {
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).expect("a notification within 120 s");
        String::from_utf8_lossy(&buf[..n]).trim().to_string()
    };
    assert_eq!(recv(), "READY=1");
    // Pings keep coming while the driver runs: three, each well after the one before.
    let start = Instant::now();
    for _ in 0..3 {
        assert_eq!(recv(), "WATCHDOG=1");
    }
    assert!(start.elapsed() >= Duration::from_millis(300), "pinged faster than asked: {:?}", start.elapsed());
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    // Pings already sent may come first; then the stop.
    let mut last = recv();
    while last == "WATCHDOG=1" {
        last = recv();
    }
    assert_eq!(last, "STOPPING=1");
    assert!(child.wait().unwrap().success());
}
