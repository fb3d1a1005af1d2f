#!/usr/bin/env bash
# Start-up time of a node with queued messages: a fleet of persistent sessions goes offline, messages
# are queued for them, the node is killed (SIGKILL) and started again on its store; then the fleet comes
# back and receives everything.
# Usage: scripts/startup.sh [sessions] [messages-per-session]   (default 1000 x 1000 = 1 M queued)
# Every step is bounded in time; the node is stopped on exit. Traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
SESSIONS=${1:-1000}
MESSAGES=${2:-1000}
PORT=${M2M_PORT:-18833}

# shellcheck source=node-env.sh
. scripts/node-env.sh

# Whether the node answers a CONNECT (MQTT 3.1.1, clean session, empty client id) with a CONNACK. A
# bound port is not enough: the node binds before it opens its store.
connack() {
  exec 3<>"/dev/tcp/127.0.0.1/$PORT" 2>/dev/null || return 1
  printf '\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00' >&3
  local reply
  reply=$(timeout 60 head -c 2 <&3 | od -An -tx1 | tr -d ' \n')
  exec 3<&-
  [ "$reply" = "2002" ]
}
# Milliseconds from $1 (date +%s%N) until the node answers a CONNECT (at most 10 minutes).
wait_connack() {
  for _ in $(seq 1 60000); do
    if connack; then
      echo $((($(date +%s%N) - $1) / 1000000))
      return 0
    fi
    sleep 0.01
  done
  echo "the node did not answer on port $PORT" >&2
  return 1
}
rss_mib() { awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }
node() { "$BIN" node --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" --log-level "${LOG:-warn}" & PID=$!; }

echo "m2m: $("$BIN" --version); machine: $(nproc) cores, $(uname -srm)"
node
wait_connack "$(date +%s%N)" >/dev/null
"$BIN" bench queue --addr "127.0.0.1:$PORT" --sessions "$SESSIONS" --messages "$MESSAGES" --label m2m
echo "RSS before the kill: $(rss_mib "$PID") MiB; store on disk: $(du -sm "$WORK/data/store" | cut -f1) MiB"
kill -9 "$PID"
wait "$PID" 2>/dev/null || true
START=$(date +%s%N)
node
echo "start-up after SIGKILL with $((SESSIONS * MESSAGES)) queued deliveries: $(wait_connack "$START") ms until the first CONNACK"
echo "RSS after start-up: $(rss_mib "$PID") MiB"
"$BIN" bench drain --addr "127.0.0.1:$PORT" --sessions "$SESSIONS" --messages "$MESSAGES" --label m2m
sleep 2
echo "store on disk after the drain: $(du -sm "$WORK/data/store" | cut -f1) MiB; RSS $(rss_mib "$PID") MiB"
