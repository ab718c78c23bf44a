"""The largest costs in a folded profile (inferno's or FlameGraph's format:
one stack per line, frames joined by ';', then the sample count): what the
samples were for (each stack named by the nearest frame, from the leaf up,
that says what it is doing), the ten frames with the most self samples, and
the ten frames of the project's own crates with the most samples beneath
them.

    python3 bench/profile_top.py FILE.folded
"""

import collections
import re
import sys

OWN = re.compile(
    r"^(?:<)?(auth|tickets|orders|expiration|payments|web|runtime|shared|store|bus|"
    r"marketplace_api|marketplace_events|ticketing)::"
)


# What a stack is for, by the nearest of its frames that matches, leaf first.
PURPOSES = [
    ("JSON (serde_json)", re.compile(r"^(<)?serde_json::|serde::de::|serde_core::")),
    ("JWT and session checks", re.compile(r"jsonwebtoken::|shared::auth::|auth::sessions::")),
    ("tracing spans and logs", re.compile(r"^(<)?tracing(_subscriber|_core|_opentelemetry)?::|opentelemetry")),
    ("metrics", re.compile(r"^(<)?metrics(_exporter_prometheus|_util)?::|shared::metrics::")),
    ("SQL: SQLite", re.compile(r"^sqlite3|rusqlite::")),
    ("SQL: PostgreSQL protocol", re.compile(r"tokio_postgres::|postgres_protocol::|postgres_types::")),
    ("bus client (NATS)", re.compile(r"async_nats::")),
    ("outbox relay", re.compile(r"bus::outbox::(relay|Relay)|bus::relay::")),
    ("event listeners (replicas, sagas)", re.compile(r"bus::listener::")),
    ("store (the project's)", re.compile(r"^(<)?store::")),
    ("HTTP client (reqwest, the gateway and web)", re.compile(r"reqwest::|hyper_util::client|hyper::client")),
    ("HTTP server (hyper, axum)", re.compile(r"^(<)?(hyper|axum|tower|tower_http|http_body)(_util)?::|runtime::serve::|runtime::edge::")),
    ("password hashing (argon2)", re.compile(r"argon2::|blake2")),
    ("memory allocation", re.compile(r"^(_int_malloc|_int_free|malloc|free|__GI___libc_free|__libc_malloc|tcache_get|unlink_chunk|malloc_consolidate|cfree|realloc|_int_realloc)")),
    ("the async runtime (tokio)", re.compile(r"^(<)?tokio::")),
]


def purpose(frames: list) -> str:
    if frames[-1].endswith("_[k]"):
        # inferno's mark (--kernel) on the kernel's frames.
        return "kernel: syscalls (network I/O, futexes) and scheduling"
    for frame in reversed(frames):
        for name, pattern in PURPOSES:
            if pattern.search(frame):
                return name
    return "other"


def short(frame: str) -> str:
    frame = re.sub(r"::h[0-9a-f]{16}$", "", frame).removesuffix("_[k]")
    frame = re.sub(r"\{\{closure\}\}", "{closure}", frame)
    return frame if len(frame) <= 110 else frame[:107] + "..."


def main(path: str) -> None:
    purposes = collections.Counter()
    own_self = collections.Counter()
    inclusive = collections.Counter()
    total = 0
    for line in open(path, encoding="utf-8", errors="replace"):
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own_self[short(frames[-1])] += n
        purposes[purpose(frames)] += n
        for frame in set(short(f) for f in frames):
            if OWN.match(frame):
                inclusive[frame] += n
    # bench/profile.sh samples each CPU 199 times a second.
    print(f"{total} samples, {total / 199:.1f} s of CPU")
    print("\nwhat for:")
    for name, n in purposes.most_common():
        print(f"  {100 * n / total:5.1f} %  {name}")
    print("\nself, top ten:")
    for frame, n in own_self.most_common(10):
        print(f"  {100 * n / total:5.1f} %  {frame}")
    print("\nthe project's frames, inclusive, top ten:")
    for frame, n in inclusive.most_common(10):
        print(f"  {100 * n / total:5.1f} %  {frame}")


if __name__ == "__main__":
    main(sys.argv[1])
