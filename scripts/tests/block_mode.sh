#!/usr/bin/env bash
# block_mode.sh: the block backend (issue 6) as a user runs it, through laminad.
#
#  1. The same images (mkimage small gzip and zstd, and the all-entry-types image) imported
#     into a laminad with the overlayfs backend and one with the block backend: their
#     rootfs trees are identical entry by entry (`lamina manifest`, contents hashed), and
#     every committed layer of the block store is one EROFS image, mounted.
#  2. Quota: a writable snapshot prepared with `containerd.io/snapshot/lamina.quota=16M`
#     takes small writes, fails a 64 MB write with ENOSPC ("No space left on device"), and
#     the host file system is untouched (its free space barely moves). The same per
#     snapshot in an overlayfs store; its commit becomes one EROFS layer image.
#     Through containerd: laminad (block, writable_quota = 32M) as its proxy snapshotter,
#     `ctr images pull` unpacks into EROFS layer images and a `ctr run` container writing
#     64 MB gets ENOSPC.
#  3. After removing every snapshot, `lamina snapshot cleanup`, and a laminad restart:
#     no loop device, mount, image file or snapshot directory of Lamina's is left.
# Usage: block_mode.sh LAMINAD LAMINA WORKDIR   (as root; needs ../shared)
# Last line: "N passed, M failed".
set -uo pipefail
LAMINAD=$1 LAMINA=$2 WORK=$3
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"   # HERE, SHARED, lib.sh, ok, bad, summary
finish() { summary; exit; }
declare -A DPID=()
cleanup() {
  for p in $(pgrep -f "containerd-shim.* -address $WORK/ctd/containerd.sock( |$)"); do kill "$p" 2>/dev/null; done
  [ -n "${REG_PID:-}" ] && kill "$REG_PID" 2>/dev/null
  for dir in $(grep -F " $WORK/" /proc/self/mounts | awk '{print $2}' | sort -r); do umount "$dir" 2>/dev/null; done
  for n in "${!DPID[@]}"; do [ -n "${DPID[$n]}" ] && kill "${DPID[$n]}" 2>/dev/null && wait "${DPID[$n]}" 2>/dev/null; done
  for dir in $(grep -F " $WORK/" /proc/self/mounts | awk '{print $2}' | sort -r); do umount -l "$dir" 2>/dev/null; done
}
trap cleanup EXIT
rm -rf "$WORK"; mkdir -p "$WORK"
for tool in mkfs.erofs mkfs.ext4 python3 containerd ctr skopeo busybox docker-registry; do
  command -v "$tool" >/dev/null || { bad "$tool is missing (scripts/deps.sh installs it)"; finish; }
done

start() { # start NAME BACKEND
  mkdir -p "$WORK/$1"
  "$LAMINAD" --root "$WORK/$1/root" --socket "$WORK/$1/lamina.sock" --backend "$2" --log-level warn \
    >>"$WORK/$1/laminad.log" 2>&1 &
  DPID[$1]=$!
  for _ in $(seq 100); do [ -S "$WORK/$1/lamina.sock" ] && return 0; sleep 0.1; done
  tail -5 "$WORK/$1/laminad.log"; return 1
}
stop() { kill "${DPID[$1]}" && wait "${DPID[$1]}"; DPID[$1]=; }
L() { local n=$1; shift; timeout 300 "$LAMINA" --socket "$WORK/$n/lamina.sock" "$@"; }

# --- 1. the same trees as the overlayfs backend ------------------------------------------
python3 "$SHARED/bench/mkimage.py" small --comp gzip --comp zstd --out "$WORK/images" >/dev/null \
  || { bad "mkimage.py small"; finish; }
python3 "$HERE/scripts/tests/mkimage_all_types.py" "$WORK/images/all-types" all-types >/dev/null \
  || { bad "mkimage_all_types.py"; finish; }
start overlay overlayfs && start block block || { bad "laminad did not start"; finish; }
for img in small-gzip small-zstd all-types; do
  for n in overlay block; do
    if ! L "$n" -o json import "$WORK/images/$img" > "$WORK/$n/import-$img.json" 2>"$WORK/$n/err" ||
       ! name=$(python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); j=j[0] if isinstance(j,list) else j; print(j["name"])' "$WORK/$n/import-$img.json") ||
       ! L "$n" rootfs "$name" "$WORK/$n/rootfs-$img" >/dev/null 2>>"$WORK/$n/err"; then
      bad "$n: import + rootfs of $img: $(cat "$WORK/$n/err")"; continue 2
    fi
  done
  "$LAMINA" manifest "$WORK/overlay/rootfs-$img" > "$WORK/overlay/$img.manifest"
  "$LAMINA" manifest "$WORK/block/rootfs-$img" > "$WORK/block/$img.manifest"
  # The rootfs directory itself is each store's own mount point: its line is not compared.
  if diff <(tail -n +2 "$WORK/overlay/$img.manifest") <(tail -n +2 "$WORK/block/$img.manifest") > "$WORK/$img.diff"; then
    ok "$img: block rootfs identical to the overlayfs one ($(($(wc -l < "$WORK/block/$img.manifest") - 1)) entries, contents hashed)"
  else bad "$img: trees differ (overlay < > block): $(head -5 "$WORK/$img.diff")"; fi
