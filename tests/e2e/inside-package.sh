#!/bin/sh
# Runs inside a booted Debian (as /e2e/run): corral as its users get it, from the package.
# /e2e/v1 and /e2e/v2 are signed apt + dnf repositories (v2 offers a newer version too),
# /e2e/worker.py is the test worker. Every check prints "ok: …" or "FAIL: …"; the last line is
# "E2E PASSED" or "E2E FAILED", and "FIGURE: …" lines carry the measured counts.
set -u
. /e2e/lib.sh
V1=$(cat /e2e/v1/VERSION)
V2=$(cat /e2e/v2/VERSION)
echo "systemd $(systemctl --version | head -1 | awk '{print $2}'), corral $V1 -> $V2"


# Only our repository: the container has no network for the Debian mirror in its sources.
apt_repo() { # apt_repo v1|v2
  echo "deb [signed-by=/e2e/$1/apt/corral-archive-keyring.gpg] file:/e2e/$1/apt ./" > /etc/apt/sources.list.d/corral.list
  apt-get update -q -o Dir::Etc::sourcelist=/etc/apt/sources.list.d/corral.list -o Dir::Etc::sourceparts=- \
    -o APT::Get::List-Cleanup=0 >/tmp/apt-update.log 2>&1
}
apt_get() { DEBIAN_FRONTEND=noninteractive apt-get -q -y -o Dir::Etc::sourcelist=/etc/apt/sources.list.d/corral.list -o Dir::Etc::sourceparts=- "$@"; }

# load NAME PORT: requests (a new connection each) until /tmp/stop-NAME exists, bounded by
# count (4000) and time (curl's own 10 s per request); one HTTP code per line in /tmp/codes-NAME.
load() {
  rm -f "/tmp/stop-$1" "/tmp/codes-$1"
  ( i=0; while [ $i -lt 4000 ] && [ ! -e "/tmp/stop-$1" ]; do
      curl -s -o /dev/null -w '%{http_code}\n' --max-time 10 "http://127.0.0.1:$2/api/v1/hello" >> "/tmp/codes-$1"
      i=$((i+1)); done ) &
  echo $! > "/tmp/load-$1"
}
# unload NAME WHAT: stop the stream, report requests / failures / refused (code 000).
unload() {
  touch "/tmp/stop-$1"; wait "$(cat "/tmp/load-$1")" 2>/dev/null
  total=$(wc -l < "/tmp/codes-$1"); bad=$(grep -vc '^200$' "/tmp/codes-$1"); refused=$(grep -c '^000$' "/tmp/codes-$1")
  echo "FIGURE: $2 ($1): $total requests, $bad failed, $refused refused"
  [ "$total" -gt 20 ] && [ "$bad" = 0 ] && ok "$2 ($1): $total requests, none failed" || fail "$2 ($1): $bad of $total failed ($refused refused)"
}
# The binary a unit's main process runs is the current file (not a replaced, deleted one).
runs_current() { pid=$(systemctl show "$1" -p MainPID --value); [ "$pid" -gt 0 ] && ! readlink "/proc/$pid/exe" | grep -q deleted; }

# 1. Install from the signed repository: nothing enabled or started.
apt_repo v1 && ok "apt-get update from the signed repository" || { cat /tmp/apt-update.log; fail "apt-get update"; }
apt_get install corral >/tmp/install.log 2>&1 && ok "apt-get install corral ($V1)" || { cat /tmp/install.log; fail "apt-get install"; }
[ "$(corral --version)" = "corral $V1" ] && ok "corral --version: $V1" || fail "version: $(corral --version)"
verify=$(dpkg --verify corral 2>&1) && [ -z "$verify" ] && ok "dpkg --verify corral: every file as shipped (md5sums)" || fail "dpkg --verify: $verify"
[ -z "$(systemctl list-units --all --no-legend 'corral@*')" ] && ok "no corral@ unit loaded or running" || fail "units after install: $(systemctl list-units --all --no-legend 'corral@*')"
[ -z "$(find /etc/systemd/system -path '*.wants/corral*')" ] && ok "nothing enabled" || fail "enabled: $(find /etc/systemd/system -path '*.wants/corral*')"
[ -d /etc/corral ] && ok "/etc/corral exists" || fail "/etc/corral missing"
man -w corral >/dev/null 2>&1 || [ -e /usr/share/man/man1/corral.1.gz ] && ok "corral(1) installed" || fail "no man page"
[ -e /usr/lib/systemd/system/corral-alert@.service ] && [ -x /usr/libexec/corral/alert ] && [ -x /etc/corral/alert.d/50-webhook ] \
  && [ "$(stat -c %a /etc/corral/alert.env)" = 640 ] && ok "the alert unit, runner, webhook hook and alert.env (0640)" \
  || fail "alert files: $(ls -l /usr/libexec/corral /etc/corral /etc/corral/alert.d 2>&1)"
