//! Ved is Apache-2.0: no crate it links may be GPL-only. The firewall adapter
//! talks to nftables through the `nft` program for that reason (libnftables and
//! libnftnl are GPL). This reads the resolved dependency graph from cargo and
//! checks every package's declared license.

use serde_json::Value as Json;

/// Whether an SPDX expression leaves a choice that is not GPL (`MIT OR GPL-2.0` does).
fn allows_non_gpl(expr: &str) -> bool {
    expr.split(" OR ").map(|alt| alt.trim_matches(|c| c == '(' || c == ')')).any(|alt| !alt.contains("GPL"))
}

#[test]
fn the_license_rule_reads_spdx_choices() {
    assert!(allows_non_gpl("MIT OR Apache-2.0"));
    assert!(allows_non_gpl("Apache-2.0 OR LGPL-2.1-or-later OR MIT"));
    assert!(!allows_non_gpl("GPL-3.0-or-later"));
    assert!(!allows_non_gpl("GPL-2.0-only OR LGPL-2.1"));
}

#[test]
fn no_linked_crate_is_gpl_only() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Only what is linked on this platform (Ved runs on Linux); other platforms' crates
    // are not even downloaded.
    let target = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline", "--locked", "--filter-platform", &target])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    let meta: Json = serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
    let packages = meta["packages"].as_array().expect("packages");
    assert!(packages.len() > 50, "the graph looks incomplete: {} packages", packages.len());
    let mut bad = Vec::new();
    for p in packages {
        let name = p["name"].as_str().unwrap_or("?");
        match p["license"].as_str() {
            Some(l) if allows_non_gpl(l) => {}
            Some(l) => bad.push(format!("{name} {}: {l}", p["version"])),
            // A license file instead of an SPDX id: read it before depending on the crate.
            None => bad.push(format!("{name} {}: no SPDX license declared", p["version"])),
        }
    }
    assert!(bad.is_empty(), "crates whose license Ved cannot link:\n{}", bad.join("\n"));
}