done
layers=$(find "$WORK/block/root/snapshots" -maxdepth 2 -name layer.erofs | wc -l)
mounted=$(grep -F " $WORK/block/root/snapshots/" /proc/self/mounts | grep -c ' erofs ')
files_block=$(find "$WORK/block/root/snapshots" -xdev | wc -l)
files_overlay=$(find "$WORK/overlay/root/snapshots" -xdev | wc -l)
if [ "$layers" -gt 0 ] && [ "$layers" -eq "$mounted" ]; then
  ok "block store: $layers committed layers, each one EROFS image, all mounted ($files_block files on the host vs $files_overlay for overlayfs)"
else bad "block store: $layers layer images, $mounted EROFS mounts"; fi

# --- 2. quota -----------------------------------------------------------------------------
top=$(python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); j=j[0] if isinstance(j,list) else j; print(j["chain_ids"][-1])' "$WORK/block/import-small-gzip.json")
mkdir -p "$WORK/q"
before=$(df --output=avail -B1 "$WORK" | tail -1)
if L block snapshot prepare quota "$top" --label containerd.io/snapshot/lamina.quota=16M --target "$WORK/q" >/dev/null 2>"$WORK/block/err"; then
  if echo small > "$WORK/q/small" && err=$(dd if=/dev/zero of="$WORK/q/big" bs=1M count=64 conv=fsync 2>&1); then
    bad "quota: a 64 MB write into a 16 MB quota succeeded"
  elif grep -q "No space left on device" <<<"$err"; then
    after=$(df --output=avail -B1 "$WORK" | tail -1)
    used=$(( (before - after) / 1048576 ))
    ok "quota: 16M writable layer: small write ok, 64 MB write failed with ENOSPC ($(tail -1 <<<"$err" | cut -c1-60)...); host free space moved by ${used} MiB"
  else bad "quota: the 64 MB write failed otherwise: $err"; fi
  rm -f "$WORK/q/big"
  L block snapshot umount "$WORK/q" 2>/dev/null || umount "$WORK/q"
else bad "quota: prepare with a 16M quota: $(cat "$WORK/block/err")"; fi
# Per snapshot in an overlayfs store: a quota'd writable layer, committed into an image.
otop=$(python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); j=j[0] if isinstance(j,list) else j; print(j["chain_ids"][-1])' "$WORK/overlay/import-small-gzip.json")
mkdir -p "$WORK/oq"
if L overlay snapshot prepare oq "$otop" --label containerd.io/snapshot/lamina.quota=16M --target "$WORK/oq" >/dev/null 2>"$WORK/overlay/err"; then
  err=$(dd if=/dev/zero of="$WORK/oq/big" bs=1M count=64 conv=fsync 2>&1)
  rm -f "$WORK/oq/big"; echo kept > "$WORK/oq/kept"
  L overlay snapshot umount "$WORK/oq" 2>/dev/null || umount "$WORK/oq"
  if grep -q "No space left on device" <<<"$err" && L overlay snapshot commit oq-done oq >/dev/null 2>"$WORK/overlay/err" &&
     [ "$(find "$WORK/overlay/root/snapshots" -maxdepth 2 -name layer.erofs | wc -l)" -eq 1 ] &&
     [ "$(find "$WORK/overlay/root/snapshots" -maxdepth 2 -name rw.img | wc -l)" -eq 0 ]; then
    ok "overlayfs store, per snapshot: a 16M quota label gives ENOSPC; the commit turns the quota image into one EROFS layer image"
  else bad "overlayfs store, per snapshot quota: ${err:-} $(cat "$WORK/overlay/err")"; fi
else bad "overlayfs store: prepare with a quota label: $(cat "$WORK/overlay/err")"; fi

# --- containerd on the block backend: a container writing past its quota -----------------
# A private containerd with laminad (block, writable_quota = 32M) as its proxy snapshotter
# pulls the demo image (unpacked through Prepare/Commit: sealed layer images) and runs a
# container that writes 64 MB: ENOSPC inside the container, the host untouched.
export BENCH_STATE=$WORK/bench BENCH_FS=host REGISTRY_ADDR=${REGISTRY_ADDR:-127.0.0.1:5092}
CSOCK=$WORK/ctd/containerd.sock
mkdir -p "$WORK/ctd" "$WORK/cq"
printf 'root = "%s"\nsocket = "%s"\nbackend = "block"\nwritable_quota = "32M"\nlog_level = "warn"\n' \
  "$WORK/cq/root" "$WORK/cq/lamina.sock" > "$WORK/cq/laminad.toml"
