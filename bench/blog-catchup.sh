#!/usr/bin/env bash
# How long the blog's query service takes to rebuild its read model from the
# event history. Writes POSTS posts with COMMENTS comments each through the
# API of an all-in-one `ticketing blog` (SQLite + the embedded bus), waits
# until every comment is moderated, stops it, deletes the query service's
# database, starts it again and times until GET /posts shows everything
# again, with the same content.
#
#   bench/blog-catchup.sh [POSTS] [COMMENTS]      # default 200 posts × 5 comments
#
# TICKETING_BIN picks the binary (default target/release/ticketing; build it
# with `cargo build --release -p ticketing`). Needs curl and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
POSTS=${1:-200}
COMMENTS=${2:-5}
BIN=${TICKETING_BIN:-target/release/ticketing}
PORT=${BLOG_PORT:-4099}
BASE="http://127.0.0.1:$PORT"
DATA=$(mktemp -d)
trap 'kill $PID 2>/dev/null || true; rm -rf "$DATA"' EXIT

start() {
  BLOG_BANNED_WORDS=orange RUST_LOG=warn "$BIN" blog --port "$PORT" --data-dir "$DATA" &
  PID=$!
  until curl -sf "$BASE/readyz" >/dev/null; do sleep 0.05; done
}
now() { python3 -c 'import time; print(time.monotonic())'; }
# Prints how many comments the read model holds, and how many are pending.
count() {
  curl -sf "$BASE/posts" | python3 -c '
import json, sys
posts = json.load(sys.stdin)
comments = [c for p in posts for c in p["comments"]]
print(len(comments), sum(c["status"] == "pending" for c in comments))'
}

start
echo "writing $POSTS posts × $COMMENTS comments…"
t0=$(now)
for i in $(seq 1 "$POSTS"); do
  curl -sf -XPOST "$BASE/posts" -H 'content-type: application/json' -d "{\"title\":\"Post $i\"}" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'
done > "$DATA/ids"
while read -r id; do
  for j in $(seq 1 "$COMMENTS"); do
    word=$([ $((j % 3)) -eq 0 ] && echo orange || echo apple)
    echo "$id $j $word"
  done
done < "$DATA/ids" | xargs -P 8 -n 3 sh -c '
  until curl -sf -o /dev/null -XPOST "'"$BASE"'/posts/$0/comments" -H "content-type: application/json" \
      -d "{\"content\":\"comment $1 about an $2\"}"; do sleep 0.05; done'
want=$((POSTS * COMMENTS))
until [ "$(count)" = "$want 0" ]; do sleep 0.1; done
t1=$(now)
events=$((POSTS + 3 * want))
echo "written and moderated in $(python3 -c "print(f'{$t1 - $t0:.2f}')") s: $events events on the bus"
before=$(curl -sf "$BASE/posts" | md5sum)

kill -TERM $PID; wait $PID || true
rm -f "$DATA"/query.db*
t2=$(now)
start
until [ "$(count)" = "$want 0" ]; do sleep 0.02; done
t3=$(now)
after=$(curl -sf "$BASE/posts" | md5sum)
[ "$before" = "$after" ] || { echo "the rebuilt read model differs" >&2; exit 1; }
echo "query database deleted: rebuilt from $((events - want)) events (post.created, comment.created, comment.updated) in $(python3 -c "print(f'{$t3 - $t2:.2f}')") s, start-up included; the same read model"
