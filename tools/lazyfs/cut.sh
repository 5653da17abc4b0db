#!/usr/bin/env bash
# Usage: cut.sh MNT
# A power cut: LazyFS drops every write under MNT that was not fsynced. Stop (kill -9)
# the writers first, so that nothing writes between the cut and the check.
# Prints "cache usage before the cut: X%": LazyFS keeps everything written since the
# last cut (fsynced or not) in its cache, and once that is full it writes straight
# to disk, where a cut cannot drop it. Keep X well below 100 (mount.sh's CACHE).
set -euo pipefail
mnt=$(realpath -m "$1"); ctl="$(dirname "$mnt")/.lazyfs-$(basename "$mnt")"
fail() { echo "$1" >&2; exit 1; }
[ -p "$ctl/faults.fifo" ] || fail "no LazyFS control FIFO in $ctl"
kill -0 "$(cat "$ctl/pid")" 2>/dev/null || fail "LazyFS (pid $(cat "$ctl/pid")) is not running: $(tail -n 3 "$ctl/out")"
# One command at a time: LazyFS reads the FIFO in chunks, and two commands read
# together are both ignored.
send() { timeout 5 bash -c 'echo "$1" >"$2"' _ "$1" "$ctl/faults.fifo" || fail "cannot send $1 to LazyFS"; }
# Hold the reply FIFO open read-write: that never blocks, and LazyFS always finds a
# reader, however late this script gets to read it.
exec 3<>"$ctl/done.fifo"
count() { grep -c "cache usage (%pages)" "$ctl/out" || true; }
before=$(count)
send "lazyfs::display-cache-usage"
usage=""
for _ in $(seq 1 250); do
  if [ "$(count)" -gt "$before" ]; then
    usage=$(grep "cache usage (%pages)" "$ctl/out" | tail -n 1 | sed 's/.* is \([0-9.]*\)%.*/\1/')
    break
  fi
  sleep 0.02
done
[ -n "$usage" ] || fail "LazyFS did not report its cache usage"
send "lazyfs::clear-cache"
read -r -t 20 line <&3 || fail "LazyFS did not confirm the cut"
[ "$line" = "finished::clear-cache" ] || fail "LazyFS answered '$line' to the cut"
echo "cache usage before the cut: $usage%"
