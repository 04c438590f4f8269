#!/usr/bin/env bash
# compare_unpack.sh: Lamina's unpack of an image equals containerd's, entry by entry.
#
# For the bench generator's small image (3 layers: files, symlinks, hard links,
# whiteouts, an opaque directory) in gzip, zstd and uncompressed form, and for an image
# whose gzip, zstd and plain layers hold every entry type and attribute
# (mkimage_all_types.py: devices, fifos, setuid/setgid/sticky, owners, sub-second mtimes,
# xattrs incl. security.capability, PAX and GNU long names, hard links into a lower layer,
# whiteouts, an opaque directory):
#  - import: the same archive imported into a private containerd 1.6 (overlayfs) and
#    into laminad;
#  - pull: the image pushed (skopeo) to a docker-registry on 127.0.0.1 started here,
#    pulled by `ctr images pull --plain-http` and by `lamina pull`;
# then both rootfs are mounted and `lamina manifest` of the two compared (type, mode,
# owner, size, content hash, link target, xattrs, device, mtime, hard-link group).
# Also: pulling a missing tag and pulling from a registry that is down fail clearly.
# Usage: compare_unpack.sh LAMINAD LAMINA WORKDIR   (as root; needs ../shared)
# Last line: "N passed, M failed".
set -uo pipefail
LAMINAD=$1 LAMINA=$2 WORK=$3
export BENCH_STATE=$WORK/bench BENCH_FS=host REGISTRY_ADDR=${REGISTRY_ADDR:-127.0.0.1:5077}
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"   # HERE, SHARED, lib.sh, ok, bad, summary
DPID=
cleanup() {
  for m in $(grep -F " $WORK/" /proc/self/mounts | awk '{print $2}' | sort -r); do umount -l "$m" 2>/dev/null; done
  [ -n "$DPID" ] && kill "$DPID" 2>/dev/null && wait "$DPID" 2>/dev/null
  ctd_stop >/dev/null 2>&1
  [ -n "${REG_PID:-}" ] && kill "$REG_PID" 2>/dev/null && wait "$REG_PID" 2>/dev/null
}
trap cleanup EXIT
mkdir -p "$WORK"
python3 "$SHARED/bench/mkimage.py" small --comp gzip --comp zstd --comp none --out "$WORK/images" >/dev/null \
  || { bad "mkimage.py small"; summary; exit 1; }
python3 "$HERE/scripts/tests/mkimage_all_types.py" "$WORK/images/all-types" all-types >/dev/null \
  || { bad "mkimage_all_types.py"; summary; exit 1; }
# Each image: "short name|archive|layout dir:ref|name in the archive"
IMAGES=(
  "gzip|$WORK/images/small-gzip.tar|$WORK/images/small-gzip:small-gzip|docker.io/bench/small:gzip"
  "zstd|$WORK/images/small-zstd.tar|$WORK/images/small-zstd:small-zstd|docker.io/bench/small:zstd"
  "none|$WORK/images/small-none.tar|$WORK/images/small-none:small-none|docker.io/bench/small:none"
  "all-types|$WORK/images/all-types.tar|$WORK/images/all-types:all-types|docker.io/lamina/all-types:latest"
)

ctd_start "$WORK/ctd" || { bad "containerd start"; summary; exit 1; }
"$LAMINAD" --root "$WORK/lamina-root" --socket "$WORK/lamina.sock" --log-level warn 2>"$WORK/laminad.log" &
DPID=$!
for _ in $(seq 100); do [ -S "$WORK/lamina.sock" ] && break; sleep 0.1; done
L() { "$LAMINA" --socket "$WORK/lamina.sock" "$@"; }
C() { $CTR -a "$CTD_SOCK" -n cmp "$@"; }

# compare_mounted WHAT DIR_CONTAINERD DIR_LAMINA
compare_mounted() {
  "$LAMINA" manifest "$2" > "$2.manifest"
  "$LAMINA" manifest "$3" > "$3.manifest"
  # The rootfs directory itself is a mount point on both sides; its line is not compared.
  if diff <(tail -n +2 "$2.manifest") <(tail -n +2 "$3.manifest") > "$3.diff"; then
    ok "$1: $(wc -l < "$3.manifest") entries identical to containerd's unpack"
  else
    bad "$1: trees differ (containerd < > lamina), first differences:"; head -20 "$3.diff"
  fi
}
# containerd_view KEY PARENT DIR: a labelled view of PARENT mounted on DIR.
containerd_view() {
  # A view carries no gc.root label, so containerd's GC (pending from the import) could
  # remove it at once: run GC synchronously first, then create and label the view.
  C leases create --id cmp-gc >/dev/null 2>&1; C leases rm --sync cmp-gc >/dev/null 2>&1
  C snapshots --snapshotter overlayfs view "$1" "$2" >/dev/null &&
    C snapshots --snapshotter overlayfs label "$1" containerd.io/gc.root=cmp >/dev/null &&
    mkdir -p "$3" && eval "$(C snapshots --snapshotter overlayfs mounts "$3" "$1")"
}
top_of() { python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["chain_ids"][-1])' || echo "(no chain ID in lamina's output)"; }

