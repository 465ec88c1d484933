#!/bin/sh
# Runs inside the booted container (as /e2e/run): the user's story, under a real systemd.
# Every check prints "ok: …" or "FAIL: …"; the last line is "E2E PASSED" or "E2E FAILED".
set -u
failed=0
ok() { echo "ok: $*"; }
fail() { echo "FAIL: $*"; failed=1; }
wait_for() { # wait_for DESCRIPTION COMMAND…: poll up to 30 s
  what=$1; shift; i=0
  until "$@" >/dev/null 2>&1; do i=$((i+1)); [ $i -gt 300 ] && { fail "$what"; return 1; }; sleep 0.1; done
  ok "$what"
}
status_text() { systemctl show myapi -p StatusText --value; }

install -m 0755 /e2e/corral /usr/bin/corral
cp /e2e/worker.py /srv/worker.py
corral init myapi --listen 127.0.0.1:3000 --instances 2 -- python3 /srv/worker.py --fail-if-env BROKEN \
  && ok "corral init" || fail "corral init"
systemctl daemon-reload
systemctl enable --now myapi.socket && ok "socket enabled" || fail "socket enabled"
systemctl is-active myapi.service >/dev/null && fail "service started before the first connection" || ok "service waits for a connection"

body=$(curl -sf --max-time 30 http://127.0.0.1:3000/) && ok "first connection answered: $body" || fail "first connection"
wait_for "STATUS 2/2 ready, generation 1" sh -c 'systemctl show myapi -p StatusText --value | grep -q "^2/2 workers ready · generation 1 · 0 restarts$"'
[ "$(systemctl show myapi -p Type --value)" = notify ] && ok "Type=notify" || fail "Type=notify"
corral status myapi && ok "corral status" || fail "corral status"

systemctl reload myapi && ok "systemctl reload succeeds" || fail "systemctl reload"
case "$(status_text)" in "2/2 workers ready · generation 2 · 0 restarts") ok "generation 2 serving";; *) fail "after reload: $(status_text)";; esac
curl -sf http://127.0.0.1:3000/ | grep -q "generation 2" && ok "answered by generation 2" || fail "generation 2 answers"

sed -i 's/^instances = 2$/instances = 2\nenv = { BROKEN = "1" }/' /etc/corral/myapi.toml
if systemctl reload myapi; then fail "reload of a broken release succeeded"; else ok "systemctl reload fails on a broken release"; fi
case "$(status_text)" in *"generation 2"*"last reload failed"*) ok "old generation keeps serving: $(status_text)";; *) fail "after broken reload: $(status_text)";; esac
curl -sf http://127.0.0.1:3000/ | grep -q "generation 2" && ok "still answered by generation 2" || fail "serving after broken reload"

journalctl -u myapi -o json CORRAL_WORKER=1 | grep -q '"SYSLOG_IDENTIFIER":"myapi"' && ok "journald: CORRAL_WORKER=1 entries" || fail "journald worker fields"
journalctl -u myapi -p err -o cat | grep -q "broken release: BROKEN is set" && ok "journald: worker stderr at priority err" || fail "journald priority"

main=$(systemctl show myapi -p MainPID --value)
systemctl stop myapi && ok "systemctl stop" || fail "systemctl stop"
[ "$(systemctl show myapi -p Result --value)" = success ] && ok "stopped cleanly (Result=success)" || fail "stop result: $(systemctl show myapi -p Result --value)"
if pgrep -f /srv/worker.py >/dev/null; then fail "workers left after stop"; else ok "no worker left after stop (master was $main)"; fi

[ $failed = 0 ] && echo "E2E PASSED" || echo "E2E FAILED"
