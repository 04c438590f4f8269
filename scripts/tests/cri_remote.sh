#!/usr/bin/env bash
# cri_remote.sh: containerd's remote-snapshotter protocol through its CRI plugin, with
# layers fetched whole and with layers mounted lazily.
#
# A private containerd 1.6 with the CRI plugin, `snapshotter = "lamina"` and
# `disable_snapshot_annotations = false`, and Lamina as its proxy snapshotter (laminad on a
# config file: lazy pulls on, lazy_min_layer_size = 0 so the small demo layers qualify).
# Images are pushed to a docker-registry on 127.0.0.1 and pulled through CRI's
# ImageService.PullImage (`lamina cri-pull`, as kubelet would).
#  1. The busybox demo image (2 layers; skopeo pushes its plain layer gzipped), no
#     indexes in the registry: Lamina fetched and unpacked every layer itself (snapshots
#     labelled with the layers' chain IDs), containerd's content store holds no layer blob
#     (digests as the registry serves them), `ctr run` of the image on Lamina works.
#  2. A variant of it (layer 1 holds one file more: other chain IDs, nothing cached from
#     part 1; pushed with its digests kept, so layer 2 stays a plain tar) whose seekable
#     indexes a second laminad (own root and socket) put in the registry first (`lamina
#     pull`, `index build`, `index push`: OCI referrers fallback tag). After the CRI pull:
#     `lamina lazy` lists every layer of the image with a live `laminad lazy-serve` on a
#     FUSE mount; the snapshots containerd sees for the image's chain IDs are Lamina's lazy
#     ones (`lamina.io/lazy=true`, in containerd's `snapshots info` and in `lamina snapshot
#     ls`); containerd's content store holds no layer blob; `ctr run` prints what the image
#     holds (read through the lazy layers).
# Cleanup (checked at the end): containerd and its shims, both laminads, the lazy-serve
# processes laminad started (they outlive it by design), every mount under WORKDIR.
# Usage: cri_remote.sh LAMINAD LAMINA WORKDIR   (as root; needs ../shared)
# Last line: "N passed, M failed".
set -uo pipefail
LAMINAD=$1 LAMINA=$2 WORK=$3
mkdir -p "$WORK" && WORK=$(cd "$WORK" && pwd) || { echo "cannot use $WORK"; echo "0 passed, 1 failed"; exit 1; }
export BENCH_STATE=$WORK/bench BENCH_FS=host REGISTRY_ADDR=${REGISTRY_ADDR:-127.0.0.1:5078}
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"   # HERE, SHARED, lib.sh, ok, bad, summary
finish() { summary; exit; }
DPID='' CPID='' IPID=''   # laminad (containerd's), containerd, laminad (the indexer)
SOCK=$WORK/ctd/containerd.sock
# The `laminad lazy-serve` processes of our daemons (arguments under WORK), containerd's
# shims for our containerd.
serve_pids() { pgrep -f "lazy-serve $WORK/"; }
shim_pids() { pgrep -f "containerd-shim.* -address $SOCK( |$)"; }
unmount_all() {
  for m in $(grep -F " $WORK/" /proc/self/mounts | awk '{print $2}' | sort -r); do umount -l "$m" 2>/dev/null; done
}
stop() { [ -n "$1" ] && kill "$1" 2>/dev/null && wait "$1" 2>/dev/null; }
cleanup() {
  stop "$CPID"; CPID=
  for p in $(shim_pids); do kill "$p" 2>/dev/null; done
  unmount_all
  stop "$DPID"; DPID=
  stop "$IPID"; IPID=
  local p
  for p in $(serve_pids); do kill "$p" 2>/dev/null; done
  for _ in $(seq 20); do [ -z "$(serve_pids)" ] && break; sleep 0.1; done
  for p in $(serve_pids) $(shim_pids); do kill -9 "$p" 2>/dev/null; done
  unmount_all
  stop "${REG_PID:-}"; REG_PID=
}
trap cleanup EXIT
[ "$(id -u)" = 0 ] || { bad "must run as root (overlay and FUSE mounts)"; finish; }
[ -e /dev/fuse ] || { bad "/dev/fuse is missing: lazy layers are FUSE mounts"; finish; }
unmount_all
rm -rf "$WORK"; mkdir -p "$WORK/ctd/root" "$WORK/ctd/state" "$WORK/ctd/opt" "$WORK/fifo" "$WORK/idx"

