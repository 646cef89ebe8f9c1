#!/usr/bin/env bash
# Syscalls per resumed connection with a sequential client: one warmtls
# worker in front of an nginx backend (5-byte answer, keep-alive), a 1 s
# `openssl s_time -reuse` warm-up, then SECONDS of `openssl s_time -reuse -www /`
# (one connection at a time) with the server under `strace -c -f`. Prints the
# syscalls per connection and the calls behind them.
#
# Usage: bench/syscalls.sh [BINARY] [MODE] [SECONDS] [TLS]
#   BINARY  the warmtls binary (default target/release/warmtls)
#   MODE    backend_protocol: tcp | http (default http)
#   SECONDS the measured pass (default 4); TLS 1.2 | 1.3 (default 1.2)
# Knobs (environment): BASE_PORT=25600 (backend; warmtls on BASE_PORT + 1).
# Needs nginx, openssl, strace, python3. Under strace every syscall is slow, so
# conn/s here means nothing; the counts are what to compare, side by side on
# the same machine (which completions share a wakeup depends on timing).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-$ROOT/target/release/warmtls}
MODE=${2:-http}
SECS=${3:-4}
TLS=${4:-1.2}
BP=${BASE_PORT:-25600}
P=$((BP + 1))
W=$(mktemp -d /tmp/warmtls-syscalls.XXXXXX)
cleanup() {
  [ -s "$W/backend.pid" ] && kill "$(cat "$W/backend.pid")" 2>/dev/null
  [ -n "${SERVER:-}" ] && kill "$SERVER" 2>/dev/null
  wait 2>/dev/null
  rm -rf "$W"
}
trap cleanup EXIT
start_backend "$W" "$BP"
"$BIN" serve --listen "127.0.0.1:$P" --backend "127.0.0.1:$BP" --backend-protocol "$MODE" \
  --cache "$W/c.cache" --cache-capacity 1000 --workers 1 --log warn >"$W/out" 2>"$W/err" &
SERVER=$!
wait_port "$P"
flag=-tls1_2
[ "$TLS" = 1.3 ] && flag=-tls1_3
openssl s_time -connect "127.0.0.1:$P" -reuse -www / -time 1 $flag >/dev/null 2>&1
strace -c -f -o "$W/strace.txt" -p "$SERVER" 2>/dev/null &
TRACER=$!
sleep 0.5
n=$(openssl s_time -connect "127.0.0.1:$P" -reuse -www / -time "$SECS" $flag 2>&1 |
  awk '/connections in [0-9]+ real seconds/ {print $1}')
kill -INT "$TRACER"
wait "$TRACER" || true
python3 - "$W/strace.txt" "$n" "$MODE" "$TLS" <<'PY'
import sys
path, n, mode, tls = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
total, calls = 0, []
for line in open(path):
    f = line.split()
    if len(f) >= 5 and f[0][0].isdigit() and f[-1] != "total":
        total += int(f[3])
        calls.append((int(f[3]), f[-1]))
calls.sort(reverse=True)
print(f"{mode} TLS {tls}: {n} connections, {total / n:.2f} syscalls per connection: "
      + ", ".join(f"{name} {c / n:.2f}" for c, name in calls if c / n >= 0.005))
PY
