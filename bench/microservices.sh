#!/usr/bin/env bash
# The marketplace as microservices on this machine — a nats-server of its
# own, one PostgreSQL database per service, each service in its own
# process behind the gateway — under one of loadgen's scenarios, which
# reports every ticketing process's resident memory (idle, set-up, load).
#   cargo build --release -p ticketing -p loadgen
#   bench/microservices.sh [browse|purchase|contention|expiry|revoke] [loadgen flags…]
# (revoke probes each service process directly; the admin is loadgen's
# default, admin@loadgen.invalid, signed up and granted the role here.)
# (ORDER_EXPIRATION_SECONDS in the environment reaches the services; BIN
# names another directory holding `ticketing` and `loadgen`, e.g. an older
# build to compare with.)
# Needs nats-server (NATS_SERVER=path) and PostgreSQL (PGURL, trust auth).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
NATS_SERVER=${NATS_SERVER:-nats-server}
PGURL=${PGURL:-postgres://postgres@127.0.0.1:5432}
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ready() { for _ in $(seq 1 300); do curl -fs "$1/readyz" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "$1 never ready" >&2; return 1; }

nats_port=$(free_port)
"$NATS_SERVER" -a 127.0.0.1 -p "$nats_port" -js -sd "$work/nats" >"$work/nats.log" 2>&1 &
pids+=($!)
export NATS_URL=nats://127.0.0.1:$nats_port JWT_KEY=bench-microservices-key-0123456789
export AUTH_RATE_LIMIT_PER_MINUTE=1000000 COOKIE_SECURE=false RUST_LOG=warn
"$BIN/ticketing" streams apply --wait 30s >/dev/null

declare -A url
for svc in auth tickets orders expiration payments; do
  db=ticketing_bench_$svc
  psql "$PGURL/postgres" -qc "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null
  port=$(free_port)
  TICKETING_SERVICES=$svc DATABASE_URL="$PGURL/$db" PORT=$port \
    "$BIN/ticketing" run --data-dir "$work/$svc" 2>>"$work/services.log" &
  pids+=($!)
  url[$svc]=http://127.0.0.1:$port
done
for svc in "${!url[@]}"; do wait_ready "${url[$svc]}"; done
gw_port=$(free_port)
TICKETING_SERVICES=gateway PORT=$gw_port AUTH_URL=${url[auth]} TICKETS_URL=${url[tickets]} \
  ORDERS_URL=${url[orders]} PAYMENTS_URL=${url[payments]} \
  "$BIN/ticketing" run --data-dir "$work/gateway" 2>>"$work/services.log" &
pids+=($!)
wait_ready "http://127.0.0.1:$gw_port"
scenario=purchase
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then scenario=$1; shift; fi
if [ "$scenario" = revoke ]; then
  curl -fs -o /dev/null -H 'content-type: application/json' \
    -d '{"email":"admin@loadgen.invalid","password":"password123"}' \
    "http://127.0.0.1:$gw_port/api/users/signup"
  DATABASE_URL="$PGURL/ticketing_bench_auth" "$BIN/ticketing" users grant-admin admin@loadgen.invalid >/dev/null
  "$BIN/loadgen" revoke --url "http://127.0.0.1:$gw_port" \
    --services "auth=${url[auth]},tickets=${url[tickets]},orders=${url[orders]},payments=${url[payments]}" "$@"
  exit
fi
# browse also runs the same reads straight to the tickets service, for the
# gateway's ratio; purchase --baseline runs the cascade's raw minimum on the
# same engines.
direct=()
if [ "$scenario" = browse ]; then direct=(--direct "${url[tickets]}"); fi
if [ "$scenario" = purchase ]; then direct=(--database-url "$PGURL/postgres" --nats-url "$NATS_URL"); fi
"$BIN/loadgen" "$scenario" --url "http://127.0.0.1:$gw_port" \
  --metrics-url "${url[expiration]}/metrics" "${direct[@]}" "$@"
