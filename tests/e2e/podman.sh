#!/usr/bin/env bash
# examples/docker/Dockerfile, built and run with podman (tests/e2e.rs runs this as root):
# corral as the container's PID 1 reaps orphans, runs one worker per CPU of the container's
# quota, serves, drains on `podman stop` (/health 503 while still serving) and exits 0, with
# JSON log lines. Docker Hub is not reachable here: the base images the Dockerfile names are the
# E2E suite's Debian trixie root filesystem (tests/e2e/image.sh, mmdebstrap), imported under
# those names.
#
#   tests/e2e/podman.sh PORT METRICS_PORT
#
# Prints "ok: …"/"FAIL: …" lines and ends with "E2E PASSED" or "E2E FAILED".
set -u
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
port=${1:?port} metrics=${2:?metrics port}
. "$here/lib.sh"

# Storage and runtime that work inside another container (and on a plain host): vfs needs no
# overlay mount, runc with cgroupfs needs no systemd, and the limits podman would raise past
# the hard ones are given as they are.
podman=(podman --storage-driver vfs --runtime runc --cgroup-manager cgroupfs)
limits=(--ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit nproc=4096:4096)
name=corral-e2e-$$
tag=localhost/corral-example:e2e

base=$(bash "$here/image.sh" trixie) || { fail "building the trixie root filesystem"; finish; exit 1; }
for image in docker.io/library/debian:trixie docker.io/library/debian:trixie-slim; do
  # The imported image is labelled with the root filesystem it came from: a new one replaces it.
  if [ "$("${podman[@]}" image inspect -f '{{index .Labels "corral.rootfs"}}' "$image" 2>/dev/null)" != "$base" ]; then
    tar -C "$base" -c . | "${podman[@]}" import --change "LABEL corral.rootfs=$base" - "$image" >/dev/null \
      || { fail "podman import $image"; finish; exit 1; }
  fi
done
ok "base images imported from $base"

# The machine's CA bundle goes to cargo in the build (a TLS-intercepting proxy's CA is in it).
# --layers=false: vfs stores every layer as a full copy of the tree, so a cached multi-stage
# build costs about 9 GB of disk; without intermediate layers it is about 2 GB, and the image is
# removed at the end (the two base images stay for the next run).
cleanup() {
  "${podman[@]}" rm -f "$name" >/dev/null 2>&1
  "${podman[@]}" rmi -f "$tag" >/dev/null 2>&1
  "${podman[@]}" image prune -f >/dev/null 2>&1
}
trap cleanup EXIT
if "${podman[@]}" build --layers=false --format docker --network host "${limits[@]}" \
  -v /etc/ssl/certs/ca-certificates.crt:/ca.crt:ro --build-arg CA_BUNDLE=/ca.crt \
  -f "$root/examples/docker/Dockerfile" -t "$tag" "$root" >/tmp/$name.build 2>&1; then
  ok "podman build of examples/docker/Dockerfile"
else
  tail -30 /tmp/$name.build; fail "podman build"; finish; exit 1
fi
rm -f /tmp/$name.build

# The image's own config, with test ports, 2 s of drain, and workers that leave orphans.
cfg=$(mktemp -d)
cat >"$cfg/test.toml" <<EOF
name = "app"
command = ["sh", "-c", "for i in 1 2 3 4 5 6; do (sleep 0.3 &); done; exec node /srv/app/app.js"]
instances = "max"
listen = ["127.0.0.1:$port"]
[ready]
mode = "listen"
[stop]
drain = "2s"
[logs]
format = "json"
[metrics]
listen = "127.0.0.1:$metrics"
EOF
chmod -R a+rX "$cfg"
"${podman[@]}" run -d --name "$name" --network host --cpus 1 "${limits[@]}" -e CORRAL_LOG=debug \
  -v "$cfg/test.toml:/etc/corral/test.toml:ro" "$tag" -c /etc/corral/test.toml >/dev/null \
  && ok "podman run" || fail "podman run"
code() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$1"; }
wait_for "the pool is ready (/ready 200)" sh -c "[ \"\$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 http://127.0.0.1:$metrics/ready)\" = 200 ]"
curl -sf --max-time 5 "http://127.0.0.1:$port/api/v1/hello" | grep -q "Hello from worker" \
  && ok "the Node example answers" || fail "the app does not answer"
desired=$(curl -s --max-time 5 "http://127.0.0.1:$metrics/health" | python3 -c 'import json,sys; print(json.load(sys.stdin)["desired"])')
[ "$desired" = 1 ] && ok 'instances = "max" is 1 with --cpus 1 (the cgroup quota, not the host CPUs)' \
  || fail "instances = max gave $desired workers under --cpus 1"
# Inside the container's PID namespace: corral is PID 1, and no process is a zombie.
in_container() { "${podman[@]}" exec "$name" "$@"; }
[ "$(in_container cat /proc/1/comm)" = corral ] && ok "corral is the container's PID 1" \
  || fail "PID 1 is $(in_container cat /proc/1/comm)"
reaped() { [ "$("${podman[@]}" logs "$name" 2>&1 | grep -c 'reaped a stray process')" -ge 6 ]; }
wait_for "corral reaped the 6 orphans" reaped
zombies=$(in_container sh -c 'grep -l "^State:[[:space:]]*Z" /proc/[0-9]*/status 2>/dev/null | wc -l')
[ "$zombies" = 0 ] && ok "no zombie in the container" || fail "$zombies zombies in the container"

"${podman[@]}" stop -t 30 "$name" >/dev/null &
stopper=$!
wait_for "draining after podman stop: /health 503" sh -c "[ \"\$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 http://127.0.0.1:$metrics/health)\" = 503 ]"
[ "$(code "http://127.0.0.1:$port/api/v1/hello")" = 200 ] && ok "still serving while draining" || fail "not serving while draining"
wait "$stopper"
exit_code=$("${podman[@]}" inspect -f '{{.State.ExitCode}}' "$name")
[ "$exit_code" = 0 ] && ok "podman stop: drained and exited 0" || fail "exit code $exit_code"
"${podman[@]}" logs "$name" >"$cfg/log" 2>&1
python3 - "$cfg/log" <<'EOF' && ok "every log line is a JSON object" || fail "log lines that are not JSON"
import json, sys
lines = open(sys.argv[1]).read().splitlines()
assert lines
for l in lines:
    v = json.loads(l)
    assert "message" in v and "timestamp" in v, l
assert any("draining for 2s" in l for l in lines)
assert any("exiting with 0" in l for l in lines)
EOF
rm -rf "$cfg"
finish