# image_info REF OUT: REF's manifest as the registry serves it: its layers' digests and
# media types, the config's diffIDs and the chain IDs they make (JSON in OUT).
image_info() {
  python3 - "$REGISTRY_ADDR" "$1" "$2" <<'PY'
import hashlib, json, sys, urllib.request
addr, ref, out = sys.argv[1:]
repo, tag = ref[len(addr) + 1:].rsplit(":", 1)
http = urllib.request.build_opener(urllib.request.ProxyHandler({}))
def get(path, accept="*/*"):
    req = urllib.request.Request("http://%s/v2/%s/%s" % (addr, repo, path), headers={"Accept": accept})
    with http.open(req, timeout=30) as r:
        return r.read()
m = json.loads(get("manifests/" + tag, "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"))
diff_ids = json.loads(get("blobs/" + m["config"]["digest"]))["rootfs"]["diff_ids"]
chain = []
for d in diff_ids:
    chain.append(d if not chain else "sha256:" + hashlib.sha256(("%s %s" % (chain[-1], d)).encode()).hexdigest())
json.dump({"layers": [l["digest"] for l in m["layers"]], "media_types": [l["mediaType"] for l in m["layers"]],
           "diff_ids": diff_ids, "chain_ids": chain}, open(out, "w"), indent=1)
PY
}
# py FILE EXPR: EXPR evaluated on the JSON in FILE (variable j).
py() { python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); r=eval(sys.argv[2]); print(r if isinstance(r,str) else json.dumps(r))' "$@"; }

IMAGE=$REGISTRY_ADDR/lamina/demo:1
push_demo_image "$WORK/image" "$IMAGE" || { bad "demo image pushed to $IMAGE"; finish; }
image_info "$IMAGE" "$WORK/image1.json" || { bad "reading $IMAGE's manifest from the registry"; finish; }

cat > "$WORK/laminad.toml" <<TOML
root = "$WORK/lamina-root"
socket = "$WORK/lamina.sock"
log_level = "info"
lazy_min_layer_size = 0
TOML
"$LAMINAD" --config "$WORK/laminad.toml" 2>"$WORK/laminad.log" &
DPID=$!
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
C() { timeout 120 ctr -a "$SOCK" -n k8s.io "$@"; }
L() { timeout 120 "$LAMINA" --socket "$WORK/lamina.sock" "$@"; }
kill -0 "$DPID" 2>/dev/null || { bad "laminad on $WORK/laminad.toml did not start: $(tail -5 "$WORK/laminad.log")"; finish; }

# no_layer_blobs INFO: containerd's content store holds none of the image's layer blobs.
no_layer_blobs() {
  local l n=0 t
  C content ls -q > "$WORK/content.txt" || { echo "ctr content ls failed"; return 1; }
  for l in $(py "$1" '" ".join(j["layers"])'); do grep -qx "$l" "$WORK/content.txt" && n=$((n+1)); done
  t=$(py "$1" 'len(j["layers"])')
  if [ "$n" -eq 0 ] && [ -s "$WORK/content.txt" ]; then echo "none of its $t layer blobs ($(wc -l < "$WORK/content.txt") blobs: manifests, configs)"
  else echo "$n of $t layer blobs downloaded by containerd itself"; return 1; fi
}
# run_image REF NAME: ctr run of REF on Lamina: /etc/motd of layer 2, /etc/obsolete
# whited out, and whatever else the command prints.
run_image() {
  timeout 60 ctr -a "$SOCK" -n k8s.io run --rm --snapshotter lamina --fifo-dir "$WORK/fifo" --runc-root "$WORK/runc" \
    "$1" "$2" /bin/sh -c 'cat /etc/motd; test ! -e /etc/obsolete && echo whiteout-ok; cat /etc/lazy-demo 2>/dev/null; true' 2>&1
}

# --- 1: layers fetched whole -------------------------------------------------------------
if out=$(timeout 120 "$LAMINA" cri-pull --endpoint "$SOCK" "$IMAGE" 2>&1); then ok "CRI PullImage: $(echo "$out" | tr '\n' ' ')"
else bad "CRI PullImage: $out"; tail -20 "$WORK/ctd/containerd.log"; finish; fi

if msg=$(no_layer_blobs "$WORK/image1.json"); then ok "containerd's content store holds $msg"
else bad "containerd's content store: $msg"; fi

