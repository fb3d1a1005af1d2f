# Sourced by the single-node benchmark scripts (startup.sh, churn.sh, bench-access.sh): builds the
# release binary ($BIN), raises the descriptor limit, and makes a work directory ($WORK) that is removed
# on exit, after stopping the node whose process id is in $PID.
cargo build --release -p m2m >&2
BIN=target/release/m2m
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
WORK=$(mktemp -d)
cleanup() {
  [ -n "${PID:-}" ] && kill "$PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
