#!/usr/bin/env bash
# The microservices compose stack (deploy/docker-compose.yaml) as users run
# it, measured: the image's size, the time from `up` to every service
# healthy, each container's memory idle and under load (docker stats), and
# loadgen's scenario through the gateway's published port. Run
# bench/microservices.sh with the same scenario and flags right after for
# the same binary as host processes (the ratio).
#   cargo build --release -p ticketing -p loadgen
#   (image: deploy/README.md, "Without a registry", or docker compose build)
#   bench/compose.sh [purchase|browse|…] [loadgen flags…]
# STANDINS=1 adds deploy/standins' override; SAMPLE=0 measures no memory
# under load; COMPOSE names the compose
# command (default: `docker compose`, else `docker-compose`). Only the
# sign-in rate limit is lifted (bench/compose.override.yaml), as in
# bench/microservices.sh: loadgen signs its users up from one address.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
DOCKER=${DOCKER:-docker}
if [ -z "${COMPOSE:-}" ]; then
  if "$DOCKER" compose version >/dev/null 2>&1; then COMPOSE="$DOCKER compose"; else COMPOSE=docker-compose; fi
fi
port=${GATEWAY_PORT:-3700}
files=(-f deploy/docker-compose.yaml)
[ "${STANDINS:-0}" = 1 ] && files+=(-f deploy/standins/docker-compose.yaml)
files+=(-f bench/compose.override.yaml)
compose() { GATEWAY_PORT=$port PROMETHEUS_PORT=$((port + 1)) $COMPOSE -p ticketing-bench "${files[@]}" "$@"; }
down() { compose down --volumes --timeout 5 >/dev/null 2>&1 || true; }
down
samples=$(mktemp -d)
trap 'down; rm -rf "$samples"' EXIT

services=(auth tickets orders expiration payments web gateway)
healthy() {
  for s in "${services[@]}"; do
    [ "$("$DOCKER" inspect -f '{{.State.Health.Status}}' "$(compose ps -q "$s")" 2>/dev/null)" = healthy ] || return 1
  done
}
memory() { # each container's memory in MiB, as docker stats reports it (the cgroup's, page cache aside)
  "$DOCKER" stats --no-stream --format '{{.Name}} {{.MemUsage}}' | awk '/ticketing-bench/ {
    name = $1; sub(/^ticketing-bench[_-]/, "", name); sub(/[_-]1$/, "", name)
    v = $2; unit = v; gsub(/[0-9.]/, "", unit); v += 0
    if (unit == "GiB") v *= 1024; else if (unit == "KiB" || unit == "kB") v /= 1024; else if (unit == "B") v /= 1048576
    printf "%s %.1f\n", name, v }'
}

echo "image ticketing:local: $("$DOCKER" image inspect -f '{{.Size}}' ticketing:local | awk '{printf "%.1f MB", $1/1e6}')"
start=$(date +%s.%N)
compose up -d --no-build >/dev/null 2>&1
until healthy; do sleep 0.2; done
echo "up to every service healthy: $(awk "BEGIN { printf \"%.1f\", $(date +%s.%N) - $start }") s"
sleep 5
memory >"$samples/idle"
scenario=purchase
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then scenario=$1; shift; fi
"$BIN/loadgen" "$scenario" --url "http://127.0.0.1:$port" "$@" >"${REPORT:-/dev/stdout}" &
load=$!
# Sampled through the whole run (set-up included); the peak per container.
# (docker stats costs the engine some CPU: SAMPLE=0 leaves it out.)
while [ "${SAMPLE:-1}" = 1 ] && kill -0 "$load" 2>/dev/null; do memory >>"$samples/load"; done
touch "$samples/load"
wait $load
echo "== memory per container, MiB (docker stats): idle, and the peak under $scenario"
awk 'FNR == NR { idle[$1] = $2; next } $2 > peak[$1] { peak[$1] = $2 }
     END { for (c in idle) printf "%-12s %8.1f %8.1f\n", c, idle[c], peak[c] }' \
  "$samples/idle" "$samples/load" | sort
