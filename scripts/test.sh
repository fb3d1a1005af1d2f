#!/usr/bin/env bash
# Runs every check and every test: formatting, the supply-chain check (cargo-deny: licenses,
# advisories, duplicate versions, sources), clippy (-D warnings), rustdoc (-D warnings), and the
# whole workspace's tests.
# Installs what the tests need when it is missing (the mosquitto, mosquitto-clients, openssl and
# chromium Debian packages, the paho-mqtt Python package, the console tests' npm packages, and
# cargo-deny from the registry).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v mosquitto_pub >/dev/null 2>&1 || ! command -v mosquitto_sub >/dev/null 2>&1; then
  echo "installing mosquitto-clients (needed by the interoperability tests)" >&2
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto-clients
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto-clients
  fi
fi

if [ ! -x /usr/sbin/mosquitto ] || ! command -v mosquitto_passwd >/dev/null 2>&1; then
  echo "installing mosquitto (the uplink tests bridge a node to a real Mosquitto broker)" >&2
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto
  fi
fi

if ! python3 -c 'import paho.mqtt' >/dev/null 2>&1; then
  echo "installing paho-mqtt (the WebSocket tests drive the node with Eclipse Paho for Python)" >&2
  python3 -m pip install -q paho-mqtt
fi
if ! command -v openssl >/dev/null 2>&1; then
  echo "installing openssl (the certificate tests verify with it)" >&2
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl
  fi
fi

if [ ! -x /usr/bin/chromium ]; then
  echo "installing chromium (the console tests drive it headless)" >&2
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
  fi
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "installing nodejs and npm (the console tests run playwright-core)" >&2
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm
  fi
fi
if [ ! -d crates/m2m/tests/e2e/node_modules/playwright-core ]; then
  echo "installing the console tests' npm packages (playwright-core, as locked)" >&2
  npm ci --prefix crates/m2m/tests/e2e --no-audit --no-fund
fi

cargo fmt --all --check

# Supply chain (deny.toml, scripts/deny.sh). cargo-deny is pinned: deny.toml's schema and the
# directory name it gives the local advisory database belong to this version.
CARGO_DENY_VERSION=0.20.2
if ! cargo deny --version 2>/dev/null | grep -qx "cargo-deny $CARGO_DENY_VERSION"; then
  echo "installing cargo-deny $CARGO_DENY_VERSION (the supply-chain check: licenses, advisories, duplicates, sources)" >&2
  cargo install cargo-deny --version "$CARGO_DENY_VERSION" --locked
fi
scripts/deny.sh
cargo clippy --workspace --all-targets --locked -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
cargo test --workspace --locked
