#!/usr/bin/env bash
# History ingest while the node serves a QoS 0 load, side by side in one run:
#   - Mosquitto (no history), then an m2m node with history off, then with history on (its defaults:
#     every topic but $SYS kept, one writer thread, group commits);
#   - each serves `m2m bench fan-in` (4 publishers -> 1 subscriber, QoS 0, 64-byte payloads);
#   - with history on, the messages stored per second while the load ran, and any dropped (recorded
#     as gaps) are read from the node's $SYS/broker/history/* counters.
# Usage: scripts/bench-history.sh [seconds]
# Installs Mosquitto and its clients (Debian packages) when missing. Every step is bounded in time;
# the nodes are stopped on exit. Traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-20}
PORT=${M2M_PORT:-18837}
MOSQ_PORT=${MOSQ_PORT:-18838}

if ! command -v mosquitto_sub >/dev/null 2>&1 || { ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; }; then
  echo "installing mosquitto and mosquitto-clients (Debian packages)" >&2
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients >/dev/null
fi
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)

# shellcheck source=node-env.sh
. scripts/node-env.sh

wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "port $1 did not open" >&2
  return 1
}

# One retained $SYS value of the node.
sys() { timeout 10 mosquitto_sub -h 127.0.0.1 -p "$PORT" -t "\$SYS/broker/$1" -C 1 -W 5; }

start() { # history on|off
  printf '[detectors.publish_rate]\nenabled = false\n\n[mqtt]\nsys_interval_secs = 1\n\n[history]\nenabled = %s\n' \
    "$([ "$1" = on ] && echo true || echo false)" > "$WORK/m2m.toml"
  rm -rf "$WORK/data"
  "$BIN" node --config "$WORK/m2m.toml" --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" --log-level warn &
  PID=$!
  wait_port "$PORT"
  sleep 1
}
stop() { kill "$PID"; wait "$PID" 2>/dev/null || true; PID=; }
load() { # label port
  timeout $((SECS + 60)) "$BIN" bench fan-in --addr "127.0.0.1:$2" --publishers 4 --qos 0 --payload 64 \
    --duration "$SECS" --label "$1"
}

echo "m2m: $("$BIN" --version); mosquitto: $("$MOSQUITTO" -h 2>/dev/null | head -1); machine: $(nproc) cores, $(uname -srm)"
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nlog_type error\n' "$MOSQ_PORT" > "$WORK/mosquitto.conf"
"$MOSQUITTO" -c "$WORK/mosquitto.conf" &
MOSQ_PID=$!
wait_port "$MOSQ_PORT"
load "mosquitto" "$MOSQ_PORT"
kill "$MOSQ_PID"; wait "$MOSQ_PID" 2>/dev/null || true

start off
load "m2m, history off" "$PORT"
stop

start on
before=$(sys history/stored)
began=$(date +%s.%N)
load "m2m, history on" "$PORT"
ended=$(date +%s.%N)
during=$(sys history/stored)
# Then let the writer finish what is queued.
for _ in $(seq 1 30); do
  [ "$(sys history/queued)" = 0 ] && break
  sleep 1
done
after=$(sys history/stored)
dropped=$(sys history/dropped)
received=$(sys messages/received)
bytes=$(sys store/bytes)
stop
python3 - "$before" "$during" "$after" "$dropped" "$received" "$began" "$ended" "$bytes" <<'PY'
import sys
before, during, after, dropped, received = (int(x) for x in sys.argv[1:6])
secs = float(sys.argv[7]) - float(sys.argv[6])
print(f"history: {during - before} messages stored during the {secs:.1f} s load = {(during - before) / secs:,.0f} msg/s; "
      f"{after - before} stored in all, {dropped} dropped (gaps), {received} PUBLISH received")
if after > 0:
    print(f"store: {int(sys.argv[8])} bytes on disk after the run = {int(sys.argv[8]) / after:.1f} bytes per stored message "
          "(journals included)")
PY
