# Shared by the heal.sh demos. Source it from the repository root.
# VED chooses the binary; by default the one cargo builds.
VED=${VED:-}
if [ -z "$VED" ]; then
  cargo build -q -p ved-cli
  VED=target/debug/ved
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/ved-demo.XXXXXX")
VED_PID=""

if [ -t 1 ]; then
  say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
else
  say() { printf '==> %s\n' "$*"; }
fi

# until SECONDS DESCRIPTION COMMAND...: waits for COMMAND to succeed.
until_ok() {
  local limit=$1 what=$2; shift 2
  local start end
  start=$(date +%s%N)
  while ! "$@" >/dev/null 2>&1; do
    end=$(date +%s%N)
    if [ $(( (end - start) / 1000000000 )) -ge "$limit" ]; then
      echo "FAILED: $what did not happen within ${limit}s" >&2
      exit 1
    fi
    sleep 0.01
  done
  end=$(date +%s%N)
  echo "    $what after $(( (end - start) / 1000000 )) ms"
}

# start_ved ARGS...: runs `ved run ARGS --listen 127.0.0.1:0`, sets API to its address.
start_ved() {
  "$VED" run "$@" --data-dir "$WORK/data" --listen 127.0.0.1:0 > "$WORK/events.jsonl" 2> "$WORK/ved.err" &
  VED_PID=$!
  until_ok 30 "ved listening" grep -q '"event":"listening"' "$WORK/events.jsonl"
  API=http://$(grep -o '"addr":"[^"]*"' "$WORK/events.jsonl" | head -1 | cut -d'"' -f4)
}

stop_ved() {
  if [ -n "$VED_PID" ]; then
    kill -TERM "$VED_PID" 2>/dev/null || true
    wait "$VED_PID" 2>/dev/null || true
    VED_PID=""
  fi
}

# status INSTANCE: prints the instance's status.
status() { curl -s "$API/v1/instances/$1" | grep -o '"status":"[a-z]*"' | cut -d'"' -f4; }
is_stable() { [ "$(status "$1")" = stable ]; }
