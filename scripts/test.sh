#!/usr/bin/env bash
# Run corral's whole test suite: unit tests (pool state machine, config, protocols) and
# integration tests that start the real binary with real processes, sockets and signals.
# Installs what the tests need first (Debian packages; needs root or sudo when something is
# missing).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v systemd-socket-activate >/dev/null || need+=(systemd)   # acts as systemd in tests
[ -x /usr/bin/python3 ] || need+=(python3)                           # test worker, run as `nobody` too
command -v taskset >/dev/null || need+=(util-linux)                  # CPU affinity, setpriv, unshare
command -v mandoc >/dev/null || need+=(mandoc)                       # man page lint
# (tests/e2e/image.sh installs mmdebstrap and systemd-container for the E2E test itself)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing test dependencies: ${need[*]}"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${need[@]}"
fi

# Python's reference Prometheus parser validates /metrics in the tests.
python3 -c 'import prometheus_client' 2>/dev/null || python3 -m pip install -q prometheus_client

# Everything: unit tests, integration tests, and the examples (built, so they cannot rot). The
# last line totals every suite's "test result" line.
set -o pipefail
cargo test --locked --all-targets "$@" 2>&1 |
  awk '{ print } /^test result:/ { passed += $4; failed += $6 } END { printf "%d passed, %d failed\n", passed, failed }'
