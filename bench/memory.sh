#!/usr/bin/env bash
# The mount process's memory (VmRSS and its peak, VmHWM) through a session
# that lists a 50,000-entry directory, stats its entries, reads a 600 MiB
# file twice (more than the 256 MiB memory cache) and writes 600 MiB.
# Run as root (FUSE) after `cargo build --release -p wormhole-tokio`.
# Usage: bench/memory.sh [work-dir]
set -euo pipefail
bin="$(cd "$(dirname "$0")/.." && pwd)/target/release/wormhole"
work="${1:-/tmp/wormhole-memory}"
port=47124
rm -rf "$work" && mkdir -p "$work/share/many" "$work/mnt"
cd "$work"
python3 -c '
for i in range(50000):
    open(f"share/many/f{i:05d}", "w").close()'
head -c $((600 << 20)) /dev/urandom > share/big.bin
export XDG_CONFIG_HOME="$work/config"
"$bin" host share --bind "127.0.0.1:$port" > host.out 2>&1 &
host=$!
trap 'umount -l mnt 2>/dev/null || true; kill $host 2>/dev/null || true' EXIT
until ticket=$(grep -o 'wormhole1-[^ ]*' host.out); do sleep 0.1; done
"$bin" mount "$ticket" mnt --cache-dir "$work/cache" > mount.out 2>&1 &
mount=$!
until mountpoint -q mnt; do sleep 0.1; done
rss() { grep -E "VmRSS|VmHWM" "/proc/$mount/status" | tr -s ' \t' ' ' | tr '\n' ' '; echo; }
echo "mounted:                      $(rss)"
ls -l mnt/many > /dev/null
echo "listed 50,000 entries:        $(rss)"
stat mnt/many/f4* > /dev/null
echo "stat of 10,000 of them:       $(rss)"
dd if=mnt/big.bin of=/dev/null bs=1M count=100 status=none
echo "read 100 MiB:                 $(rss)"
cat mnt/big.bin > /dev/null
echo "read 600 MiB:                 $(rss)"
cat mnt/big.bin > /dev/null
echo "read 600 MiB again:           $(rss)"
dd if=/dev/zero of=mnt/w.bin bs=1M count=600 conv=fsync status=none
echo "wrote 600 MiB (fsync):        $(rss)"
