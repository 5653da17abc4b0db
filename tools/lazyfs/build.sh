#!/usr/bin/env bash
# Builds LazyFS (MIT, INESC TEC; upstream github.com/dsrhaslab/lazyfs) from the copy
# beside this script: a FUSE file system that keeps every unsynced write in its own
# cache and drops them all on command, which is what a power cut does. Its CMake files
# here use Debian's toml11 3.7.1 and spdlog 1.10 instead of downloading them.
# Needs root (apt-get) the first time. Prints the path of the lazyfs binary.
# Not safe to run twice at once (callers serialize it; cli/tests/support/lazyfs.rs
# holds a file lock). Rebuilds when the sources beside it change.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${LAZYFS_BUILD:-${HOME:-/root}/.cache/lazyfs-build}
bin="$out/lazyfs/build/lazyfs"
stamp=$(cd "$here" && find libs lazyfs -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
if [ -x "$bin" ] && [ "$(cat "$out/.sources" 2>/dev/null)" = "$stamp" ]; then echo "$bin"; exit 0; fi
need=""
for p in g++ cmake make libfuse3-dev fuse3 libspdlog-dev libtoml11-dev; do
  dpkg -s "$p" >/dev/null 2>&1 || need="$need $p"
done
log=$(mktemp /tmp/lazyfs-build.XXXXXX.log)
fail() { echo "LazyFS build failed: $1 (log: $log)" >&2; tail -n 30 "$log" >&2; exit 1; }
if [ -n "$need" ]; then
  apt-get update -qq >>"$log" 2>&1 || true
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >>"$log" 2>&1 || fail "apt-get install$need"
fi
rm -rf "$out"; mkdir -p "$out"; cp -r "$here/libs" "$here/lazyfs" "$out/"
(cd "$out/libs/libpcache" && mkdir -p build && cd build && cmake .. && cmake --build . -j2) >>"$log" 2>&1 || fail "libpcache"
(cd "$out/lazyfs" && mkdir -p build && cd build && cmake -DLAZYFS_BUILD_TESTS=OFF .. && cmake --build . -j2) >>"$log" 2>&1 || fail "lazyfs"
[ -x "$bin" ] || fail "no binary at $bin"
grep -q "^user_allow_other" /etc/fuse.conf 2>/dev/null || echo user_allow_other >>/etc/fuse.conf
echo "$stamp" >"$out/.sources"
rm -f "$log"
echo "$bin"
