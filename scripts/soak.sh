#!/usr/bin/env bash
# A bounded soak run of one node: simulated fleets publishing the whole time, a kept-session
# subscriber, a reconnect storm every minute, and a node restart every RESTART minutes (SIGTERM and
# `kill -9` in turn). Every 10 s it samples the node's resident memory, open file descriptors, store
# size and connections into soak.csv, and at the end checks that they stayed flat:
#
# - resident memory: the largest sample of the second half at most 1.3x the largest of the first half
#   (after a warm-up of a tenth of the run, at least a minute);
# - file descriptors, sampled between storms, in three parts: sockets beyond the clients connected
#   (listeners and the like) and descriptors that are neither sockets nor store files must not grow
#   at all (a leak shows there); the store's open files (one per table of the store, so they follow
#   compaction) at most 1.3x + 16;
# - store size: at most 1.3x + 64 MiB (the history is capped at 256 MiB, so the store must level off).
#
# Usage: scripts/soak.sh [MINUTES (30)] [RESTART minutes (10)]. Builds the release binary unless
# SOAK_BIN names one. Prints a Markdown table for BENCHMARKS.md and exits 1 if a check fails.
# Everything runs on 127.0.0.1 and stops at the end (or on Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=${1:-30}
restart_every=${2:-10}
if [ -z "${SOAK_BIN:-}" ]; then
  cargo build --release --locked -p m2m
  SOAK_BIN=target/release/m2m
fi
bin=$(realpath "$SOAK_BIN")
work=$(mktemp -d "${TMPDIR:-/tmp}/m2m-soak.XXXXXX")
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port=$(free_port)
api=$(free_port)
cat >"$work/m2m.toml" <<EOF
[node]
data_dir = "$work/data"
[mqtt]
listen = "127.0.0.1:$port"
[http]
listen = "127.0.0.1:$api"
[history]
max_bytes = "256MiB"
[log]
level = "warn"
EOF

