#!/usr/bin/env bash
# The standard `m2m bench` scenarios against an m2m node (release build) and Mosquitto in one run, and
# the tool's own ceiling (the built-in sink); prints the table and writes it into BENCHMARKS.md between
# the compare markers, replacing the previous one.
#
# Usage: bench/compare.sh [seconds-per-scenario] [idle-connections] [storm-connections]
#   defaults 5, 10000 and 5000: about two minutes after the build.
#
# The node runs with its defaults (a store on disk, `sync = "always"`) except the publish budget per
# connection, which load generators exceed; Mosquitto runs with `persistence false`. Both listen on
# loopback ports and are stopped on exit; every scenario is bounded in time (and killed by `timeout`
# if it is not). COMPARE_BIN: a binary already built to measure with; COMPARE_M2M_PORT, COMPARE_MOSQ_PORT:
# the ports; SKIP_WRITE=1 leaves BENCHMARKS.md alone. (The node reads every M2M_* variable as a setting.)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
CONNS=${2:-10000}
STORM=${3:-5000}
M2M_PORT=${COMPARE_M2M_PORT:-18841}
MOSQ_PORT=${COMPARE_MOSQ_PORT:-18842}
MOSQUITTO=${MOSQUITTO:-/usr/sbin/mosquitto}

if [ ! -x "$MOSQUITTO" ]; then
  echo "installing mosquitto (Debian package)" >&2
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null
fi
if [ -z "${COMPARE_BIN:-}" ]; then
  cargo build --release -p m2m >&2
  COMPARE_BIN=${CARGO_TARGET_DIR:-target}/release/m2m
fi
BIN=$COMPARE_BIN
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

WORK=$(mktemp -d)
cleanup() {
  [ -n "${M2M_PID:-}" ] && kill "$M2M_PID" 2>/dev/null || true
  [ -n "${MOSQ_PID:-}" ] && kill "$MOSQ_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

printf '[detectors.publish_rate]\nenabled = false\n' > "$WORK/m2m.toml"
"$BIN" node --config "$WORK/m2m.toml" --listen "127.0.0.1:$M2M_PORT" --data-dir "$WORK/m2m-data" \
  --http-listen 127.0.0.1:0 --log-level warn >"$WORK/m2m.out" 2>&1 &
M2M_PID=$!
cat > "$WORK/mosquitto.conf" <<CONF
listener $MOSQ_PORT 127.0.0.1
allow_anonymous true
max_connections -1
persistence false
log_type error
user root
CONF
"$MOSQUITTO" -c "$WORK/mosquitto.conf" >"$WORK/mosquitto.out" 2>&1 &
MOSQ_PID=$!

wait_port() {
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "port $1 did not open; $2 said:" >&2
  cat "$3" >&2
  return 1
}
wait_port "$M2M_PORT" m2m "$WORK/m2m.out"
wait_port "$MOSQ_PORT" mosquitto "$WORK/mosquitto.out"

MOSQ_VERSION=$("$MOSQUITTO" -h 2>/dev/null | head -1 || true)
M2M_VERSION=$("$BIN" --version)
CORES=$(nproc)
echo "$M2M_VERSION; $MOSQ_VERSION; $CORES cores, $(uname -srm)" >&2

REPORTS=$WORK/reports.jsonl
# One scenario against one broker; its report is kept even when it counted errors.
run() { # label port args...
  local label=$1 port=$2; shift 2
  echo "$label: $*" >&2
  timeout $((SECS + 120)) "$BIN" bench "$@" --addr "127.0.0.1:$port" --label "$label" --json >>"$REPORTS" ||
    echo "  (exit $?)" >&2
}
both() { # args...
  run m2m "$M2M_PORT" "$@"
  run mosquitto "$MOSQ_PORT" "$@"
}
both fan-in --publishers 4 --qos 0 --payload 64 --duration "$SECS"
both fan-in --publishers 4 --qos 1 --persistent --payload 64 --duration "$SECS"
both fan-out --subscribers 50 --qos 0 --payload 64 --duration "$SECS"
both latency --rate 1000 --qos 0 --payload 64 --duration "$SECS"
both storm --count "$STORM" --concurrency 64
run m2m "$M2M_PORT" conns --count "$CONNS" --pid "$M2M_PID"
run mosquitto "$MOSQ_PORT" conns --count "$CONNS" --pid "$MOSQ_PID"
echo "sink: the tool alone" >&2
timeout $((SECS + 60)) "$BIN" bench sink --connections 4 --payload 64 --duration "$SECS" --json >>"$REPORTS" ||
  echo "  (exit $?)" >&2

TABLE=$WORK/table.md
"$BIN" bench table --markdown "$REPORTS" >"$TABLE"
cat "$TABLE"
[ "${SKIP_WRITE:-}" = 1 ] && exit 0

BLOCK=$WORK/block.md
{
  echo '<!-- compare:begin -->'
  echo
  echo "Run of $(date -u +%F) on $CORES cores ($(uname -sm)): $M2M_VERSION (release build) and $MOSQ_VERSION, written by"
  echo
  echo '```sh'
  echo "bench/compare.sh $SECS $CONNS $STORM"
  echo '```'
  echo
  cat "$TABLE"
  echo
  echo '<!-- compare:end -->'
} >"$BLOCK"
if grep -q '<!-- compare:begin -->' BENCHMARKS.md; then
  awk -v block="$BLOCK" '
    /<!-- compare:begin -->/ { while ((getline line < block) > 0) print line; skip = 1; next }
    /<!-- compare:end -->/ { skip = 0; next }
    !skip { print }
  ' BENCHMARKS.md >"$WORK/BENCHMARKS.md"
  cp "$WORK/BENCHMARKS.md" BENCHMARKS.md
else
  { echo; cat "$BLOCK"; } >>BENCHMARKS.md
fi
echo "table written to BENCHMARKS.md" >&2