L -o json snapshot ls -f 'labels."containerd.io/snapshot.ref"' > "$WORK/lamina-snapshots.json"
if msg=$(python3 - "$WORK/lamina-snapshots.json" "$WORK/image1.json" <<'PY'
import json, sys
snaps = json.load(open(sys.argv[1])); img = json.load(open(sys.argv[2]))
by_chain = {s["labels"].get("containerd.io/snapshot.ref"): s for s in snaps}
missing = [c for c in img["chain_ids"] if c not in by_chain]
lazy = [c for c in img["chain_ids"] if by_chain.get(c, {}).get("labels", {}).get("lamina.io/lazy")]
assert not missing and not lazy, "chain IDs without a Lamina snapshot: %s; lazy (the registry has no indexes): %s" % (missing, lazy)
print("%d snapshots labelled with the image's %d chain IDs, none lazy" % (len(snaps), len(img["chain_ids"])))
PY
); then ok "Lamina committed all layers itself: $msg"
else bad "Lamina's snapshots: $msg"; fi

if out=$(run_image "$IMAGE" cri-demo) &&
   printf '%s' "$out" | grep -q "image layer 2: configuration" && printf '%s' "$out" | grep -q whiteout-ok; then
  ok "ctr run of the CRI-pulled image on Lamina: $(echo "$out" | tr '\n' ' ')"
else bad "ctr run: $out"; fi

# --- 2: lazy layers ------------------------------------------------------------------------
# The variant: layer 1 (gzip) with /etc/lazy-demo added, layer 2 (plain tar) as it is.
IMAGE2=$REGISTRY_ADDR/lamina/demo-lazy:1
python3 - "$WORK/image" "$WORK/image-lazy" <<'PY' || { bad "building the variant of the demo image"; finish; }
import gzip, hashlib, io, json, os, shutil, sys, tarfile
src, dst = sys.argv[1:]
shutil.copytree(src, dst)
path = lambda d: os.path.join(dst, "blobs", *d.split(":", 1))
def put(data):
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    open(path(d), "wb").write(data)
    return d
index = json.load(open(os.path.join(dst, "index.json")))
manifest = json.load(open(path(index["manifests"][0]["digest"])))
config = json.load(open(path(manifest["config"]["digest"])))
layer = manifest["layers"][0]
buf = io.BytesIO()
with tarfile.open(fileobj=io.BytesIO(gzip.decompress(open(path(layer["digest"]), "rb").read()))) as old, \
     tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as new:
    for ti in old:
        new.addfile(ti, old.extractfile(ti) if ti.isreg() else None)
    data = b"read through a lazy layer\n"
    ti = tarfile.TarInfo("etc/lazy-demo")
    ti.size, ti.mode, ti.mtime = len(data), 0o644, 1_700_000_000
    new.addfile(ti, io.BytesIO(data))
tar = buf.getvalue()
gz = gzip.compress(tar, mtime=0)
layer["digest"], layer["size"] = put(gz), len(gz)
config["rootfs"]["diff_ids"][0] = "sha256:" + hashlib.sha256(tar).hexdigest()
c = json.dumps(config, sort_keys=True).encode()
manifest["config"]["digest"], manifest["config"]["size"] = put(c), len(c)
m = json.dumps(manifest, sort_keys=True).encode()
index["manifests"][0]["digest"], index["manifests"][0]["size"] = put(m), len(m)
json.dump(index, open(os.path.join(dst, "index.json"), "w"))
PY
skopeo copy -q --preserve-digests --dest-tls-verify=false "oci:$WORK/image-lazy:latest" "docker://$IMAGE2" \
  || { bad "skopeo push of $IMAGE2"; finish; }
image_info "$IMAGE2" "$WORK/image2.json" || { bad "reading $IMAGE2's manifest from the registry"; finish; }
if py "$WORK/image2.json" 'len(set(j["chain_ids"]) & set(json.load(open(sys.argv[3]))["chain_ids"]))' "$WORK/image1.json" | grep -qx 0; then :
else bad "the variant image shares chain IDs with the demo image: $(cat "$WORK/image2.json")"; finish; fi

