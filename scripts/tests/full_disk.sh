#!/usr/bin/env bash
# full_disk.sh: a pull that runs out of disk space fails cleanly (issue: limits with clear
# errors). For each backend (overlayfs, block), laminad's root is a small loop-mounted
# ext4 (320 MiB) and a docker-registry on 127.0.0.1 (started here) serves three images
# built here: the bench generator's small image; "big", a small layer under one layer of
# 4 x 24 MiB files that compress to almost nothing (the disk fills while unpacking, not
# while downloading); "rand", one layer holding a 48 MiB random file (its blob alone does
# not fit: the disk fills while downloading too).
#  1. The small image pulls; its rootfs is hashed (`lamina manifest`).
#  2. A ballast file leaves ~40 MiB free; pulling big, then rand, fails with a clear error
#     (ResourceExhausted, "No space left on device", naming the layer and the file being
#     written) and laminad stays up.
#  3. The small image's snapshots are intact: each layer's info answers, its rootfs hashes
#     as before; after `lamina snapshot cleanup` no snapshot directory of the failed pulls
#     is left (directories == records) and the space they took is free again (no partial
#     download is kept: on a full disk it is what is in the way).
#  4. laminad restarted finds a consistent store (same images, directories == records).
#  5. The ballast removed, the same pulls succeed and their rootfs hold their files.
# Then limits through `lamina pull`: a daemon with max_layer_bytes = 64 MiB,
# max_layer_entries = 100 and max_concurrent_pulls = 1 refuses big and small (pulled at
# the same time) with InvalidArgument naming the setting and the limit, leaving no
# snapshot behind.
# Usage: full_disk.sh LAMINAD LAMINA WORKDIR   (as root; needs ../shared)
# Last line: "N passed, M failed".
set -uo pipefail
LAMINAD=$1 LAMINA=$2 WORK=$3
mkdir -p "$WORK" && WORK=$(cd "$WORK" && pwd) || { echo "cannot use $WORK"; echo "0 passed, 1 failed"; exit 1; }
export BENCH_STATE=$WORK/bench BENCH_FS=host REGISTRY_ADDR=${REGISTRY_ADDR:-127.0.0.1:5093}
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"   # HERE, SHARED, lib.sh, ok, bad, summary
finish() { summary; exit; }
DPID=
unmount_all() {
  for m in $(grep -F " $WORK/" /proc/self/mounts | awk '{print $2}' | sort -r); do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; done
}
cleanup() {
  [ -n "$DPID" ] && kill "$DPID" 2>/dev/null && wait "$DPID" 2>/dev/null
  unmount_all
  [ -n "${REG_PID:-}" ] && kill "$REG_PID" 2>/dev/null && wait "$REG_PID" 2>/dev/null
}
trap cleanup EXIT

[ "$(id -u)" = 0 ] || { bad "must run as root (loop-mounted ext4, overlay mounts)"; finish; }
for tool in mkfs.ext4 mkfs.erofs losetup fallocate skopeo curl python3 docker-registry; do
  command -v "$tool" >/dev/null || { bad "$tool is missing (scripts/deps.sh installs it)"; finish; }
done
if curl -fsS "http://$REGISTRY_ADDR/v2/" >/dev/null 2>&1; then
  bad "something already answers on $REGISTRY_ADDR: this test starts its own registry there"; finish
fi
unmount_all
rm -rf "$WORK"; mkdir -p "$WORK"

# --- images -------------------------------------------------------------------------
python3 "$SHARED/bench/mkimage.py" small --comp gzip --out "$WORK/images" >"$WORK/mkimage.log" 2>&1 \
  || { bad "mkimage.py small: $(tail -5 "$WORK/mkimage.log")"; finish; }
# Two images that do not fit, as OCI layouts (python3 - OUT NAME):
# big: layer 1 a few small files, layer 2 four 24 MiB files of a repeated random block
# (not zeros: the applier writes zero blocks as holes); it runs out while unpacking.
# rand: one layer, one 48 MiB file of random bytes (gzip cannot shrink it); it runs out
# while downloading.
for name in big rand; do
python3 - "$WORK/images/$name" "$name" <<'PY' || { bad "building the $name image"; finish; }
import gzip, hashlib, io, json, os, sys, tarfile
out, name = sys.argv[1], sys.argv[2]
os.makedirs(os.path.join(out, "blobs", "sha256"), exist_ok=True)
def blob(data):
    d = hashlib.sha256(data).hexdigest()
    open(os.path.join(out, "blobs", "sha256", d), "wb").write(data)
    return "sha256:" + d