systemd-analyze verify /usr/lib/systemd/system/corral-alert@.service 2>&1 | grep -v 'Unit .* not found' | grep -q . \
  && fail "corral-alert@.service: $(systemd-analyze verify /usr/lib/systemd/system/corral-alert@.service 2>&1)" \
  || ok "systemd-analyze verify corral-alert@.service"

# 2. A pool of the packaged Node example, as `corral init` sets it up; socket activation.
corral init myapi --listen 127.0.0.1:3000 --instances 2 -- node /usr/share/doc/corral/examples/node/app.js >/tmp/init.log 2>&1 \
  && ok "corral init myapi" || { cat /tmp/init.log; fail "corral init"; }
systemctl daemon-reload
systemctl enable --now myapi.socket >/dev/null 2>&1 && ok "myapi.socket enabled" || fail "enable myapi.socket"
body=$(curl -sf --max-time 30 http://127.0.0.1:3000/api/v1/hello) && ok "first request activates and is answered: $body" || fail "first request"
wait_for "systemctl status shows the STATUS= line" sh -c 'systemctl status myapi | grep -q "Status: \"2/2 workers ready"'
wait_for "journalctl -u myapi CORRAL_WORKER=1 has worker 1's lines" sh -c 'journalctl -u myapi CORRAL_WORKER=1 -o cat | grep -q "worker 1 (pid"'

# 2b. A pool whose master runs as its workers' user (`corral init --user`): no root, no capability.
exposure() { systemd-analyze security "$1" 2>/dev/null | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p'; }
useradd --system --no-create-home --shell /usr/sbin/nologin web && ok "useradd web" || fail "useradd web"
corral init userapi --user web --listen 127.0.0.1:3003 --instances 2 -- node /usr/share/doc/corral/examples/node/app.js >/tmp/init-user.log 2>&1 \
  && ok "corral init userapi --user web" || { cat /tmp/init-user.log; fail "corral init --user"; }
systemctl daemon-reload
systemctl enable --now userapi.socket >/dev/null 2>&1 && ok "userapi.socket enabled" || fail "enable userapi.socket"
body=$(curl -sf --max-time 30 http://127.0.0.1:3003/api/v1/hello) && ok "userapi activates and answers: $body" || fail "userapi first request: $(journalctl -u userapi --no-pager | tail -20)"
wait_for "userapi ready" sh -c 'systemctl show userapi -p StatusText --value | grep -q "^2/2 workers ready"'
user_main=$(systemctl show userapi -p MainPID --value)
[ "$(ps -o user= -p "$user_main")" = web ] && ok "userapi's master runs as web" || fail "userapi's master runs as $(ps -o user= -p "$user_main")"
grep -q '^CapEff:[[:space:]]*0000000000000000$' "/proc/$user_main/status" && grep -q '^CapBnd:[[:space:]]*0000000000000000$' "/proc/$user_main/status" \
  && ok "userapi's master has no capability (effective and bounding set empty)" || fail "capabilities: $(grep ^Cap "/proc/$user_main/status")"
[ "$(ps -o user= --ppid "$user_main" | sort -u | tr -d ' ')" = web ] && ok "its workers run as web" || fail "workers as: $(ps -o user= --ppid "$user_main")"
corral status userapi --json >/dev/null && ok "root's corral status reaches the user's master" || fail "corral status userapi"
user_exposure=$(exposure userapi.service)
echo "FIGURE: systemd-analyze security userapi.service (corral init --user): $user_exposure"
awk -v e="$user_exposure" 'BEGIN { exit !(e != "" && e <= 2.0) }' && ok "userapi.service exposure $user_exposure <= 2.0" \
  || fail "userapi.service exposure $user_exposure: $(systemd-analyze security userapi.service 2>&1 | grep '✗')"
load userapi 3003
sleep 0.5
systemctl reload userapi && ok "systemctl reload userapi (ExecReload as web)" || fail "systemctl reload userapi: $(journalctl -u userapi --no-pager | tail -5)"
unload userapi "rolling reload of a user's master"

# 2c. Delegated operations: a deploy user in the corral group operates the pools without sudo,
#     through corral's control socket and through systemctl (the shipped polkit rule); nobody is
#     refused by both, and the group grants nothing else.
getent group corral >/dev/null && ok "the package created the corral group (sysusers.d)" || fail "no corral group"
[ -e /usr/share/polkit-1/rules.d/50-corral.rules ] && ok "the polkit rule is installed" || fail "no polkit rule"
grep -q '^group = "corral"$' /etc/corral/myapi.toml && ok "corral init wrote [control] group = \"corral\"" || fail "myapi.toml: $(cat /etc/corral/myapi.toml)"
useradd --create-home --shell /bin/sh --groups corral deploy && ok "useradd deploy (in group corral)" || fail "useradd deploy"
printf '[Service]\nExecStart=/bin/sleep infinity\n' > /etc/systemd/system/other.service
systemctl daemon-reload && systemctl start other.service
as() { u=$1; shift; runuser -u "$u" -- "$@"; }
gen() { corral status "$1" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["generation"])'; }
g0=$(gen myapi); main0=$(systemctl show myapi -p MainPID --value)
as deploy corral status myapi >/tmp/deploy.log 2>&1 && ok "deploy: corral status myapi" || fail "deploy: corral status: $(cat /tmp/deploy.log)"
load myapi 3000
sleep 0.5
as deploy corral reload myapi >/tmp/deploy.log 2>&1 && ok "deploy: corral reload myapi" || fail "deploy: corral reload: $(cat /tmp/deploy.log)"
as deploy systemctl reload myapi >/tmp/deploy.log 2>&1 && ok "deploy: systemctl reload myapi (polkit rule)" || fail "deploy: systemctl reload: $(cat /tmp/deploy.log)"
as deploy corral upgrade myapi >/tmp/deploy.log 2>&1 && ok "deploy: corral upgrade myapi" || fail "deploy: corral upgrade: $(cat /tmp/deploy.log)"
unload myapi "reloads and an upgrade by the deploy user"
[ "$(gen myapi)" = $((g0 + 2)) ] && ok "two reloads by deploy: generation $g0 -> $(gen myapi)" || fail "generation $g0 -> $(gen myapi)"
[ "$(systemctl show myapi -p MainPID --value)" = "$main0" ] && ok "deploy's upgrade kept the master ($main0)" || fail "master $main0 -> $(systemctl show myapi -p MainPID --value)"
as deploy systemctl reload userapi >/tmp/deploy.log 2>&1 && ok "deploy: systemctl reload userapi (a user's master)" || fail "deploy: systemctl reload userapi: $(cat /tmp/deploy.log)"
as deploy corral reload userapi >/tmp/deploy.log 2>&1 && ok "deploy: corral reload userapi (the master is not in the group: the socket's credentials check admits deploy)" \
  || fail "deploy: corral reload userapi: $(cat /tmp/deploy.log)"
# Nothing else: not stop or start, not another unit.
for what in "stop myapi" "start corral-alert@x.service" "restart other.service" "reload other.service"; do
  # shellcheck disable=SC2086
  if as deploy systemctl $what >/tmp/deploy.log 2>&1; then fail "deploy may systemctl $what"; else ok "deploy may not systemctl $what"; fi
done
systemctl is-active --quiet myapi && systemctl is-active --quiet other && ok "myapi and other.service still run" || fail "a refused request changed something"
# Everyone else: refused, with a message that says why.
for what in "reload myapi" "status myapi" "upgrade myapi" "scale myapi +1"; do
  # shellcheck disable=SC2086
  if as nobody corral $what >/tmp/nobody.log 2>&1; then fail "nobody may corral $what"
  elif grep -q "permission denied" /tmp/nobody.log; then ok "nobody: corral $what refused ($(head -c 160 /tmp/nobody.log))"
  else fail "nobody: corral $what: $(cat /tmp/nobody.log)"; fi
done
if as nobody systemctl reload myapi >/tmp/nobody.log 2>&1; then fail "nobody may systemctl reload myapi"
else ok "nobody: systemctl reload myapi refused ($(head -c 160 /tmp/nobody.log))"; fi
if as nobody corral reload userapi >/tmp/nobody.log 2>&1; then fail "nobody may corral reload userapi"
elif grep -q "may not control this pool" /tmp/nobody.log; then ok "nobody: corral reload userapi refused by the master ($(head -c 160 /tmp/nobody.log))"
else fail "nobody: corral reload userapi: $(cat /tmp/nobody.log)"; fi
[ "$(gen myapi)" = $((g0 + 2)) ] && ok "nothing nobody asked was done" || fail "generation moved: $(gen myapi)"
systemctl stop other.service

# 3. A template instance: /etc/corral/api2.toml + corral@api2.socket.
cp /e2e/worker.py /srv/worker.py
printf 'command = ["python3", "/srv/worker.py"]\ninstances = 2\n' > /etc/corral/api2.toml
mkdir -p /etc/systemd/system/corral@api2.socket.d
printf '[Socket]\nListenStream=\nListenStream=127.0.0.1:3001\n' > /etc/systemd/system/corral@api2.socket.d/listen.conf
systemctl daemon-reload
systemctl enable --now corral@api2.socket >/dev/null 2>&1 && ok "corral@api2.socket enabled" || fail "enable corral@api2.socket"
curl -sf --max-time 30 http://127.0.0.1:3001/ >/dev/null && ok "template instance answers" || fail "template instance"
wait_for "corral@api2 ready" sh -c 'systemctl show corral@api2 -p StatusText --value | grep -q "^2/2 workers ready"'
echo "FIGURE: systemd-analyze security corral@api2.service (the template, root master): $(exposure corral@api2.service)"

# 3b. Secrets as systemd credentials (`corral init --credential`): workers read
#     $CREDENTIALS_DIRECTORY/NAME, whether they run as the master's user (--user) or as the
#     config's user under a root master (which copies them for that user); the encrypted form
#     comes from `systemd-creds encrypt`.
mkdir -p /etc/corral/secrets && chmod 0700 /etc/corral/secrets
printf 'plain-token\n' > /etc/corral/secrets/token && chmod 0600 /etc/corral/secrets/token
creds="--credential token=/etc/corral/secrets/token"
if printf 'encrypted-key\n' | systemd-creds encrypt --with-key=host --name=apikey - /etc/corral/secrets/apikey.cred >/tmp/creds.log 2>&1; then
  ok "systemd-creds encrypt --with-key=host (apikey.cred)"
  creds="$creds --credential apikey=/etc/corral/secrets/apikey.cred"
else
  fail "systemd-creds encrypt: $(cat /tmp/creds.log)"
fi
cp /e2e/worker.py /srv/worker.py
# shellcheck disable=SC2086
corral init credapi --user web $creds --listen 127.0.0.1:3005 --instances 2 -- python3 /srv/worker.py >/tmp/init-cred.log 2>&1 \
  && ok "corral init credapi --user web $creds" || { cat /tmp/init-cred.log; fail "corral init credapi"; }
# shellcheck disable=SC2086
corral init credroot $creds --listen 127.0.0.1:3006 --instances 2 -- python3 /srv/worker.py >/tmp/init-cred.log 2>&1 \
  && ok "corral init credroot (root master)" || { cat /tmp/init-cred.log; fail "corral init credroot"; }
sed -i '/^instances = /a user = "web"' /etc/corral/credroot.toml
grep -q '^LoadCredential=token:/etc/corral/secrets/token$' /etc/systemd/system/credroot.service && ok "the unit says LoadCredential=token:…" \
  || fail "credroot.service: $(grep -i credential /etc/systemd/system/credroot.service)"
systemctl daemon-reload
systemctl enable --now credapi.socket credroot.socket >/dev/null 2>&1 && ok "credapi.socket and credroot.socket enabled" || fail "enable the credential pools"
for pool in credapi:3005 credroot:3006; do
  name=${pool%:*}; port=${pool#*:}
  got=$(curl -s --max-time 30 "http://127.0.0.1:$port/credential/token")
  [ "$got" = plain-token ] && ok "$name: a worker reads \$CREDENTIALS_DIRECTORY/token" || fail "$name: token: $got $(journalctl -u "$name" --no-pager | tail -5)"
  if [ -e /etc/corral/secrets/apikey.cred ]; then
    got=$(curl -s --max-time 10 "http://127.0.0.1:$port/credential/apikey")
    [ "$got" = encrypted-key ] && ok "$name: a worker reads the decrypted apikey (LoadCredentialEncrypted=)" || fail "$name: apikey: $got"
  fi
done
root_main=$(systemctl show credroot -p MainPID --value)
[ "$(ps -o user= -p "$root_main" | tr -d ' ')" = root ] && [ "$(ps -o user= --ppid "$root_main" | sort -u | tr -d ' ')" = web ] \
  && ok "credroot: the master is root, its workers web" || fail "credroot users: $(ps -o user=,pid= -p "$root_main") / $(ps -o user= --ppid "$root_main")"
systemctl reload credroot && got=$(curl -s --max-time 10 http://127.0.0.1:3006/credential/token) && [ "$got" = plain-token ] \
  && ok "credroot: after a reload the new workers read it too" \
  || fail "credroot after a reload: $got $(ls -la /run/corral/credroot /run/corral/credroot/credentials 2>&1) $(journalctl -u credroot --no-pager | tail -25)"
[ "$(stat -c %U:%G /run/corral/credroot)" = root:root ] && [ "$(stat -c %U:%a /run/corral/credroot/credentials)" = web:500 ] \
  && ok "credroot: systemd's runtime directory stays root's; the copy is web's (0500)" \
  || fail "credroot owners: $(stat -c '%n %U:%G %a' /run/corral/credroot /run/corral/credroot/credentials)"
leak=$(grep -l plain-token /etc/corral/*.toml /proc/"$root_main"/environ /proc/"$(pgrep -P "$root_main" | head -1)"/environ 2>/dev/null)
[ -z "$leak" ] && ok "the secret is in no config and no environment" || fail "the secret leaked into: $leak"
systemctl disable --now credapi.socket credroot.socket credapi.service credroot.service >/dev/null 2>&1

# 4. Rolling reload under load; a broken release fails the reload and the old generation serves.
load myapi 3000
sleep 0.5
systemctl reload myapi && ok "systemctl reload myapi" || fail "systemctl reload"
systemctl reload myapi && ok "systemctl reload myapi again" || fail "second reload"
unload myapi "rolling reloads"
sed -i 's|^command = .*|command = ["node", "/nonexistent/app.js"]|' /etc/corral/myapi.toml
if systemctl reload myapi 2>/dev/null; then fail "a broken release reloaded"; else ok "systemctl reload fails on a broken release"; fi
curl -sf --max-time 10 http://127.0.0.1:3000/api/v1/hello >/dev/null && ok "the old generation keeps serving" || fail "nothing serves after the broken reload"
corral init myapi --force --listen 127.0.0.1:3000 --instances 2 -- node /usr/share/doc/corral/examples/node/app.js >/dev/null 2>&1
systemctl daemon-reload
systemctl reload myapi && ok "a fixed release reloads" || fail "reload after fix"

# 5. Upgrade from the repository under load: no failed request, every pool on the new binary,
#    in place (`corral upgrade` from the postinst): same master pid, same worker pids.
apt_repo v2 && ok "apt-get update (v2 offered)" || fail "apt-get update v2"
pids() { corral status "$1" --json | python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["pid"], sorted(w["pid"] for w in s["workers"]))'; }
before_myapi=$(pids myapi); before_api2=$(pids api2); before_user=$(pids userapi)
# A pool still starting when the upgrade comes: its app takes 20 s to be ready, so its unit is
# "activating" (Type=notify, no READY=1 yet) while the package is replaced.
corral init slow --listen 127.0.0.1:3002 --instances 2 -- python3 /srv/worker.py --ready-after 20000 >/tmp/init-slow.log 2>&1 \
  && ok "corral init slow (an app that takes 20 s to be ready)" || { cat /tmp/init-slow.log; fail "corral init slow"; }
# It serves at once but says READY=1 only when warm: notify mode waits for that.
sed -i 's/^mode = .*/mode = "notify"/' /etc/corral/slow.toml
systemctl daemon-reload
systemctl enable slow.socket >/dev/null 2>&1 && systemctl start --no-block slow.service
wait_for "slow is starting (activating, its master running)" sh -c \
  '[ "$(systemctl show slow -p ActiveState --value)" = activating ] && [ "$(systemctl show slow -p MainPID --value)" -gt 0 ] && corral status slow --json >/dev/null'
slow_main=$(systemctl show slow -p MainPID --value)
load myapi 3000
load api2 3001
load userapi 3003
sleep 0.5
apt_get install corral >/tmp/upgrade.log 2>&1 && ok "apt-get upgrade to $V2" || { cat /tmp/upgrade.log; fail "upgrade"; }
sleep 1
unload myapi "package upgrade"
unload api2 "package upgrade"
unload userapi "package upgrade"
for unit in myapi corral@api2 userapi; do
  wait_for "$unit runs the new binary" runs_current "$unit"
done
grep -q "userapi: upgraded in place from corral $V1 to $V2" /tmp/upgrade.log && ok "the user's master was upgraded in place" || fail "userapi upgrade: $(cat /tmp/upgrade.log)"
[ "$(pids userapi)" = "$before_user" ] && ok "userapi: same master and worker pids ($before_user)" || fail "userapi pids: $before_user -> $(pids userapi)"
[ "$(corral status myapi --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])')" = "$V2" ] \
  && ok "corral status reports $V2" || fail "status version: $(corral status myapi --json | head -c 300)"
grep -q "myapi: upgraded in place from corral $V1 to $V2" /tmp/upgrade.log && ok "the upgrade said which pools it moved" || fail "upgrade log: $(cat /tmp/upgrade.log)"
grep "^corral: " /tmp/upgrade.log | sed 's/^/  /'
grep -q "slow: upgraded in place from corral $V1 to $V2" /tmp/upgrade.log \
  && ok "the pool still starting was upgraded in place too" || fail "starting pool: $(cat /tmp/upgrade.log)"
[ "$(systemctl show slow -p MainPID --value)" = "$slow_main" ] && ok "slow: the same master ($slow_main)" || fail "slow was restarted: $slow_main -> $(systemctl show slow -p MainPID --value)"
wait_for "slow runs the new binary" runs_current slow
wait_for "slow becomes ready on the new binary (active)" sh -c '[ "$(systemctl show slow -p ActiveState --value)" = active ]'
[ "$(corral status slow --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])')" = "$V2" ] \
  && ok "corral status slow reports $V2" || fail "slow status: $(corral status slow --json | head -c 300)"
curl -sf --max-time 10 http://127.0.0.1:3002/ >/dev/null && ok "slow serves" || fail "slow does not serve"
verify=$(dpkg --verify corral 2>&1) && [ -z "$verify" ] && ok "dpkg --verify after the upgrade" || fail "dpkg --verify: $verify"
[ "$(pids myapi)" = "$before_myapi" ] && ok "myapi: same master and worker pids ($before_myapi)" || fail "myapi pids: $before_myapi -> $(pids myapi)"
[ "$(pids api2)" = "$before_api2" ] && ok "api2: same master and worker pids ($before_api2)" || fail "api2 pids: $before_api2 -> $(pids api2)"

# 8. The postinst twice (a forced reconfigure): idempotent, pools untouched.
main=$(systemctl show myapi -p MainPID --value)
/var/lib/dpkg/info/corral.postinst configure "$V1-1" && /var/lib/dpkg/info/corral.postinst configure "$V1-1" \
  && ok "postinst configure twice" || fail "postinst twice"
DEBIAN_FRONTEND=noninteractive dpkg --configure -a && ok "dpkg --configure -a" || fail "dpkg --configure -a"
[ "$(systemctl show myapi -p MainPID --value)" = "$main" ] && ok "a reconfigure leaves the running pool alone" || fail "reconfigure restarted the pool"

# 6. Remove: pools stopped, nothing failed, configs kept; reinstall; purge.
apt_get remove corral >/tmp/remove.log 2>&1 && ok "apt-get remove corral" || { cat /tmp/remove.log; fail "remove"; }
wait_for "no worker left after remove" sh -c '! pgrep -f "[a]pp.js|[w]orker.py"'
[ -z "$(systemctl --failed --no-legend)" ] && ok "no failed unit after remove" || fail "failed units: $(systemctl --failed --no-legend)"
[ -e /etc/corral/myapi.toml ] && [ -e /etc/corral/api2.toml ] && ok "pool configs kept" || fail "configs gone"
grep "^corral: " /tmp/remove.log | sed 's/^/  /'
grep -q "these pool units stay enabled.* myapi.socket" /tmp/remove.log && grep -q "systemctl disable.* slow.socket" /tmp/remove.log \
  && ok "remove names the pool units that stay enabled and the command to disable them" || fail "remove log: $(cat /tmp/remove.log)"
# What the next boot does with them: sockets.target starts every enabled socket. Skipped, not
# failed; nothing listens, so a client is refused instead of accepted and reset.
systemctl daemon-reload
systemctl start sockets.target
[ "$(systemctl show myapi.socket -p ActiveState --value)" = inactive ] && [ "$(systemctl show myapi.socket -p ConditionResult --value)" = no ] \
  && ok "myapi.socket is skipped while corral is not installed" || fail "myapi.socket: $(systemctl status myapi.socket 2>&1 | head -5)"
curl -s -o /dev/null --max-time 5 http://127.0.0.1:3000/api/v1/hello; code=$?
[ "$code" = 7 ] && ok "a client is refused (curl exit 7), not reset" || fail "curl after remove: exit $code"
[ -z "$(systemctl --failed --no-legend)" ] && ok "no failed unit at a boot's start of the sockets" || fail "failed units: $(systemctl --failed --no-legend)"
apt_get install corral >/dev/null 2>&1 && ok "reinstall" || fail "reinstall"
systemctl start myapi.socket corral@api2.socket
curl -sf --max-time 30 http://127.0.0.1:3000/api/v1/hello >/dev/null && curl -sf --max-time 30 http://127.0.0.1:3001/ >/dev/null \
  && ok "pools serve again after reinstall" || fail "pools after reinstall"
apt_get purge corral >/tmp/purge.log 2>&1 && ok "apt-get purge corral" || { cat /tmp/purge.log; fail "purge"; }
left=$(ls /usr/bin/corral /usr/libexec/corral /usr/lib/systemd/system/corral@* /usr/share/doc/corral 2>/dev/null)
[ -z "$left" ] && ok "nothing of the package left" || fail "left after purge: $left"
dangling=$(find /etc/systemd/system -xtype l)
[ -z "$dangling" ] && ok "no dangling unit links" || fail "dangling links: $dangling"
[ -e /etc/corral/myapi.toml ] && [ -e /etc/corral/api2.toml ] && ok "purge keeps the users' pool configs" || fail "purge removed configs"
[ ! -e /etc/corral/alert.env ] && [ ! -e /etc/corral/alert.d/50-webhook ] && ok "purge removes the package's conffiles" || fail "conffiles left: $(ls /etc/corral /etc/corral/alert.d 2>&1)"
wait_for "no worker left after purge" sh -c '! pgrep -f "[a]pp.js|[w]orker.py"'

# 7. The .rpm against the same systemd (rpm from Debian, --nodeps: glibc and sh are dpkg's).
rpm1=$(ls /e2e/v1/dnf/corral-*.rpm | head -1)
rpm2=$(ls /e2e/v2/dnf/corral-"$V2"-*.rpm | head -1)
rpm --import /e2e/v1/dnf/RPM-GPG-KEY-corral && ok "rpm --import the signing key" || fail "rpm --import"
rpm -K "$rpm1" | grep -q "digests signatures OK" && ok "the rpm's signature verifies" || fail "rpm -K: $(rpm -K "$rpm1")"
rpm -i --nodeps "$rpm1" && ok "rpm -i $V1" || fail "rpm -i"
[ "$(corral --version)" = "corral $V1" ] && ok "rpm's corral $V1" || fail "rpm version"
[ -z "$(systemctl list-units --no-legend --state=active 'corral@*')" ] && ok "rpm install started nothing" || fail "rpm install started units"
systemctl start myapi.socket corral@api2.socket
curl -sf --max-time 30 http://127.0.0.1:3000/api/v1/hello >/dev/null && curl -sf --max-time 30 http://127.0.0.1:3001/ >/dev/null \
  && ok "pools serve from the rpm's binary" || fail "pools on rpm"
before_myapi=$(pids myapi); before_api2=$(pids api2)
load myapi 3000
load api2 3001
sleep 0.5
rpm -U --nodeps "$rpm2" >/tmp/rpm-upgrade.log 2>&1 && ok "rpm -U to $V2" || { cat /tmp/rpm-upgrade.log; fail "rpm -U"; }
sleep 1
unload myapi "rpm upgrade"
unload api2 "rpm upgrade"
for unit in myapi corral@api2; do
  wait_for "$unit runs the rpm's new binary" runs_current "$unit"
done
[ "$(pids myapi)" = "$before_myapi" ] && [ "$(pids api2)" = "$before_api2" ] \
  && ok "rpm upgrade in place: same master and worker pids" || fail "rpm upgrade pids: $before_myapi $before_api2 -> $(pids myapi) $(pids api2)"
rpm -e --nodeps corral >/tmp/rpm-erase.log 2>&1 && ok "rpm -e" || { cat /tmp/rpm-erase.log; fail "rpm -e"; }
grep -q "these pool units stay enabled" /tmp/rpm-erase.log && ok "rpm -e names the pool units that stay enabled" || fail "rpm -e log: $(cat /tmp/rpm-erase.log)"
left=$(ls -d /etc/corral/alert.d /usr/libexec/corral /usr/share/doc/corral /usr/share/licenses/corral /usr/bin/corral 2>/dev/null)
[ -z "$left" ] && ok "rpm -e leaves none of the package's folders" || fail "left after rpm -e: $left"
wait_for "no worker left after rpm -e" sh -c '! pgrep -f "[a]pp.js|[w]orker.py"'
[ -z "$(systemctl --failed --no-legend)" ] && ok "no failed unit after rpm -e" || fail "failed units: $(systemctl --failed --no-legend)"
[ -e /etc/corral/myapi.toml ] && ok "rpm -e keeps the pool configs" || fail "rpm -e removed configs"
[ -z "$(find /etc/systemd/system -xtype l)" ] && ok "no dangling unit links after rpm -e" || fail "dangling after rpm -e"

finish
