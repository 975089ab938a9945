#!/usr/bin/env bash
# Instructions per request of the gateway under valgrind callgrind, so old and new binaries
# compare exactly whatever else the machine does, on two paths:
#   worker:   caller -> gateway -> polling worker (W1's path)
#   external: caller -> gateway -> plain-HTTP handler on loopback (S1's path)
# Only the gateway runs under valgrind; the caller, the worker and the handler are small
# Python programs over keep-alive connections (mTLS HTTP/1.1 to the gateway).
# Usage: bench/scripts/instructions-per-request.sh GATEWAY_BIN [GATEWAY_BIN ...] [-n N]
#        [--store POSTGRES_ADMIN_URL]   (each run on a fresh database of that server: H1)
# --nginx also measures Debian's nginx (one worker, mTLS front, keep-alive upstream) on the same
# requests to the same handler, with its access log off and buffered (S1's peer).
# --tracing RATIO turns tracing on ([tracing] sampling_ratio = RATIO), exporting to a live OTLP/HTTP
# sink on loopback (a small Python server that answers 200 to every POST); it prints the
# export requests and bytes it took.
# PATHS="external" limits the run to one path.
# CALLER=h2 makes the caller curl over one h2 connection (ALPN h2) instead of HTTP/1.1 (S7's
# peer); nginx is then measured with http2 on its front too.
# KEEP=DIR keeps the callgrind profiles there; bench/scripts/callgrind-per-request.py turns a
# pair of them into a per-request profile.
# IDLE_BASELINE=1 subtracts a gateway left idle as long as the measured run took, instead of
# one started and stopped: per-second background work is then not counted per request.
# SYSCALLS=1 counts system calls per request under strace instead (the kernel's share, which
# callgrind does not see); KEEP then keeps strace's per-call tables.
# Needs: valgrind (or strace), python3, curl (and psql with --store). A few minutes per binary.
set -euo pipefail
N=1000; BINS=(); STORE=""; NGINX=""; TRACING=""
while [ $# -gt 0 ]; do case "$1" in -n) N=$2; shift 2;; --store) STORE=$2; shift 2;; --nginx) NGINX=1; shift;; --tracing) TRACING=$2; shift 2;; *) BINS+=("$(realpath "$1")"); shift;; esac; done
[ ${#BINS[@]} -gt 0 ] || { echo "usage: $0 GATEWAY_BIN [GATEWAY_BIN ...] [-n N]" >&2; exit 64; }
W=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$W"' EXIT
free() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
B0=${BINS[0]}
UNIT=instructions; [ -z "${SYSCALLS:-}" ] || UNIT="system calls"
"$B0" certs init --dir "$W/pki" >/dev/null
for id in "--namespace caller" "--namespace handler" "--admin ops"; do "$B0" certs issue --dir "$W/pki" $id >/dev/null; done
cat > "$W/worker.py" <<'PY'
import ssl, sys, http.client
port, d = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=d + "/ca.pem"); ctx.check_hostname = False
ctx.load_cert_chain(d + "/ns-handler.pem", d + "/ns-handler-key.pem")
c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx)
c.request("POST", "/api/v1/namespaces/handler/task-queues/q/nexus-tasks/poll", headers={"Request-Timeout": "30s"})
r = c.getresponse()
while True:
    body = r.read()
    if r.status == 200:
        token = r.getheader("Nexus-Task-Token")
        c.request("POST", f"/api/v1/nexus-tasks/{token}/response?next-task-queue=q", body=b'{"ok":true}',
                  headers={"Nexus-Task-Status": "200", "Content-Type": "application/json", "Request-Timeout": "30s"})
    else:
        c.request("POST", "/api/v1/namespaces/handler/task-queues/q/nexus-tasks/poll", headers={"Request-Timeout": "30s"})
    r = c.getresponse()
PY
cat > "$W/client.py" <<'PY'
import ssl, sys, http.client
port, n, d = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
ctx = ssl.create_default_context(cafile=d + "/ca.pem"); ctx.check_hostname = False
ctx.load_cert_chain(d + "/ns-caller.pem", d + "/ns-caller-key.pem")
c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx); ok = 0
n += 20  # every run opens the connection and warms up alike: the baseline holds the handshake
for _ in range(n):
    c.request("POST", "/nexus/endpoints/" + sys.argv[4] + "/services/s/o", body=b'{"hello":"nexus"}', headers={"Content-Type": "application/json"})
    r = c.getresponse(); r.read(); ok += r.status == 200