def layer(files, level):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for path, data in files:
            ti = tarfile.TarInfo(path); ti.size = len(data); ti.mode = 0o644; ti.mtime = 1700000000
            tf.addfile(ti, io.BytesIO(data))
    tar = raw.getvalue()
    gz = gzip.compress(tar, compresslevel=level, mtime=0)
    return "sha256:" + hashlib.sha256(tar).hexdigest(), blob(gz), len(gz)
if name == "big":
    rnd = hashlib.shake_256(b"full-disk").digest(4096)
    layers = [
        layer([("etc/small-%d" % i, hashlib.shake_256(b"%d" % i).digest(4096)) for i in range(4)], 6),
        layer([("data/big-%d" % i, (rnd[i:] + rnd[:i]) * ((24 << 20) // 4096)) for i in range(4)], 6),
    ]
else:
    layers = [layer([("data/rand", hashlib.shake_256(b"full-disk-rand").digest(48 << 20))], 1)]
config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                     "rootfs": {"type": "layers", "diff_ids": [l[0] for l in layers]}}).encode()
manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": blob(config), "size": len(config)},
    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": l[1], "size": l[2]} for l in layers],
}).encode()
index = {"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
    "digest": blob(manifest), "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": name}}]}
json.dump(index, open(os.path.join(out, "index.json"), "w"))
open(os.path.join(out, "oci-layout"), "w").write('{"imageLayoutVersion": "1.0.0"}')
PY
done
registry_start || { bad "docker-registry did not start on $REGISTRY_ADDR"; finish; }
SMALL=$REGISTRY_ADDR/bench/small:gzip BIG=$REGISTRY_ADDR/lamina/big:1 RAND=$REGISTRY_ADDR/lamina/rand:1
skopeo copy -q --preserve-digests --dest-tls-verify=false "oci:$WORK/images/small-gzip:small-gzip" "docker://$SMALL" \
  && skopeo copy -q --preserve-digests --dest-tls-verify=false "oci:$WORK/images/big:big" "docker://$BIG" \
  && skopeo copy -q --preserve-digests --dest-tls-verify=false "oci:$WORK/images/rand:rand" "docker://$RAND" \
  || { bad "skopeo push of the images"; finish; }
# The big image's blobs: the content store keeps those it stored whole (valid blobs)
# after the unpack failed, so at most this much of the freed space may stay taken.
BIG_BLOBS=$(du -sb "$WORK/images/big/blobs" | cut -f1)
# top_layer LAYOUT: the digest of the image's top layer, which the errors must name.
top_layer() { python3 -c 'import json,sys; d=sys.argv[1]; b=lambda x: d+"/blobs/sha256/"+x.split(":")[1]; m=json.load(open(b(json.load(open(d+"/index.json"))["manifests"][0]["digest"]))); print(m["layers"][-1]["digest"])' "$1"; }
BIG_LAYER=$(top_layer "$WORK/images/big") RAND_LAYER=$(top_layer "$WORK/images/rand")

# --- helpers ------------------------------------------------------------------------
# start B: laminad with backend B on WORK/B/mnt/root (log appended to WORK/B/laminad.log).
start() {
  local b=$1
  "$LAMINAD" --root "$WORK/$b/mnt/root" --socket "$WORK/$b/lamina.sock" --backend "$b" --log-level info \
    >>"$WORK/$b/laminad.log" 2>&1 &
  DPID=$!
  for _ in $(seq 300); do
    timeout 5 "$LAMINA" --socket "$WORK/$b/lamina.sock" images >/dev/null 2>&1 && return 0
    kill -0 "$DPID" 2>/dev/null || break
    sleep 0.1
  done
  echo "laminad did not come up; its log:" >&2; tail -20 "$WORK/$b/laminad.log" >&2; DPID=; return 1
}
stop() { kill "$DPID" && wait "$DPID"; local rc=$?; DPID=; return $rc; }
L() { timeout 300 "$LAMINA" --socket "$WORK/$B/lamina.sock" "$@"; }
avail() { df --output=avail -B1 "$WORK/$B/mnt" | tail -1; }
# consistent: snapshot directories == snapshot records (prints both counts).
consistent() {
  local records dirs
  records=$(L -o json snapshot ls | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))') || return 1
  dirs=$(find "$WORK/$B/mnt/root/snapshots" -mindepth 1 -maxdepth 1 | wc -l)
  echo "$dirs directories, $records records"
  [ "$dirs" -eq "$records" ]
}
# all_info CHAIN...: every snapshot named answers Stat.
all_info() { local c; for c in "$@"; do L snapshot info "$c" >/dev/null || return 1; done; }
# tree NAME: the manifest of image NAME's rootfs (mounted on a fresh snapshot, then removed).
tree() {
  local dir=$WORK/$B/rootfs key=full-disk-rootfs
  mkdir -p "$dir"
  L rootfs --key "$key" "$1" "$dir" >/dev/null || return 1
  "$LAMINA" manifest "$dir" | tail -n +2
  L snapshot umount "$dir" >/dev/null 2>&1 || umount "$dir"
  L snapshot rm "$key" >/dev/null
}

