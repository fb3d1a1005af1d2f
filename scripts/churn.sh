#!/usr/bin/env bash
# On-disk size of a node's store under churn: rounds of a fleet of persistent sessions going offline,
# messages queued for them, the fleet coming back and receiving everything (each delivery is written,
# then removed). Prints the store's size after every round; it must level off, not grow with the count.
# Usage: scripts/churn.sh [rounds] [sessions] [messages-per-session]   (default 10 x 1000 x 1000:
# 10 M deliveries, a day of 115 deliveries/s)
# Every step is bounded in time; the node is stopped on exit. Traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-10}
SESSIONS=${2:-1000}
MESSAGES=${3:-1000}
PORT=${M2M_PORT:-18834}

# shellcheck source=node-env.sh
. scripts/node-env.sh
"$BIN" node --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" --log-level warn &
PID=$!
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  sleep 0.1
done
sleep 1
echo "m2m: $("$BIN" --version); machine: $(nproc) cores, $(uname -srm)"
echo "round | deliveries so far | store on disk (MiB) | node RSS (MiB)"
for round in $(seq 1 "$ROUNDS"); do
  "$BIN" bench queue --addr "127.0.0.1:$PORT" --sessions "$SESSIONS" --messages "$MESSAGES" >/dev/null
  "$BIN" bench drain --addr "127.0.0.1:$PORT" --sessions "$SESSIONS" --messages "$MESSAGES" >/dev/null
  echo "$round | $((round * SESSIONS * MESSAGES)) | $(du -sm "$WORK/data/store" | cut -f1) | $(awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$PID/status")"
done
sleep 30
echo "30 s idle after the last round: store $(du -sm "$WORK/data/store" | cut -f1) MiB"