sys.exit(0 if ok == n else 1)
PY
# The h2 caller: curl sends N + 20 requests on one connection and prints each status.
call() { # port n pki endpoint
  if [ "${CALLER:-}" != h2 ]; then python3 "$W/client.py" "$@"; return; fi
  local i n=$(($2 + 20)) ok
  for i in $(seq 1 $n); do echo "url = \"https://127.0.0.1:$1/nexus/endpoints/$4/services/s/o\""; done > "$W/urls"
  ok=$(curl -s --http2 --cacert "$3/ca.pem" --cert "$3/ns-caller.pem" --key "$3/ns-caller-key.pem" \
    -H 'Content-Type: application/json' -d '{"hello":"nexus"}' -w '%{http_code}\n' -K "$W/urls" | grep -c '200$' || true)
  [ "$ok" = "$n" ] || { echo "h2 caller: $ok of $n answered 200" >&2; return 1; }
}
cat > "$W/up.py" <<'PY'
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0)); out = b'{"ok":true}'
        self.send_response(200); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out))); self.end_headers(); self.wfile.write(out)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
UP=$(free); python3 "$W/up.py" "$UP" &
cat > "$W/gw.toml" <<'T'
[inbound]
per_caller_rate = 0
per_endpoint_rate = 0
per_caller_endpoint_rate = 0
T
if [ -n "$TRACING" ]; then
  cat > "$W/otlp.py" <<'PY'
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        n = len(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        with open(sys.argv[2], "a") as log: log.write(f"{self.path} {self.headers.get('Content-Type')} {n}\n")
        self.send_response(200); self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
  OTLP=$(free); python3 "$W/otlp.py" "$OTLP" "$W/otlp.log" &
  printf '[tracing]\notlp_endpoint = "http://127.0.0.1:%s"\nsampling_ratio = %s\n' "$OTLP" "$TRACING" >> "$W/gw.toml"
fi
# Less the clock calibration of the rate limiters' clock (quanta): it spins on wall time, so
# its count follows the machine's load, not the code.
total() {
  if [ -n "${SYSCALLS:-}" ]; then awk '$NF == "total" {print $4}' "$1"; return; fi
  local all spin
  all=$(grep -h '^totals:' "$1" | awk '{print $2}')
  spin=$(callgrind_annotate --inclusive=yes --threshold=100 "$1" 2>/dev/null \
    | grep -m1 'quanta::Calibration::calibrate' | awk '{gsub(",", "", $1); print $1}')
  echo $((all - ${spin:-0}))
}
# Runs a command under the measuring tool, its table in $1.
measure() {
  local out=$1; shift
  if [ -n "${SYSCALLS:-}" ]; then exec strace -f -qq -c -o "$out" "$@"; fi
  exec valgrind --tool=callgrind --callgrind-out-file="$out" "$@"
}
stop() { # pid from measure; under strace, the measured process is its child
  local target; target=$(pgrep -P "$1" | head -1); target=${target:-$1}
  for _ in $(seq 1 30); do kill -TERM "$target" 2>/dev/null || break; sleep 2; done; wait "$1" 2>/dev/null || true; }
run() { # bin n path [idle seconds] -> instructions; the N run's duration goes to $W/took
  local bin=$1 n=$2 path=$3 idle=${4:-0} gwp ops config="$W/gw.toml"; gwp=$(free); ops=$(free); rm -rf "$W/data"
  if [ -n "$STORE" ]; then # a fresh database per run, on the shared store's code path
    local db="nexus_ipr_$$_$n"; psql "$STORE" -qc "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null
    config="$W/gw-store.toml"; { cat "$W/gw.toml"; printf '[store]\nurl = "%s/%s"\n' "${STORE%/*}" "$db"; } > "$config"
  fi
  TOKIO_WORKER_THREADS=1 measure "$W/cg.$n" "$bin" serve --config "$config" \
    --data-dir "$W/data" --listen "127.0.0.1:$gwp" --ops-listen "127.0.0.1:$ops" --shutdown-grace 1 \
    --tls-ca "$W/pki/ca.pem" --tls-cert "$W/pki/server.pem" --tls-key "$W/pki/server-key.pem" >"$W/gw.log" 2>&1 &
  local p=$!
  for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$ops/readyz" >/dev/null && break; sleep 0.2; done
  local admin=(--gateway "https://127.0.0.1:$gwp" --ca "$W/pki/ca.pem" --cert "$W/pki/admin-ops.pem" --key "$W/pki/admin-ops-key.pem")
  "$bin" endpoint create "${admin[@]}" --name worker --target-namespace handler --target-task-queue q --allow-caller caller >/dev/null
  "$bin" endpoint create "${admin[@]}" --name external --target-url "http://127.0.0.1:$UP" --allow-caller caller >/dev/null
  python3 "$W/worker.py" "$gwp" "$W/pki" & local wp=$!
  local t0; t0=$(date +%s.%N)
  call "$gwp" "$n" "$W/pki" "$path"
  [ "$n" = 0 ] || python3 -c "import sys;print(float(sys.argv[2])-float(sys.argv[1]))" "$t0" "$(date +%s.%N)" > "$W/took"
  # An idle baseline as long as the measured run: per-second work (timers, the store's
  # background) is then left out of "per request".
  [ "$idle" = 0 ] || sleep "$idle"
  kill "$wp" 2>/dev/null || true; stop $p
  [ -z "$STORE" ] || psql "$STORE" -qc "DROP DATABASE IF EXISTS nexus_ipr_$$_$n WITH (FORCE)" >/dev/null
  keep "$W/cg.$n" "$(basename "$bin").$path.$n"
  total "$W/cg.$n"
}
keep() { [ -z "${KEEP:-}" ] || { mkdir -p "$KEEP"; cp "$1" "$KEEP/cg.$2"; }; }
for path in ${PATHS:-external worker}; do
  for bin in "${BINS[@]}"; do
    measured=$(run "$bin" "$N" "$path")
    if [ -n "${IDLE_BASELINE:-}" ]; then
      base=$(run "$bin" 0 "$path" "$(cat "$W/took")"); how="idle baseline of $(cut -c1-5 "$W/took") s"
    else
      base=$(run "$bin" 0 "$path"); how="baseline: start and stop"
    fi
    echo "$path path, $UNIT per request: $(( (measured - base) / N ))  ($bin; $how)"
    [ -z "$TRACING" ] || { echo "  OTLP sink took $(wc -l < "$W/otlp.log") export requests ($(awk '{b+=$3} END {print b+0}' "$W/otlp.log") bytes)"; : > "$W/otlp.log"; }
  done
done
[ -n "$NGINX" ] || exit 0
ng() { # n log|off -> instructions
  local ngp al='access_log off;' H2=""; ngp=$(free); [ "${CALLER:-}" != h2 ] || H2=" http2"
  [ "$2" = log ] && al="access_log $W/access.log combined buffer=64k flush=100ms;"
  cat > "$W/nginx.conf" <<C
daemon off; master_process off; worker_processes 1; pid $W/nginx.pid; error_log $W/error.log warn;
events { worker_connections 1024; }
http { $al client_body_temp_path $W/b; proxy_temp_path $W/p; fastcgi_temp_path $W/f; uwsgi_temp_path $W/u; scgi_temp_path $W/s;
 upstream b { server 127.0.0.1:$UP; keepalive 64; }
 server { listen $ngp ssl$H2; ssl_protocols TLSv1.3; ssl_certificate $W/pki/server.pem; ssl_certificate_key $W/pki/server-key.pem;
  ssl_client_certificate $W/pki/ca.pem; ssl_verify_client on; keepalive_requests 1000000;
  location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
C
  measure "$W/cg.ng.$2.$1" "$(command -v nginx || echo /usr/sbin/nginx)" \
    -c "$W/nginx.conf" -e "$W/error.log" >/dev/null 2>&1 &
  local p=$!
  for _ in $(seq 1 100); do (echo >"/dev/tcp/127.0.0.1/$ngp") 2>/dev/null && break; sleep 0.2; done
  call "$ngp" "$1" "$W/pki" external; stop $p
  keep "$W/cg.ng.$2.$1" "nginx.$2.$1"
  total "$W/cg.ng.$2.$1"
}
for al in off log; do
  echo "nginx (access log $al), $UNIT per request: $(( ($(ng "$N" $al) - $(ng 0 $al)) / N ))"
done
