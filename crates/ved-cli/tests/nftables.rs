//! Seed 000 against the real Linux firewall, in a network namespace this test
//! creates: a rogue `tcp dport 22 accept` rule added by hand with `nft`
//! disappears through the program (port drift), a set rule disappears through
//! the adapter's own repair (structural drift), the audit log says both, and
//! the test measures how long the rogue rule lived.
//! `firewall_traffic.rs` checks the same with real connections.

mod common;

use common::{security_policy_in, tempdir, wait_for, Daemon, Netns};
use std::time::Duration;

impl Netns {
    /// The ports effectively open, as `ved`'s own evaluator reads the whole ruleset
    /// (an empty ruleset filters nothing: none is reported until Ved's chain exists).
    fn open_ports(&self) -> Vec<i64> {
        let out = self.nft(&["-j", "list", "ruleset"]);
        let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
        ved_adapters::nftables::eval::effective_ports(&doc).open
    }

    fn chain_text(&self) -> String {
        self.nft(&["list", "chain", "inet", "ved", "input"])
    }
}

#[test]
fn a_rogue_rule_added_by_hand_disappears_and_is_audited() {
    let ns = Netns::new("fw");
    let dir = tempdir("nft");
    let d = security_policy_in(&ns.0, &dir, "");
    let stable = |d: &Daemon| d.get("/v1/instances/SecurityPolicy").1["status"] == "stable";

    // From an empty namespace, Ved creates the chain and opens the desired ports.
    wait_for("80 and 443 to be opened", Duration::from_secs(120), || ns.open_ports() == vec![80, 443]);
    wait_for("the policy to be stable", Duration::from_secs(120), || stable(&d));

    // A junior engineer opens SSH by hand.
    ns.nft(&["add", "rule", "inet", "ved", "input", "tcp", "dport", "22", "accept"]);
    let lived = wait_for("the rogue rule to disappear", Duration::from_secs(120), || !ns.open_ports().contains(&22));
    eprintln!("the rogue `tcp dport 22 accept` rule lived {} ms", lived.as_millis());
    assert_eq!(ns.open_ports(), vec![80, 443], "the wanted ports stayed open");
    wait_for("the policy to be stable again", Duration::from_secs(120), || stable(&d));

    // A set rule is not a rule Ved writes: the adapter removes it at once (structural drift).
    ns.nft(&["add", "rule", "inet", "ved", "input", "tcp", "dport", "{ 443, 2222 }", "accept"]);
    wait_for("the set rule to be removed", Duration::from_secs(120), || !ns.chain_text().contains("2222"));
    wait_for("the policy to be stable again", Duration::from_secs(120), || stable(&d));
    assert_eq!(ns.open_ports(), vec![80, 443]);
    let chain = ns.chain_text();
    assert!(chain.contains("policy drop;"), "{chain}");
    assert!(chain.contains("ct state established,related accept"), "{chain}");

    // The audit log records the drift and the correction in words.
    let (_, audit) = d.get("/v1/audit");
    let texts: Vec<String> =
        audit["entries"].as_array().unwrap().iter().map(|e| e["text"].as_str().unwrap().to_string()).collect();
    let entry = texts
        .iter()
        .find(|t| t.contains("actual_ports drifted to [22, 80, 443]"))
        .unwrap_or_else(|| panic!("no audit entry for the rogue rule: {texts:#?}"));
    assert!(entry.contains("CloseRoguePorts emitted Firewall.ClosePorts([22])"), "{entry}");
    assert!(entry.contains("stable again"), "{entry}");
    assert!(
        texts.iter().any(|t| t.contains("removed rule `tcp dport { 443, 2222 } accept`")),
        "no audit entry for the set rule: {texts:#?}"
    );
    assert_eq!(d.terminate().0, 0);
}
