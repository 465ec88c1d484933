# Sourced by every scenario (/e2e/lib.sh): the check helpers and the loopback precondition.
# Every check prints "ok: …" or "FAIL: …"; a scenario ends with `finish`, which prints
# "E2E PASSED" or "E2E FAILED".
failed=0
ok() { echo "ok: $*"; }
fail() { echo "FAIL: $*"; failed=1; }
wait_for() { # wait_for DESCRIPTION COMMAND…: poll up to 30 s
  what=$1; shift; i=0
  until "$@" >/dev/null 2>&1; do i=$((i+1)); [ $i -gt 300 ] && { fail "$what"; return 1; }; sleep 0.1; done
  ok "$what"
}
finish() { [ "$failed" = 0 ] && echo "E2E PASSED" || echo "E2E FAILED"; }

# Nested containers sometimes cannot bring their loopback device up; every check needs it.
if ! python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(); c=socket.create_connection(s.getsockname(), timeout=5)' 2>/dev/null; then
  echo "FAIL: no working loopback in the container (nested containers may not get one): the E2E checks cannot run here"
  echo "E2E FAILED"; exit 1
fi
ok "loopback works"
