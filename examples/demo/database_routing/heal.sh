#!/usr/bin/env bash
# See it heal: seed 001 with a real PostgreSQL. We stop the primary; Ved points
# db.internal at the replica (a hosts file) and pages through a webhook that
# fails twice first; we start the primary again and the route comes back.
# Needs PostgreSQL's server binaries and python3 (for the webhook receiver).
# Run from the repository root: examples/demo/database_routing/heal.sh
set -euo pipefail
source examples/demo/lib.sh
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort | tail -1)
PGDIR="$WORK/pg"
export PGHOST=127.0.0.1 PGPORT=$(( 20000 + $$ % 20000 )) VED_HOSTS_FILE="$WORK/hosts"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
pg() { as_pg "$PGBIN/pg_ctl" -D "$PGDIR/data" "$@" >/dev/null; }
route() { grep ' db.internal$' "$VED_HOSTS_FILE" 2>/dev/null | cut -d' ' -f1; }
route_is() { [ "$(route)" = "$1" ]; }
pages() { grep -c . "$WORK/pages.log" 2>/dev/null || true; }
paged_ok() { grep -q '^200 ' "$WORK/pages.log" 2>/dev/null; }
RECEIVER_PID=""
cleanup() {
  stop_ved
  [ -n "$RECEIVER_PID" ] && kill "$RECEIVER_PID" 2>/dev/null || true
  pg -m immediate stop 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

say "starting PostgreSQL on 127.0.0.1:$PGPORT"
chmod 755 "$WORK"; mkdir -p "$PGDIR"
[ "$(id -u)" = 0 ] && chown -R postgres:postgres "$PGDIR"
as_pg "$PGBIN/initdb" -D "$PGDIR/data" -A trust -U postgres >/dev/null
pg -o "-p $PGPORT -c listen_addresses=127.0.0.1 -k $PGDIR" -l "$PGDIR/log" -w start

say "starting the pager webhook: it answers 500 twice, then 200"
python3 - "$WORK/pages.log" > "$WORK/receiver.port" <<'PY' &
import http.server, sys
log, answers = sys.argv[1], [500, 500]
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        status = answers.pop(0) if answers else 200
        with open(log, "a") as f: f.write(f"{status} {self.headers.get('Idempotency-Key')} {body}\n")
        self.send_response(status); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
PY
RECEIVER_PID=$!
until_ok 10 "receiver up" test -s "$WORK/receiver.port"
sed -e "s#http://127.0.0.1:8025/page#http://127.0.0.1:$(cat "$WORK/receiver.port")/page#" \
    -e "s#\"\./#\"$PWD/examples/demo/database_routing/#" examples/demo/database_routing/ved.toml > "$WORK/ved.toml"

start_ved examples/database_routing.ved --config "$WORK/ved.toml"
until_ok 20 "stable on the primary" is_stable DatabaseRouting

say "chaos: the primary goes down (pg_ctl stop)"
pg -m fast -w stop
until_ok 20 "db.internal -> replica (127.0.0.2)" route_is 127.0.0.2
until_ok 20 "page accepted" paged_ok
until_ok 20 "stable on the replica" is_stable DatabaseRouting
sed 's/^/    page: /' "$WORK/pages.log"

say "the primary comes back (pg_ctl start)"
pg -o "-p $PGPORT -c listen_addresses=127.0.0.1 -k $PGDIR" -l "$PGDIR/log" -w start
until_ok 20 "db.internal -> primary (127.0.0.1)" route_is 127.0.0.1
until_ok 20 "stable on the primary" is_stable DatabaseRouting
[ "$(pages)" -eq 3 ] || { echo "FAILED: expected 3 page attempts, saw $(pages)" >&2; exit 1; }

say "audit log"
"$VED" audit --data-dir "$WORK/data" | sed 's/^/    /'
say "healed"
