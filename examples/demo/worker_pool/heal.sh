#!/usr/bin/env bash
# See it heal: seed 003 with real processes. Ved keeps exactly 5 workers;
# we kill 2 and start 3 by hand, and watch the pool come back to 5.
# Run from the repository root: examples/demo/worker_pool/heal.sh
set -euo pipefail
source examples/demo/lib.sh
MARK="86400.$$"
sed "s/86400.5/$MARK/" examples/demo/worker_pool/ved.toml > "$WORK/ved.toml"
members() { pgrep -fx "sleep $MARK" | wc -l; }
pool_is() { [ "$(members)" -eq "$1" ]; }
cleanup() { stop_ved; pkill -KILL -fx "sleep $MARK" || true; rm -rf "$WORK"; }
trap cleanup EXIT

say "starting ved: the pool is 'sleep $MARK' processes"
start_ved examples/demo/worker_pool/worker_pool.ved --config "$WORK/ved.toml"
until_ok 20 "5 workers running" pool_is 5

say "chaos: kill -9 two workers"
pgrep -fx "sleep $MARK" | head -2 | xargs kill -9
until_ok 20 "back to 5 workers" pool_is 5

say "chaos: a junior engineer starts 3 more by hand"
for _ in 1 2 3; do sleep "$MARK" & disown; done
until_ok 20 "back to 5 workers" pool_is 5
until_ok 20 "stable" is_stable WorkerPool

say "audit log"
"$VED" audit --data-dir "$WORK/data" | sed 's/^/    /'
say "healed"
