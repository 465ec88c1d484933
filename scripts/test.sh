#!/usr/bin/env bash
# Run corral's whole test suite: unit tests (pool state machine, config, protocols, fuzz targets),
# integration tests that start the real binary with real processes, sockets and signals, and the
# end-to-end tests under a booted systemd (systemd-nspawn).
#
#   bash scripts/test.sh                 everything (about 5 minutes on 2 cores once images exist)
#   bash scripts/test.sh --lib           only what follows is passed to `cargo test`, e.g.
#   bash scripts/test.sh --test e2e      one integration test file
#
# What it does to the machine (root, or sudo when something is missing):
# - installs Debian packages the tests use, once: systemd (systemd-socket-activate, journald),
#   util-linux, mandoc, python3-prometheus-client (Debian's python3 runs the test worker and
#   validates /metrics: no pip), mmdebstrap and systemd-container (the E2E images), podman and
#   runc (the container example), nodejs, npm, python3-venv, golang-go and puma (the frameworks),
#   golang-github-prometheus-client-golang-dev (the Go worker-metrics recipe);
# - unpacks Debian's nginx package into target/nginx (for tests/nginx.rs; not installed), and its
#   prometheus package into target/prometheus (prometheus and promtool; not installed either);
# - fetches pinned framework versions (Node 22 and npm packages, a Python virtualenv) into
#   target/frameworks-cache/ for the framework recipes (docs/frameworks.md) and the Kubernetes
#   schema validator;
# - builds Debian root filesystems for the E2E tests into /var/cache/corral-e2e, or
#   $CORRAL_E2E_CACHE (about 300 MB each for bookworm and trixie, kept between runs; delete the
#   folder to reclaim the space). Tests that need the same image wait for one build (a lock).
#   The E2E tests need a machine where systemd-nspawn can boot a container;
# - for the package tests: lintian, rpmlint, createrepo-c, apt-utils, gnupg, shellcheck, rpm
#   (rpmbuild) and dpkg-dev from Debian, and cargo-deb with `cargo install` (about 2 minutes the
#   first time); packaging/build then makes the .deb and .rpm in target/e2e-packages.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v systemd-socket-activate >/dev/null || need+=(systemd)   # acts as systemd in tests
[ -x /usr/bin/python3 ] || need+=(python3)                           # test worker, run as `nobody` too
/usr/bin/python3 -c 'import prometheus_client' 2>/dev/null || need+=(python3-prometheus-client)
command -v taskset >/dev/null || need+=(util-linux)                  # CPU affinity, setpriv, unshare
command -v mandoc >/dev/null || need+=(mandoc)                       # man page lint
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)               # E2E images
command -v systemd-nspawn >/dev/null || need+=(systemd-container)    # E2E boots
command -v dnf >/dev/null || need+=(dnf)                             # reads the test dnf repository
# The framework recipes (tests/frameworks/run.py): npm fetches Node 22, Express and Fastify;
# a virtualenv takes the pinned Python servers (no pip into Debian's Python); Go 1.19 builds.
command -v node >/dev/null || need+=(nodejs)                          # the "ipc" ready-mode tests
command -v npm >/dev/null || need+=(npm)
/usr/bin/python3 -c 'import ensurepip' 2>/dev/null || need+=(python3-venv)
command -v go >/dev/null || need+=(golang-go)
command -v puma >/dev/null || need+=(puma)                            # the Puma recipe (Ruby)
# The Go recipe of docs/metrics.md builds against Debian's client_golang (no module download).
[ -d /usr/share/gocode/src/github.com/prometheus/client_golang ] || need+=(golang-github-prometheus-client-golang-dev)
# The container example (tests/e2e/podman.sh): podman, with runc (works inside another container).
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing test dependencies: ${need[*]}"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${need[@]}"
fi

# unpack PACKAGE PROGRAM: Debian's PACKAGE unpacked into target/PACKAGE (not installed), unless
# target/PACKAGE/PROGRAM is there already.
unpack() {
  [ -x "target/$1/$2" ] && return
  rm -rf "target/$1-deb" && mkdir -p "target/$1-deb"
  if ! (cd "target/$1-deb" && apt-get download -q "$1" >/dev/null 2>&1); then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -q
    (cd "target/$1-deb" && apt-get download -q "$1")
  fi
  dpkg -x "target/$1-deb/$1"_*.deb "target/$1"
}
# NGINX for tests/nginx.rs: installing the package would also start a system NGINX on port 80.
unpack nginx usr/sbin/nginx
# Prometheus and promtool for tests/worker_metrics.rs and tests/prometheus.rs: installing the
# package would start a system Prometheus.
unpack prometheus usr/bin/prometheus

# What packaging/build needs (linters, repository tools, the pinned cargo plugins), up front:
# the package tests run it in parallel with other tests that must not race it for dpkg's lock.
bash packaging/build --tools
export PATH="$HOME/.cargo/bin:$PATH"

# The tests run `python3`: make it Debian's, whatever else is first on PATH (a pyenv or venv
# Python would hide a missing Debian package).
mkdir -p target/test-bin
ln -sfn /usr/bin/python3 target/test-bin/python3
export PATH="$PWD/target/test-bin:$PATH"

# Everything by default: unit tests, integration tests, and the examples (built, so they cannot
# rot). --no-fail-fast: every suite runs even when one fails, so the total below is complete.
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--all-targets)
status=0
cargo test --locked --no-fail-fast "${args[@]}" 2>&1 |
  awk '{ print } /^test result:/ { passed += $4; failed += $6 } END { printf "%d passed, %d failed\n", passed, failed }' ||
  status=$?
exit "$status"
