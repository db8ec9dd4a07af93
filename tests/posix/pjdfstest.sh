#!/usr/bin/env bash
# POSIX conformance of a Wormhole mount: runs pjdfstest (the Rust port,
# 398 cases) on a plain directory and on a Wormhole mount of one, prints
# both pass counts, and compares the mount's failures with the checked-in
# list of known failures (tests/posix/known-failures.txt). It fails when
# a case that passed fails now, and when a listed case passes now (so
# the list only shrinks): the list is the truth about what is missing.
# A listed case whose reason starts with "(flaky)" may pass or fail.
#
#   sudo tests/posix/pjdfstest.sh            # owners preserved, device nodes allowed (the gate)
#   sudo MODE=default tests/posix/pjdfstest.sh   # the default host mode, a score only
#   sudo tests/posix/pjdfstest.sh chmod      # only cases matching a pattern, no gate
#
# Needs root (the suite switches users, the mount lets them in). It
# installs what is missing: libacl1-dev and acl (to build pjdfstest),
# fuse3, pjdfstest itself (cargo install, into target/pjdfstest), and a
# `tests` user and group (the suite's second user; nobody/nogroup is the
# first). Set WORMHOLE_BIN to test another build (default: the debug
# build of wormhole-tokio, built if missing).
#
# The suite's settings (docs/permissions.md, "Conformance"): features
# posix_fallocate, utimensat and utime_now on; naptime 0.05 s, since
# Linux's timestamps come from a coarse clock and shorter naps report
# ctime/mtime failures that are not real.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)

MODE=${MODE:-preserve}
PATTERNS=("$@")
PJD_VERSION=0.2.2
PJD_DIR="$ROOT/target/pjdfstest"
PJD="$PJD_DIR/bin/pjdfstest"
KNOWN="$ROOT/tests/posix/known-failures.txt"
RUN_LIMIT=${RUN_LIMIT:-1200}

if [ "$(id -u)" != 0 ]; then
  echo "error: run as root (the suite switches users)" >&2
  exit 2
fi

need_apt=()
[ -e /usr/include/sys/acl.h ] || need_apt+=(libacl1-dev)
command -v setfacl >/dev/null || need_apt+=(acl)
command -v fusermount3 >/dev/null || need_apt+=(fuse3)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi
if [ ! -x "$PJD" ]; then
  echo "== building pjdfstest $PJD_VERSION"
  cargo install --quiet --locked pjdfstest --version "$PJD_VERSION" --root "$PJD_DIR"
fi
getent group tests >/dev/null || groupadd tests
id tests >/dev/null 2>&1 || useradd -g tests -M -N -s /usr/sbin/nologin tests

BIN=${WORMHOLE_BIN:-$ROOT/target/debug/wormhole}
if [ -z "${WORMHOLE_BIN:-}" ] && [ ! -x "$BIN" ]; then
  cargo build --quiet -p wormhole-tokio
fi

