#!/usr/bin/env bash
# Loupe across two lab nodes (bench/two-nodes.yaml): HTTP/1.1 keep-alive (wrk -t1 -c64) from a
# pod on the first node to nginx on the same node and on the other one, direct (a client that
# is not opted in) and through Loupe with --upstream-source pod (the client's own address; the
# replies steered back by the datapath on the server's veth or the node's uplink) and node.
# One agent per node. Each round measures every case one after the other; medians of the
# rounds, with the agent's CPU time per request (utime+stime around the run). No timing is
# asserted. Usage: bench/two_nodes.sh [seconds-per-run] [rounds]   (defaults 5 s, 3 rounds)
set -euo pipefail
cd "$(dirname "$0")/.."
D=${1:-5}; ROUNDS=${2:-3}
swift build -c release >/dev/null
LOUPE=.build/release/loupe
TLS=/tmp/loupe-bench-tls   # bench/nginx.conf's HTTPS server wants a certificate
A_PID= B_PID=
LOGDIR=$(mktemp -d /tmp/loupe-bench-two-nodes.XXXX)
stop_pid() {
  [[ -n "$1" ]] || return 0
  kill -TERM "$1" 2>/dev/null || return 0
  for _ in $(seq 20); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
cleanup() { stop_pid "$A_PID"; stop_pid "$B_PID"; "$LOUPE" lab down >/dev/null 2>&1 || true; rm -rf "$TLS"; }
trap cleanup EXIT
"$LOUPE" lab down >/dev/null 2>&1 || true
rm -rf "$TLS"; mkdir -p "$TLS"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=web.backend.test \
  -keyout "$TLS/server.key" -out "$TLS/server.pem" 2>/dev/null
"$LOUPE" lab up -f bench/two-nodes.yaml >"$LOGDIR/lab.log"
ip_of() { awk -v n="$1" '$0 ~ "name: "n"$" {f=1} f && /podIP:/ {print $2; exit}' /run/loupe/lab/inventory.yaml; }
NGINX_A=$(ip_of nginx-a); NGINX_B=$(ip_of nginx-b)

agents() { # agents pod|node: one agent per node
  stop_pid "$A_PID"; stop_pid "$B_PID"
  "$LOUPE" agent --lab --upstream-source "$1" >"$LOGDIR/agent-a-$1.log" 2>&1 & A_PID=$!
  "$LOUPE" agent --lab --lab-node loupe-node-b --upstream-source "$1" >"$LOGDIR/agent-b-$1.log" 2>&1 & B_PID=$!
  for log in "$LOGDIR/agent-a-$1.log" "$LOGDIR/agent-b-$1.log"; do
    for _ in $(seq 100); do grep -q "inventory applied" "$log" && break; sleep 0.1; done
  done
  sleep 0.5
}
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
wrk_rps() { # wrk_rps NAMESPACE URL → "RPS USEC_PER_REQ" (agent A's CPU)
  local before after out rps
  "$LOUPE" lab exec "$1/client" -- curl -sf -o /dev/null "$2" || { echo "0 0"; return; }
  before=$(cpu "$A_PID")
  out=$("$LOUPE" lab exec "$1/client" -- wrk -t1 -c64 -d"${D}s" "$2")
  after=$(cpu "$A_PID")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  if grep -q "Non-2xx\|Socket errors" <<<"$out"; then echo "wrk reported errors: $out" >&2; fi
  awk -v r="$rps" -v c=$((after - before)) -v d="$D" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.0f %.1f\n", r, c / hz * 1e6 / (r * d)}'
}
declare -A RPS CPU
for round in $(seq "$ROUNDS"); do
  for mode in pod node; do
    agents "$mode"
    for where in same:$NGINX_A other:$NGINX_B; do
      name=${where%%:*}; ip=${where#*:}
      read -r r c < <(wrk_rps direct "http://$ip/")
      RPS[direct-$name]+="$r "
      read -r r c < <(wrk_rps proxied "http://$ip/")
      RPS[$mode-$name]+="$r "; CPU[$mode-$name]+="$c "
    done
  done
  echo "round $round done" >&2
done
median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
printf '%-34s %10s %10s %14s\n' "HTTP/1.1 wrk -c64 (req/s)" "same node" "other node" "other/same"
for row in direct pod node; do
  s=$(median "${RPS[$row-same]}"); o=$(median "${RPS[$row-other]}")
  label=$row; [[ $row == direct ]] || label="Loupe, --upstream-source $row"
  printf '%-34s %10s %10s %14s\n' "$label" "$s" "$o" "$(awk -v a="$o" -v b="$s" 'BEGIN {printf "%.2f", a / b}')"
done
for row in pod node; do
  printf '%-34s %10s %10s\n' "  ratio to direct ($row)" \
    "$(awk -v a="$(median "${RPS[$row-same]}")" -v b="$(median "${RPS[direct-same]}")" 'BEGIN {printf "%.2f", a / b}')" \
    "$(awk -v a="$(median "${RPS[$row-other]}")" -v b="$(median "${RPS[direct-other]}")" 'BEGIN {printf "%.2f", a / b}')"
  printf '%-34s %10s %10s\n' "  agent CPU µs/request ($row)" "$(median "${CPU[$row-same]}")" "$(median "${CPU[$row-other]}")"
done