for B in overlayfs block; do
  echo "--- $B backend"
  mkdir -p "$WORK/$B/mnt"
  truncate -s 320M "$WORK/$B/disk.img"
  mkfs.ext4 -q -F -m 0 "$WORK/$B/disk.img" && mount -o loop "$WORK/$B/disk.img" "$WORK/$B/mnt" \
    || { bad "$B: making and mounting a 320 MiB ext4"; continue; }
  start "$B" || { bad "$B: laminad did not start"; unmount_all; continue; }

  # 1. the small image
  if L pull "$SMALL" >"$WORK/$B/pull-small.out" 2>&1 && tree "$SMALL" >"$WORK/$B/small.before"; then
    chains=$(L -o json images | python3 -c 'import json,sys; print(" ".join(c for i in json.load(sys.stdin) for c in i["chain_ids"]))')
    ok "$B: small image pulled onto the 320 MiB disk ($(wc -l < "$WORK/$B/small.before") entries, $(($(avail) >> 20)) MiB left)"
  else bad "$B: pull of the small image: $(tail -3 "$WORK/$B/pull-small.out")"; stop; unmount_all; continue; fi

  # 2. the big image on a nearly full disk
  fallocate -l $(( $(avail) - (40 << 20) )) "$WORK/$B/mnt/ballast" || { bad "$B: fallocate ballast"; stop; unmount_all; continue; }
  before=$(avail)
  for case in "big|$BIG|$BIG_LAYER" "rand|$RAND|$RAND_LAYER"; do
    IFS='|' read -r name ref layer <<<"$case"
    out=$WORK/$B/pull-$name.out
    if L pull "$ref" >"$out" 2>&1; then
      bad "$B: pulling $name into $((before >> 20)) MiB free succeeded"
    elif grep -q "No space left on device" "$out" && grep -q "ResourceExhausted" "$out" && grep -qF "layer $layer" "$out"; then
      ok "$B: pull of $name with $((before >> 20)) MiB free failed: $(grep -o 'lamina: .*' "$out" | head -1)"
    else bad "$B: pull of $name failed without a clear ENOSPC error naming layer $layer: $(tr '\n' ' ' < "$out" | cut -c1-400)"; fi
  done
  if kill -0 "$DPID" 2>/dev/null && L images >/dev/null 2>&1; then ok "$B: laminad still up and answering after the failed pull"
  else bad "$B: laminad died or does not answer after the failed pull: $(tail -5 "$WORK/$B/laminad.log")"; start "$B"; fi

  # 3. earlier snapshots intact, nothing left of the failed pull, space freed
  infos=0; for c in $chains; do L snapshot info "$c" >/dev/null 2>&1 && infos=$((infos + 1)); done
  if [ "$infos" -eq "$(wc -w <<<"$chains")" ] && [ "$infos" -gt 0 ] && tree "$SMALL" >"$WORK/$B/small.after" \
     && cmp -s "$WORK/$B/small.before" "$WORK/$B/small.after"; then
    ok "$B: the small image's $infos layer snapshots answer Stat and its rootfs hashes as before"
  else bad "$B: small image after the failed pull: $infos of $(wc -w <<<"$chains") layers answer; $(diff "$WORK/$B/small.before" "$WORK/$B/small.after" 2>&1 | head -3)"; fi
  L snapshot cleanup >/dev/null 2>&1
  if state=$(consistent); then ok "$B: after Cleanup, $state (no partial snapshot of the failed pull)"
  else bad "$B: after Cleanup, $state"; fi
  after=$(avail)
  if [ "$after" -ge $(( before - BIG_BLOBS - (1 << 20) )) ]; then
    ok "$B: space freed again: $((after >> 20)) MiB free after Cleanup, $((before >> 20)) MiB before the pulls (big's blobs: $((BIG_BLOBS >> 10)) KiB)"
  else bad "$B: space not freed: $((after >> 20)) MiB free after Cleanup, $((before >> 20)) MiB before the pulls"; fi
  if L images 2>&1 | grep -qF "lamina/"; then bad "$B: a failed pull recorded an image: $(L images)"; fi
  if partial=$(find "$WORK/$B/mnt/root/content" -name '*.partial' | grep .); then bad "$B: partial downloads kept on a full disk: $partial"; fi

  # 4. a restart finds a consistent store
  if stop && start "$B" && state=$(consistent) && L images | grep -qF "bench/small" \
     && all_info $chains; then
    ok "$B: restarted laminad finds a consistent store ($state, the small image recorded)"
  else bad "$B: after a restart: ${state:-no answer}; $(tail -5 "$WORK/$B/laminad.log")"; [ -n "$DPID" ] || start "$B"; fi

  # 5. space freed: the same pulls succeed
  rm -f "$WORK/$B/mnt/ballast"
  if L pull "$BIG" >"$WORK/$B/pull-big2.out" 2>&1 && tree "$BIG" >"$WORK/$B/big.tree" \
     && [ "$(grep -c 'data/big-[0-9]' "$WORK/$B/big.tree")" -eq 4 ] \
     && L pull "$RAND" >"$WORK/$B/pull-rand2.out" 2>&1 && tree "$RAND" >"$WORK/$B/rand.tree" \
     && grep -q 'data/rand' "$WORK/$B/rand.tree"; then
    ok "$B: with the ballast removed the same pulls succeed (their files in their rootfs, $(($(avail) >> 20)) MiB left)"
  else bad "$B: pulls after freeing space: $(tail -2 "$WORK/$B/pull-big2.out" "$WORK/$B/pull-rand2.out" 2>&1)"; fi
  if state=$(consistent); then ok "$B: at the end, $state"; else bad "$B: at the end, $state"; fi
  stop
  # The block backend's layer images stay mounted across restarts (by design): those go
  # first, then the file system, which nothing else may still hold.
  for m in $(grep -F " $WORK/$B/mnt/" /proc/self/mounts | awk '{print $2}' | sort -r); do umount "$m"; done
  umount "$WORK/$B/mnt" || bad "$B: the loop-mounted root could not be unmounted (something still holds it)"
