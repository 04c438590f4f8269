#!/usr/bin/env bash
# cri_remote.sh: containerd's remote-snapshotter protocol through its CRI plugin.
#
# A private containerd 1.6 with the CRI plugin, `snapshotter = "lamina"` and
# `disable_snapshot_annotations = false`, and Lamina as its proxy snapshotter. An image
# (the busybox demo image, 2 layers) is pushed to a docker-registry on 127.0.0.1 and pulled
# through CRI's ImageService.PullImage (`lamina cri-pull`, as kubelet would). Checks:
# Lamina fetched and unpacked every layer itself (snapshots labelled with the layers'
# chain IDs), containerd's content store holds no layer blob, and `ctr run` of the image
# on Lamina works.
# Usage: cri_remote.sh LAMINAD LAMINA WORKDIR   (as root; needs ../shared)
# Last line: "N passed, M failed".
set -uo pipefail
LAMINAD=$1 LAMINA=$2 WORK=$3
export BENCH_STATE=$WORK/bench BENCH_FS=host REGISTRY_ADDR=${REGISTRY_ADDR:-127.0.0.1:5078}
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"   # HERE, SHARED, lib.sh, ok, bad, summary
finish() { summary; exit; }
DPID= CPID=
cleanup() {
  [ -n "$CPID" ] && kill "$CPID" 2>/dev/null && wait "$CPID" 2>/dev/null
  for m in $(grep -F " $WORK/" /proc/self/mounts | awk '{print $2}' | sort -r); do umount -l "$m" 2>/dev/null; done
  [ -n "$DPID" ] && kill "$DPID" 2>/dev/null && wait "$DPID" 2>/dev/null
  [ -n "${REG_PID:-}" ] && kill "$REG_PID" 2>/dev/null && wait "$REG_PID" 2>/dev/null
}
trap cleanup EXIT
rm -rf "$WORK"; mkdir -p "$WORK/ctd/root" "$WORK/ctd/state" "$WORK/ctd/opt" "$WORK/fifo"

IMAGE=$REGISTRY_ADDR/lamina/demo:1
push_demo_image "$WORK/image" "$IMAGE" || { bad "demo image pushed to $IMAGE"; finish; }

"$LAMINAD" --root "$WORK/lamina-root" --socket "$WORK/lamina.sock" --log-level info 2>"$WORK/laminad.log" &
DPID=$!
SOCK=$WORK/ctd/containerd.sock
cat > "$WORK/ctd/config.toml" <<TOML
version = 2
root = "$WORK/ctd/root"
state = "$WORK/ctd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[proxy_plugins]
  [proxy_plugins.lamina]
    type = "snapshot"
    address = "$WORK/lamina.sock"
[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "$WORK/ctd/opt"
  [plugins."io.containerd.grpc.v1.cri"]
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "lamina"
      disable_snapshot_annotations = false
    [plugins."io.containerd.grpc.v1.cri".registry.mirrors."$REGISTRY_ADDR"]
      endpoint = ["http://$REGISTRY_ADDR"]
TOML
containerd --config "$WORK/ctd/config.toml" > "$WORK/ctd/containerd.log" 2>&1 &
CPID=$!
for _ in $(seq 100); do [ -S "$WORK/lamina.sock" ] && ctr -a "$SOCK" version >/dev/null 2>&1 && break; sleep 0.1; done
C() { ctr -a "$SOCK" -n k8s.io "$@"; }
L() { "$LAMINA" --socket "$WORK/lamina.sock" "$@"; }

if out=$("$LAMINA" cri-pull --endpoint "$SOCK" "$IMAGE" 2>&1); then ok "CRI PullImage: $(echo "$out" | tr '\n' ' ')"
else bad "CRI PullImage: $out"; tail -20 "$WORK/ctd/containerd.log"; finish; fi

# The layers' digests and chain IDs, from the image itself.
read -r -a LAYERS <<< "$(python3 - "$WORK/image" <<'PY'
import json, sys, os
d = sys.argv[1]
idx = json.load(open(os.path.join(d, "index.json")))
m = json.load(open(os.path.join(d, "blobs", *idx["manifests"][0]["digest"].split(":"))))
print(" ".join(l["digest"] for l in m["layers"]))
PY
)"
C content ls -q > "$WORK/content.txt"
missing_blobs=0
for l in "${LAYERS[@]}"; do grep -qx "$l" "$WORK/content.txt" && missing_blobs=$((missing_blobs+1)); done
if [ "$missing_blobs" -eq 0 ] && [ -s "$WORK/content.txt" ]; then ok "containerd's content store holds no layer blob ($(wc -l < "$WORK/content.txt") blobs: manifest, config)"
else bad "containerd downloaded $missing_blobs of ${#LAYERS[@]} layer blobs itself"; fi

L -o json snapshot ls -f 'labels."containerd.io/snapshot.ref"' > "$WORK/lamina-snapshots.json"
n=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))))' "$WORK/lamina-snapshots.json")
if [ "$n" -eq "${#LAYERS[@]}" ]; then ok "Lamina committed all ${#LAYERS[@]} layers itself (labelled with their chain IDs)"
else bad "Lamina committed $n layers, expected ${#LAYERS[@]}"; fi
grep -q "prepared by lamina\|pulled" "$WORK/laminad.log" || true

if out=$(timeout 60 ctr -a "$SOCK" -n k8s.io run --rm --snapshotter lamina --fifo-dir "$WORK/fifo" --runc-root "$WORK/runc" \
      "$IMAGE" cri-demo /bin/sh -c 'cat /etc/motd; test ! -e /etc/obsolete && echo whiteout-ok' 2>&1) &&
   printf '%s' "$out" | grep -q "image layer 2: configuration" && printf '%s' "$out" | grep -q whiteout-ok; then
  ok "ctr run of the CRI-pulled image on Lamina: $(echo "$out" | tr '\n' ' ')"
else bad "ctr run: $out"; fi
finish
