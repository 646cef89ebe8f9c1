#!/usr/bin/env bash
# Several endpoints sharing sessions through Redis, measured by one client: two
# warmtls endpoints (A, B) on one redis-server on loopback, devices spread over
# both with `warmtls-bench fleet --target A,B --spread sticky --move-share 0.5`,
# so in each round half the devices move to the other endpoint and half stay,
# side by side in the same phase. Per TLS version: prime (full handshakes),
# round1 with the tier up, round2 after endpoint B was killed with SIGKILL and
# replaced by a fresh one with an empty cache file on the same address (its
# devices land where none of their sessions is), round3 after redis was killed
# (the outage), and the tier's own counters (lookup round trip, writes). Then
# the bytes per session Redis holds (MEMORY USAGE), plain and sealed.
#
# Usage: bench/cluster.sh            (from the repository root; needs redis-server,
#                                     redis-cli, nginx as the plaintext backend)
# Knobs: DEVICES=20000 TLS_VERSIONS="1.2 1.3" CONCURRENCY=32 BASE_PORT=25400
#        LOOKUP_TIMEOUT=5ms SKIP_BUILD=0 OUT=bench/out/cluster BIN=target/release
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."
SELF="$PWD/bench/cluster.sh"

DEVICES=${DEVICES:-20000}
TLS_VERSIONS=${TLS_VERSIONS:-"1.2 1.3"}
CONCURRENCY=${CONCURRENCY:-32}
BASE_PORT=${BASE_PORT:-25400}
LOOKUP_TIMEOUT=${LOOKUP_TIMEOUT:-5ms}
OUT=${OUT:-bench/out/cluster}
BIN=${BIN:-$PWD/target/release}
REDIS_PORT=$BASE_PORT BACKEND_PORT=$((BASE_PORT + 1)) A_PORT=$((BASE_PORT + 2)) B_PORT=$((BASE_PORT + 3))


# One endpoint: NAME PORT [extra flags], its pid in $W/NAME.pid. A makes the
# certificate, B uses it.
start_endpoint() {
  local name=$1 port=$2; shift 2
  local cert=()
  [ "$name" = a ] || cert=(--cert "$W/a.cache.cert.pem" --key "$W/a.cache.key.pem")
  "$BIN/warmtls" serve --listen "127.0.0.1:$port" --backend "127.0.0.1:$BACKEND_PORT" \
    --cache "$W/$name.cache" --cache-capacity $((DEVICES * 2)) --workers 1 "${cert[@]}" \
    --cluster-url "redis://127.0.0.1:$REDIS_PORT" --cluster-lookup-timeout "$LOOKUP_TIMEOUT" \
    --stats-file "$W/$name.stats.json" --stats-interval 1s --log warn "$@" \
    >"$W/$name.out" 2>>"$W/$name.err" &
  echo $! >"$W/$name.pid"
  wait_port "$port"
}

# The fleet's --restart-cmd (this script again, with W exported), run before
# round2 and before round3: first endpoint B is killed (SIGKILL) and a fresh B
# with an empty cache file takes its address; then redis is killed (the outage).
if [ "${1:-}" = __step ]; then
  n=$(cat "$W/step" 2>/dev/null || echo 0)
  echo $((n + 1)) >"$W/step"
  if [ "$n" = 0 ]; then
    kill -9 "$(cat "$W/b.pid")"
    sleep 0.2
    rm -f "$W/b.cache"
    start_endpoint b "$B_PORT"
  else
    redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
    sleep 1
  fi
  exit 0
fi

for bin in redis-server redis-cli nginx; do
  command -v "$bin" >/dev/null || { echo "cluster: $bin not found (apt-get install redis-server redis-tools nginx)" >&2; exit 1; }
done
[ "${SKIP_BUILD:-0}" = 1 ] || cargo build --release --locked
mkdir -p "$OUT"
W=$(mktemp -d /tmp/warmtls-cluster.XXXXXX)
export W

cleanup() {
  for f in "$W"/a.pid "$W"/b.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
  nginx -c "$W/backend.conf" -p "$W/backend" -s stop 2>/dev/null || true
  redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
}
trap cleanup EXIT

start_redis() {
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$W" \
    --daemonize yes --pidfile "$W/redis.pid" --logfile "$W/redis.log"
  wait_port "$REDIS_PORT"
}

stop_endpoints() {
  for f in "$W"/a.pid "$W"/b.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
  sleep 1
  rm -f "$W"/a.pid "$W"/b.pid
}

start_backend "$W" "$BACKEND_PORT"

for tls in $TLS_VERSIONS; do
  rm -f "$W"/a.cache "$W"/b.cache "$W"/*.stats.json "$W/step"
  start_redis
  start_endpoint a "$A_PORT"
  start_endpoint b "$B_PORT"
  echo "cluster: TLS $tls, $DEVICES devices over A and B, half of them moving each round; B killed -9 and replaced empty before round2, redis killed before round3" >&2
  "$BIN/warmtls-bench" fleet --target "127.0.0.1:$A_PORT,127.0.0.1:$B_PORT" --spread sticky --move-share 0.5 \
    --devices "$DEVICES" --tls "$tls" --ca "$W/a.cache.cert.pem" --server-name localhost \
    --concurrency "$CONCURRENCY" --rounds 3 --restart-cmd "$SELF __step" \
    --json "$OUT/tls$tls.json" | tee "$OUT/tls$tls.txt"
  sleep 1.5
  for e in a b; do
    echo "endpoint $e cluster counters: $(python3 -c "import json,sys; print(json.dumps(json.load(open('$W/$e.stats.json'))['cluster']))")" | tee -a "$OUT/tls$tls.txt"
  done
  stop_endpoints
done

# Bytes per session in Redis: prime DEVICES TLS 1.2 + 1.3 sessions through A,
# then MEMORY USAGE of every key (redis-cli --memkeys, which sums it) and
# used_memory over DBSIZE; plain, then sealed.
sizing() { # LABEL [extra endpoint flags]
  local label=$1; shift
  rm -f "$W"/a.cache "$W"/a.stats.json
  start_redis
  local before; before=$(redis-cli -p "$REDIS_PORT" info memory | sed -n 's/^used_memory:\([0-9]*\).*/\1/p')
  start_endpoint a "$A_PORT" "$@"
  "$BIN/warmtls-bench" fleet --target "127.0.0.1:$A_PORT" --devices "$DEVICES" --tls mix \
    --ca "$W/a.cache.cert.pem" --server-name localhost --concurrency "$CONCURRENCY" --rounds 0 >/dev/null
  sleep 1.5
  local keys used usage
  keys=$(redis-cli -p "$REDIS_PORT" dbsize)
  used=$(redis-cli -p "$REDIS_PORT" info memory | sed -n 's/^used_memory:\([0-9]*\).*/\1/p')
  usage=$(redis-cli -p "$REDIS_PORT" --memkeys --memkeys-samples 0 | grep -o 'strings with [0-9]* bytes.*avg size [0-9.]*)' || true)
  echo "$label: $keys keys; MEMORY USAGE: $usage; used_memory growth $(( (used - before) / keys )) B per key" | tee -a "$OUT/sizing.txt"
  stop_endpoints
  redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
  sleep 0.5
}
: >"$OUT/sizing.txt"
sizing "plain (no cache key)"
mkdir -p "$W/keys" && "$BIN/warmtls" keygen "$W/keys/k" >/dev/null
sizing "sealed (--cache-key)" --cache-key "$W/keys/k" --cache-slot-size 192
