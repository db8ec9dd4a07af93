#!/usr/bin/env bash
# Small-file work over a slow link: untar, then `rm -rf`, through a UDP
# relay that holds every datagram (bench/delay_proxy.py), for one or more
# wormhole binaries, alternating. Round trips are what a slow link makes
# expensive, and loopback hides them.
#
#   sudo bench/delayed.sh BIN [BIN...]
#
# Needs root (FUSE, iptables). Loopback only: an iptables nat OUTPUT rule
# sends the mount's datagrams for the host's port to the relay (which
# runs as `nobody`, so its own are exempt; conntrack maps the answers
# back). The rule, the processes, the mounts and the temporary directory
# are removed on exit.

set -euo pipefail

usage() {
    cat <<'EOF'
Usage: bench/delayed.sh BIN [BIN...]

Runs each binary RUNS times, alternating: a fresh `wormhole host` of an
empty directory and a fresh `wormhole mount` through the relay, then
`tar -xf` of a tarball of FILES files of 1 KiB in DIRS directories,
a pause of 3 s (leases idle out), `rm -rf` of the tree; prints the times.

Environment:
  DELAY_MS   one-way delay of every datagram, ms (default 2.5: a 5 ms round trip)
  FILES      files in the tarball (default 1000)
  DIRS       directories they are spread over (default 20)
  RUNS       runs per binary (default 3)
EOF
}

[[ ${1:-} == -h || ${1:-} == --help || $# -eq 0 ]] && { usage; exit 0; }
[[ $(id -u) == 0 ]] || { echo "needs root (FUSE, iptables)" >&2; exit 1; }
command -v iptables >/dev/null || apt-get install -y iptables >/dev/null
[[ -x /usr/bin/python3 ]] || apt-get install -y python3 >/dev/null

DELAY_MS=${DELAY_MS:-2.5}
FILES=${FILES:-1000}
DIRS=${DIRS:-20}
RUNS=${RUNS:-3}
HOST_PORT=47600
RELAY_PORT=47700
HERE=$(cd "$(dirname "$0")" && pwd)
T=$(mktemp -d /var/tmp/wormhole-delayed.XXXXXX)
chmod 755 "$T"
RULE=(OUTPUT -p udp -d 127.0.0.1 --dport "$HOST_PORT" -m owner ! --uid-owner 65534
    -j DNAT --to-destination "127.0.0.1:$RELAY_PORT")
PIDS=()

cleanup() {
    mountpoint -q "$T/mnt" && { umount "$T/mnt" 2>/dev/null || umount -l "$T/mnt" || true; }
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    iptables -t nat -D "${RULE[@]}" 2>/dev/null || true
    rm -rf "$T"
}
trap cleanup EXIT

# The tarball: FILES files of 1 KiB in DIRS directories.
mkdir -p "$T/src/tree"
for ((d = 0; d < DIRS; d++)); do
    mkdir "$T/src/tree/d$d"
    for ((f = d; f < FILES; f += DIRS)); do
        head -c 1024 /dev/urandom >"$T/src/tree/d$d/f$f"
    done
done
tar -C "$T/src" -cf "$T/tree.tar" tree

setpriv --reuid=65534 --regid=65534 --clear-groups /usr/bin/python3 "$HERE/delay_proxy.py" "$RELAY_PORT" "$HOST_PORT" "$DELAY_MS" &
PIDS+=($!)
iptables -t nat -A "${RULE[@]}"

# One run of binary $1: writes "untar_s rm_s" to $T/result.
run() {
    local bin=$1 ticket="" i t0 t1 t1b t2
    rm -rf "$T/share" "$T/cache" "$T/config"
    mkdir -p "$T/share" "$T/cache" "$T/mnt"
    XDG_CONFIG_HOME=$T/config "$bin" host --bind "127.0.0.1:$HOST_PORT" "$T/share" \
        >"$T/host.out" 2>>"$T/host.log" &
    local host=$!
    PIDS+=("$host")
    for ((i = 0; i < 300; i++)); do
        ticket=$(grep -o -m1 'wormhole1-[A-Za-z0-9]*' "$T/host.out" || true)
        [[ -n $ticket ]] && break
        sleep 0.1
    done
    [[ -n $ticket ]] || { echo "no ticket from $bin" >&2; cat "$T/host.log" >&2; return 1; }
    "$bin" mount --cache-dir "$T/cache" "$ticket" "$T/mnt" >>"$T/mount.log" 2>&1 &
    local mount=$!
    PIDS+=("$mount")
    for ((i = 0; i < 300; i++)); do
        mountpoint -q "$T/mnt" && break
        sleep 0.1
    done
    stat "$T/mnt/." >/dev/null
    t0=$(date +%s.%N)
    tar --no-same-owner -C "$T/mnt" -xf "$T/tree.tar"
    t1=$(date +%s.%N)
    diff -r "$T/src/tree" "$T/mnt/tree" >/dev/null || { echo "untarred tree differs" >&2; return 1; }
    sleep 3 # leases idle out, as between two commands typed by hand
    t1b=$(date +%s.%N)
    rm -rf "$T/mnt/tree"
    t2=$(date +%s.%N)
    umount "$T/mnt"
    wait "$mount" || true
    kill "$host"
    wait "$host" || true
    [[ -z $(ls -A "$T/share") ]] || { echo "the tree is still on the host" >&2; return 1; }
    echo "$(echo "$t1 - $t0" | bc) $(echo "$t2 - $t1b" | bc)" >"$T/result"
}

command -v bc >/dev/null || apt-get install -y bc >/dev/null
echo "untar and rm -rf of $FILES files of 1 KiB in $DIRS directories, ${DELAY_MS} ms each way"
printf '%-50s %8s %8s\n' binary untar_s rm_s
for ((r = 0; r < RUNS; r++)); do
    for bin in "$@"; do
        run "$bin"
        read -r u d <"$T/result"
        printf '%-50s %8.3f %8.3f\n' "$bin" "$u" "$d"
    done
done
