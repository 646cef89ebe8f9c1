#!/usr/bin/env bash
# The two event loops side by side, in one run: the same endpoint, certificate,
# backend and clients, `--runtime io_uring` against `--runtime epoll`, drivers
# alternating between repetitions so the machine's drift hits both alike.
#
# Per driver and repetition:
#  1. syscalls: one worker, its thread traced by `strace -c -p` while one
#     sequential `openssl s_time -reuse -tls1_2` client runs for TIME seconds;
#     the worker's system calls per connection (s_time's count), by call. The
#     main thread's 50 ms sleep and the cache flusher are not counted: they do
#     not grow with connections.
#  2. load: two workers, `warmtls-bench fleet` with DEVICES devices (half TLS
#     1.2, half TLS 1.3), CONCURRENCY in flight: full-handshake phase, then one
#     resume round; conn/s, p99, server CPU µs per connection (the server's
#     utime+stime from /proc over the phase).
#
# The backend is an nginx answering 5 bytes and closing (as bench/compare.sh).
# Raw output in bench/out/drivers/; the tables go to stdout.
#
# Usage: bench/drivers.sh            (from the repository root)
# Knobs: DEVICES=20000 REPEATS=2 TIME=8 CONCURRENCY=32 BASE_PORT=24600 SKIP_BUILD=0
set -euo pipefail
. "$(dirname "$0")/lib.sh"

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DEVICES=${DEVICES:-20000}
REPEATS=${REPEATS:-2}
TIME=${TIME:-8}
CONCURRENCY=${CONCURRENCY:-32}
BASE_PORT=${BASE_PORT:-24600}
BIN="$ROOT/target/release"
OUT="$ROOT/bench/out/drivers"
BACKEND_PORT=$BASE_PORT
PORT=$((BASE_PORT + 1))

for tool in nginx strace openssl python3; do
  command -v "$tool" >/dev/null || { echo "drivers: needs $tool (Debian: apt-get install $tool)" >&2; exit 1; }
done
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release --bins
fi

W=$(mktemp -d /tmp/warmtls-drivers.XXXXXX)
cleanup() {
  [ -s "$W/backend.pid" ] && kill -TERM "$(cat "$W/backend.pid")" 2>/dev/null || true
  [ -s "$W/warmtls.pid" ] && kill -TERM "$(cat "$W/warmtls.pid")" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT

mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.strace "$OUT"/*.txt
start_backend "$W" "$BACKEND_PORT"

# serve DRIVER WORKERS: start the endpoint (pid in $W/warmtls.pid)
serve() {
  local driver=$1 workers=$2
  rm -f "$W/c.cache" "$W/stats.json"
  "$BIN/warmtls" serve --runtime "$driver" --workers "$workers" \
    --listen "127.0.0.1:$PORT" --backend "127.0.0.1:$BACKEND_PORT" \
    --cache "$W/c.cache" --cache-capacity 100000 --stats-file "$W/stats.json" \
    --stats-interval 1h --log warn >"$W/out.txt" 2>>"$W/err.txt" &
  echo $! >"$W/warmtls.pid"
  wait_port "$PORT"
}
stop() {
  local pid; pid=$(cat "$W/warmtls.pid")
  kill -TERM "$pid"
  wait "$pid" || true
  rm -f "$W/warmtls.pid"
}

for rep in $(seq 1 "$REPEATS"); do
  if [ $((rep % 2)) = 1 ]; then order=(io_uring epoll); else order=(epoll io_uring); fi
  for d in "${order[@]}"; do
    echo "drivers: rep $rep, $d: strace, sequential s_time -reuse for ${TIME}s" >&2
    # The certificate is made on the first start; s_time needs none to trust.
    serve "$d" 1
    pid=$(cat "$W/warmtls.pid")
    tid=$(grep -l '^warmtls-w0$' /proc/"$pid"/task/*/comm | cut -d/ -f5)
    strace -c -p "$tid" -o "$OUT/$d-rep$rep.strace" 2>/dev/null &
    spid=$!
    sleep 1
    openssl s_time -connect "127.0.0.1:$PORT" -reuse -tls1_2 -time "$TIME" -www / \
      >"$OUT/$d-rep$rep.s_time.txt" 2>&1 || true
    kill -INT "$spid"
    wait "$spid" || true
    stop
    cp "$W/stats.json" "$OUT/$d-rep$rep.stats.json"

    echo "drivers: rep $rep, $d: fleet of $DEVICES devices" >&2
    serve "$d" 2
    "$BIN/warmtls-bench" fleet --target "127.0.0.1:$PORT" --server-name localhost \
      --ca "$W/c.cache.cert.pem" --devices "$DEVICES" --tls mix --concurrency "$CONCURRENCY" \
      --rounds 1 --server-pidfile "$W/warmtls.pid" \
      --json "$OUT/$d-rep$rep.fleet.json" >"$OUT/$d-rep$rep.fleet.txt"
    stop
  done
