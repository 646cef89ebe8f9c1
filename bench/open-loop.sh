#!/usr/bin/env bash
# Open-loop load on warmtls in http mode (backend_protocol = "http", pooled
# backend connections): the fleet simulator starts connections at a fixed rate
# whatever the server does (`warmtls-bench fleet --rate`), TLS 1.2/1.3 mixed,
# a prime phase (full handshakes) then one resume round, at each rate in RATES
# (550/s is 1M devices reconnecting every 30 min; 2,200/s four times that).
# Prints per rate and phase: connections/s achieved, p50/p99/max connection
# time, server CPU µs per connection; raw JSON in bench/out/open-loop/.
#
# Usage: bench/open-loop.sh    (from the repository root, after cargo build --release)
# Knobs: RATES="550 2200" SECONDS_PER_PHASE=20 WORKERS=2 CONCURRENCY=64
#   SERVERS="warmtls_http" (add nginx_http for nginx's http proxy with
#   upstream keepalive, same backend) BASE_PORT=24500
set -euo pipefail
. "$(dirname "$0")/lib.sh"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
RATES=${RATES:-"550 2200"}
SECONDS_PER_PHASE=${SECONDS_PER_PHASE:-20}
WORKERS=${WORKERS:-2}
CONCURRENCY=${CONCURRENCY:-64}
SERVERS=${SERVERS:-warmtls_http}
BASE_PORT=${BASE_PORT:-24500}
BIN="$ROOT/target/release"
OUT="$ROOT/bench/out/open-loop"
W=$(mktemp -d /tmp/warmtls-open-loop.XXXXXX)
BACKEND_PORT=$BASE_PORT
PORT=$((BASE_PORT + 1))
mkdir -p "$OUT" "$W/nginx-http/logs"
rm -f "$OUT"/*.json

cleanup() {
  for f in "$W"/*.pid; do [ -s "$f" ] && kill -TERM "$(cat "$f")" 2>/dev/null || true; done
}
trap cleanup EXIT

start_backend "$W" "$BACKEND_PORT"

# The certificate: warmtls makes its self-signed one on first start.
make_cert "$W" "$BIN"

cat >"$W/nginx-http.conf" <<CONF
worker_processes $WORKERS;
worker_rlimit_nofile 20000;
pid $W/nginx_http.pid;
error_log $W/nginx-http/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  upstream backend { server 127.0.0.1:$BACKEND_PORT; keepalive 64; }
  server {
    listen 127.0.0.1:$PORT ssl reuseport backlog=4096;
    ssl_certificate $W/certgen.cache.cert.pem;
    ssl_certificate_key $W/certgen.cache.key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ecdh_curve X25519:prime256v1;
    ssl_session_cache shared:SSL:64m;
    ssl_session_timeout 1d;
    ssl_session_tickets off;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For \$remote_addr;
    }
  }
}
CONF

for rate in $RATES; do
  devices=$((rate * SECONDS_PER_PHASE))
  for s in $SERVERS; do
    case "$s" in
      warmtls_http)
        rm -f "$W/w.cache"
        "$BIN/warmtls" serve --listen "127.0.0.1:$PORT" --backend "127.0.0.1:$BACKEND_PORT" \
          --backend-protocol http --cache "$W/w.cache" --cache-capacity $((devices * 2)) \
          --cert "$W/certgen.cache.cert.pem" --key "$W/certgen.cache.key.pem" \
          --workers "$WORKERS" --log warn >"$W/w.out" 2>"$W/w.err" &
        echo $! >"$W/server.pid" ;;
      nginx_http)
        nginx -c "$W/nginx-http.conf" -p "$W/nginx-http"
        for _ in $(seq 1 100); do [ -s "$W/nginx_http.pid" ] && break; sleep 0.05; done
        cp "$W/nginx_http.pid" "$W/server.pid" ;;
    esac
    wait_port "$PORT"
    echo "open-loop: $s at $rate conn/s, $devices devices" >&2
    "$BIN/warmtls-bench" fleet --target "127.0.0.1:$PORT" --server-name localhost \
      --ca "$W/certgen.cache.cert.pem" --devices "$devices" --tls mix --rate "$rate" \
      --concurrency "$CONCURRENCY" --rounds 1 --server-pidfile "$W/server.pid" \
      --json "$OUT/$s-$rate.json" >"$OUT/$s-$rate.txt"
    kill -TERM "$(cat "$W/server.pid")"
    for _ in $(seq 1 200); do [ -e "/proc/$(cat "$W/server.pid")" ] || break; sleep 0.05; done
    rm -f "$W/server.pid" "$W/nginx_http.pid"
  done
done

OUT="$OUT" python3 - <<'PY'
import glob, json, os
print("| server | rate asked | phase | conn/s | resumed % | p50 ms | p99 ms | max ms | server CPU µs / conn | failed |")
print("|---|---|---|---|---|---|---|---|---|---|")
def key(p):
    s, r = os.path.basename(p)[:-5].rsplit("-", 1)
    return (int(r), s)
for path in sorted(glob.glob(os.path.join(os.environ["OUT"], "*.json")), key=key):
    server, rate = os.path.basename(path)[:-5].rsplit("-", 1)
    r = json.load(open(path))
    for p in r["phases"]:
        lat = p["conn_time_ms"]
        cpu = p.get("server_cpu_us_per_conn")
        print(f"| {server} | {int(rate):,} | {p['name']} | {p['conn_per_s']:,.0f} | {p['resumed_pct']:.2f} | "
              f"{lat['p50']:.2f} | {lat['p99']:.2f} | {lat['max']:.2f} | {'–' if cpu is None else f'{cpu:,.0f}'} | {p['failed_total']} |")
PY
