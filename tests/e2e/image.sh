#!/usr/bin/env bash
# Build (once, cached) a minimal Debian root filesystem with systemd for the E2E tests, and print
# its path. Usage: image.sh [bookworm|trixie] (bookworm: systemd 252; trixie: 257, which has
# Type=notify-reload). The image has a oneshot unit that runs /e2e/run (bind-mounted by the
# test) and powers the container off when it is done. See tests/e2e/README.md.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
need=()
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
if [ ${#need[@]} -gt 0 ]; then
  # scripts/test.sh installs these up front; this is for `cargo test --test e2e` on its own.
  # Both E2E tests may get here at once: wait for dpkg's lock rather than fail on it.
  apt=(apt-get -q -o DPkg::Lock::Timeout=300)
  "${apt[@]}" update >&2
  DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y --no-install-recommends "${need[@]}" >&2
fi
suite=${1:-bookworm}
key=$(sha256sum "$here/image.sh" | cut -c1-12)
image=/var/cache/corral-e2e/$suite-$key
if [ ! -e "$image/.complete" ]; then
  rm -rf "$image"
  mkdir -p /var/cache/corral-e2e
  # Images of older versions of this script are not used again.
  find /var/cache/corral-e2e -mindepth 1 -maxdepth 1 -name "$suite-*" ! -name "$suite-$key" -exec rm -rf {} +
  # The mirror apt uses here (deb822 sources, else the classic list).
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list)
  mmdebstrap --variant=minbase --include=systemd,systemd-sysv,dbus,curl,python3,procps,nodejs,rpm,man-db \
    --customize-hook='mkdir -p "$1/e2e" "$1/results"' \
    --customize-hook='printf "[Unit]\nAfter=multi-user.target\n[Service]\nType=oneshot\nExecStart=/bin/sh -c \"exec >/results/log 2>&1; /e2e/run\"\nExecStopPost=/bin/systemctl poweroff --no-block\n[Install]\nWantedBy=multi-user.target\n" > "$1/etc/systemd/system/e2e.service"' \
    --customize-hook='chroot "$1" systemctl enable e2e.service' \
    "$suite" "$image" "$mirror" >&2
  touch "$image/.complete"
fi
echo "$image"
