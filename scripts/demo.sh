#!/usr/bin/env bash
# The Star Wars demo in the netns lab: lab up, agent up, ships call the Death Star,
# flows printed, everything removed again.
set -euo pipefail
cd "$(dirname "$0")/.."
LOUPE=${LOUPE:-.build/debug/loupe}
LOG=$(mktemp /tmp/loupe-demo-agent.XXXX.log)
AGENT_PID=
cleanup() {
  if [[ -n "$AGENT_PID" ]] && kill -0 "$AGENT_PID" 2>/dev/null; then
    kill -TERM "$AGENT_PID"; wait "$AGENT_PID" 2>/dev/null || true
  fi
  "$LOUPE" lab down >/dev/null
}
trap cleanup EXIT

"$LOUPE" lab down >/dev/null          # leftovers of a crashed run
echo "== lab up (examples/starwars/inventory.yaml)"
"$LOUPE" lab up -f examples/starwars/inventory.yaml
echo "== agent up (log: $LOG)"
"$LOUPE" agent --lab >"$LOG" 2>&1 &
AGENT_PID=$!
for _ in $(seq 100); do "$LOUPE" status >/dev/null 2>&1 && grep -q "inventory applied" "$LOG" && break; sleep 0.1; done
DS=$(awk '/name: deathstar/{f=1} f&&/podIP:/{print $2; exit}' /run/loupe/lab/inventory.yaml)
for _ in $(seq 100); do "$LOUPE" lab exec default/xwing -- curl -s -m 1 -o /dev/null "http://$DS/v1/healthz" && break; sleep 0.2; done
echo "== traffic (deathstar is $DS)"
set -x
"$LOUPE" lab exec default/tiefighter -- curl -s -XPOST "http://$DS/v1/request-landing"
"$LOUPE" lab exec default/xwing -- curl -s -XPOST "http://$DS/v1/request-landing"
"$LOUPE" lab exec default/xwing -- curl -s "http://$DS/v1/"
"$LOUPE" lab exec default/xwing -- curl -s -XPUT "http://$DS/v1/exhaust-port"
set +x
echo "== loupe observe --last 8"
"$LOUPE" observe --last 8
echo "== loupe observe --last 1 -o json"
"$LOUPE" observe --last 1 -o json
echo "== loupe status"
"$LOUPE" status
