#!/usr/bin/env bash
# Throughput of a node with 0, 1, 100 and 1 000 active rules, under the same QoS 0 load
# (`m2m bench fan-in`, 4 publishers -> 1 subscriber, 64-byte payloads), and what the rules engine did
# meanwhile: evaluations, and inputs it dropped because its queue was full (rules never slow the
# message path: they are fed through a bounded queue).
# Each rule matches every message of the load (FROM "bench/#") and evaluates a WHERE on the payload
# that is false, so no action runs: the cost measured is matching and evaluating.
# The history is switched off so that the figures show the rules alone.
# Usage: scripts/bench-rules.sh [seconds]
# Every step is bounded in time; the node is stopped on exit. Traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-10}
PORT=${M2M_PORT:-18839}
HTTP=${M2M_HTTP_PORT:-18840}

if ! command -v mosquitto_sub >/dev/null 2>&1; then
  echo "installing mosquitto-clients (Debian package)" >&2
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto-clients >/dev/null
fi

# shellcheck source=node-env.sh
. scripts/node-env.sh

sys() { timeout 10 mosquitto_sub -h 127.0.0.1 -p "$PORT" -t "\$SYS/broker/$1" -C 1 -W 5; }

start() {
  printf '[detectors.publish_rate]\nenabled = false\n\n[mqtt]\nsys_interval_secs = 1\n\n[history]\nenabled = false\n\n[http]\nlisten = "127.0.0.1:%s"\n' "$HTTP" > "$WORK/m2m.toml"
  rm -rf "$WORK/data"
  "$BIN" node --config "$WORK/m2m.toml" --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" --log-level warn &
  PID=$!
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$HTTP") 2>/dev/null && break
    sleep 0.1
  done
}
stop() { kill "$PID"; wait "$PID" 2>/dev/null || true; PID=; }

echo "m2m: $("$BIN" --version); machine: $(nproc) cores, $(uname -srm)"
for n in 0 1 100 1000; do
  start
  for i in $(seq 1 "$n"); do
    printf '{"id":"r%s","sql":"SELECT payload FROM \\"bench/#\\" WHERE payload.temp > %s","actions":[]}' "$i" "$((1000000 + i))" |
      curl -sf -o /dev/null -X POST -H 'Content-Type: application/json' --data-binary @- "http://127.0.0.1:$HTTP/api/v1/rules"
  done
  sleep 1.5
  [ "$n" = 0 ] || [ "$(sys rules/running)" = "$n" ] || { echo "expected $n rules running" >&2; exit 1; }
  timeout $((SECS + 60)) "$BIN" bench fan-in --addr "127.0.0.1:$PORT" --publishers 4 --qos 0 --payload 64 \
    --duration "$SECS" --label "$n rules"
  sleep 2
  if [ "$n" != 0 ]; then
    echo "  rules engine: $(sys rules/evaluations) evaluations, $(sys rules/dropped) inputs dropped (queue full)"
  fi
  stop
done
