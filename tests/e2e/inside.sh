#!/bin/sh
# Runs inside the booted container (as /e2e/run): the user's story, under a real systemd.
# Every check prints "ok: …" or "FAIL: …"; the last line is "E2E PASSED" or "E2E FAILED".
set -u
. /e2e/lib.sh
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

# corral logs: the pool's journal, each line prefixed with who wrote it.
corral logs myapi -n 500 >/tmp/logs.txt 2>&1 && ok "corral logs" || fail "corral logs: $(tail -3 /tmp/logs.txt)"
grep -q " w1 *| " /tmp/logs.txt && ok "corral logs: worker lines tagged w1" || fail "corral logs: no w1 line: $(head -5 /tmp/logs.txt)"
grep -q " master *| reload to generation 3 failed" /tmp/logs.txt && ok "corral logs: the master's lines" || fail "corral logs: no master line: $(grep -v ' w[01] ' /tmp/logs.txt | tail -8)"
grep -q " systemd *| .*Reload" /tmp/logs.txt && ok "corral logs: systemd's lines about the unit" || fail "corral logs: no systemd line"
corral logs myapi --worker 1 -n 500 >/tmp/logs-w1.txt 2>&1
[ -s /tmp/logs-w1.txt ] && ! grep -v " w1 *| " /tmp/logs-w1.txt | grep -q . && ok "corral logs --worker 1: only w1" || fail "corral logs --worker 1: $(grep -v ' w1 ' /tmp/logs-w1.txt | head -3)"
corral logs myapi --since "10 min ago" >/tmp/logs-since.txt 2>&1
grep -q "w[01] *| broken release: BROKEN is set" /tmp/logs-since.txt && ok "corral logs --since" || fail "corral logs --since: $(grep broken /tmp/logs-since.txt | head -3) $(tail -3 /tmp/logs-since.txt)"
corral logs myapi -f -n 1 >/tmp/logs-follow.txt 2>&1 &
follower=$!
wait_for "corral logs -f started" sh -c 'grep -q "|" /tmp/logs-follow.txt'
systemctl reload myapi || true
wait_for "corral logs -f prints the new reload's lines" sh -c 'grep -q "master *| reload to generation 3 failed" /tmp/logs-follow.txt'
kill "$follower"; wait "$follower" 2>/dev/null

main=$(systemctl show myapi -p MainPID --value)
systemctl stop myapi && ok "systemctl stop" || fail "systemctl stop"
[ "$(systemctl show myapi -p Result --value)" = success ] && ok "stopped cleanly (Result=success)" || fail "stop result: $(systemctl show myapi -p Result --value)"
if pgrep -f /srv/worker.py >/dev/null; then fail "workers left after stop"; else ok "no worker left after stop (master was $main)"; fi

