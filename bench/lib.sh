# Shared by the bench scripts (sourced, not run): waiting for a port, the
# plaintext nginx backend every comparison runs against, and the self-signed
# certificate every server is given.

# wait_port PORT: until something accepts on 127.0.0.1:PORT (30 s).
wait_port() {
  for _ in $(seq 1 600); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "${0##*/}: nothing accepts on port $1" >&2
  return 1
}

# start_backend DIR PORT: nginx, one worker, answering "warm\n" (5 bytes) to
# every request on 127.0.0.1:PORT. It closes after answering an HTTP/1.0
# request that did not ask for keep-alive and keeps other connections alive
# (for the http-mode proxies' pools). Config DIR/backend.conf, pid
# DIR/backend.pid, prefix DIR/backend; returns once it accepts.
start_backend() {
  local dir=$1 port=$2
  mkdir -p "$dir/backend/logs"
  cat >"$dir/backend.conf" <<CONF
worker_processes 1;
pid $dir/backend.pid;
error_log $dir/backend/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
  server {
    listen 127.0.0.1:$port backlog=4096;
    location / { return 200 "warm\n"; }
  }
}
CONF
  nginx -c "$dir/backend.conf" -p "$dir/backend"
  wait_port "$port"
}

# make_cert DIR BIN_DIR: let warmtls generate its self-signed ECDSA P-256
# certificate: DIR/certgen.cache.cert.pem and DIR/certgen.cache.key.pem.
make_cert() {
  local dir=$1 bin=$2 pid
  "$bin/warmtls" serve --listen 127.0.0.1:0 --cache "$dir/certgen.cache" \
    --cache-capacity 1000 --log warn >"$dir/certgen.out" 2>&1 &
  pid=$!
  for _ in $(seq 1 200); do [ -s "$dir/certgen.out" ] && break; sleep 0.05; done
  kill -TERM "$pid"
  wait "$pid" || true
}
