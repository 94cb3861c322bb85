#!/usr/bin/env bash
# The Raspberry Pi guide (docs/deploy-raspberry-pi.md, section 3: virtualenv and systemd unit)
# followed on Debian bookworm arm64, the Pi's 64-bit OS, under QEMU user emulation.
#
# It builds (once, then cached) a bookworm arm64 root file system with debootstrap, copies it,
# installs the project there as the guide does (a venv in /opt/gridm2m, pip install of the
# source tree), starts the gateway with the unit's command line, user and environment in a
# chroot, and runs a head-end and a fleet of meters on the host against it (the chroot shares
# the host's loopback). It prints the install time, the start-up time, the gateway's RSS
# with the fleet registered, and what the gateway writes per meter per day.
#
# Run as root on a Debian/Ubuntu x86-64 host, from the project's root: `make pi-check`, or
# bench/pi_check.sh. It takes minutes (the first run ~10 more for debootstrap). Settings:
#   PI_CHECK_CACHE        where the arm64 base file system is kept (/var/tmp/gridm2m-pi-check)
#   PI_CHECK_MIRROR       Debian mirror (http://deb.debian.org/debian)
#   PI_CHECK_METERS       meters in the fleet (1000)
#   PI_CHECK_IDLE         seconds the registered gateway is watched with no meters (60)
#   PI_CHECK_SETTLE       seconds between the last meter's registration and the window (30)
#   PI_CHECK_WINDOW       seconds the gateway is watched with the fleet registered (120)
#   PI_CHECK_CLOCK_SPEED  the fleet's simulated seconds per wall second (1440: a day a minute)
#   PI_CHECK_PYTHON       the host's Python with the project installed (.venv/bin/python)
# Times are of an emulated CPU (several times slower than a Pi 4); RSS includes the
# emulator's own memory (its baseline is printed); bytes written do not depend on the CPU.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${PI_CHECK_CACHE:-/var/tmp/gridm2m-pi-check}
MIRROR=${PI_CHECK_MIRROR:-http://deb.debian.org/debian}
METERS=${PI_CHECK_METERS:-1000}
IDLE=${PI_CHECK_IDLE:-60}
SETTLE=${PI_CHECK_SETTLE:-30}
WINDOW=${PI_CHECK_WINDOW:-120}
CLOCK=${PI_CHECK_CLOCK_SPEED:-1440}
HOST_PY=${PI_CHECK_PYTHON:-$REPO/.venv/bin/python}
BASE=$CACHE/bookworm-arm64       # debootstrap's result, never changed after
ROOT=$CACHE/run                  # this run's copy: the "Pi"
WORK=$CACHE/host                 # the host's side: head-end, PKI, logs
DATA=$ROOT/var/lib/gridm2m       # the gateway's data directory, seen from the host

say() { printf '[pi-check %(%H:%M:%S)T] %s\n' -1 "$*"; }
die() { say "FAILED: $*"; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

[ "$(id -u)" = 0 ] || die "run as root (debootstrap, chroot and mounts need it)"
[ -x "$HOST_PY" ] || die "no $HOST_PY: run 'make test' once (it makes .venv), or set PI_CHECK_PYTHON"

# --- what runs and is mounted, undone on any exit -------------------------------------------
PIDS=()
MOUNTS=()
cleanup() {
    local pid mount i
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        mount="${MOUNTS[$i]}"
        umount "$mount" 2>/dev/null || umount -l "$mount" 2>/dev/null || true
    done
    if mount | grep -q " $CACHE/"; then say "still mounted under $CACHE:"; mount | grep " $CACHE/"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- 1. arm64 binaries on this host, and the base file system ------------------------------
if ! command -v debootstrap >/dev/null || ! command -v update-binfmts >/dev/null \
    || [ ! -e /usr/bin/qemu-aarch64-static ]; then
    say "installing debootstrap, qemu-user-static, binfmt-support"
    apt-get install -y debootstrap qemu-user-static binfmt-support >/dev/null
fi
mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
update-binfmts --enable qemu-aarch64 2>/dev/null || true

if [ ! -e "$BASE/.complete" ]; then
    say "debootstrap bookworm arm64 into $BASE (about 8 minutes emulated)"
    rm -rf "$BASE.partial"
    mkdir -p "$CACHE"
    started=$(now)
    debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$BASE.partial" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
        || die "debootstrap; see $CACHE/debootstrap.log"
    touch "$BASE.partial/.complete"
    mv "$BASE.partial" "$BASE"
    say "debootstrap took $(elapsed "$started" "$(now)") s"
fi

say "a fresh copy of the base file system: $ROOT"
# A run killed outright (SIGKILL) could not unmount: never delete through a mount of /dev.
for mounted in dev sys proc; do
    if mountpoint -q "$ROOT/$mounted"; then umount "$ROOT/$mounted" || umount -l "$ROOT/$mounted"; fi
done
if mount | grep -q " $ROOT/"; then die "something is still mounted under $ROOT"; fi
rm -rf --one-file-system "$ROOT" "$WORK"
cp -a "$BASE" "$ROOT"
mkdir -p "$WORK"
[ "$(chroot "$ROOT" uname -m)" = aarch64 ] || die "the chroot does not run arm64 binaries"

mount -t proc proc "$ROOT/proc"; MOUNTS+=("$ROOT/proc")
mount -t sysfs sysfs "$ROOT/sys"; MOUNTS+=("$ROOT/sys")
mount --bind /dev "$ROOT/dev"; MOUNTS+=("$ROOT/dev")
# The host's resolver and CA bundle (a proxy on the way to PyPI may re-sign its traffic).
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/host-ca-bundle.crt"

in_pi() { chroot "$ROOT" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
    PIP_CERT=/etc/ssl/host-ca-bundle.crt "$@"; }

# --- 2. the guide's section 3 --------------------------------------------------------------
say "copying the source tree in (the files git knows, as they are now)"
mkdir -p "$ROOT/usr/local/src/gridm2m"
(cd "$REPO" && git ls-files -z --cached --others --exclude-standard \
    | tar --null -T - --ignore-failed-read -cf - 2>/dev/null) | tar -xf - -C "$ROOT/usr/local/src/gridm2m"

# A system user, no login, no home of its own (the guide's adduser line; minbase has no
# adduser, useradd makes the same user).
in_pi useradd --system --user-group --no-create-home --home-dir /var/lib/gridm2m \
    --shell /usr/sbin/nologin gridm2m
say "python3 -m venv /opt/gridm2m; pip install --prefer-binary . (emulated)"
in_pi python3 -m venv /opt/gridm2m
started=$(now)
in_pi sh -c 'cd /usr/local/src/gridm2m && /opt/gridm2m/bin/pip install --prefer-binary .' \
    >"$WORK/pip.log" 2>&1 || die "pip install in the chroot; see $WORK/pip.log"
INSTALL_S=$(elapsed "$started" "$(now)")
say "pip install took $INSTALL_S s (emulated)"
in_pi /opt/gridm2m/bin/gridm2m --help >/dev/null || die "gridm2m --help in the chroot"
# Which distributions were built here (no arm64 wheel on PyPI), besides the project itself.
BUILT=$(grep -oE 'Building wheel for [^ ]+' "$WORK/pip.log" | awk '{print $4}' \
    | grep -v '^gridm2m$' | sort -u | tr '\n' ' ' || true)

# Ports: the shipped ones unless taken on this host (the chroot shares its loopback).
read -r HE_PORT GW_PORT OPS_PORT DASH_PORT COAP_PORT < <("$HOST_PY" - <<'EOF'
import socket
def free(port, kind):
    with socket.socket(socket.AF_INET, kind) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
print(*(free(p, socket.SOCK_STREAM) for p in (8080, 8081, 9110, 8090)), free(5683, socket.SOCK_DGRAM))
EOF
)

# The configuration: configs/gateway.toml as shipped, the guide's changes as GRIDM2M_GATEWAY__*
# variables in /etc/gridm2m/gateway.env (the unit's EnvironmentFile): certificates under
# /etc/gridm2m/tls as absolute paths, the host's head-end as upstream. Meters and head-end
# are on this machine's loopback, so loopback_peers stays true and the listeners on loopback.
install -d -m 0755 "$ROOT/etc/gridm2m"
install -m 0644 "$REPO/configs/gateway.toml" "$ROOT/etc/gridm2m/gateway.toml"
T=/etc/gridm2m/tls
cat >"$ROOT/etc/gridm2m/gateway.env" <<EOF
GRIDM2M_GATEWAY__CSE__HTTP__PORT=$GW_PORT
GRIDM2M_GATEWAY__CSE__HTTP__TLS__CERT=$T/server/gateway.pem
GRIDM2M_GATEWAY__CSE__HTTP__TLS__KEY=$T/server/gateway.key
GRIDM2M_GATEWAY__CSE__HTTP__TLS__CLIENT_CA=$T/ca.pem
GRIDM2M_GATEWAY__CSE__HTTP__CLIENT__CA=$T/ca.pem
GRIDM2M_GATEWAY__CSE__HTTP__CLIENT__CERT=$T/client/id-dap1.pem
GRIDM2M_GATEWAY__CSE__HTTP__CLIENT__KEY=$T/client/id-dap1.key
GRIDM2M_GATEWAY__CSE__COAP__PORT=$COAP_PORT
GRIDM2M_GATEWAY__UPSTREAM__URL=https://127.0.0.1:$HE_PORT
GRIDM2M_GATEWAY__UPSTREAM__CA_FILE=$T/ca.pem
GRIDM2M_GATEWAY__UPSTREAM__CERT_FILE=$T/client/id-dap1.pem
GRIDM2M_GATEWAY__UPSTREAM__KEY_FILE=$T/client/id-dap1.key
GRIDM2M_GATEWAY__OPS__PORT=$OPS_PORT
EOF
chmod 0640 "$ROOT/etc/gridm2m/gateway.env"
install -d -m 0750 "$DATA"

# --- 3. the head-end on the host, the lab PKI, the meters' credentials ---------------------
# The head-end: configs/headend.toml run from $WORK (its pki/ paths are relative to it).
export GRIDM2M_HEADEND__CSE__DB=$WORK/headend/id-in.db
export GRIDM2M_HEADEND__MDMS__DB=$WORK/headend/mdms.db
export GRIDM2M_HEADEND__CSE__HTTP__PORT=$HE_PORT
export GRIDM2M_HEADEND__DASHBOARD__PORT=$DASH_PORT
GRIDM2M_HEADEND__DASHBOARD__PASSWORD=$("$HOST_PY" -c 'import secrets; print(secrets.token_urlsafe(12))')
export GRIDM2M_HEADEND__DASHBOARD__PASSWORD
mkdir -p "$WORK/headend"
# Its egress allows the example gateway's URL (a list: not settable by a variable).
sed "s#https://127.0.0.1:8081#https://127.0.0.1:$GW_PORT#" "$REPO/configs/headend.toml" \
    >"$WORK/headend.toml"
cp "$REPO/configs/gateway.toml" "$WORK/gateway.toml"
# `gridm2m pki lab` pins each side in the other's store: the gateway's store is the one in
# the Pi's data directory (GRIDM2M_DATA_DIR, as the unit sets it, seen from the host).
(cd "$WORK" && GRIDM2M_DATA_DIR=$DATA "$HOST_PY" -m gridm2m pki lab pki \
    --gateway-config gateway.toml --headend-config headend.toml >"$WORK/pki.log") \
    || die "gridm2m pki lab; see $WORK/pki.log"
install -d -m 0750 "$ROOT$T" "$ROOT$T/server" "$ROOT$T/client"
install -m 0644 "$WORK/pki/ca.pem" "$ROOT$T/ca.pem"
install -m 0644 "$WORK/pki/server/gateway.pem" "$ROOT$T/server/gateway.pem"
install -m 0600 "$WORK/pki/server/gateway.key" "$ROOT$T/server/gateway.key"
install -m 0644 "$WORK/pki/client/id-dap1.pem" "$ROOT$T/client/id-dap1.pem"
install -m 0600 "$WORK/pki/client/id-dap1.key" "$ROOT$T/client/id-dap1.key"
# Every meter provisioned in the gateway's store before it starts (OSCORE keys each): the
# guide's `gridm2m credentials add-device`, a thousand at once.
STORE=$DATA/id-dap1-credentials.db
"$HOST_PY" - "$STORE" "$METERS" <<'EOF'
import sys
from cse.security.credentials import CredentialStore
path, count = sys.argv[1], int(sys.argv[2])
with CredentialStore(path) as store:
    store.add_devices([f"mtr-{n:06d}" for n in range(1, count + 1)])
EOF
in_pi chown -R gridm2m:gridm2m /var/lib/gridm2m /etc/gridm2m/tls
in_pi chgrp gridm2m /etc/gridm2m/gateway.env

say "head-end on the host (127.0.0.1:$HE_PORT)"
(cd "$WORK" && exec "$HOST_PY" -m gridm2m headend --config headend.toml) \
    >"$WORK/headend.out" 2>"$WORK/headend.log" &
PIDS+=($!)
for _ in $(seq 1 300); do grep -q 'listening on' "$WORK/headend.out" && break; sleep 0.2; done
grep -q 'listening on' "$WORK/headend.out" || die "the head-end did not start; see $WORK/headend.log"

# --- 4. the gateway in the chroot, as the unit runs it -------------------------------------
health() { "$HOST_PY" - "http://127.0.0.1:$OPS_PORT/health" "$1" <<'EOF'
import json, sys, urllib.request, urllib.error
try:
    with urllib.request.urlopen(sys.argv[1], timeout=5) as reply:
        body = json.load(reply)
except (OSError, ValueError):
    sys.exit(1)
print(body.get(sys.argv[2], "") if sys.argv[2] else "ok")
EOF
}
wait_for() {  # wait_for SECONDS command...: until it succeeds; returns 1 at the deadline
    local deadline=$(($(date +%s) + $1)); shift
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] || return 1
        kill -0 "$GATEWAY" 2>/dev/null || die "the gateway exited; see $WORK/gateway.log"
        sleep 0.5
    done
}
registered() { [ "$(health registered)" = True ]; }
meters_at_least() { [ "$(health meters)" -ge "$1" ]; }

say "gateway in the chroot: gridm2m gateway --config /etc/gridm2m/gateway.toml (user gridm2m)"
started=$(now)
# shellcheck disable=SC2046  # one VAR=value word per line of the env file
chroot --userspec=gridm2m:gridm2m "$ROOT" env -i PATH=/usr/bin:/bin LANG=C.UTF-8 \
    GRIDM2M_DATA_DIR=/var/lib/gridm2m PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    $(cat "$ROOT/etc/gridm2m/gateway.env") \
    sh -c 'umask 0027; exec /opt/gridm2m/bin/gridm2m gateway --config /etc/gridm2m/gateway.toml' \
    >"$WORK/gateway.out" 2>"$WORK/gateway.log" &
GATEWAY=$!
PIDS+=("$GATEWAY")
wait_for 600 health "" || die "the gateway was not healthy within 600 s; see $WORK/gateway.log"
STARTUP_S=$(elapsed "$started" "$(now)")
say "healthy after $STARTUP_S s (emulated)"
wait_for 300 registered || die "the gateway did not register with the head-end; see $WORK/gateway.log"
REGISTERED_S=$(elapsed "$started" "$(now)")
say "registered with the head-end after $REGISTERED_S s"

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$GATEWAY/status"; }
hwm_kb() { awk '/^VmHWM/ {print $2}' "/proc/$GATEWAY/status"; }
io() { awk -v key="$1" '$1 == key ":" {print $2}' "/proc/$GATEWAY/io"; }
db_bytes() { du -cb "$DATA"/id-dap1.db* "$DATA"/id-dap1-outbox.db* 2>/dev/null | tail -1 | cut -f1; }

RSS_IDLE_KB=$(rss_kb)
# What the registered gateway writes on its own (status reports, checks), per wall second.
say "watching the registered gateway without meters for $IDLE s"
w0=$(io write_bytes); c0=$(io wchar); t0=$(now)
sleep "$IDLE"
w1=$(io write_bytes); c1=$(io wchar); t1=$(now)
IDLE_BPS=$(awk -v w="$((w1 - w0))" -v t="$(elapsed "$t0" "$t1")" 'BEGIN { printf "%.1f", w / t }')
IDLE_WCHAR_BPS=$(awk -v w="$((c1 - c0))" -v t="$(elapsed "$t0" "$t1")" 'BEGIN { printf "%.1f", w / t }')

# --- 5. a fleet on the host, CoAP under OSCORE with the keys of the gateway's store --------
say "fleet of $METERS meters on the host (CoAP, OSCORE), clock x$CLOCK"
GRIDM2M_FLEET__CSE_ID=/id-dap1 GRIDM2M_FLEET__CSE_NAME=dap1 GRIDM2M_FLEET__CREDENTIALS=$STORE \
GRIDM2M_FLEET__TRANSPORTS__COAP=1 GRIDM2M_FLEET__TRANSPORTS__MQTT=0 \
GRIDM2M_FLEET__DAP__COAP_PORT=$COAP_PORT GRIDM2M_FLEET__CLOCK_SPEED=$CLOCK \
GRIDM2M_FLEET__RATE_SCALE=1 GRIDM2M_FLEET__RAMP=$((METERS / 10)) \
GRIDM2M_FLEET__TIMEOUT_MS=30000 \
    "$HOST_PY" -m gridm2m fleet --config "$REPO/configs/fleet.toml" --meters "$METERS" \
    --duration 86400 >"$WORK/fleet.out" 2>"$WORK/fleet.log" &
PIDS+=($!)
started=$(now)
wait_for 1200 meters_at_least "$METERS" \
    || die "$(health meters) of $METERS meters registered after 1200 s; see $WORK/gateway.log"
FLEET_S=$(elapsed "$started" "$(now)")
say "$METERS meters registered after $FLEET_S s; $SETTLE s for their containers and subscriptions"
sleep "$SETTLE"

say "watching it with the fleet for $WINDOW s ($(awk -v w="$WINDOW" -v c="$CLOCK" \
    'BEGIN { printf "%.1f", w * c / 86400 }') simulated days)"
w0=$(io write_bytes); c0=$(io wchar); d0=$(db_bytes); t0=$(now)
sleep "$WINDOW"
w1=$(io write_bytes); c1=$(io wchar); d1=$(db_bytes); t1=$(now)
RSS_KB=$(rss_kb); HWM_KB=$(hwm_kb)
WALL=$(elapsed "$t0" "$t1")
# The meters' share scales with the fleet's clock, the gateway's own with the wall clock.
read -r PER_METER_DAY WCHAR_METER_DAY < <(awk -v w="$((w1 - w0))" -v c="$((c1 - c0))" \
    -v t="$WALL" -v k="$CLOCK" -v idle="$IDLE_BPS" -v n="$METERS" 'BEGIN {
        own = idle * 86400
        meters = (w - idle * t) * 86400 / (t * k); if (meters < 0) meters = 0
        printf "%.0f %.0f\n", (meters + own) / n, c * 86400 / (t * k) / n }')
# An emulated aarch64 python3 doing nothing: the emulator's share of the RSS.
QEMU_RSS_KB=$(chroot "$ROOT" python3 -c \
    "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmRSS')][0])")

cat <<EOF

== pi-check: docs/deploy-raspberry-pi.md section 3 on Debian bookworm arm64 (QEMU user mode) ==
date                          $(date -u +%Y-%m-%d)
host CPU                      $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), emulating aarch64
python in the rootfs          $(chroot "$ROOT" python3 --version)
pip install --prefer-binary . ${INSTALL_S} s (emulated)
  built here, no arm64 wheel  ${BUILT:-none}
start to /health 200          ${STARTUP_S} s (emulated); registered upstream at ${REGISTERED_S} s
$(printf '%-30s' "$METERS meters registered in")${FLEET_S} s (emulated gateway; OSCORE, ramp $((METERS / 10)) s)
RSS, registered, no meters    $((RSS_IDLE_KB / 1024)) MB (VmRSS of the emulator running it)
$(printf '%-30s' "RSS, $METERS meters")$((RSS_KB / 1024)) MB (peak $((HWM_KB / 1024)) MB); an idle emulated python3: $((QEMU_RSS_KB / 1024)) MB
writes, no meters             ${IDLE_BPS} B/s write_bytes, ${IDLE_WCHAR_BPS} B/s wchar (the gateway's own)
$(printf '%-30s' "writes, $METERS meters")$((w1 - w0)) B write_bytes, $((c1 - c0)) B wchar in ${WALL} s at clock x${CLOCK}
  databases (db+wal+shm)      $((d0)) -> $((d1)) B
per meter per day             ${PER_METER_DAY} B write_bytes (wchar scaled alike: ${WCHAR_METER_DAY} B)
  method: /proc/<pid>/io write_bytes of the gateway over the window; the meters' part
  (window minus the idle rate) scaled by 86400 / (window x clock), plus the idle rate x 86400
EOF
say "stopping the fleet, the gateway and the head-end"
