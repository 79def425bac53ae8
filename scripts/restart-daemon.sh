#!/usr/bin/env bash
# Restart of the daemon on a large fleet, as an operator sees it: from `ved run` to
# `/healthz` answering 200 (every instance loaded), beside reading the data directory's
# bytes in the same run. The fleet is the scale benchmark's (10^6 `WorkerPool`
# instances by default; run `cargo bench -p ved-engine --bench scale -- rss-engine`
# first, with the same VED_SCALE_N, to make it).
# Usage: scripts/restart-daemon.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
src=${VED_SCALE_DIR:-target/scale-bench}/fleet
[ -e "$src/manifest" ] || { echo "no fleet in $src: run the scale benchmark's rss-engine phase first" >&2; exit 1; }
cargo build -q --release -p ved-cli
dir=$(mktemp -d /tmp/ved-restart-XXXXXX)
trap 'rm -rf "$dir"' EXIT
cp -r "$src/." "$dir/"
rm -f "$dir/lock"
now() { date +%s.%N; }
echo "| run | read the directory | ved run → /healthz 200 | ratio |"
echo "|---:|---:|---:|---:|"
for run in $(seq 1 "$runs"); do
  t0=$(now); cat "$dir"/* > /dev/null; t1=$(now)
  read_s=$(echo "$t1 - $t0" | bc)
  port=$((18000 + RANDOM % 1000))
  t0=$(now)
  target/release/ved run examples/worker_pool.ved --data-dir "$dir" --listen "127.0.0.1:$port" > /dev/null 2>&1 &
  pid=$!
  ready=""
  for _ in $(seq 1 6000); do
    if curl -sf "http://127.0.0.1:$port/healthz" > /dev/null 2>&1; then ready=$(now); break; fi
    sleep 0.005
  done
  kill -TERM "$pid"; wait "$pid" || true
  [ -n "$ready" ] || { echo "the daemon did not answer /healthz within 30 s" >&2; exit 1; }
  up_s=$(echo "$ready - $t0" | bc)
  printf "| %d | %.3f s | %.2f s | %.0fx |\n" "$run" "$read_s" "$up_s" "$(echo "$up_s / $read_s" | bc -l)"
done
