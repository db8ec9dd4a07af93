#!/usr/bin/env bash
# Wormhole vs sshfs on one machine, over loopback.
#
# Shares one directory with `wormhole host` and with sshfs (through a
# throwaway sshd on 127.0.0.1), runs the same workloads on both mounts in
# the same run (and, for reference, on the directory itself), and prints a
# table: each figure for both systems and the ratio wormhole/sshfs (higher
# = wormhole better; for times the ratio is sshfs_time / wormhole_time)
# next to the targets. See bench/README.md, "Wormhole vs sshfs".
#
#   sudo bench/sshfs.sh                        # full run: 1 GiB, 10,000 files
#   sudo SIZE_MB=64 FILES=500 FIO_RUNTIME=5 bench/sshfs.sh   # smoke run
#
# Needs root (FUSE mounts, drop_caches). Installs openssh-server, sshfs,
# fio and fuse3 with apt-get if they are missing, and builds wormhole with
# `cargo build --release -p wormhole-tokio`. Leaves nothing behind: no
# change to the system's sshd or ~/.ssh, both mounts unmounted, the host,
# the mount, sshfs and sshd stopped (trap on exit).

set -euo pipefail

usage() {
    cat <<'EOF'
Usage: bench/sshfs.sh [options]

Options (each also settable through the environment variable in brackets):
  --size-mb N     size of the sequential file, MiB           [SIZE_MB=1024]
  --files N       number of small files                      [FILES=10000]
  --file-kb N     size of each small file, KiB               [FILE_KB=4]
  --runtime S     fio runtime per run, seconds               [FIO_RUNTIME=20]
  --only LIST     comma list of: rawquic,seqread,seqwrite,randread,small,
                  findstat,untar,tiny,cp                     [ONLY=all]
  --tiny N        files of 1 KiB in the tiny-file tarball    [TINY_FILES=10000]
  --cold-runs N   cold sequential reads per system, each on a fresh mount
                  with caches dropped; the median is reported  [COLD_RUNS=3]
  --no-local      skip the reference column on the local disk [LOCAL=0]
  --no-build      use the existing binary, do not run cargo   [BUILD=0]
  --keep          keep the temporary directory               [KEEP=1]
  -h, --help      this help

Other environment variables:
  WORMHOLE_BIN    binary to use (default: <repo>/target/release/wormhole)
  WH_RUST_LOG     RUST_LOG for wormhole host and mount (default: warn)
  WH_CACHE_SIZE   --cache-size for the mount, bytes (default: wormhole's)
  SSH_CIPHER      ssh cipher for sshfs (default: aes128-gcm@openssh.com)
  SSHFS_OPTS      extra sshfs -o options, comma-separated (default: none)
  UNTAR_TARBALL   tarball to untar (default: `git archive HEAD` of this repo)
  STEP_TIMEOUT    seconds before a step counts as hung (default: 900)
  STALL_LIMIT     report a STALL when, during a step, the client and server
                  processes used no CPU for this many seconds in a row (default: 5)
  WAIT_IDLE       before each step, wait up to this many seconds for the
                  machine to be quiet: no rustc running and at most QUIET_LIMIT
                  cores busy (default: 0, do not wait)
  QUIET_LIMIT     cores busy with other work above which a step counts as
                  disturbed (default: 0.15)
  BENCH_TMP       where the temporary directory goes (default: /var/tmp)
  RESULTS_OUT     also write the result table (markdown) to this file
  PAUSE_VM_RECLAIM 1: switch the VM's memory reclaim off for the run and back
                  on at exit (default 0: the machine is measured as it is
                  set up; a benchmark does not tune the machine unless the
                  person running it asks). DAMON proactive reclaim drops
                  page-cache pages idle for a few seconds, so a warm re-read
                  measures what it reclaimed; virtio free page reporting
                  hands pages freed by drop_caches back to the hypervisor,
                  and the next cold read may pay 2-8x the kernel time to
                  touch them again, at random for either system. The report
                  says which of them were active.
EOF
}

SIZE_MB=${SIZE_MB:-1024}
FILES=${FILES:-10000}
FILE_KB=${FILE_KB:-4}
TINY_FILES=${TINY_FILES:-10000}
FIO_RUNTIME=${FIO_RUNTIME:-20}
COLD_RUNS=${COLD_RUNS:-3}
ONLY=${ONLY:-all}
LOCAL=${LOCAL:-1}
BUILD=${BUILD:-1}
KEEP=${KEEP:-0}
WH_RUST_LOG=${WH_RUST_LOG:-warn}
WH_CACHE_SIZE=${WH_CACHE_SIZE:-}
SSH_CIPHER=${SSH_CIPHER:-aes128-gcm@openssh.com}
SSHFS_OPTS=${SSHFS_OPTS:-}
UNTAR_TARBALL=${UNTAR_TARBALL:-}
STEP_TIMEOUT=${STEP_TIMEOUT:-900}
WAIT_IDLE=${WAIT_IDLE:-0}
STALL_LIMIT=${STALL_LIMIT:-5}
QUIET_LIMIT=${QUIET_LIMIT:-0.15}
BENCH_TMP=${BENCH_TMP:-/var/tmp}
RESULTS_OUT=${RESULTS_OUT:-}
PAUSE_VM_RECLAIM=${PAUSE_VM_RECLAIM:-0}
PAUSED_DAMON=()
PAGE_REPORTING=/sys/module/page_reporting/parameters/page_reporting_order
PAUSED_REPORTING_ORDER=""

while (($#)); do
    case $1 in
    --size-mb) SIZE_MB=$2; shift 2 ;;
    --files) FILES=$2; shift 2 ;;
    --file-kb) FILE_KB=$2; shift 2 ;;
    --tiny) TINY_FILES=$2; shift 2 ;;
    --runtime) FIO_RUNTIME=$2; shift 2 ;;
    --cold-runs) COLD_RUNS=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    --no-local) LOCAL=0; shift ;;
    --no-build) BUILD=0; shift ;;
    --keep) KEEP=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "unknown option: $1 (try --help)" >&2; exit 2 ;;
    esac
done