# Its seekable indexes, made by another laminad and pushed beside it.
"$LAMINAD" --root "$WORK/idx/root" --socket "$WORK/idx/lamina.sock" --log-level info 2>"$WORK/idx/laminad.log" &
IPID=$!
LI() { timeout 120 "$LAMINA" --socket "$WORK/idx/lamina.sock" "$@"; }
for _ in $(seq 100); do LI images >/dev/null 2>&1 && break; sleep 0.1; done
if LI -o json pull "$IMAGE2" > "$WORK/idx/pull.json" 2>"$WORK/idx/err" &&
   LI -o json index build "$IMAGE2" > "$WORK/idx/build.json" 2>>"$WORK/idx/err" &&
   LI -o json index push "$IMAGE2" > "$WORK/idx/push.json" 2>>"$WORK/idx/err" &&
   msg=$(python3 - "$WORK/idx/push.json" "$WORK/image2.json" <<'PY'
import json, sys
push = json.load(open(sys.argv[1])); img = json.load(open(sys.argv[2]))
indexed = {l["layer"] for l in push["layers"]}
assert set(img["layers"]) <= indexed, "layers not indexed: %s" % (set(img["layers"]) - indexed)
print("artifact %s for %s (referrers API: %s), layers %s" % (push["artifact"][:19], push["subject"][:19], push["referrers_api"],
      ", ".join("%s %s %d entries" % (l["layer"][:19], t.rsplit(".", 1)[-1], l["entries"])
                for l, t in zip(sorted(push["layers"], key=lambda l: img["layers"].index(l["layer"])), img["media_types"]))))
PY
); then ok "indexes of $IMAGE2 pushed by a second laminad (pull, index build, index push): $msg"
else bad "indexes of $IMAGE2 (second laminad): $(cat "$WORK/idx/err") ${msg:-}"; tail -5 "$WORK/idx/laminad.log"; finish; fi
stop "$IPID"; IPID=

if out=$(timeout 120 "$LAMINA" cri-pull --endpoint "$SOCK" "$IMAGE2" 2>&1); then ok "CRI PullImage of $IMAGE2: $(echo "$out" | tr '\n' ' ')"
else bad "CRI PullImage of $IMAGE2: $out"; tail -20 "$WORK/ctd/containerd.log"; grep -i "warn\|error" "$WORK/laminad.log" | tail -10; finish; fi

# lazy_check OUT: `lamina lazy -o json` saved in OUT: every layer of the image listed, its
# server running, its mount a FUSE mount, a state that is not a failure.
lazy_check() {
  L -o json lazy > "$1" 2>"$1.err" || { echo "lamina lazy: $(cat "$1.err")"; return 1; }
  python3 - "$1" "$WORK/image2.json" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1])); img = json.load(open(sys.argv[2]))
fuse = {l.split()[1] for l in open("/proc/self/mounts") if l.split()[2].startswith("fuse")}
by_layer = {r["layer"]: r for r in rows}
errs, seen = [], []
for d in img["layers"]:
    r = by_layer.get(d)
    if r is None:
        errs.append("%s not listed" % d[:19]); continue
    try:
        alive = open("/proc/%d/stat" % r["pid"]).read().rsplit(") ", 1)[1].split()[0] != "Z"
    except (OSError, TypeError):
        alive = False
    if not alive:
        errs.append("%s: server pid %r not running" % (d[:19], r["pid"]))
    if r["state"] not in ("fetching", "complete", "verified"):
        errs.append("%s: state %r %s" % (d[:19], r["state"], r.get("detail", "")))
    if r["mount"] not in fuse:
        errs.append("%s: %s is not a FUSE mount" % (d[:19], r["mount"]))
    seen.append("%s pid %s %s %d/%d B" % (d[7:19], r["pid"], r["state"], r["fetched"], r["total"]))
if errs:
    print("; ".join(errs) + " (lamina lazy: %s)" % json.dumps(rows)); sys.exit(1)
print("%d of %d layers listed: %s" % (len(seen), len(rows), ", ".join(seen)))
PY
}
if msg=$(lazy_check "$WORK/lazy.json"); then ok "lamina lazy lists every layer of the image, each served by a live lazy-serve on a FUSE mount: $msg"
else bad "lamina lazy: $msg"; grep -i "warn\|error\|lazi" "$WORK/laminad.log" | tail -10; fi

# The snapshots containerd knows by the image's chain IDs are Lamina's lazy ones.
for c in $(py "$WORK/image2.json" '" ".join(j["chain_ids"])'); do
  C snapshots --snapshotter lamina info "$c" 2>&1
  echo ","