pids=()
node_pid=
cleanup() {
  for p in "${pids[@]}" $node_pid; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

start_node() {
  "$bin" node --config "$work/m2m.toml" >>"$work/node.out" 2>>"$work/node.log" &
  node_pid=$!
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "soak: the node did not listen on 127.0.0.1:$port" >&2
  exit 1
}

start_node
seconds=$((minutes * 60))
broker="127.0.0.1:$port"
"$bin" sim telematics --broker "$broker" --vehicles 1000 --qos 1 --dropout-rate 6 --duration "$seconds" \
  --summary-every 60 >"$work/telematics.log" 2>&1 &
pids+=($!)
"$bin" sim factory --broker "$broker" --lines 10 --machines 4 --rate 2 --duration "$seconds" \
  --summary-every 60 >"$work/factory.log" 2>&1 &
pids+=($!)
"$bin" sim lamps --broker "$broker" --lamps 500 --duration "$seconds" --summary-every 60 \
  >"$work/lamps.log" 2>&1 &
pids+=($!)
# A kept-session subscriber to all telemetry, reconnecting whenever the node went away.
(
  end=$((SECONDS + seconds))
  while [ $SECONDS -lt $end ]; do
    "$bin" sub -h 127.0.0.1 -p "$port" -i soak-sub -c -q 1 -t 'fleet/+/telemetry' -W $((end - SECONDS + 1)) \
      >/dev/null 2>>"$work/sub.log" || sleep 1
  done
) &
pids+=($!)

echo "t_s,rss_kib,fds,sockets,store_fds,store_bytes,connections,storm" >"$work/soak.csv"
sample() { # $1: whether a storm runs
  local rss fds sockets store_fds store conns links
  # A sample must not end the run (the node may be restarting): every failure counts as empty.
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$node_pid/status" 2>/dev/null || true)
  links=$(find "/proc/$node_pid/fd" -mindepth 1 -maxdepth 1 -printf '%l\n' 2>/dev/null || true)
  fds=$(printf '%s\n' "$links" | grep -c . || true)
  sockets=$(printf '%s\n' "$links" | grep -c '^socket:' || true)
  store_fds=$(printf '%s\n' "$links" | grep -c "^$work/data/" || true)
  store=$(du -sb "$work/data" 2>/dev/null | cut -f1 || true)
  conns=$(curl -s --max-time 5 "http://127.0.0.1:$api/metrics" 2>/dev/null | awk '$1 == "m2m_connections" {print $2}' || true)
  echo "$SECONDS,${rss:-0},${fds:-0},${sockets:-0},${store_fds:-0},${store:-0},${conns:-0},$1" >>"$work/soak.csv"
}

start=$SECONDS
restarts=0
next_restart=$((restart_every * 60))
next_storm=60
while [ $((SECONDS - start)) -lt "$seconds" ]; do
  elapsed=$((SECONDS - start))
  if [ "$elapsed" -ge "$next_storm" ]; then
    # 2 000 connections opened as fast as the node takes them, then closed.
    "$bin" bench storm --addr "$broker" --count 2000 --concurrency 64 >>"$work/storm.log" 2>&1 || true
    sample 1
    next_storm=$((next_storm + 60))
  fi
  if [ "$elapsed" -ge "$next_restart" ] && [ $((seconds - elapsed)) -gt 120 ]; then
    restarts=$((restarts + 1))
    if [ $((restarts % 2)) -eq 1 ]; then kill -TERM "$node_pid"; else kill -KILL "$node_pid"; fi
    wait "$node_pid" 2>/dev/null || true
    start_node
    next_restart=$((next_restart + restart_every * 60))
  fi
  sample 0
  sleep 10
done
sample 0
cleanup
trap - EXIT INT TERM

status=0
python3 - "$work/soak.csv" "$minutes" "$restarts" <<'EOF' || status=$?
import csv, sys
rows = [r for r in csv.DictReader(open(sys.argv[1]))]
minutes, restarts = sys.argv[2], sys.argv[3]
t0 = int(rows[0]["t_s"])
warm_up = max(60, int(minutes) * 6)
warm = [r for r in rows if int(r["t_s"]) - t0 >= warm_up]
half = len(warm) // 2
first, last = warm[:half], warm[half:]
def value(r, key):
    if key == "extra_sockets":
        return int(r["sockets"]) - int(float(r["connections"] or 0))
    if key == "other_fds":
        return int(r["fds"]) - int(r["sockets"]) - int(r["store_fds"])
    return int(float(r[key] or 0))
def peak(rs, key, calm=False):
    # Samples taken while the node was down (restarting) have no descriptors: left out.
    return max(value(r, key) for r in rs if (not calm or r["storm"] == "0") and int(r["fds"]) > 0)
ok = True
lines = []
def check(name, key, unit, scale, limit, calm=False):
    global ok
    a, b = peak(first, key, calm), peak(last, key, calm)
    passed = b <= limit(a)
    ok = ok and passed
    lines.append(f"| {name} | {a / scale:.1f} {unit} | {b / scale:.1f} {unit} | {'flat' if passed else 'GREW'} |")
check("resident memory", "rss_kib", "MiB", 1024, lambda a: a * 1.3)
check("sockets beyond the clients (between storms)", "extra_sockets", "", 1, lambda a: a + 8, calm=True)
check("other descriptors (not sockets, not store files)", "other_fds", "", 1, lambda a: a + 2, calm=True)
check("store files open", "store_fds", "", 1, lambda a: a * 1.3 + 16, calm=True)
check("store size", "store_bytes", "MiB", 1 << 20, lambda a: a * 1.3 + (64 << 20))
print(f"soak: {minutes} min, {restarts} restarts, {len(rows)} samples")
print("| measure | peak, first half | peak, second half | |")
print("|---|---|---|---|")
print("\n".join(lines))
conns = [int(float(r["connections"])) for r in rows if r["connections"] not in ("", "0")]
if conns:
    print(f"connections between {min(conns)} and {max(conns)}")
sys.exit(0 if ok else 1)
EOF
echo "soak: samples and logs in $work"
exit $status