for spec in "${IMAGES[@]}"; do
  IFS='|' read -r comp tar _ name <<< "$spec"
  if ! out=$(L -o json import "$tar" 2>"$WORK/import.err"); then bad "$comp: lamina import: $(cat "$WORK/import.err")"; continue; fi
  top=$(printf '%s' "$out" | top_of)
  L rootfs "$name" "$WORK/l-$comp" >/dev/null || { bad "$comp: lamina rootfs"; continue; }
  C images import --snapshotter overlayfs "$tar" >/dev/null || { bad "$comp: ctr import"; continue; }
  containerd_view "cmp-$comp" "$top" "$WORK/c-$comp" || { bad "$comp: containerd view of $top (chain IDs differ?)"; continue; }
  compare_mounted "import $comp" "$WORK/c-$comp" "$WORK/l-$comp"
done

if command -v skopeo >/dev/null && registry_start; then
  # A second laminad root, so the pull really downloads and unpacks.
  kill "$DPID"; wait "$DPID" 2>/dev/null
  "$LAMINAD" --root "$WORK/lamina-root-pull" --socket "$WORK/lamina.sock" --log-level info 2>"$WORK/laminad-pull.log" &
  DPID=$!
  for _ in $(seq 100); do L images >/dev/null 2>&1 && break; sleep 0.1; done
  # An interrupted download of the gzip image's largest layer: its first half is kept, so
  # the pull must resume it with a range request and still unpack the whole layer.
  big=$(ls -S "$WORK/images/small-gzip/blobs/sha256" | head -1)
  mkdir -p "$WORK/lamina-root-pull/content/ingest"
  head -c "$(( $(stat -c %s "$WORK/images/small-gzip/blobs/sha256/$big") / 2 ))" \
    "$WORK/images/small-gzip/blobs/sha256/$big" > "$WORK/lamina-root-pull/content/ingest/$big.partial"
  for spec in "${IMAGES[@]}"; do
    IFS='|' read -r comp _ layout _ <<< "$spec"
    ref=$REGISTRY_ADDR/bench/$comp:1
    skopeo copy -q --dest-tls-verify=false "oci:$layout" "docker://$ref" \
      || { bad "$comp: skopeo push"; continue; }
    if ! out=$(L -o json pull "$ref" 2>"$WORK/pull.err"); then bad "$comp: lamina pull: $(cat "$WORK/pull.err")"; continue; fi
    top=$(printf '%s' "$out" | top_of)
    L rootfs "$ref" "$WORK/lp-$comp" >/dev/null || { bad "$comp: lamina rootfs after pull"; continue; }
    C images pull --plain-http --snapshotter overlayfs "$ref" >/dev/null || { bad "$comp: ctr pull"; continue; }
    containerd_view "cmp-pull-$comp" "$top" "$WORK/cp-$comp" || { bad "$comp: containerd view after pull"; continue; }
    compare_mounted "pull $comp" "$WORK/cp-$comp" "$WORK/lp-$comp"
  done
  if grep -q "resuming an interrupted download.*offset" "$WORK/laminad-pull.log"; then
    ok "an interrupted layer download was resumed (range request), and the result compared equal above"
  else bad "no resumed download in laminad's log"; fi
  if msg=$(L pull "$REGISTRY_ADDR/bench/gzip:no-such-tag" 2>&1); then bad "missing tag pulled?"
  elif printf '%s' "$msg" | grep -q "NotFound"; then ok "missing tag: $msg"; else bad "missing tag: unclear error: $msg"; fi
  if msg=$(L pull "127.0.0.1:1/nothing/here:1" 2>&1); then bad "pull from a closed port succeeded?"
  elif printf '%s' "$msg" | grep -q "Unavailable"; then ok "registry down: $msg"; else bad "registry down: unclear error: $msg"; fi
  if L images > "$WORK/images.txt" && grep -q "bench/all-types:1" "$WORK/images.txt"; then ok "images lists pulled images"; else bad "images after pull"; fi
else
  bad "skopeo or docker-registry unavailable: pull comparison not run"
fi
summary