# Without a .socket unit: corral binds `listen` itself and keeps the socket in systemd's fd store,
# so `systemctl restart` refuses no connection.
install -m 0644 /e2e/corral@.service /etc/systemd/system/corral@.service
printf 'command = ["python3", "/srv/worker.py"]\ninstances = 2\nlisten = ["127.0.0.1:3100"]\n' > /etc/corral/store.toml
systemctl daemon-reload
systemctl start corral@store.service && ok "corral@store started (binds its own socket)" || fail "corral@store start"
wait_for "corral@store answers" curl -sf http://127.0.0.1:3100/
( i=0; while [ $i -lt 300 ]; do curl -s -o /dev/null -w '%{http_code}\n' --max-time 20 http://127.0.0.1:3100/; i=$((i+1)); done > /tmp/codes ) &
loop=$!
sleep 0.3
systemctl restart corral@store.service && ok "systemctl restart" || fail "systemctl restart"
wait $loop
bad=$(grep -vc '^200$' /tmp/codes)
[ "$bad" = 0 ] && ok "no refused or failed request across the restart ($(wc -l < /tmp/codes) requests)" || fail "$bad of $(wc -l < /tmp/codes) requests failed across the restart"
journalctl -u corral@store -o cat | grep -q "kept across the restart by systemd's fd store" && ok "socket came back from the fd store" || fail "fd store not used"
systemctl stop corral@store.service

# kill -9 of the master: a worker started through a wrapper that does not exec (`npm start`
# style) escapes PR_SET_PDEATHSIG, but not the unit's cgroup: with KillMode=mixed systemd kills
# what is left (here after a short TimeoutStopSec; with the shipped unit after at most 45 s).
printf 'command = ["sh", "-c", "python3 /srv/worker.py --any-listen-pid; true"]\ninstances = 1\nlisten = ["127.0.0.1:3200"]\n' > /etc/corral/wrapped.toml
mkdir -p /etc/systemd/system/corral@wrapped.service.d
printf '[Service]\nTimeoutStopSec=3\n' > /etc/systemd/system/corral@wrapped.service.d/short.conf
systemctl daemon-reload
systemctl start corral@wrapped.service && ok "corral@wrapped started" || fail "corral@wrapped start"
wait_for "corral@wrapped answers" curl -sf --max-time 5 http://127.0.0.1:3200/
wrapped_main=$(systemctl show corral@wrapped -p MainPID --value)
wrapped_worker=$(curl -sf --max-time 5 http://127.0.0.1:3200/ | awk '{print $2}')
[ -n "$wrapped_worker" ] && [ "$(cat /proc/"$wrapped_worker"/comm 2>/dev/null)" = python3 ] \
  && ok "the wrapped worker is python3 pid $wrapped_worker, not the master's child" || fail "no wrapped worker pid ($wrapped_worker)"
kill -9 "$wrapped_main"
wait_for "the wrapped worker ended with its killed master's cgroup" sh -c "! kill -0 $wrapped_worker"
systemctl stop corral@wrapped.service

# ready.mode = "listen" (what `corral init` writes) for a worker that runs as another user and
# never sends READY=1: the master sees it wait in poll() on its socket, which needs the unit's
# CAP_SYS_PTRACE to read /proc/PID/task/TID/syscall of a process of another user.
corral init asnobody --listen 127.0.0.1:3300 --user nobody --instances 1 -- python3 /srv/worker.py --never-ready \
  && ok "corral init --user nobody" || fail "corral init --user nobody"
grep -q '^mode = "listen"' /etc/corral/asnobody.toml && ok "init writes ready.mode = listen" || fail "init ready mode"
systemctl daemon-reload
systemctl enable --now asnobody.socket >/dev/null 2>&1
curl -sf --max-time 30 http://127.0.0.1:3300/ >/dev/null && ok "asnobody answers" || fail "asnobody answers"
wait_for "a worker of user nobody that never sends READY=1 is ready once it polls its socket" \
  sh -c 'systemctl show asnobody -p StatusText --value | grep -q "^1/1 workers ready"'
[ "$(ps -o user= -p "$(systemctl show asnobody -p MainPID --value | xargs pgrep -P)")" = nobody ] \
  && ok "the worker runs as nobody" || fail "the worker's user"
systemctl stop asnobody.socket asnobody.service

# Alerts: a pool that cannot start gives up, its unit fails for good, OnFailure= starts
# corral-alert@crashy.service, which runs the hooks: one records what it was given, the shipped
# webhook hook posts JSON to a local receiver.
install -m 0644 /e2e/corral-alert@.service /etc/systemd/system/corral-alert@.service
install -D -m 0755 /e2e/alert /usr/libexec/corral/alert
install -D -m 0755 /e2e/50-webhook /etc/corral/alert.d/50-webhook
mkdir -p /var/lib/alert-test
cat > /etc/corral/alert.d/10-record <<'HOOK'
#!/bin/sh
{ env | grep '^CORRAL_ALERT_' | sort; echo '--- journal'; cat; } > /var/lib/alert-test/record
HOOK
chmod 0755 /etc/corral/alert.d/10-record
python3 -c '
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        open("/var/lib/alert-test/webhook", "wb").write(body)
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", 3599), H).serve_forever()
' &
receiver=$!
printf 'CORRAL_ALERT_WEBHOOK_URL=http://127.0.0.1:3599/hook\nCORRAL_ALERT_WEBHOOK_FORMAT=slack\n' > /etc/corral/alert.env
corral init crashy --on-failure-alert --listen 127.0.0.1:3500 --instances 1 -- python3 /srv/worker.py --exit 3 >/dev/null \
  && ok "corral init --on-failure-alert" || fail "corral init --on-failure-alert"
grep -q '^OnFailure=corral-alert@%n.service$' /etc/systemd/system/crashy.service && ok "OnFailure= in the unit" || fail "no OnFailure="
printf '\n[restart]\ndelay = "10ms"\nmax_delay = "20ms"\nmax_restarts = 2\n' >> /etc/corral/crashy.toml
mkdir -p /etc/systemd/system/crashy.service.d
printf '[Unit]\nStartLimitIntervalSec=120\nStartLimitBurst=2\n[Service]\nRestartSec=200ms\n' > /etc/systemd/system/crashy.service.d/fast.conf
systemctl daemon-reload
systemctl start crashy.socket
systemctl start crashy.service >/dev/null 2>&1
wait_for "the crash-looping pool's unit has failed for good" sh -c '[ "$(systemctl show crashy -p ActiveState --value)" = failed ]'
wait_for "corral-alert@crashy.service ran the hooks" test -s /var/lib/alert-test/record
grep -q '^CORRAL_ALERT_UNIT=crashy.service$' /var/lib/alert-test/record && ok "the hook got the unit's name" || fail "unit name: $(head -3 /var/lib/alert-test/record)"
grep -q '^CORRAL_ALERT_RESULT=' /var/lib/alert-test/record && ok "the hook got the result: $(grep RESULT= /var/lib/alert-test/record)" || fail "no result"
grep -q 'giving up' /var/lib/alert-test/record && ok "the hook got the last journal lines" || fail "journal lines: $(cat /var/lib/alert-test/record)"
wait_for "the webhook hook posted" test -s /var/lib/alert-test/webhook
python3 -c 'import json; t = json.load(open("/var/lib/alert-test/webhook"))["text"]; assert "crashy.service failed" in t and "giving up" in t, t' \
  && ok "the webhook got a Slack-style JSON payload" || fail "webhook payload: $(cat /var/lib/alert-test/webhook)"
[ "$(systemctl show corral-alert@crashy.service -p Result --value)" = success ] && ok "corral-alert@crashy.service succeeded" || fail "alert unit: $(systemctl status corral-alert@crashy.service --no-pager)"
kill "$receiver"

finish
