#!/usr/bin/env bash
# compare_unpack.sh: Lamina's unpack of an image equals containerd's, entry by entry.
#
# For the bench generator's small image (3 layers: files, symlinks, hard links,
# whiteouts, an opaque directory) in gzip, zstd and uncompressed form, it imports the
# same archive into a private containerd 1.6 (overlayfs snapshotter) and into laminad,
# mounts both rootfs and compares `lamina manifest` of the two (type, mode, owner, size,
# content hash, link target, xattrs, device, mtime, hard-link group).
# Usage: compare_unpack.sh LAMINAD LAMINA WORKDIR   (as root; needs ../shared)
# Last line: "N passed, M failed".
set -uo pipefail
LAMINAD=$1 LAMINA=$2 WORK=$3
HERE=$(cd "$(dirname "$0")/../.." && pwd)
SHARED=${SHARED:-$(cd "$HERE/../shared" && pwd)}
export BENCH_STATE=$WORK/bench BENCH_FS=host
# shellcheck source=/dev/null
source "$SHARED/bench/lib.sh"
passed=0; failed=0
ok() { passed=$((passed+1)); echo "PASS: $*"; }
bad() { failed=$((failed+1)); echo "FAIL: $*"; }
DPID=
cleanup() {
  for m in $(grep -F " $WORK/" /proc/self/mounts | awk '{print $2}' | sort -r); do umount -l "$m" 2>/dev/null; done
  [ -n "$DPID" ] && kill "$DPID" 2>/dev/null && wait "$DPID" 2>/dev/null
  ctd_stop >/dev/null 2>&1
}
trap cleanup EXIT
mkdir -p "$WORK"
python3 "$SHARED/bench/mkimage.py" small --comp gzip --comp zstd --comp none --out "$WORK/images" >/dev/null \
  || { bad "mkimage.py small"; echo "$passed passed, $failed failed"; exit 1; }

ctd_start "$WORK/ctd" || { bad "containerd start"; echo "$passed passed, $failed failed"; exit 1; }
"$LAMINAD" --root "$WORK/lamina-root" --socket "$WORK/lamina.sock" --log-level warn 2>"$WORK/laminad.log" &
DPID=$!
for _ in $(seq 100); do [ -S "$WORK/lamina.sock" ] && break; sleep 0.1; done
L() { "$LAMINA" --socket "$WORK/lamina.sock" "$@"; }
C() { $CTR -a "$CTD_SOCK" -n cmp "$@"; }

for comp in gzip zstd none; do
  tar=$WORK/images/small-$comp.tar
  name=docker.io/bench/small:$comp
  if ! out=$(L -o json import "$tar" 2>&1); then bad "$comp: lamina import: $out"; continue; fi
  top=$(printf '%s' "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["chain_ids"][-1])')
  mkdir -p "$WORK/l-$comp" "$WORK/c-$comp"
  L rootfs "$name" "$WORK/l-$comp" >/dev/null || { bad "$comp: lamina rootfs"; continue; }
  C images import --snapshotter overlayfs "$tar" >/dev/null || { bad "$comp: ctr import"; continue; }
  # A view carries no gc.root label, so containerd's GC (pending from the import) could
  # remove it at once: run GC synchronously first, then create and label the view.
  C leases create --id cmp-gc >/dev/null 2>&1; C leases rm --sync cmp-gc >/dev/null 2>&1
  { C snapshots --snapshotter overlayfs view "cmp-$comp" "$top" >/dev/null &&
    C snapshots --snapshotter overlayfs label "cmp-$comp" containerd.io/gc.root=cmp >/dev/null; } \
    || { bad "$comp: containerd has no snapshot $top (chain IDs differ?)"; continue; }
  eval "$(C snapshots --snapshotter overlayfs mounts "$WORK/c-$comp" "cmp-$comp")" \
    || { bad "$comp: mount containerd's view"; continue; }
  "$LAMINA" manifest "$WORK/l-$comp" > "$WORK/l-$comp.manifest"
  "$LAMINA" manifest "$WORK/c-$comp" > "$WORK/c-$comp.manifest"
  # The rootfs directory itself is a mount point on both sides; its line is not compared.
  if diff <(tail -n +2 "$WORK/c-$comp.manifest") <(tail -n +2 "$WORK/l-$comp.manifest") > "$WORK/$comp.diff"; then
    ok "$comp: $(wc -l < "$WORK/l-$comp.manifest") entries identical to containerd's unpack (chain $top)"
  else
    bad "$comp: trees differ (containerd < > lamina), first differences:"; head -20 "$WORK/$comp.diff"
  fi
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