WORK=$(mktemp -d /tmp/wormhole-pjdfstest.XXXXXX)
chmod 755 "$WORK"
HOST_PID=""
MOUNT_PID=""
cleanup() {
  [ -n "$MOUNT_PID" ] && kill -INT "$MOUNT_PID" 2>/dev/null && wait "$MOUNT_PID" 2>/dev/null
  umount -l "$WORK/mnt" 2>/dev/null || true
  [ -n "$HOST_PID" ] && kill -INT "$HOST_PID" 2>/dev/null && wait "$HOST_PID" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

cat >"$WORK/pjdfstest.toml" <<'EOF'
[features]
posix_fallocate = {}
utimensat = {}
utime_now = {}

[settings]
naptime = 0.05
allow_remount = false

[dummy_auth]
entries = [
  ["nobody", "nogroup"],
  ["tests", "tests"],
]
EOF

# Runs the suite in directory $1; its output goes to $2.
suite() {
  local dir=$1 out=$2
  (cd "$dir" && NO_COLOR=1 CLICOLOR=0 timeout "$RUN_LIMIT" \
    "$PJD" -c "$WORK/pjdfstest.toml" -p "$dir" "${PATTERNS[@]}" >"$out" 2>&1) || true
  sed -i 's/\x1b\[[0-9;]*m//g' "$out"
}
# Cases with outcome $2 ("ok", "FAILED", "skipped") in output $1.
cases() { awk -v want="$2" '$NF == want && NF >= 2 { print $1 }' "$1" | sort -u; }
count() { cases "$1" "$2" | wc -l; }

mkdir -p "$WORK/local" "$WORK/share" "$WORK/mnt" "$WORK/config"
chmod 755 "$WORK/local" "$WORK/share" "$WORK/mnt"

echo "== pjdfstest on the plain directory ($(stat -f -c %T "$WORK/local"))"
suite "$WORK/local" "$WORK/local.out"
echo "passed $(count "$WORK/local.out" ok), failed $(count "$WORK/local.out" FAILED), skipped $(count "$WORK/local.out" skipped)"

host_args=()
[ "$MODE" = preserve ] && host_args+=(--preserve-owners --allow-device-nodes)
echo "== pjdfstest on a Wormhole mount of the same kind of directory (host ${host_args[*]:-default mode}, mount --allow-other)"
XDG_CONFIG_HOME="$WORK/config" "$BIN" host "$WORK/share" --bind 127.0.0.1:0 "${host_args[@]}" \
  >"$WORK/host.log" 2>&1 &
HOST_PID=$!
for _ in $(seq 100); do
  TICKET=$(grep -o 'wormhole1-[^ ]*' "$WORK/host.log" | head -1 || true)
  [ -n "$TICKET" ] && break
  sleep 0.1
done
[ -n "$TICKET" ] || { echo "error: the host printed no ticket"; cat "$WORK/host.log"; exit 1; }
"$BIN" mount "$TICKET" "$WORK/mnt" --allow-other >"$WORK/mount.log" 2>&1 &
MOUNT_PID=$!
for _ in $(seq 100); do
  grep -q '^Mounted at' "$WORK/mount.log" && break
  sleep 0.1
done
grep -q '^Mounted at' "$WORK/mount.log" || { echo "error: not mounted"; cat "$WORK/mount.log"; exit 1; }
suite "$WORK/mnt" "$WORK/mount.out"
pass=$(count "$WORK/mount.out" ok)
echo "passed $pass, failed $(count "$WORK/mount.out" FAILED), skipped $(count "$WORK/mount.out" skipped) (of $(grep -cE ' (ok|FAILED|skipped)$' "$WORK/mount.out") cases)"
cp "$WORK/mount.out" "$ROOT/target/pjdfstest-$MODE.out" 2>/dev/null || true

if [ "$MODE" != preserve ] || [ ${#PATTERNS[@]} -gt 0 ]; then
  exit 0
fi
# The gate: failures now against the known list (a case name, then
# its reason after whitespace; `#` lines are comments).
cases "$WORK/mount.out" FAILED >"$WORK/failed"
grep -vE '^\s*(#|$)' "$KNOWN" | awk '{ print $1 }' | sort -u >"$WORK/known"
grep -vE '^\s*(#|$)' "$KNOWN" | awk '$2 == "(flaky)" { print $1 }' | sort -u >"$WORK/flaky"
new=$(comm -23 "$WORK/failed" "$WORK/known")
fixed=$(comm -13 "$WORK/failed" "$WORK/known" | comm -23 - "$WORK/flaky")
status=0
if [ -n "$new" ]; then
  echo "FAIL: cases that fail and are not in $KNOWN (the full output is in target/pjdfstest-$MODE.out):"
  echo "$new" | sed 's/^/  /'
  for c in $new; do grep -A3 -F "$c " "$WORK/mount.out" | sed 's/^/    /'; done
  status=1
fi
if [ -n "$fixed" ]; then
  echo "FAIL: cases listed in $KNOWN that pass now; remove them from the list:"
  echo "$fixed" | sed 's/^/  /'
  status=1
fi
[ $status = 0 ] && echo "ok: the mount's failures are exactly the known ones ($(wc -l <"$WORK/known") listed)"
exit $status
