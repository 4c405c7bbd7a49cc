#!/usr/bin/env bash
# Cilium's Star Wars demo in the netns lab: lab up, agent up, `loupe ui` up; without policy every ship
# lands; with Cilium's rule1 the tiefighter lands, the xwing is denied, and the tiefighter's
# PUT /v1/exhaust-port gets 403; flows printed; everything removed again.
set -euo pipefail
cd "$(dirname "$0")/.."
LOUPE=${LOUPE:-.build/debug/loupe}
LOG=$(mktemp /tmp/loupe-demo-agent.XXXX.log)
AGENT_PID=
UI_PID=
UI_LOG=$(mktemp /tmp/loupe-demo-ui.XXXX.log)
cleanup() {
  for pid in "$UI_PID" "$AGENT_PID"; do
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
    fi
  done
  "$LOUPE" lab down >/dev/null
}
trap cleanup EXIT
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
ship() { # ship METHOD PATH: call the Death Star from a pod, print the answer or the error
  local pod=$1 method=$2 path=$3 out
  out=$("$LOUPE" lab exec "default/$pod" -- curl -s -m 3 -X "$method" -w ' [%{http_code}]' "http://$DS$path" 2>&1) || out="$out (curl exit $?: connection denied)"
  out=${out//$'\r'/}; out=${out//$'\n'/}
  printf '%-11s %-4s %-22s -> %s\n' "$pod" "$method" "$path" "$out"
}

"$LOUPE" lab down >/dev/null          # leftovers of a crashed run
say "lab up (examples/starwars/inventory.yaml)"
"$LOUPE" lab up -f examples/starwars/inventory.yaml
say "agent up (log: $LOG)"
"$LOUPE" agent --lab >"$LOG" 2>&1 &
AGENT_PID=$!
for _ in $(seq 100); do "$LOUPE" status >/dev/null 2>&1 && grep -q "inventory applied" "$LOG" && break; sleep 0.1; done
DS=$(awk '/name: deathstar/{f=1} f&&/podIP:/{print $2; exit}' /run/loupe/lab/inventory.yaml)
for _ in $(seq 100); do "$LOUPE" lab exec default/xwing -- curl -s -m 1 -o /dev/null "http://$DS/v1/healthz" && break; sleep 0.2; done

say "loupe ui (the service map and flow table; log: $UI_LOG)"
"$LOUPE" ui --listen "${LOUPE_UI_LISTEN:-127.0.0.1:12000}" >"$UI_LOG" 2>&1 &
UI_PID=$!
for _ in $(seq 100); do grep -q "^loupe ui: http" "$UI_LOG" && break; sleep 0.1; done
UI_URL=$(awk '/^loupe ui: http/{print $3; exit}' "$UI_LOG")
echo "open ${UI_URL:-(loupe ui did not start: see $UI_LOG)}"

say "no policy yet: every ship lands (deathstar is $DS)"
ship tiefighter POST /v1/request-landing
ship xwing POST /v1/request-landing

say "loupe policy apply -f examples/starwars/rule1.yaml (Cilium's rule1, unchanged)"
"$LOUPE" policy apply -f examples/starwars/rule1.yaml
for _ in $(seq 50); do grep -q "policies applied: rule1" "$LOG" && break; sleep 0.1; done
sleep 0.3
ship tiefighter POST /v1/request-landing
ship xwing POST /v1/request-landing
ship tiefighter PUT /v1/exhaust-port

say "loupe observe --last 12"
"$LOUPE" observe --last 12
say "loupe observe --verdict DROPPED --last 1 -o json"
"$LOUPE" observe --verdict DROPPED --last 1 -o json
say "loupe status"
"$LOUPE" status

if [[ -t 0 && -n "${UI_URL:-}" ]]; then
  say "the lab, the agent and loupe ui stay up: open $UI_URL — press Enter to tear everything down"
  read -r _
fi
