#!/bin/sh
# Runs inside a booted Debian trixie (systemd >= 253): the same pool with Type=notify-reload,
# where systemd itself sends SIGHUP and waits for RELOADING=1 + MONOTONIC_USEC=, then READY=1.
set -u
. /e2e/lib.sh
echo "systemd $(systemctl --version | head -1)"

install -m 0755 /e2e/corral /usr/bin/corral
cp /e2e/worker.py /srv/worker.py
corral init myapi --listen 127.0.0.1:3000 --instances 2 -- python3 /srv/worker.py >/dev/null && ok "corral init" || fail "corral init"
sed -i 's/^Type=notify$/Type=notify-reload/; /^ExecReload=/d' /etc/systemd/system/myapi.service
systemctl daemon-reload
systemctl enable --now myapi.socket && ok "socket enabled" || fail "socket enabled"
curl -sf --max-time 30 http://127.0.0.1:3000/ >/dev/null && ok "first connection answered" || fail "first connection"
wait_for "STATUS 2/2 ready, generation 1" sh -c 'systemctl show myapi -p StatusText --value | grep -q "^2/2 workers ready · generation 1"'
[ "$(systemctl show myapi -p Type --value)" = notify-reload ] && ok "Type=notify-reload" || fail "Type is $(systemctl show myapi -p Type --value)"
for g in 2 3; do
  systemctl reload myapi && ok "systemctl reload (SIGHUP from systemd) succeeds" || fail "systemctl reload"
  case "$(systemctl show myapi -p StatusText --value)" in
    "2/2 workers ready · generation $g · 0 restarts") ok "generation $g serving";;
    *) fail "after reload: $(systemctl show myapi -p StatusText --value)";;
  esac
done
curl -sf http://127.0.0.1:3000/ | grep -q "generation 3" && ok "answered by generation 3" || fail "generation 3 answers"
[ "$(systemctl show myapi -p ActiveState --value)" = active ] && ok "still active" || fail "state $(systemctl show myapi -p ActiveState --value)"
systemctl stop myapi && ok "systemctl stop" || fail "systemctl stop"
finish
