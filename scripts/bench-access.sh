#!/usr/bin/env bash
# The cost of identity and access control, side by side in one run: a node without a device registry,
# then the same node with 10 000 registered devices and 100 000 access rules.
#   - connection rate: anonymous; with a password (argon2id, verified once, then from the cache); with
#     a wrong password (a full argon2id verification every time);
#   - QoS 0 fan-in (4 -> 1) throughput, every PUBLISH and the SUBSCRIBE checked against the rules.
# Usage: scripts/bench-access.sh [seconds-per-throughput-run] [connections]
# Every step is bounded in time and count; the node is stopped on exit. Traffic stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-5}
CONNS=${2:-2000}
PORT=${M2M_PORT:-18836}

# shellcheck source=node-env.sh
. scripts/node-env.sh

start() {
  # The load generators publish far above a device's default budget, and the wrong-password run
  # would get the address banned by the authentication-failure detector: both are off here.
  printf '[detectors.publish_rate]\nenabled = false\n\n[detectors.auth_failures]\nenabled = false\n' > "$WORK/m2m.toml"
  "$BIN" node --config "$WORK/m2m.toml" --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" --log-level warn &
  PID=$!
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
    sleep 0.1
  done
  sleep 1
}
stop() { kill "$PID"; wait "$PID" 2>/dev/null || true; PID=; }

echo "m2m: $("$BIN" --version); machine: $(nproc) cores, $(uname -srm)"
start
"$BIN" bench connect --addr "127.0.0.1:$PORT" --count "$CONNS" --label "no registry, anonymous"
"$BIN" bench fan-in --addr "127.0.0.1:$PORT" --duration "$SECS" --label "no registry, no rules"
stop

# 9 999 devices with 10 rules each and no password, 100 groups with 5 rules each, and the device the
# benchmark clients log in as (its own 10 rules, 2 groups, a password).
python3 - "$WORK/devices.json" "$WORK/groups.txt" <<'PY'
import json, sys
devices = [{"id": f"filler-{i}", "groups": [f"g{i % 100}", f"g{(i + 1) % 100}"],
            "rules": [f"allow publish site/{i}/{k}/#" for k in range(9)] + ["deny both site/%u/secret"]}
           for i in range(9999)]
devices.append({"id": "bench", "password": "bench-pw", "groups": ["g1", "g2"],
                "rules": [f"deny publish bench/no/{k}" for k in range(9)] + ["allow both bench/#"]})
json.dump(devices, open(sys.argv[1], "w"))
with open(sys.argv[2], "w") as f:
    for g in range(100):
        f.write(f"g{g}\n")
PY
while read -r g; do
  "$BIN" group --data-dir "$WORK/data" set "$g" --rule "allow subscribe $g/a/#" --rule "allow subscribe $g/b/#" \
    --rule "deny publish $g/c" --rule "allow publish $g/d/+" --rule "allow both $g/e/%c" >/dev/null
done < "$WORK/groups.txt"
"$BIN" device --data-dir "$WORK/data" import "$WORK/devices.json"
start
"$BIN" bench connect --addr "127.0.0.1:$PORT" --count 16 --concurrency 16 --username bench --password bench-pw \
  --label "registry, right password, first 16 at once (argon2id each)"
"$BIN" bench connect --addr "127.0.0.1:$PORT" --count "$CONNS" --username bench --password bench-pw \
  --label "registry, right password (from the cache)"
"$BIN" bench connect --addr "127.0.0.1:$PORT" --count 200 --username bench --password wrong \
  --label "registry, wrong password (argon2id every time)"
"$BIN" bench fan-in --addr "127.0.0.1:$PORT" --duration "$SECS" --username bench --password bench-pw \
  --label "registry, 100 000 rules"
stop