done > "$WORK/ctd-snapshots.txt"
L -o json snapshot ls > "$WORK/lamina-snapshots2.json"
if msg=$(python3 - "$WORK/ctd-snapshots.txt" "$WORK/lamina-snapshots2.json" "$WORK/image2.json" <<'PY'
import json, sys
text = open(sys.argv[1]).read()
snaps = json.load(open(sys.argv[2])); img = json.load(open(sys.argv[3]))
try:
    ctd = json.loads("[" + text.rstrip().rstrip(",") + "]")
except ValueError:
    print("ctr snapshots info: %s" % text.strip()); sys.exit(1)
by_chain = {}
for s in snaps:
    c = s["labels"].get("containerd.io/snapshot.ref")
    if c:
        by_chain.setdefault(c, []).append(s)
errs, seen = [], []
for i, (c, info) in enumerate(zip(img["chain_ids"], ctd)):
    labels = info.get("Labels") or {}
    if info.get("Kind") != "Committed" or labels.get("lamina.io/lazy") != "true":
        errs.append("containerd's snapshot %s: kind %s, labels %s" % (c[:19], info.get("Kind"), labels))
    if (info.get("Parent") or "") != (img["chain_ids"][i - 1] if i else ""):
        errs.append("containerd's snapshot %s: parent %r" % (c[:19], info.get("Parent")))
    mine = by_chain.get(c, [])
    if len(mine) != 1:
        errs.append("Lamina has %d snapshots labelled %s" % (len(mine), c[:19])); continue
    l = mine[0]["labels"]
    if l.get("lamina.io/lazy") != "true" or l.get("lamina.io/layer.digest") != img["layers"][i]:
        errs.append("Lamina's snapshot %s (%s): labels %s" % (mine[0]["name"], c[:19], l))
    seen.append("%s = %s" % (c[7:19], mine[0]["name"]))
if errs:
    print("; ".join(errs)); sys.exit(1)
print("%d chain IDs: %s" % (len(seen), ", ".join(seen)))
PY
); then ok "containerd's snapshots of the image are Lamina's lazy ones (lamina.io/lazy=true, layer digests): $msg"
else bad "snapshots of $IMAGE2: $msg"; fi

if msg=$(no_layer_blobs "$WORK/image2.json"); then ok "lazy image: containerd's content store holds $msg"
else bad "lazy image: containerd's content store: $msg"; fi

if out=$(run_image "$IMAGE2" cri-lazy-demo) &&
   printf '%s' "$out" | grep -q "image layer 2: configuration" && printf '%s' "$out" | grep -q whiteout-ok &&
   printf '%s' "$out" | grep -q "read through a lazy layer"; then
  fetched=$(L -o json lazy 2>/dev/null | python3 -c 'import json,sys; print(", ".join("%s %s/%s B" % (r["layer"][7:19], r["fetched"], r["total"]) for r in json.load(sys.stdin)))' 2>/dev/null)
  ok "ctr run of the lazily pulled image on Lamina: $(echo "$out" | tr '\n' ' ')(fetched: $fetched)"
else bad "ctr run of $IMAGE2: $out"; fi

# --- cleanup --------------------------------------------------------------------------------
pids="$CPID $DPID $(serve_pids | tr '\n' ' ')"
cleanup
# A process that exists and is not a zombie (servers outliving laminad are reparented; the
# adopter reaps them a moment later). Servers end once their mounts are gone: give them time.
running() { local st; st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null) && [ "${st%% *}" != Z ]; }
for _ in $(seq 100); do
  left_procs=$(for p in $pids $(serve_pids) $(shim_pids); do running "$p" && echo "$p"; done | sort -u | wc -l)
  [ "$left_procs" -eq 0 ] && break
  sleep 0.1
done
left_mounts=$(grep -cF " $WORK/" /proc/self/mounts)
if [ "$left_mounts" -eq 0 ] && [ "$left_procs" -eq 0 ]; then
  ok "cleanup: containerd, laminads and their lazy-serve processes gone ($(wc -w <<< "$pids") processes), nothing mounted under $WORK"
else bad "cleanup: $left_procs processes left ($(for p in $pids $(serve_pids) $(shim_pids); do running "$p" && ps -o pid=,stat=,args= -p "$p"; done | sort -u | head -5 | tr '\n' ';')), $left_mounts mounts under $WORK: $(grep -F " $WORK/" /proc/self/mounts | head -5)"; fi
finish
