#!/usr/bin/env bash
# See it heal: seed 000 against the real Linux firewall, inside a network
# namespace (your own firewall is untouched). We add a rogue SSH rule by hand
# with nft; Ved removes it, and the audit log says so. Needs root, nft and ip.
# Run from the repository root: examples/demo/security_policy/heal.sh
set -euo pipefail
source examples/demo/lib.sh
NS="ved-demo-$$"
sed "s/\"ved-demo\"/\"$NS\"/" examples/demo/security_policy/ved.toml > "$WORK/ved.toml"
nft_ns() { ip netns exec "$NS" nft "$@"; }
port_open() { nft_ns list chain inet ved input 2>/dev/null | grep -q "tcp dport $1 accept"; }
port_closed() { ! port_open "$1"; }
cleanup() { stop_ved; ip netns del "$NS" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

say "creating network namespace $NS"
ip netns add "$NS"
start_ved examples/security_policy.ved --config "$WORK/ved.toml"
until_ok 20 "port 80 open" port_open 80
until_ok 20 "port 443 open" port_open 443
until_ok 20 "stable" is_stable SecurityPolicy
nft_ns list chain inet ved input | sed 's/^/    /'

say "chaos: nft add rule inet ved input tcp dport 22 accept"
nft_ns add rule inet ved input tcp dport 22 accept
until_ok 20 "rogue rule gone" port_closed 22
until_ok 20 "stable" is_stable SecurityPolicy
nft_ns list chain inet ved input | sed 's/^/    /'

say "audit log"
"$VED" audit --data-dir "$WORK/data" | sed 's/^/    /'
"$VED" audit verify --data-dir "$WORK/data"
say "healed"
