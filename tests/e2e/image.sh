#!/usr/bin/env bash
# Build (once, cached) a minimal Debian root filesystem with systemd for the E2E tests, and print
# its path. Usage: image.sh [bookworm|trixie] (bookworm: systemd 252; trixie: 257, which has
# Type=notify-reload). The image has a oneshot unit that runs /e2e/run (bind-mounted by the
# test) and powers the container off when it is done. See tests/e2e/README.md.
#
# The cache is $CORRAL_E2E_CACHE (default /var/cache/corral-e2e), one folder per suite and
# version of this script. Several tests ask for the same image at once: one builds it under a
# lock (one per suite), into a temporary folder renamed into place when complete; the others
# wait for the lock and use it. A build that was killed leaves only a temporary folder, removed
# by the next build.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
need=()
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
command -v flock >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  # scripts/test.sh installs these up front; this is for `cargo test --test e2e` on its own.
  # Both E2E tests may get here at once: wait for dpkg's lock rather than fail on it.
  apt=(apt-get -q -o DPkg::Lock::Timeout=300)
  "${apt[@]}" update >&2
  DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y --no-install-recommends "${need[@]}" >&2
fi
suite=${1:-bookworm}
case "$suite" in
  bookworm | trixie) ;;
  *) echo "image.sh: unknown suite '$suite' (bookworm or trixie)" >&2; exit 2 ;;
esac
cache=${CORRAL_E2E_CACHE:-/var/cache/corral-e2e}
key=$(sha256sum "$here/image.sh" | cut -c1-12)
image=$cache/$suite-$key
if [ -e "$image/.complete" ]; then
  echo "$image"
  exit 0
fi

mkdir -p "$cache"
exec 9>"$cache/.$suite.lock"
flock 9
# Another build may have finished while this one waited for the lock.
if [ -e "$image/.complete" ]; then
  echo "$image"
  exit 0
fi
# What a killed build left (temporary folders), an incomplete image of an older version of this
# script, and images of older versions: none is used again. Only this suite's, under its lock.
find "$cache" -mindepth 1 -maxdepth 1 \( -name ".build-$suite-*" -o -name "$suite-*" \) -exec rm -rf {} +

# The mirror apt uses here (deb822 sources, else the classic list).
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
[ -n "$mirror" ] || mirror=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list)
tmp=$cache/.build-$suite-$key.$$
trap 'rm -rf "$tmp"' EXIT
# In a mount namespace of its own: the /proc, /sys and /dev that mmdebstrap mounts in the new
# root go away with it even when it is killed, so removing a half-built folder never meets a
# mounted file system.
unshare --mount --propagation private \
  mmdebstrap --variant=minbase --include=systemd,systemd-sysv,dbus,polkitd,curl,python3,procps,nodejs,rpm,man-db \
  --customize-hook='mkdir -p "$1/e2e" "$1/results"' \
  --customize-hook='printf "[Unit]\nAfter=multi-user.target\n[Service]\nType=oneshot\nExecStart=/bin/sh -c \"exec >/results/log 2>&1; /e2e/run\"\nExecStopPost=/bin/systemctl poweroff --no-block\n[Install]\nWantedBy=multi-user.target\n" > "$1/etc/systemd/system/e2e.service"' \
  --customize-hook='chroot "$1" systemctl enable e2e.service' \
  "$suite" "$tmp" "$mirror" >&2
touch "$tmp/.complete"
mv -T "$tmp" "$image"
trap - EXIT
echo "$image"
