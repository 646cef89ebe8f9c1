#!/usr/bin/env bash
# Run a chosen set of tlsfuzzer scripts (https://github.com/tlsfuzzer/tlsfuzzer)
# against a real `warmtls serve`, and record pass/fail per script. Not part of
# CI: tlsfuzzer is not vendored and is not on PyPI. Get it once, outside the
# repository:
#
#   git clone https://github.com/tlsfuzzer/tlsfuzzer /tmp/tlsf/tlsfuzzer
#   python3 -m venv /tmp/tlsf/venv
#   /tmp/tlsf/venv/bin/pip install "tlslite-ng==0.9.0b2" ecdsa   # the version its requirements.txt pins
#
# Usage: TLSFUZZER=/tmp/tlsf/tlsfuzzer PYTHON=/tmp/tlsf/venv/bin/python bench/tlsfuzzer.sh [SCRIPT...]
#   (script names without .py; default: the set below). Output: a summary in
#   $OUT/summary.txt and each script's log in $OUT/<script>.log
#   (OUT defaults to bench/out/tlsfuzzer). Knobs: SKIP_BUILD=1, TIMEOUT=300 (per script),
#   WARMTLS=path/to/warmtls (another build to compare; implies SKIP_BUILD).
#
# The server gets an RSA-2048 and an ECDSA P-256 certificate (tlsfuzzer's
# scripts mostly sign with RSA; warmtls picks per client), its default groups
# (X25519, P-256) and suites (rustls: AES-GCM and ChaCha20 only, ECDHE only,
# no CBC, no RSA key exchange, no TLS 1.0/1.1). Scripts that probe features a
# strict modern server does not have (CBC, RSA key exchange, FFDHE, SSLv3) are
# given the arguments that select what warmtls does support, or left out; see
# the per-script arguments below.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TLSFUZZER=${TLSFUZZER:?set TLSFUZZER to a tlsfuzzer checkout}
PYTHON=${PYTHON:-python3}
OUT=${OUT:-$ROOT/bench/out/tlsfuzzer}
TIMEOUT=${TIMEOUT:-300}
mkdir -p "$OUT"
W=$(mktemp -d /tmp/warmtls-tlsfuzzer.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT

WARMTLS=${WARMTLS:-}
if [ -z "$WARMTLS" ] && [ "${SKIP_BUILD:-0}" != 1 ]; then
  (cd "$ROOT" && cargo build --release --locked --bin warmtls)
fi

# Certificates: RSA-2048 and ECDSA P-256 for "localhost".
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$W/rsa.key" -out "$W/rsa.pem" \
  -days 30 -subj /CN=localhost -addext subjectAltName=DNS:localhost 2>/dev/null
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$W/ec.key" \
  -out "$W/ec.pem" -days 30 -subj /CN=localhost -addext subjectAltName=DNS:localhost 2>/dev/null
chmod 600 "$W"/*.key

# A plaintext backend: reads a request up to a blank line, answers, closes.
cat > "$W/backend.py" <<'EOF'
import socket, sys, threading
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", 0)); l.listen(512)
print(l.getsockname()[1], flush=True)
def serve(s):
    d = b""
    try:
        while b"\r\n\r\n" not in d:
            x = s.recv(4096)
            if not x:
                break
            d += x
        s.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    except OSError:
        pass
    s.close()
while True:
    s, _ = l.accept()
    threading.Thread(target=serve, args=(s,), daemon=True).start()
EOF
python3 "$W/backend.py" > "$W/backend.port" &
PIDS+=($!)
for _ in $(seq 100); do [ -s "$W/backend.port" ] && break; sleep 0.05; done
BACKEND_PORT=$(cat "$W/backend.port")

cat > "$W/warmtls.toml" <<EOF
listen = "127.0.0.1:0"
backend = "127.0.0.1:$BACKEND_PORT"
handshake_timeout = "5s"
stats_file = "$W/stats.json"
stats_interval = "1s"
workers = 1
[cache]
path = "$W/c.cache"
capacity = 20000
[[certs]]
cert = "$W/ec.pem"
key = "$W/ec.key"
[[certs]]
cert = "$W/rsa.pem"
key = "$W/rsa.key"
EOF
RUST_LOG=warn "${WARMTLS:-$ROOT/target/release/warmtls}" serve --config "$W/warmtls.toml" > "$W/serve.out" 2> "$OUT/serve.log" &
SERVER=$!
PIDS+=($SERVER)
for _ in $(seq 200); do grep -q "listening on" "$W/serve.out" 2>/dev/null && break; sleep 0.05; done
PORT=$(sed -n 's/.*listening on 127.0.0.1:\([0-9]*\).*/\1/p' "$W/serve.out")
[ -n "$PORT" ] || { echo "tlsfuzzer.sh: warmtls did not start; see $OUT/serve.log" >&2; exit 1; }

# Arguments per script. TLS 1.2 scripts default to TLS_RSA_WITH_AES_128_CBC_SHA,
# which a modern server refuses (no RSA key exchange, no CBC): those that take
# -C are given an ECDHE AEAD suite instead.
args_for() { # SCRIPT
  local app="$TLSFUZZER/tlsfuzzer/_apps/$(echo "$1" | tr - _).py"
  [ -f "$app" ] || app="$TLSFUZZER/scripts/$1.py"
  case "$1" in
    test-tls13-*) ;;
    *) if grep -q '" -C ciph' "$app"; then echo "-C 0xc02f"; fi ;;  # TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
  esac
}
DEFAULT_SCRIPTS="
test-tls13-conversation
test-tls13-session-resumption
test-tls13-psk_dhe_ke
test-tls13-psk_ke
test-tls13-0rtt-garbage
test-tls13-count-tickets
test-tls13-ccs
test-tls13-multiple-ccs-messages
test-tls13-empty-alert
test-tls13-unencrypted-alert
test-tls13-zero-content-type
test-tls13-zero-length-data
test-tls13-finished
test-tls13-finished-plaintext
test-tls13-lengths
test-tls13-legacy-version
test-tls13-nociphers
test-tls13-invalid-ciphers
test-tls13-keyshare-omitted
test-tls13-hrr
test-tls13-large-number-of-extensions
test-tls13-shuffled-extentions
test-tls13-version-negotiation
test-tls13-record-padding
test-tls13-record-layer-limits
test-tls13-keyupdate
test-tls13-connection-abort
test-tls13-ecdhe-curves
test-tls13-unrecognised-groups
test-tls13-signature-algorithms
test-tls13-ecdsa-support
test-tls13-symetric-ciphers
test-tls13-serverhello-random
test-tls13-non-support
test-record-size-limit
test-invalid-client-hello
test-invalid-client-hello-w-record-overflow
test-invalid-cipher-suites
test-invalid-compression-methods
test-invalid-content-type
test-invalid-session-id
test-invalid-version
test-invalid-server-name-extension
test-record-layer-fragmentation
test-conversation
"
SCRIPTS=${*:-$DEFAULT_SCRIPTS}

