#!/bin/sh
# Network.UpdateDNS(route): points db.internal at the primary or the replica by
# rewriting a hosts-format file, atomically (write a temp file, then rename).
# The intent arrives as JSON on stdin, e.g. {"action":"UpdateDNS","args":["replica"],...}.
#   VED_HOSTS_FILE  the file to rewrite (default ./hosts)
#   PRIMARY_ADDR, REPLICA_ADDR  the two addresses (default 127.0.0.1, 127.0.0.2)
set -eu
intent=$(cat)
route=$(printf '%s' "$intent" | sed -n 's/.*"args":\["\([a-z]*\)"\].*/\1/p')
case "$route" in
  primary) addr=${PRIMARY_ADDR:-127.0.0.1} ;;
  replica) addr=${REPLICA_ADDR:-127.0.0.2} ;;
  *) echo "UpdateDNS: unknown route '$route'" >&2; exit 2 ;;
esac
file=${VED_HOSTS_FILE:-./hosts}
tmp="$file.tmp.$$"
printf '# managed by ved: the active database route is %s\n%s db.internal\n' "$route" "$addr" > "$tmp"
mv -f "$tmp" "$file"
