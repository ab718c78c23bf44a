#!/usr/bin/env bash
# Where the CPU goes under a purchase load, sampled by perf (cpu-clock:
# this machine has no hardware counters) with DWARF call graphs from the
# binary's own unwind tables (no rebuild needed), folded with inferno into a
# flame graph (SVG) per process and the largest costs by frame:
#   all-in-one      the one process (SQLite, the embedded bus);
#   microservices   every service process and the gateway, on JetStream +
#                   PostgreSQL (bench/microservices.sh), the whole machine
#                   sampled and split by process.
#   cargo build --release -p ticketing -p loadgen && cargo install inferno
#   bench/profile.sh all-in-one|microservices [out-dir]   # root
# Writes OUT/<process>.svg (FOLDED/<process>.folded: the stacks, for
# inferno-diff-folded or another look; default target/profiles), and prints loadgen's rates and, per
# process, the top ten self costs and the project's top inclusive frames.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
MODE=${1:-all-in-one}
OUT=${2:-docs/benchmarks/profiles}
SECONDS_PROFILED=${SECONDS_PROFILED:-10}
FOLDED=${FOLDED:-target/profiles}
mkdir -p "$OUT" "$FOLDED"
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

if [ "$MODE" = microservices ]; then
  NATS_SERVER=${NATS_SERVER:-nats-server} bench/microservices.sh purchase --tickets 12000 \
    --duration "$((SECONDS_PROFILED + 3))s" >"$work/loadgen.txt" 2>"$work/loadgen.err" &
  load=$!
  pids+=($load)
  # loadgen marks the end of its set-up and warm-up.
  for _ in $(seq 1 1200); do grep -q "measuring" "$work/loadgen.err" 2>/dev/null && break; sleep 0.1; done
  # Which process is which service, while they run.
  for pid in $(pgrep -x ticketing); do
    name=$(tr '\0' '\n' <"/proc/$pid/environ" | sed -n 's/^TICKETING_SERVICES=//p')
    [ -n "$name" ] && echo "$pid $name"
  done >"$work/pids"
  perf record -a -e cpu-clock -F 199 --call-graph dwarf,16384 -m 2048 -o "$work/perf.data" \
    -- sleep "$SECONDS_PROFILED" 2>"$work/perf.log" || { cat "$work/perf.log" >&2; exit 1; }
  grep -i "lost\|samples" "$work/perf.log" >&2 || true
  wait "$load" || true
  # pid/tid on each sample, so that threads fold into their process.
  perf script -F comm,pid,tid,time,event,ip,sym,dso -i "$work/perf.data" 2>/dev/null |
    inferno-collapse-perf --pid --kernel >"$work/all.folded"
  cut -d';' -f1 "$work/all.folded" | sort | uniq -c | sort -rn | head -n 5 >&2
  grep -E "^  (order|pay) |CPU|^  [a-z-]+ +[0-9.]+ +[0-9.]+ +[0-9.]+ +[0-9]+ " "$work/loadgen.txt" || true
  while read -r pid name; do
    # inferno names each stack's first frame after its thread and pid.
    grep -E "^[^;]*-$pid;" "$work/all.folded" | sed 's/^[^;]*;//' >"$FOLDED/$name.folded" || true
    [ -s "$FOLDED/$name.folded" ] || { rm -f "$FOLDED/$name.folded"; continue; }
    inferno-flamegraph --title "ticketing $name (microservices) under loadgen purchase" \
      <"$FOLDED/$name.folded" >"$OUT/$name.svg"
    echo "== $name"
    python3 bench/profile_top.py "$FOLDED/$name.folded"
  done <"$work/pids"
  exit 0
fi

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
AUTH_RATE_LIMIT_PER_MINUTE=1000000 RUST_LOG=warn \
  "$BIN/ticketing" run --port "$port" --data-dir "$work/data" 2>"$work/server.log" &
server=$!
pids+=($server)
for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
# The load runs longer than the profile, which starts once the tickets are
# listed and the warm-up is over.
"$BIN/loadgen" purchase --url "http://127.0.0.1:$port" --tickets 40000 \
  --duration "$((SECONDS_PROFILED + 3))s" >"$work/loadgen.txt" 2>"$work/loadgen.err" &
load=$!
pids+=($load)
for _ in $(seq 1 1200); do grep -q "measuring" "$work/loadgen.err" 2>/dev/null && break; sleep 0.1; done
# The whole machine, as for the microservices: sampling one process with
# -p caught only part of its CPU here; system-wide, every tick is sampled.
perf record -a -e cpu-clock -F 199 --call-graph dwarf,16384 -m 2048 -o "$work/perf.data" \
  -- sleep "$SECONDS_PROFILED" 2>"$work/perf.log" || { cat "$work/perf.log" >&2; exit 1; }
grep -i "samples" "$work/perf.log" >&2 || true
wait "$load" || true
perf script -F comm,pid,tid,time,event,ip,sym,dso -i "$work/perf.data" 2>/dev/null |
  inferno-collapse-perf --pid --kernel | grep -E "^[^;]*-$server;" | sed 's/^[^;]*;//' >"$FOLDED/all-in-one.folded"
inferno-flamegraph --title "ticketing all-in-one under loadgen purchase" \
  <"$FOLDED/all-in-one.folded" >"$OUT/all-in-one.svg"
grep -E "^  (order|pay) |CPU|^  [a-z-]+ +[0-9.]+ +[0-9.]+ +[0-9.]+ +[0-9]+ " "$work/loadgen.txt" || true
python3 bench/profile_top.py "$FOLDED/all-in-one.folded"
