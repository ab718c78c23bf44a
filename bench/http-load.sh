#!/usr/bin/env bash
# Rough HTTP load on a running all-in-one instance with wrk (Debian package):
# reads (GET /api/tickets) and writes (POST /api/tickets: a row, an outbox
# row, relay, bus, and the orders replica consuming it).
#   cargo run --release &   then   bench/http-load.sh [http://127.0.0.1:3000]
set -euo pipefail
B=${1:-http://127.0.0.1:3000}
DUR=${DUR:-10s}
jar=$(mktemp)
curl -s -c "$jar" -H 'content-type: application/json' \
  -d "{\"email\":\"load$RANDOM$RANDOM@example.com\",\"password\":\"password123\"}" "$B/api/users/signup" >/dev/null
TOKEN=$(awk '$6 == "session" {print $7}' "$jar")
lua=$(mktemp --suffix=.lua)
cat > "$lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"title":"Load test","price":19.99}'
wrk.headers["Content-Type"] = "application/json"
LUA
echo "== POST /api/tickets (write + outbox event) =="
wrk -t2 -c32 -d"$DUR" -s "$lua" -H "Authorization: Bearer $TOKEN" "$B/api/tickets"
echo "== GET /api/tickets?limit=50 (read) =="
wrk -t2 -c32 -d"$DUR" "$B/api/tickets?limit=50"
rm -f "$jar" "$lua"
