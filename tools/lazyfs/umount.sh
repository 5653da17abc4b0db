#!/usr/bin/env bash
# Usage: umount.sh MNT
# Unmounts (lazily if something still holds files open there), stops LazyFS and
# removes its control directory.
set -u
mnt=$(realpath -m "$1"); ctl="$(dirname "$mnt")/.lazyfs-$(basename "$mnt")"
if grep -q " $mnt fuse" /proc/mounts; then
  for _ in 1 2 3 4 5; do
    fusermount3 -u "$mnt" 2>/dev/null && break
    sleep 0.2
  done
  grep -q " $mnt fuse" /proc/mounts && fusermount3 -uz "$mnt" 2>/dev/null
fi
if [ -f "$ctl/pid" ]; then
  pid=$(cat "$ctl/pid")
  kill "$pid" 2>/dev/null
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null
fi
rm -rf "$ctl"
exit 0