for v in SIZE_MB FILES FILE_KB TINY_FILES FIO_RUNTIME STEP_TIMEOUT; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "$v must be a positive integer, not '${!v}'" >&2; exit 2; }
done
[[ $WAIT_IDLE =~ ^[0-9]+$ ]] || { echo "WAIT_IDLE must be a number of seconds, not '$WAIT_IDLE'" >&2; exit 2; }
[[ $STALL_LIMIT =~ ^[0-9]+([.][0-9]+)?$ ]] || { echo "STALL_LIMIT must be a number of seconds, not '$STALL_LIMIT'" >&2; exit 2; }
[[ $QUIET_LIMIT =~ ^[0-9]+([.][0-9]+)?$ ]] || { echo "QUIET_LIMIT must be a number of cores, not '$QUIET_LIMIT'" >&2; exit 2; }

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
now() { date +%s.%N; }

[[ $(id -u) == 0 ]] || die "run as root (FUSE mounts and drop_caches need it)"
[[ -e /dev/fuse ]] || die "/dev/fuse is missing"

want() { [[ $ONLY == all || ,$ONLY, == *,$1,* ]]; }

# ---------------------------------------------------------------- state

T=""             # the temporary directory
LOGS=""          # logs (kept on failure)
SHARE=""         # the shared directory
WH_MNT="" SS_MNT=""
WH_HOST_PID="" WH_MOUNT_PID="" SSHFS_PID="" SSHD_PID="" WH_CACHE=""
MADE_RUN_SSHD=0
FAILED=0
STALLED=0
STALL_PID=""
MOUNT_N=0
CLIENT_PIDS="" SERVER_PIDS=""

mounted() { awk -v m="$1" '$2 == m { found = 1 } END { exit !found }' /proc/mounts; }