SUMMARY="$OUT/summary.txt"
{
  echo "# tlsfuzzer $(git -C "$TLSFUZZER" rev-parse --short HEAD 2>/dev/null || echo '?') against warmtls $(git -C "$ROOT" rev-parse --short HEAD), $(date -u +%FT%TZ)"
  echo "# script | exit | seconds | counts"
} > "$SUMMARY"
for s in $SCRIPTS; do
  start=$(date +%s)
  set +e
  # shellcheck disable=SC2046  # args_for prints a word list
  (cd "$TLSFUZZER" && PYTHONPATH=. timeout "$TIMEOUT" "$PYTHON" "scripts/$s.py" \
    -h 127.0.0.1 -p "$PORT" $(args_for "$s")) > "$OUT/$s.log" 2>&1
  rc=$?
  set -e
  counts=$(grep -E '^(PASS|FAIL|SKIP|XFAIL|XPASS):' "$OUT/$s.log" | tr '\n' ' ')
  echo "$s | $rc | $(( $(date +%s) - start )) | ${counts:-no summary (see $s.log)}" | tee -a "$SUMMARY"
  kill -0 "$SERVER" 2>/dev/null || { echo "warmtls died during $s" | tee -a "$SUMMARY"; exit 1; }
done
cp "$W/stats.json" "$OUT/stats.json" 2>/dev/null || true
awk -F' [|] ' '!/^#/ { split($4, a, " "); for (i = 1; i < length(a); i += 2) t[a[i]] += a[i+1] }
  END { printf "# total:"; for (k in t) printf " %s %d", k, t[k]; print "" }' "$SUMMARY" | tee -a "$SUMMARY"
