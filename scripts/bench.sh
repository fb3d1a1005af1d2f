#!/usr/bin/env bash
# Side-by-side benchmark: an m2m node and Mosquitto on loopback ports, measured by `m2m bench` in one run.
# Usage: scripts/bench.sh [seconds-per-scenario] [idle-connections]
# The m2m node runs with its defaults: a store on disk with `sync = "always"` (every QoS 1 message for
# the persistent subscriber is fsync'd before its PUBACK). Mosquitto runs with `persistence false`.
# Installs Mosquitto (Debian package) when missing. Every scenario is bounded in time; both brokers are
# stopped on exit. Traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
CONNS=${2:-10000}
M2M_PORT=${M2M_PORT:-18831}
MOSQ_PORT=${MOSQ_PORT:-18832}

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  echo "installing mosquitto (Debian package)" >&2
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
fi
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)

cargo build --release -p m2m >&2
BIN=target/release/m2m
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

WORK=$(mktemp -d)
cleanup() {
  [ -n "${M2M_PID:-}" ] && kill "$M2M_PID" 2>/dev/null || true
  [ -n "${MOSQ_PID:-}" ] && kill "$MOSQ_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# Load generators publish far above a device's default budget (20 000 PUBLISH a second per
# connection): the budget is off for the benchmark, as Mosquitto has none.
printf '[detectors.publish_rate]\nenabled = false\n' > "$WORK/m2m.toml"
"$BIN" node --config "$WORK/m2m.toml" --listen "127.0.0.1:$M2M_PORT" --data-dir "$WORK/m2m-data" --log-level warn &
M2M_PID=$!
cat > "$WORK/mosquitto.conf" <<CONF
listener $MOSQ_PORT 127.0.0.1
allow_anonymous true
max_connections -1
persistence false
log_type error
CONF
"$MOSQUITTO" -c "$WORK/mosquitto.conf" &
MOSQ_PID=$!

wait_port() {
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "port $1 did not open" >&2
  return 1
}
wait_port "$M2M_PORT"
wait_port "$MOSQ_PORT"

echo "mosquitto: $("$MOSQUITTO" -h 2>/dev/null | head -1)"
echo "m2m: $("$BIN" --version)"
echo "machine: $(nproc) cores, $(uname -srm)"
run() { # label port args...
  local label=$1 port=$2; shift 2
  timeout $((SECS + 60)) "$BIN" bench "$@" --addr "127.0.0.1:$port" --label "$label" --duration "$SECS"
}
for target in "m2m $M2M_PORT" "mosquitto $MOSQ_PORT"; do
  set -- $target
  run "$1" "$2" fan-in --publishers 4 --qos 0 --payload 64
  run "$1" "$2" fan-in --publishers 4 --qos 1 --persistent --payload 64
  run "$1" "$2" fan-out --subscribers 50 --qos 0 --payload 64
  run "$1" "$2" latency --rate 1000 --qos 0 --payload 64
done
timeout 300 "$BIN" bench conns --addr "127.0.0.1:$M2M_PORT" --count "$CONNS" --pid "$M2M_PID" --label m2m
timeout 300 "$BIN" bench conns --addr "127.0.0.1:$MOSQ_PORT" --count "$CONNS" --pid "$MOSQ_PID" --label mosquitto
