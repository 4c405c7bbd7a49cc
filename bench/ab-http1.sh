#!/usr/bin/env bash
# A/B of two Loupe builds on one number: HTTP/1.1 keep-alive req/s through the proxy (wrk -t1
# -c64 from the proxied client to nginx, agent with one event loop pinned to CPU 1, flows
# recorded), alternating A and B each round so drift on the machine hits both alike; medians.
# For a change measured on its own (e.g. `git worktree` a base commit, build it release, pass
# both binaries). No timing is asserted.
# Usage: bench/ab-http1.sh A_LOUPE B_LOUPE [seconds-per-run] [rounds]     (defaults 5 s, 5 rounds)
set -euo pipefail
cd "$(dirname "$0")/.."
A=$1 B=$2 D=${3:-5} ROUNDS=${4:-5}
LOG=$(mktemp /tmp/loupe-ab-agent.XXXX.log)
AGENT_PID=
stop_agent() {
  [[ -n "$AGENT_PID" ]] || return 0
  kill -TERM "$AGENT_PID" 2>/dev/null || true
  for _ in $(seq 30); do kill -0 "$AGENT_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$AGENT_PID" 2>/dev/null || true
  wait "$AGENT_PID" 2>/dev/null || true
  AGENT_PID=
}
trap 'stop_agent; "$A" lab down >/dev/null' EXIT
"$A" lab down >/dev/null
# bench/nginx.conf also serves TLS (run.sh's HTTPS runs): its certificate must exist.
TLS=/tmp/loupe-bench-tls
mkdir -p "$TLS"
[[ -s "$TLS/server.pem" ]] || openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=web.backend.test \
  -addext subjectAltName=DNS:web.backend.test -keyout "$TLS/server.key" -out "$TLS/server.pem" 2>/dev/null
"$A" lab up -f bench/inventory.yaml >/dev/null
NGINX=$(awk '/name: nginx/{f=1} f&&/podIP:/{print $2; exit}' /run/loupe/lab/inventory.yaml)
run() { # run BINARY: prints req/s
  local from; from=$(wc -l <"$LOG")
  taskset -c 1 "$1" agent --lab --threads 1 >>"$LOG" 2>&1 &
  AGENT_PID=$!
  for _ in $(seq 150); do
    "$1" status >/dev/null 2>&1 && tail -n +"$((from + 1))" "$LOG" | grep -q "inventory applied" && break; sleep 0.1
  done
  "$1" lab exec proxied/client -- taskset -c 0 wrk -t1 -c64 -d1s "http://$NGINX/warmup" >/dev/null
  "$1" lab exec proxied/client -- taskset -c 0 wrk -t1 -c64 -d"${D}s" "http://$NGINX/ab" | awk '/Requests\/sec/{printf "%.0f\n", $2}'
  stop_agent
}
RA=() RB=()
for r in $(seq "$ROUNDS"); do
  RA+=("$(run "$A")"); RB+=("$(run "$B")")
  echo "round $r: A ${RA[-1]} B ${RB[-1]}" >&2
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
MA=$(median "${RA[@]}") MB=$(median "${RB[@]}")
echo "HTTP/1.1 req/s median of $ROUNDS: A $MA  B $MB  B/A $(awk -v a="$MA" -v b="$MB" 'BEGIN{printf "%.3f", b/a}')"
