#!/usr/bin/env bash
# Regenerates the console's screenshots in docs/console/ (one per page at 1360x900, and the overview
# and the device list on a 390x844 phone screen) by running the console's end-to-end test with
# SCREENSHOT_DIR pointing there: a real node, a simulated device and headless Chromium.
# Needs what scripts/test.sh installs (chromium, node, npm ci --prefix crates/m2m/tests/e2e).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -d crates/m2m/tests/e2e/node_modules/playwright-core ]; then
  npm ci --prefix crates/m2m/tests/e2e --no-audit --no-fund
fi
out="$PWD/docs/console"
mkdir -p "$out"
rm -f "$out"/*.png
SCREENSHOT_DIR="$out" cargo test -p m2m --test console -- --exact an_operator_uses_the_console_in_a_real_browser
rm -f "$out/failure.png"
ls -1 "$out"
