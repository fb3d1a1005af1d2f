#!/usr/bin/env bash
# The mesh: three nodes in a line A - B - C on loopback (release build).
# 1. The same load with the subscriber on A (one node), on B (one hop) and on C (two hops):
#    QoS 0 and QoS 1 fan-in (4 publishers on A -> 1 subscriber), and latency at 1 000 msg/s.
# 2. The outbox: C's persistent session subscribes, C stops, BACKLOG QoS 1 messages are published on
#    A (kept in A's outbox for C), C starts again; the time until A's backlog for C is empty gives the
#    drain rate, and C's session then holds every message (checked by draining it).
# History and the publish-rate detector are off, so that the figures show the mesh.
# Usage: scripts/bench-mesh.sh [seconds] [backlog]
# Every step is bounded in time; the nodes are stopped on exit. Traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
BACKLOG=${2:-1000000}
BASE=${M2M_PORT:-19100}

# shellcheck source=node-env.sh
. scripts/node-env.sh
declare -A PIDS
cleanup_mesh() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup_mesh EXIT

mqtt() { echo "127.0.0.1:$((BASE + $1 * 10))"; }
api() { echo "http://127.0.0.1:$((BASE + $1 * 10 + 1))"; }
printf '[detectors.publish_rate]\nenabled = false\n\n[history]\nenabled = false\n\n[mqtt]\nmax_queued = %s\n' \
  "$((BACKLOG + 1000))" > "$WORK/m2m.toml"

# start NAME INDEX [CONNECT-INDEX...]
start() {
  local name=$1 i=$2
  shift 2
  local args=(node --config "$WORK/m2m.toml" --listen "$(mqtt "$i")" --data-dir "$WORK/$name" --node-id "$name"
    --mesh-listen "tcp/127.0.0.1:$((BASE + i * 10 + 2))" --log-level warn)
  for c in "$@"; do args+=(--mesh-connect "tcp/127.0.0.1:$((BASE + c * 10 + 2))"); done
  M2M_HTTP_LISTEN="127.0.0.1:$((BASE + i * 10 + 1))" "$BIN" "${args[@]}" &
  PIDS[$name]=$!
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$((BASE + i * 10 + 1))") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "node $name did not start" >&2
  exit 1
}
stop() { kill "${PIDS[$1]}"; wait "${PIDS[$1]}" 2>/dev/null || true; unset "PIDS[$1]"; }
# backlog NODE-INDEX DESTINATION: the destination's backlog in that node's outbox
backlog() {
  curl -sf "$(api "$1")/api/v1/mesh" | python3 -c "import json,sys; s=json.load(sys.stdin); print(next((n['backlog'] for n in s['nodes'] if n['id']=='$2'), 0))"
}
filters() {
  curl -sf "$(api "$1")/api/v1/mesh" | python3 -c "import json,sys; s=json.load(sys.stdin); print(','.join(next((n['filters'] for n in s['nodes'] if n['id']=='$2'), [])))"
}

echo "m2m: $("$BIN" --version); machine: $(nproc) cores, $(uname -srm)"
start a 0
start b 1 0
start c 2 1
sleep 2

for target in "0 one node" "1 one hop" "2 two hops"; do
  set -- $target
  idx=$1
  shift
  label="$*"
  for qos in 0 1; do
    timeout $((SECS + 60)) "$BIN" bench fan-in --addr "$(mqtt 0)" --sub-addr "$(mqtt "$idx")" --publishers 4 \
      --qos "$qos" --payload 64 --duration "$SECS" --label "$label"
  done
  timeout $((SECS + 60)) "$BIN" bench latency --addr "$(mqtt 0)" --sub-addr "$(mqtt "$idx")" --rate 1000 \
    --qos 0 --payload 64 --duration "$SECS" --label "$label"
done

# The outbox: a persistent session on C, C down, BACKLOG messages published on A, C back.
timeout 60 "$BIN" bench queue --addr "$(mqtt 2)" --sessions 1 --messages 1 --label "C's session" >/dev/null
for _ in $(seq 1 100); do
  [ "$(filters 0 c)" = "bench/queue" ] && break
  sleep 0.1
done
[ "$(filters 0 c)" = "bench/queue" ] || { echo "A never heard C's filter" >&2; exit 1; }
stop c
sleep 2
timeout 900 "$BIN" bench queue --addr "$(mqtt 0)" --sessions 1 --messages "$BACKLOG" --publish-only \
  --label "published on A while C is down"
echo "A's outbox for C: $(backlog 0 c) messages"
started=$(date +%s.%N)
start c 2 1
for _ in $(seq 1 6000); do
  [ "$(backlog 0 c)" = 0 ] && break
  sleep 0.1
done
ended=$(date +%s.%N)
left=$(backlog 0 c)
[ "$left" = 0 ] || { echo "the backlog did not drain within 600 s: $left left" >&2; exit 1; }
python3 -c "d=$ended-$started; print(f'backlog of $BACKLOG drained in {d:.1f} s: {$BACKLOG/d:.0f} msg/s (C started, caught up and acknowledged)')"
# C's session holds the one message before the outage and every one since.
timeout 900 "$BIN" bench drain --addr "$(mqtt 2)" --sessions 1 --messages "$((BACKLOG + 1))" --label "C's session"