done

# --- limits through `lamina pull`: InvalidArgument naming the setting ---------------
# A daemon (on the work directory, not a small disk) with max_layer_bytes below the big
# layer's 96 MiB, max_layer_entries below the small image's largest layer, and one pull
# at a time: both pulls, started together, get their own limit's error (the second
# waits its turn, it does not fail for it).
B=limits
mkdir -p "$WORK/$B/mnt"
printf 'root = "%s"\nsocket = "%s"\nmax_layer_bytes = 67108864\nmax_layer_entries = 100\nmax_concurrent_pulls = 1\nlog_level = "warn"\n' \
  "$WORK/$B/mnt/root" "$WORK/$B/lamina.sock" > "$WORK/$B/laminad.toml"
"$LAMINAD" --config "$WORK/$B/laminad.toml" >>"$WORK/$B/laminad.log" 2>&1 &
DPID=$!
for _ in $(seq 300); do L images >/dev/null 2>&1 && break; sleep 0.1; done
L pull "$BIG" >"$WORK/$B/pull-big.out" 2>&1 & P1=$!
L pull "$SMALL" >"$WORK/$B/pull-small.out" 2>&1 & P2=$!
wait "$P1"; rc1=$?; wait "$P2"; rc2=$?
for case in "big|$rc1|max_layer_bytes|67108864 uncompressed bytes" "small|$rc2|max_layer_entries|100 entries"; do
  IFS='|' read -r name rc key limit <<<"$case"
  out=$WORK/$B/pull-$name.out
  if [ "$rc" -eq 0 ]; then bad "limits: $name pulled despite $key"
  elif grep -q "InvalidArgument" "$out" && grep -qF "$key" "$out" && grep -qF "$limit" "$out"; then
    ok "limits: lamina pull of $name fails: $(grep -o 'lamina: .*' "$out" | head -1)"
  else bad "limits: lamina pull of $name with $key: $(tail -2 "$out")"; fi
done
state=$(consistent 2>/dev/null)
if [ "${state:-}" = "0 directories, 0 records" ]; then ok "limits: nothing left of the refused pulls ($state)"
else bad "limits: after the refused pulls: ${state:-no answer}"; fi
stop
finish
