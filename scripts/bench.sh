#!/usr/bin/env bash
# Runs the benchmarks and prints BENCHMARKS.md's table: each seed's cycle under
# Ved against the hand-written Rust baseline measured in the same run.
# Usage: scripts/bench.sh            (prints the table)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -p ved-runtime --bench slices -- --noplot "$@" >&2
python3 - <<'PY'
import json, pathlib
root = pathlib.Path("target/criterion")
slices = {"worker_pool": 6, "security_policy": 3, "database_routing": 8}
print("| seed cycle | slices | Ved ns/cycle | native ns/cycle | Ved slices/s | Ved / native | reporting floor ns/cycle | Ved / floor |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for group, n in slices.items():
    def mean(fn):
        est = json.loads((root / group / fn / "new" / "estimates.json").read_text())
        return est["mean"]["point_estimate"]
    ved, native, floor = mean("ved"), mean("native"), mean("reporting")
    print(f"| {group} | {n} | {ved:,.0f} | {native:,.0f} | {n / ved * 1e9:,.0f} | {ved / native:,.1f}x | {floor:,.0f} | {ved / floor:,.1f}x |")
def unit(fn):
    return json.loads((root / "unit_costs" / fn / "new" / "estimates.json").read_text())["mean"]["point_estimate"]
print()
print(f"Unit costs: an Arc<str> clone and drop {unit('arc_str_clone_and_drop'):.1f} ns, "
      f"a one-change list allocated and freed {unit('change_list_alloc_and_free'):.1f} ns.")
PY
echo
# `ved verify`: exploration speed against a hand-written explorer of the same model.
cargo bench -q -p ved-verify --bench explore 2>/dev/null
echo
# Scale on the product's path (issue 12.5): the engine API with fsync, 10^6 instances by default
# (VED_SCALE_N=100000 for a quick run; VED_SCALE_BUSY, VED_SCALE_ROUNDS, VED_SCALE_SAMPLES),
# each figure beside a baseline measured in the same run. Progress goes to stderr.
cargo bench -q -p ved-engine --bench scale
echo
# The daemon's restart on the scale benchmark's fleet: `ved run` until /healthz answers.
scripts/restart-daemon.sh 3
echo
# Readers of a long audit log against the daemon's writes (issue 13, defect 4).
cargo test -q --release -p ved-cli --test audit_read_bench -- --ignored --nocapture