# Waits until process $1 is gone (at most $2 seconds); 1 if it is not.
wait_gone() {
    local pid=$1 limit=$2 i
    for ((i = 0; i < limit * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    return 1
}

# Stops one process we started: SIGTERM, then SIGKILL after $2 seconds.
stop_pid() {
    local pid=$1 limit=${2:-20}
    [[ -n $pid ]] || return 0
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    wait_gone "$pid" "$limit" && return 0
    log "pid $pid ignored SIGTERM for ${limit}s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait_gone "$pid" 5 || true
}

# All descendants of a process (children first level and below).
descendants() {
    local c
    for c in $(pgrep -P "$1" 2>/dev/null || true); do
        echo "$c"
        descendants "$c"
    done
}

force_unmount() {
    local m=$1
    [[ -n $m ]] && mounted "$m" || return 0
    umount "$m" 2>/dev/null || fusermount3 -u "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    [[ -n $STALL_PID ]] && kill "$STALL_PID" 2>/dev/null
    force_unmount "$WH_MNT"
    force_unmount "$SS_MNT"
    stop_pid "$WH_MOUNT_PID" 10
    stop_pid "$SSHFS_PID" 5
    stop_pid "$WH_HOST_PID" 25
    if [[ -n $SSHD_PID ]]; then
        local kids
        kids=$(descendants "$SSHD_PID")
        stop_pid "$SSHD_PID" 5
        for p in $kids; do stop_pid "$p" 2; done
    fi
    force_unmount "$WH_MNT"
    force_unmount "$SS_MNT"
    resume_vm_reclaim
    ((MADE_RUN_SSHD)) && rmdir /run/sshd 2>/dev/null
    if [[ -n $T && -d $T ]]; then
        if ((KEEP)); then
            log "kept $T"
        else
            if ((FAILED || STALLED)) && [[ -d $LOGS ]]; then
                local keep_logs
                keep_logs=$(mktemp -d /tmp/wormhole-bench-logs.XXXXXX)
                cp -a "$LOGS/." "$keep_logs/"
                log "logs of the run kept in $keep_logs"
            fi
            mounted "$WH_MNT" || mounted "$SS_MNT" || rm -rf "$T"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# ---------------------------------------------------------------- setup

install_missing() {
    local pkgs=()
    command -v sshfs >/dev/null || pkgs+=(sshfs)
    command -v fio >/dev/null || pkgs+=(fio)
    [[ -x /usr/sbin/sshd ]] || pkgs+=(openssh-server)
    command -v ssh >/dev/null || pkgs+=(openssh-client)
    command -v fusermount3 >/dev/null || pkgs+=(fuse3)
    command -v python3 >/dev/null || pkgs+=(python3)
    command -v git >/dev/null || pkgs+=(git)
    ((${#pkgs[@]})) || return 0
    log "installing ${pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y "${pkgs[@]}" >/dev/null ||
        { apt-get update >/dev/null && apt-get install -y "${pkgs[@]}" >/dev/null; } ||
        die "apt-get install ${pkgs[*]} failed"
}

# A free TCP (or UDP, with -u) port on 127.0.0.1, from $1 up.
free_port() {
    local proto=-t p=$1
    [[ ${2:-} == udp ]] && proto=-u
    while ss -Hna "$proto" "sport = :$p" | grep -q .; do p=$((p + 1)); done
    echo "$p"
}

setup_sshd() {
    local d=$T/ssh
    mkdir -p "$d"
    chmod 700 "$d"
    ssh-keygen -q -t ed25519 -N '' -C bench-host -f "$d/host_key"
    ssh-keygen -q -t ed25519 -N '' -C bench-client -f "$d/client_key"
    cp "$d/client_key.pub" "$d/authorized_keys"
    SSH_PORT=$(free_port 22022)
    printf '[127.0.0.1]:%s %s\n' "$SSH_PORT" "$(cut -d' ' -f1,2 "$d/host_key.pub")" >"$d/known_hosts"
    cat >"$d/sshd_config" <<EOF
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey $d/host_key
PidFile $d/sshd.pid
AuthorizedKeysFile $d/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
X11Forwarding no
Subsystem sftp /usr/lib/openssh/sftp-server
EOF
    cat >"$d/config" <<EOF
Host bench
  HostName 127.0.0.1
  Port $SSH_PORT
  User root
  IdentityFile $d/client_key
  IdentitiesOnly yes
  UserKnownHostsFile $d/known_hosts
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  BatchMode yes
  Ciphers $SSH_CIPHER
  Compression no
  LogLevel ERROR
EOF
    if [[ ! -d /run/sshd ]]; then
        mkdir -p /run/sshd
        chmod 755 /run/sshd
        MADE_RUN_SSHD=1
    fi
    /usr/sbin/sshd -t -f "$d/sshd_config" || die "sshd rejects its configuration ($d/sshd_config)"
    /usr/sbin/sshd -D -e -f "$d/sshd_config" 2>>"$LOGS/sshd.log" &
    SSHD_PID=$!
    local i
    for ((i = 0; i < 50; i++)); do
        ssh -F "$d/config" bench true 2>/dev/null && { log "sshd on 127.0.0.1:$SSH_PORT (pid $SSHD_PID)"; return 0; }
        kill -0 "$SSHD_PID" 2>/dev/null || break
        sleep 0.2
    done
    tail -n 20 "$LOGS/sshd.log" >&2
    die "cannot log in to the throwaway sshd on 127.0.0.1:$SSH_PORT"
}

make_data() {
    local mib=$((1024 * 1024))
    log "test data: ${SIZE_MB} MiB file, $FILES files of $FILE_KB KiB, tarball"
    mkdir -p "$T/local" "$SHARE"
    head -c $((SIZE_MB * mib)) /dev/urandom >"$T/local/src.bin"
    cp "$T/local/src.bin" "$SHARE/seq.bin"
    # $FILES files, 100 per leaf directory, 10 leaves per group directory.
    local n=0 leaf=0 k dir
    while ((n < FILES)); do
        k=$((FILES - n < 100 ? FILES - n : 100))
        dir=$(printf '%s/small/g%03d/d%02d' "$SHARE" $((leaf / 10)) $((leaf % 10)))
        mkdir -p "$dir"
        head -c $((k * FILE_KB * 1024)) /dev/urandom |
            (cd "$dir" && split -b $((FILE_KB * 1024)) -a 3 -d - f)
        n=$((n + k))
        leaf=$((leaf + 1))
    done
    SMALL_DIRS=$(find "$SHARE/small" -type d | wc -l)
    (cd "$SHARE/small" && find . -type f | sort | xargs cat | md5sum) >"$T/local/small.md5"
    if [[ -n $UNTAR_TARBALL ]]; then
        cp "$UNTAR_TARBALL" "$T/local/src.tar"
        UNTAR_WHAT=$(basename "$UNTAR_TARBALL")
    else
        git -C "$REPO" archive --format=tar -o "$T/local/src.tar" HEAD
        UNTAR_WHAT="this repo's source (git archive HEAD)"
    fi
    mkdir -p "$T/local/untar-ref"
    tar -xf "$T/local/src.tar" -C "$T/local/untar-ref"
    UNTAR_FILES=$(find "$T/local/untar-ref" -type f | wc -l)
    UNTAR_MB=$(du -sm --apparent-size "$T/local/untar-ref" | cut -f1)
    # $TINY_FILES files of 1 KiB, 100 per directory: a checkout, a
    # node_modules, a mail folder.
    local tiny=$T/local/tiny-ref/tiny
    n=0 leaf=0
    while ((n < TINY_FILES)); do
        k=$((TINY_FILES - n < 100 ? TINY_FILES - n : 100))
        dir=$(printf '%s/d%03d' "$tiny" "$leaf")
        mkdir -p "$dir"
        head -c $((k * 1024)) /dev/urandom | (cd "$dir" && split -b 1024 -a 3 -d - f)
        n=$((n + k))
        leaf=$((leaf + 1))
    done
    tar -cf "$T/local/tiny.tar" -C "$T/local/tiny-ref" tiny
    sync
}

# ---------------------------------------------------------------- mounts

WH_TICKET=""

wh_host_start() {
    local i port
    port=$(free_port 47571 udp)
    XDG_CONFIG_HOME=$T/wh-config RUST_LOG=$WH_RUST_LOG \
        "$WH" host --bind "127.0.0.1:$port" "$SHARE" >"$LOGS/host.out" 2>>"$LOGS/host.log" &
    WH_HOST_PID=$!
    for ((i = 0; i < 300; i++)); do
        WH_TICKET=$(grep -o -m1 'wormhole1-[A-Za-z0-9]*' "$LOGS/host.out" || true)
        [[ -n $WH_TICKET ]] && return 0
        kill -0 "$WH_HOST_PID" 2>/dev/null || break
        sleep 0.1
    done
    log "wormhole host printed no ticket; its output and log:"
    cat "$LOGS/host.out" >&2
    tail -n 30 "$LOGS/host.log" >&2
    return 1
}

wh_up() {
    local i
    wh_host_start || return 1
    MOUNT_N=$((MOUNT_N + 1))
    WH_CACHE=$T/wh-cache.$MOUNT_N
    mkdir -p "$WH_CACHE"
    echo "=== mount $MOUNT_N ($CURRENT_TEST)" >>"$LOGS/mount.log"
    echo "=== host run for mount $MOUNT_N ($CURRENT_TEST)" >>"$LOGS/host.log"
    RUST_LOG=$WH_RUST_LOG "$WH" mount --cache-dir "$WH_CACHE" ${WH_CACHE_SIZE:+--cache-size "$WH_CACHE_SIZE"} \
        "$WH_TICKET" "$WH_MNT" >>"$LOGS/mount.log" 2>&1 &
    WH_MOUNT_PID=$!
    for ((i = 0; i < 300; i++)); do
        if mounted "$WH_MNT"; then
            if timeout 30 stat "$WH_MNT/." >/dev/null; then
                CLIENT_PIDS=$WH_MOUNT_PID
                SERVER_PIDS=$WH_HOST_PID
                return 0
            fi
            break
        fi
        kill -0 "$WH_MOUNT_PID" 2>/dev/null || break
        sleep 0.1
    done
    log "wormhole mount did not come up at $WH_MNT"
    return 1
}

wh_down() {
    if mounted "$WH_MNT"; then
        timeout 30 "$WH" unmount "$WH_MNT" >>"$LOGS/mount.log" 2>&1 ||
            { log "wormhole unmount failed; lazy unmount"; umount -l "$WH_MNT" || true; }
    fi
    if [[ -n $WH_MOUNT_PID ]]; then
        wait_gone "$WH_MOUNT_PID" 30 || { log "wormhole mount still running 30 s after unmount"; stop_pid "$WH_MOUNT_PID" 10; }
        WH_MOUNT_PID=""
    fi
    stop_pid "$WH_HOST_PID" 25
    WH_HOST_PID=""
    [[ -n $WH_CACHE ]] && rm -rf "$WH_CACHE"
    WH_CACHE=""
}

ss_up() {
    local i opts="Ciphers=$SSH_CIPHER"
    [[ -n $SSHFS_OPTS ]] && opts+=",$SSHFS_OPTS"
    MOUNT_N=$((MOUNT_N + 1))
    echo "=== sshfs $MOUNT_N ($CURRENT_TEST)" >>"$LOGS/sshfs.log"
    sshfs -f -F "$T/ssh/config" -o "$opts" "bench:$SHARE" "$SS_MNT" >>"$LOGS/sshfs.log" 2>&1 &
    SSHFS_PID=$!
    for ((i = 0; i < 300; i++)); do
        if mounted "$SS_MNT" && timeout 30 stat "$SS_MNT/." >/dev/null; then
            CLIENT_PIDS="$SSHFS_PID $(descendants "$SSHFS_PID" | tr '\n' ' ')"
            SERVER_PIDS=$(descendants "$SSHD_PID" | tr '\n' ' ')
            return 0
        fi
        kill -0 "$SSHFS_PID" 2>/dev/null || break
        sleep 0.1
    done
    log "sshfs did not come up at $SS_MNT"
    return 1
}

ss_down() {
    mounted "$SS_MNT" && { fusermount3 -u "$SS_MNT" 2>/dev/null || umount -l "$SS_MNT" || true; }
    if [[ -n $SSHFS_PID ]]; then
        wait_gone "$SSHFS_PID" 20 || stop_pid "$SSHFS_PID" 5
        SSHFS_PID=""
    fi
}

# The directory a system sees the share at.
root_of() {
    case $1 in
    wormhole) echo "$WH_MNT" ;;
    sshfs) echo "$SS_MNT" ;;
    local) echo "$SHARE" ;;
    esac
}

# Two ways a VM takes memory back from its guest, each of which disturbed
# the figures; with PAUSE_VM_RECLAIM=1 both are switched off for the run
# and back on in cleanup, otherwise the report only says they were on.
# * DAMON-based proactive reclaim (kdamond, action pageout) evicts
#   page-cache pages that were not touched for a few seconds: a warm
#   re-read then measures the network again for whatever it took.
# * virtio free page reporting tells the hypervisor about free pages of
#   at least 2^order pages that stayed free for about 2 s; it may unmap
#   them, and the guest's next touch of each faults on the host. The
#   pages drop_caches frees are reported during the 2 s quiet check
#   before a step, so a cold read of 1 GiB took 0.7-1.2 s of kernel time
#   instead of 0.14 s whenever its page cache landed in them. An order
#   above the largest buddy order (10) reports nothing.
pause_vm_reclaim() {
    ((PAUSE_VM_RECLAIM)) || return 0
    local state
    for state in /sys/kernel/mm/damon/admin/kdamonds/*/state; do
        [[ -f $state && $(cat "$state" 2>/dev/null) == on ]] || continue
        if echo off >"$state" 2>/dev/null; then
            PAUSED_DAMON+=("$state")
            log "DAMON reclaim paused for the run ($state)"
        fi
    done
    if [[ -w $PAGE_REPORTING ]]; then
        local order
        order=$(cat "$PAGE_REPORTING")
        if ((order <= 10)) && echo 11 >"$PAGE_REPORTING" 2>/dev/null; then
            PAUSED_REPORTING_ORDER=$order
            log "free page reporting paused for the run (order $order -> 11)"
        fi
    fi
}

resume_vm_reclaim() {
    local state
    for state in "${PAUSED_DAMON[@]}"; do
        echo on >"$state" 2>/dev/null || log "could not switch $state back on"
    done
    PAUSED_DAMON=()
    if [[ -n $PAUSED_REPORTING_ORDER ]]; then
        echo "$PAUSED_REPORTING_ORDER" >"$PAGE_REPORTING" 2>/dev/null ||
            log "could not set $PAGE_REPORTING back to $PAUSED_REPORTING_ORDER"
        PAUSED_REPORTING_ORDER=""
    fi
}

drop_caches() {
    sync
    echo 3 >/proc/sys/vm/drop_caches
}

# A fresh start for a system: new server and client processes (the
# wormhole host and mount, with an empty cache directory; a new sshfs
# and its sftp-server), then the page cache dropped.
fresh() {
    local sys=$1
    wh_down
    ss_down
    CLIENT_PIDS="" SERVER_PIDS=""
    case $sys in
    wormhole) wh_up || return 1 ;;
    sshfs) ss_up || return 1 ;;
    local) ;;
    esac
    drop_caches
}

# ---------------------------------------------------------------- measuring

RESULTS=""
MAX_RUSTC=0

# CPU seconds used by the whole machine (user+nice+system+irq+softirq).
machine_cpu() { awk -v hz="$HZ" '/^cpu / { printf "%.2f", ($2 + $3 + $4 + $7 + $8) / hz }' /proc/stat; }

# CPU seconds the hypervisor gave to someone else while this VM wanted to
# run (steal). On a shared host it comes in bursts, and a step that loses
# a good part of its cores to it measures the neighbours, not the systems.
steal_cpu() { awk -v hz="$HZ" '/^cpu / { printf "%.2f", $9 / hz }' /proc/stat; }

# CPU seconds used so far by the given processes (live ones).
procs_cpu() {
    local total=0 p s
    for p in "$@"; do
        s=$(cat "/proc/$p/stat" 2>/dev/null) || continue
        s=${s##*) }
        # Fields after ") ": state is 1st, utime 12th, stime 13th.
        total=$(awk -v t="$total" -v s="$s" 'BEGIN { split(s, f, " "); print t + f[12] + f[13] }')
    done
    awk -v t="$total" -v hz="$HZ" 'BEGIN { printf "%.2f", t / hz }'
}

# stall_watch FILE PID...: until killed, keeps in FILE the longest time (s)
# during which none of the processes used any CPU: a system that is
# waiting on a timer, a lock or a lost message, not working.
stall_watch() {
    local file=$1 last="" since t cur
    shift
    since=$(now)
    echo 0 >"$file"
    while :; do
        cur=$(procs_cpu "$@")
        t=$(now)
        if [[ $cur != "$last" ]]; then
            since=$t
            last=$cur
        fi
        awk -v a="$since" -v b="$t" -v m="$(cat "$file")" \
            'BEGIN { g = b - a; printf "%.1f\n", (g > m ? g : m) }' >"$file.new" && mv "$file.new" "$file"
        sleep 0.5
    done
}

# Cores kept busy by everything on the machine over the next 2 s.
background_load() {
    local m0 m1
    m0=$(awk -v a="$(machine_cpu)" -v b="$(steal_cpu)" 'BEGIN { print a + b }')
    sleep 2
    m1=$(awk -v a="$(machine_cpu)" -v b="$(steal_cpu)" 'BEGIN { print a + b }')
    awk -v a="$m0" -v b="$m1" 'BEGIN { printf "%.2f", (b - a) / 2 }'
}

# Whether a background load (cores busy) disturbs a measurement.
busy() { awk -v l="$1" -v lim="$QUIET_LIMIT" 'BEGIN { exit !(l > lim) }'; }

sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

# measure SYS TEST CMD: runs the shell command CMD timed; sets ELAPSED and
# the CPU figures; returns CMD's status (124 if it timed out).
measure() {
    local sys=$1 test=$2 cmd=$3 rc=0 t0 t1 m0 m1 c0 c1 s0 s1 st0 st1 r waited=0 stall_file
    # Other work on the machine right before the step (our own processes
    # are idle then): cores busy, over 2 s.
    BG=$(background_load)
    while ((waited < WAIT_IDLE)) && { pgrep -x rustc >/dev/null || busy "$BG"; }; do
        ((waited == 0)) && log "  waiting (at most ${WAIT_IDLE}s) for the machine to be quiet (rustc: $(pgrep -c rustc), cores busy: $BG)"
        sleep 3
        BG=$(background_load)
        waited=$((waited + 5))
    done
    r=$(pgrep -c rustc || true)
    ((r > MAX_RUSTC)) && MAX_RUSTC=$r
    RUSTC_AT_START=$r
    # shellcheck disable=SC2086
    { m0=$(machine_cpu); st0=$(steal_cpu); c0=$(procs_cpu $CLIENT_PIDS); s0=$(procs_cpu $SERVER_PIDS); }
    echo "\$ $cmd" >"$LOGS/$sys.$test.out"
    stall_file=$LOGS/stall.$sys.$test
    STALL=""
    if [[ -n $CLIENT_PIDS ]]; then
        # shellcheck disable=SC2086
        stall_watch "$stall_file" $CLIENT_PIDS $SERVER_PIDS &
        STALL_PID=$!
    fi
    t0=$(now)
    timeout -k 10 "$STEP_TIMEOUT" bash -c "$cmd" >>"$LOGS/$sys.$test.out" 2>&1 || rc=$?
    t1=$(now)
    if [[ -n $STALL_PID ]]; then
        kill "$STALL_PID" 2>/dev/null
        wait "$STALL_PID" 2>/dev/null || true
        STALL_PID=""
        STALL=$(cat "$stall_file" 2>/dev/null || true)
    fi
    # shellcheck disable=SC2086
    { m1=$(machine_cpu); st1=$(steal_cpu); c1=$(procs_cpu $CLIENT_PIDS); s1=$(procs_cpu $SERVER_PIDS); }
    ELAPSED=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
    CPU_MACHINE=$(sub "$m0" "$m1")
    CPU_STEAL=$(sub "$st0" "$st1")
    CPU_CLIENT=$(sub "$c0" "$c1")
    CPU_SERVER=$(sub "$s0" "$s1")
    r=$(pgrep -c rustc || true)
    ((r > MAX_RUSTC)) && MAX_RUSTC=$r
    ((r > RUSTC_AT_START)) && RUSTC_AT_START=$r
    return "$rc"
}

# record TEST SYS VALUE UNIT STATUS
record() {
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" \
        "${ELAPSED:-}" "${CPU_MACHINE:-}" "${CPU_CLIENT:-}" "${CPU_SERVER:-}" "${RUSTC_AT_START:-0}" \
        "${STALL:-}" "${BG:-}" "${CPU_STEAL:-}" >>"$RESULTS"
    if [[ $5 == ok ]]; then
        log "  $2 $1: $3 $4 (${ELAPSED:-?} s; CPU s: machine ${CPU_MACHINE:-?}, client ${CPU_CLIENT:-?}, server ${CPU_SERVER:-?}, stolen ${CPU_STEAL:-?}; longest idle ${STALL:-0} s; background load before: ${BG:-?} cores)"
        if [[ -n $STALL ]] && awk -v g="$STALL" -v l="$STALL_LIMIT" 'BEGIN { exit !(g >= l) }'; then
            STALLED=1
            {
                echo
                echo "################ STALL: $2, $1: for $STALL s in a row neither the client nor the"
                echo "server process used any CPU, while the step ran ${ELAPSED} s in all: it waited"
                echo "(a timer, a lock, a lost message) instead of working. Command:"
                head -n 1 "$LOGS/$2.$1.out"
                echo "################"
                echo
            } >&2
        fi
    else
        log "  $2 $1: $5"
    fi
}

# failed SYS TEST STATUS WHY: records the failure and shows what is known.
failed() {
    local sys=$1 test=$2 status=$3 why=$4 f
    FAILED=1
    record "$test" "$sys" "" "" "$status"
    {
        echo
        echo "################ FAILURE: $sys, $test: $why"
        f=$LOGS/$sys.$test.out
        if [[ -f $f ]]; then
            echo "---- command and its output (last 20 lines):"
            tail -n 20 "$f"
        fi
        if [[ $sys == wormhole ]]; then
            echo "---- wormhole mount log (last 30 lines of $LOGS/mount.log):"
            tail -n 30 "$LOGS/mount.log" 2>/dev/null
            echo "---- wormhole host log (last 30 lines of $LOGS/host.log):"
            tail -n 30 "$LOGS/host.log" 2>/dev/null
            echo "---- rerun with WH_RUST_LOG=debug for the protocol at work"
        elif [[ $sys == sshfs ]]; then
            echo "---- sshfs log:"
            tail -n 20 "$LOGS/sshfs.log" 2>/dev/null
            tail -n 10 "$LOGS/sshd.log" 2>/dev/null
        fi
        echo "################"
        echo
    } >&2
}

# step SYS TEST UNIT CMD VALUE_EXPR: a fresh-mount-free measured step whose
# figure is VALUE_EXPR, an awk expression of e (elapsed seconds).
step() {
    local sys=$1 test=$2 unit=$3 cmd=$4 expr=$5 rc=0
    measure "$sys" "$test" "$cmd" || rc=$?
    if ((rc == 124 || rc == 137)); then
        failed "$sys" "$test" HUNG "no end after $STEP_TIMEOUT s: $cmd"
        return 1
    elif ((rc != 0)); then
        failed "$sys" "$test" FAIL "exit status $rc: $cmd"
        return 1
    fi
    record "$test" "$sys" "$(awk -v e="$ELAPSED" "BEGIN { printf \"%.2f\", $expr }")" "$unit" ok
}

# verify SYS TEST CHECK_CMD: records BADDATA if the check fails.
verify() {
    local sys=$1 test=$2 cmd=$3
    if ! timeout -k 10 "$STEP_TIMEOUT" bash -c "$cmd" >>"$LOGS/$sys.$test.out" 2>&1; then
        # Replace the last line (the figure) by a failure.
        sed -i '$d' "$RESULTS"
        failed "$sys" "$test" BADDATA "data check failed: $cmd"
        return 1
    fi
}

q() { printf '%q' "$1"; }

SYSTEMS=(wormhole sshfs)

# cold_median SYS: COLD_RUNS cold reads of seq.bin, each on a fresh mount
# (caches dropped), recorded as one seqread_cold figure: the median run's,
# with that run's time and CPU. A cold read here is as fast as the disk
# under the server lets it be, and a VM's disk varies from run to run far
# more than the file systems compared differ. The mount of the last run
# stays for the warm re-read.
cold_median() {
    local sys=$1 m i rc cmd runs=() best
    local bytes=$((SIZE_MB * 1024 * 1024))
    for ((i = 1; i <= COLD_RUNS; i++)); do
        fresh "$sys" || { failed "$sys" seqread_cold FAIL "cannot mount"; return 1; }
        m=$(root_of "$sys")
        cmd="dd if=$(q "$m/seq.bin") of=/dev/null bs=1M"
        rc=0
        measure "$sys" seqread_cold "$cmd" || rc=$?
        if ((rc != 0)); then
            failed "$sys" seqread_cold FAIL "exit status $rc: $cmd"
            return 1
        fi
        # "-" holds the place of an empty figure.
        runs+=("$ELAPSED ${CPU_MACHINE:--} ${CPU_CLIENT:--} ${CPU_SERVER:--} ${CPU_STEAL:--} ${STALL:--} ${BG:--}")
    done
    best=$(printf '%s\n' "${runs[@]}" | sort -n -k1,1 | sed -n "$(((COLD_RUNS + 1) / 2))p")
    read -r ELAPSED CPU_MACHINE CPU_CLIENT CPU_SERVER CPU_STEAL STALL BG <<<"$best"
    [[ $STALL == - ]] && STALL=""
    [[ $BG == - ]] && BG=""
    log "  $sys seqread_cold runs (s): $(printf '%s\n' "${runs[@]}" | awk '{ printf "%s ", $1 }')"
    record seqread_cold "$sys" "$(awk -v e="$ELAPSED" -v b="$bytes" 'BEGIN { printf "%.2f", b / 1e6 / e }')" MB/s ok
}

test_seqread() {
    local sys m bytes=$((SIZE_MB * 1024 * 1024))
    for sys in "${SYSTEMS[@]}"; do
        CURRENT_TEST=seqread
        log "sequential read, $sys"
        cold_median "$sys" || { failed "$sys" seqread_warm FAIL "no cold read"; continue; }
        m=$(root_of "$sys")
        step "$sys" seqread_warm MB/s "dd if=$(q "$m/seq.bin") of=/dev/null bs=1M" "$bytes / 1e6 / e" || continue
        verify "$sys" seqread_warm "cmp $(q "$m/seq.bin") $(q "$T/local/src.bin")" || true
    done
}

test_seqwrite() {
    local sys m bytes=$((SIZE_MB * 1024 * 1024))
    for sys in "${SYSTEMS[@]}"; do
        CURRENT_TEST=seqwrite
        log "sequential write, $sys"
        fresh "$sys" || { failed "$sys" seqwrite FAIL "cannot mount"; continue; }
        m=$(root_of "$sys")
        mkdir "$m/out-$sys" || { failed "$sys" seqwrite FAIL "mkdir $m/out-$sys failed"; continue; }
        cat "$T/local/src.bin" >/dev/null # the source comes from memory
        # conv=fsync: the time counts until the host has the data on disk.
        step "$sys" seqwrite MB/s "dd if=$(q "$T/local/src.bin") of=$(q "$m/out-$sys/w.bin") bs=1M conv=fsync" "$bytes / 1e6 / e" || continue
        verify "$sys" seqwrite "cmp $(q "$T/local/src.bin") $(q "$SHARE/out-$sys/w.bin")" || true
    done
    wh_down
    ss_down
    rm -rf "$SHARE"/out-*
}

test_randread() {
    local sys m jobs rc iops
    for jobs in 1 4; do
        for sys in "${SYSTEMS[@]}"; do
            CURRENT_TEST=randread_$jobs
            log "4 KiB random reads, $jobs job(s), ${FIO_RUNTIME}s, $sys"
            fresh "$sys" || { failed "$sys" "randread_$jobs" FAIL "cannot mount"; continue; }
            m=$(root_of "$sys")
            rc=0
            measure "$sys" "randread_$jobs" "fio --name=randread --filename=$(q "$m/seq.bin") --rw=randread --bs=4k \
--direct=0 --ioengine=psync --size=${SIZE_MB}M --numjobs=$jobs --group_reporting --time_based \
--runtime=$FIO_RUNTIME --output-format=json --output=$(q "$LOGS/fio.$sys.$jobs.json")" || rc=$?
            if ((rc != 0)); then
                failed "$sys" "randread_$jobs" "$( ((rc == 124 || rc == 137)) && echo HUNG || echo FAIL)" "fio exit status $rc"
                continue
            fi
            iops=$(python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); \
r=j["jobs"][0]["read"]; print("%.0f" % r["iops"] if r["io_bytes"] > 0 and j["jobs"][0]["error"] == 0 else "")' \
                "$LOGS/fio.$sys.$jobs.json" 2>/dev/null || true)
            if [[ -z $iops ]]; then
                failed "$sys" "randread_$jobs" FAIL "fio reported an error or no reads (see $LOGS/fio.$sys.$jobs.json)"
                continue
            fi
            record "randread_$jobs" "$sys" "$iops" IOPS ok
        done
    done
}

test_small() {
    local sys m
    for sys in "${SYSTEMS[@]}"; do
        CURRENT_TEST=small
        log "reading $FILES small files, $sys"
        fresh "$sys" || { failed "$sys" small FAIL "cannot mount"; continue; }
        m=$(root_of "$sys")
        step "$sys" small s "find $(q "$m/small") -type f -exec cat {} + >/dev/null" "e" || continue
        verify "$sys" small "cd $(q "$m/small") && find . -type f | sort | xargs cat | md5sum | cmp - $(q "$T/local/small.md5")" || true
    done
}

test_findstat() {
    local sys m want=$((FILES + SMALL_DIRS))
    for sys in "${SYSTEMS[@]}"; do
        CURRENT_TEST=findstat
        log "find + stat over $FILES files, $sys"
        fresh "$sys" || { failed "$sys" findstat FAIL "cannot mount"; continue; }
        m=$(root_of "$sys")
        step "$sys" findstat s "find $(q "$m/small") -exec stat -c '%n %s %Y %a' {} + >$(q "$LOGS/stat.$sys.txt")" "e" || continue
        verify "$sys" findstat "test \$(wc -l <$(q "$LOGS/stat.$sys.txt")) -eq $want" || true
    done
}

test_untar() {
    local sys m d
    for sys in "${SYSTEMS[@]}"; do
        CURRENT_TEST=untar
        log "untar of $UNTAR_FILES files, $sys"
        fresh "$sys" || { failed "$sys" untar FAIL "cannot mount"; continue; }
        m=$(root_of "$sys")
        d=$m/untar-$sys
        mkdir "$d" || { failed "$sys" untar FAIL "mkdir $d failed"; continue; }
        # --no-same-owner: as an ordinary user untars (we are root only
        # for FUSE). Every file fsync'd afterwards (sync FILE...), so that it counts
        # only once the host has it on disk.
        step "$sys" untar s "tar --no-same-owner -xf $(q "$T/local/src.tar") -C $(q "$d") && find $(q "$d") -type f -exec sync -- {} +" "e" || continue
        verify "$sys" untar "diff -r $(q "$T/local/untar-ref") $(q "$SHARE/untar-$sys")" || true
    done
    wh_down
    ss_down
    rm -rf "$SHARE"/untar-*
}

# Tiny files: untar $TINY_FILES files of 1 KiB without fsync (what a
# person unpacking an archive waits for), the same followed by one
# `sync -f` of the tree, and `rm -rf` of the tree. Linux passes syncfs(2)
# to no FUSE daemon (only to virtiofs), so for both mounts `sync -f`
# writes back the kernel's dirty pages and waits for nothing on the server.
test_tiny() {
    local sys m d
    for sys in "${SYSTEMS[@]}"; do
        CURRENT_TEST=tiny
        log "untar of $TINY_FILES files of 1 KiB, then rm -rf, $sys"
        fresh "$sys" || { failed "$sys" untar_tiny FAIL "cannot mount"; continue; }
        m=$(root_of "$sys")
        d=$m/tiny-$sys
        mkdir "$d" || { failed "$sys" untar_tiny FAIL "mkdir $d failed"; continue; }
        step "$sys" untar_tiny s "tar --no-same-owner -xf $(q "$T/local/tiny.tar") -C $(q "$d")" "e" || continue
        verify "$sys" untar_tiny "diff -r $(q "$T/local/tiny-ref") $(q "$SHARE/tiny-$sys")" || true
        step "$sys" rm_tiny s "rm -rf $(q "$d/tiny")" "e" || continue
        verify "$sys" rm_tiny "test -z \"\$(ls -A $(q "$SHARE/tiny-$sys"))\"" || true
        step "$sys" untar_tiny_sync s "tar --no-same-owner -xf $(q "$T/local/tiny.tar") -C $(q "$d") && sync -f $(q "$d")" "e" || continue
        verify "$sys" untar_tiny_sync "diff -r $(q "$T/local/tiny-ref") $(q "$SHARE/tiny-$sys")" || true
    done
    wh_down
    ss_down
    rm -rf "$SHARE"/tiny-*
}

# cp of the big file within the mount: copy_file_range, which wormhole
# runs on the host and sshfs runs through the client.
test_cp() {
    local sys m bytes=$((SIZE_MB * 1024 * 1024))
    for sys in "${SYSTEMS[@]}"; do
        CURRENT_TEST=cp
        log "cp of $SIZE_MB MiB within the mount, $sys"
        fresh "$sys" || { failed "$sys" cp FAIL "cannot mount"; continue; }
        m=$(root_of "$sys")
        step "$sys" cp MB/s "cp $(q "$m/seq.bin") $(q "$m/copy-$sys.bin")" "$bytes / 1e6 / e" || continue
        verify "$sys" cp "cmp $(q "$T/local/src.bin") $(q "$SHARE/copy-$sys.bin")" || true
    done
    wh_down
    ss_down
    rm -f "$SHARE"/copy-*
}

# Raw QUIC: one stream of 1 GiB over loopback with the file protocol's
# configuration, on the build's runtime (`cargo bench --bench quic_raw`,
# median of three): the reference a cold read is stated against.
test_rawquic() {
    local shell=tokio mbs
    [[ $(basename "$WH_SRC") == *smol* ]] && shell=smol
    CURRENT_TEST=rawquic
    log "raw QUIC over loopback ($shell), the reference"
    wh_down
    ss_down
    CLIENT_PIDS="" SERVER_PIDS=""
    measure wormhole rawquic "cd $(q "$REPO") && QUIC_RAW_SHELLS=$shell QUIC_RAW_MB=$SIZE_MB cargo bench -q -p wormhole-tests --bench quic_raw" ||
        { failed wormhole rawquic FAIL "cargo bench --bench quic_raw failed"; return; }
    mbs=$(awk -v s="$shell" '$1 == "median" && $2 == s { print $3 }' "$LOGS/wormhole.rawquic.out")
    [[ -n $mbs ]] || { failed wormhole rawquic FAIL "no median in the bench's output"; return; }
    record rawquic wormhole "$mbs" MB/s ok
}

# ---------------------------------------------------------------- main

HZ=$(getconf CLK_TCK)
install_missing

if ((BUILD)); then
    log "cargo build --release -p wormhole-tokio"
    (cd "$REPO" && cargo build --release -p wormhole-tokio) || die "cargo build failed"
fi
if want rawquic; then
    # Built now, so that no step measures a compiler.
    log "cargo bench --no-run -p wormhole-tests --bench quic_raw"
    (cd "$REPO" && cargo bench -q --no-run -p wormhole-tests --bench quic_raw) || die "cargo bench --no-run failed"
fi
# The tree the binary was built from (others may commit during the run).
WH_REV="$(git -C "$REPO" describe --always --dirty 2>/dev/null || echo '?') at $(date -u '+%H:%M UTC')"
if ((BUILD)); then WH_REV="built from git $WH_REV"; else WH_REV="not built by this run; the tree was at git $WH_REV"; fi
WH_SRC=${WORMHOLE_BIN:-$REPO/target/release/wormhole}
[[ -x $WH_SRC ]] || die "no wormhole binary at $WH_SRC"

mkdir -p "$BENCH_TMP"
T=$(mktemp -d "$BENCH_TMP/wormhole-bench.XXXXXX")
LOGS=$T/logs
SHARE=$T/share
WH_MNT=$T/mnt-wormhole
SS_MNT=$T/mnt-sshfs
mkdir -p "$LOGS" "$WH_MNT" "$SS_MNT" "$T/wh-config"
# A copy, so that a concurrent build cannot swap the binary mid-run.
WH=$T/wormhole
cp "$WH_SRC" "$WH"
RESULTS=$T/results.tsv
: >"$RESULTS"
log "working in $T"

make_data
setup_sshd
pause_vm_reclaim
((LOCAL)) && SYSTEMS+=(local)

START_DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
MAX_RUSTC=$(pgrep -c rustc || true)
T_START=$(now)

want rawquic && test_rawquic
want seqread && test_seqread
want seqwrite && test_seqwrite
want randread && test_randread
want small && test_small
want findstat && test_findstat
want untar && test_untar
want tiny && test_tiny
want cp && test_cp
wh_down
ss_down

T_END=$(now)
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

{
    printf '#meta\tdate\t%s\n' "$START_DATE"
    printf '#meta\tduration_s\t%s\n' "$(awk -v a="$T_START" -v b="$T_END" 'BEGIN { printf "%.0f", b - a }')"
    printf '#meta\tmachine\t%s cores (%s), %s GiB RAM, kernel %s\n' "$(nproc)" \
        "$(lscpu | sed -n 's/^Model name: *//p' | head -1)" \
        "$(awk '/MemTotal/ { printf "%.0f", $2 / 1048576 }' /proc/meminfo)" "$(uname -r)"
    printf '#meta\tsshfs\t%s, %s, cipher %s, options: %s\n' "$(sshfs --version 2>&1 | grep -m1 -i 'sshfs version')" \
        "$(ssh -V 2>&1 | cut -d, -f1)" "$SSH_CIPHER" "${SSHFS_OPTS:-defaults}"
    printf '#meta\twormhole\t%s (%s), RUST_LOG=%s, fresh --cache-dir per cold run%s\n' "$WH_SRC" \
        "$WH_REV" "$WH_RUST_LOG" \
        "${WH_CACHE_SIZE:+, --cache-size $WH_CACHE_SIZE}"
    printf '#meta\tsize_mb\t%s\n#meta\tfiles\t%s\n#meta\tfile_kb\t%s\n#meta\tfio_runtime\t%s\n' \
        "$SIZE_MB" "$FILES" "$FILE_KB" "$FIO_RUNTIME"
    printf '#meta\tuntar\t%s files, %s MB: %s\n' "${UNTAR_FILES:-?}" "${UNTAR_MB:-?}" "${UNTAR_WHAT:-?}"
    printf '#meta\ttiny_files\t%s\n' "$TINY_FILES"
    printf '#meta\tcold_runs\t%s\n' "$COLD_RUNS"
    printf '#meta\tload\t%s at start, %s at end\n' "$LOAD_START" "$LOAD_END"
    paused=""
    ((${#PAUSED_DAMON[@]})) && paused="DAMON proactive reclaim"
    [[ -n $PAUSED_REPORTING_ORDER ]] && paused+="${paused:+ and }free page reporting"
    if [[ -n $paused ]]; then
        printf '#meta\tvm_reclaim\t%s paused for the run (PAUSE_VM_RECLAIM=1)\n' "$paused"
    else
        active=""
        for state in /sys/kernel/mm/damon/admin/kdamonds/*/state; do
            [[ -f $state && $(cat "$state" 2>/dev/null) == on ]] && active="DAMON proactive reclaim"
        done
        [[ -r $PAGE_REPORTING ]] && (($(cat "$PAGE_REPORTING") <= 10)) &&
            active+="${active:+ and }free page reporting"
        [[ -n $active ]] &&
            printf '#meta\tvm_reclaim\t%s active, as the machine is set up (PAUSE_VM_RECLAIM=1 pauses it)\n' "$active"
    fi
    printf '#meta\tmax_rustc\t%s\n' "$MAX_RUSTC"
    printf '#meta\tstall_limit\t%s\n' "$STALL_LIMIT"
    printf '#meta\tquiet_limit\t%s\n' "$QUIET_LIMIT"
} >>"$RESULTS"

cp "$RESULTS" "$LOGS/results.tsv"
echo
python3 "$HERE/sshfs_report.py" "$RESULTS" | tee ${RESULTS_OUT:+"$RESULTS_OUT"}
if ((FAILED)); then
    log "some steps FAILED (see above); logs are kept"
    exit 1
fi
if ((STALLED)); then
    log "some steps STALLED (see above): their figures include the wait"
    exit 1
fi
