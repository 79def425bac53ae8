//! The "See it heal" demos in `examples/demo/*/heal.sh` work as the README
//! says: each makes its seed's chaos happen for real and exits 0 only once Ved
//! has healed it.

mod common;

use std::process::Command;

fn heal(demo: &str) {
    let out = Command::new(format!("examples/demo/{demo}/heal.sh"))
        .env("VED", env!("CARGO_BIN_EXE_ved"))
        .current_dir(common::root())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{demo}/heal.sh failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("==> healed"), "{stdout}");
    assert!(stdout.contains("stable again"), "the audit log was printed: {stdout}");
}

#[test]
fn the_worker_pool_demo_heals() {
    heal("worker_pool");
}

#[test]
fn the_security_policy_demo_heals() {
    heal("security_policy");
}

#[test]
fn the_database_routing_demo_heals() {
    heal("database_routing");
}