done

OUT="$OUT" DEVICES="$DEVICES" REPEATS="$REPEATS" TIME="$TIME" CONCURRENCY="$CONCURRENCY" python3 - <<'PY'
import glob, json, os, re, statistics
out = os.environ["OUT"]
med = lambda v: statistics.median(v) if v else float("nan")

def strace_counts(path):
    calls = {}
    for line in open(path):
        m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$", line)
        if m and m.group(2) != "total":
            calls[m.group(2)] = int(m.group(1))
    return calls

rows = {}
for d in ("io_uring", "epoll"):
    per_call, totals, conns, fleet = {}, [], [], []
    for path in sorted(glob.glob(f"{out}/{d}-rep*.strace")):
        stats = json.load(open(path.replace(".strace", ".stats.json")))
        assert stats["runtime"] == d, path
        s_time = open(path.replace(".strace", ".s_time.txt"), errors="replace").read()
        n = int(re.search(r"(\d+) connections in \d+ real seconds", s_time).group(1))
        calls = strace_counts(path)
        totals.append(sum(calls.values()) / n)
        conns.append(n)
        for c, k in calls.items():
            per_call.setdefault(c, []).append(k / n)
    for path in sorted(glob.glob(f"{out}/{d}-rep*.fleet.json")):
        fleet.append({p["name"]: p for p in json.load(open(path))["phases"]})
    rows[d] = dict(
        syscalls=med(totals),
        calls=sorted(((med(v), c) for c, v in per_call.items()), reverse=True),
        seq_conns=med(conns),
        resumed_cps=med([f["round1"]["conn_per_s"] for f in fleet]),
        full_cps=med([f["prime"]["conn_per_s"] for f in fleet]),
        cpu_resumed=med([f["round1"]["server_cpu_us_per_conn"] for f in fleet]),
        cpu_full=med([f["prime"]["server_cpu_us_per_conn"] for f in fleet]),
        p99_resumed=med([f["round1"]["conn_time_ms"]["p99"] for f in fleet]),
        resumed_pct=med([f["round1"]["resumed_pct"] for f in fleet]),
        failed=sum(sum(p["failed_total"] for p in f.values()) for f in fleet),
    )

print(f"Medians of {os.environ['REPEATS']} alternating repetitions; client and server share the same 2 cores.\n")
print(f"| driver | syscalls / resumed conn (sequential, 1 worker) | resumed conn/s | server CPU µs / resumed conn | p99 ms resumed | full conn/s | server CPU µs / full conn | resumed % | failed |")
print("|---|---|---|---|---|---|---|---|---|")
for d, r in rows.items():
    print(f"| {d} | {r['syscalls']:.1f} | {r['resumed_cps']:,.0f} | {r['cpu_resumed']:.0f} | {r['p99_resumed']:.1f} | "
          f"{r['full_cps']:,.0f} | {r['cpu_full']:.0f} | {r['resumed_pct']:.2f} | {r['failed']} |")
u, e = rows["io_uring"], rows["epoll"]
print(f"\nepoll / io_uring: {e['syscalls'] / u['syscalls']:.2f}× the syscalls, "
      f"{e['cpu_resumed'] / u['cpu_resumed']:.2f}× the server CPU and "
      f"{e['resumed_cps'] / u['resumed_cps']:.2f}× the conn/s per resumed connection.\n")
for d, r in rows.items():
    top = ", ".join(f"{c} {v:.1f}" for v, c in r["calls"] if v >= 0.05)
    print(f"- {d}, syscalls per resumed connection ({r['seq_conns']:,.0f} sequential connections): {top}")
PY