"$LAMINAD" --config "$WORK/cq/laminad.toml" 2>"$WORK/cq/laminad.log" &
DPID[cq]=$!
cat > "$WORK/ctd/config.toml" <<TOML
version = 2
root = "$WORK/ctd/root"
state = "$WORK/ctd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$CSOCK"
[ttrpc]
  address = "$CSOCK.ttrpc"
[proxy_plugins]
  [proxy_plugins.lamina]
    type = "snapshot"
    address = "$WORK/cq/lamina.sock"
[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "$WORK/ctd/opt"
TOML
containerd --config "$WORK/ctd/config.toml" > "$WORK/ctd/containerd.log" 2>&1 &
DPID[ctd]=$!
for _ in $(seq 100); do [ -S "$WORK/cq/lamina.sock" ] && ctr -a "$CSOCK" version >/dev/null 2>&1 && break; sleep 0.1; done
C() { timeout 120 ctr -a "$CSOCK" -n block-mode "$@"; }
REF=$REGISTRY_ADDR/lamina/demo:1
if ! push_demo_image "$WORK/demo" "$REF" 2>"$WORK/ctd/push.err"; then bad "demo image pushed to $REF: $(cat "$WORK/ctd/push.err")"
elif ! C images pull --plain-http --snapshotter lamina "$REF" > "$WORK/ctd/pull.out" 2>&1; then
  bad "ctr images pull through Lamina (block): $(tail -3 "$WORK/ctd/pull.out")"
else
  images=$(find "$WORK/cq/root/snapshots" -maxdepth 2 -name layer.erofs | wc -l)
  out=$(timeout 60 ctr -a "$CSOCK" -n block-mode run --rm --snapshotter lamina --fifo-dir "$WORK/ctd/fifo" \
    --runc-root "$WORK/ctd/runc" "$REF" quota-test /bin/sh -c \
    'echo fits > /small && cat /small; dd if=/dev/zero of=/big bs=1M count=64 2>&1; sync; echo done' 2>&1)
  if grep -q "^fits" <<<"$out" && grep -q "No space left on device" <<<"$out" && [ "$images" -ge 2 ]; then
    ok "containerd: ctr images pull unpacked through Lamina into $images EROFS layer images; ctr run with a 32M writable quota: small write ok, 64 MB write: $(grep -m1 'No space' <<<"$out")"
  else bad "containerd quota run ($images layer images): $(tr '\n' ' ' <<<"$out" | cut -c1-400)"; fi
  C images rm --sync "$REF" >/dev/null 2>&1
fi
kill "${DPID[ctd]}" 2>/dev/null && wait "${DPID[ctd]}" 2>/dev/null; DPID[ctd]=
stop cq
[ -n "${REG_PID:-}" ] && kill "$REG_PID" 2>/dev/null && wait "$REG_PID" 2>/dev/null; REG_PID=

# --- 3. nothing left after Remove + Cleanup + restart ------------------------------------
for dir in $(grep -F " $WORK/block/rootfs" /proc/self/mounts | awk '{print $2}'); do umount "$dir"; done
removed=1
for key in $(L block -o json snapshot ls | python3 -c '
import json, sys
snaps = json.load(sys.stdin)
kids = {}
for s in snaps: kids.setdefault(s.get("parent", ""), []).append(s["name"])
order = []
def visit(n):
    for c in kids.get(n, []): visit(c)
    order.append(n)
for s in snaps:
    if not s.get("parent"): visit(s["name"])
print("\n".join(order))'); do
  L block snapshot rm "$key" >/dev/null 2>&1 || { removed=0; echo "could not remove $key" >&2; }
done
L block snapshot cleanup >/dev/null 2>&1
stop block && start block block
sleep 0.5
loops=0
for f in /sys/block/loop*/loop/backing_file; do
  [ -e "$f" ] && grep -qF "$WORK/block/" "$f" && loops=$((loops + 1))
done
mounts=$(grep -cF " $WORK/block/root" /proc/self/mounts)
images=$(find "$WORK/block/root" \( -name '*.erofs' -o -name 'rw.img' \) | wc -l)
dirs=$(find "$WORK/block/root/snapshots" -mindepth 1 -maxdepth 1 | wc -l)
if [ "$removed" -eq 1 ] && [ "$loops" -eq 0 ] && [ "$mounts" -eq 0 ] && [ "$images" -eq 0 ] && [ "$dirs" -eq 0 ]; then
  ok "after Remove of every snapshot, Cleanup and a restart: no loop device, mount, image file or snapshot directory left"
else bad "after Remove/Cleanup/restart: removed=$removed loop devices $loops, mounts $mounts, images $images, snapshot dirs $dirs"; fi
finish
