#!/usr/bin/env bash
# lazy_index.sh: seekable layer indexes of a pulled image, built and pushed beside it.
#
# The busybox demo image (2 layers) is pushed to a docker-registry on 127.0.0.1 and pulled
# by Lamina. `lamina index build` indexes every layer (checked against its digest and
# diffID) into the content store; a second build finds the same indexes. `lamina index
# push` pushes them as one OCI artifact (artifactType application/vnd.lamina.layer-index.v1,
# one index blob per layer annotated with the layer's digest, subject = the image manifest);
# docker-registry has no referrers API, so the artifact must be listed in the
# `sha256-<hex>` fallback index, and every index blob must be in the repository under its
# digest.
# Usage: lazy_index.sh LAMINAD LAMINA WORKDIR   (as root; needs ../shared)
# Last line: "N passed, M failed".
set -uo pipefail
LAMINAD=$1 LAMINA=$2 WORK=$3
export BENCH_STATE=$WORK/bench BENCH_FS=host REGISTRY_ADDR=${REGISTRY_ADDR:-127.0.0.1:5090}
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"   # HERE, SHARED, lib.sh, ok, bad, summary
finish() { summary; exit; }
DPID=
cleanup() {
  [ -n "$DPID" ] && kill "$DPID" 2>/dev/null && wait "$DPID" 2>/dev/null
  [ -n "${REG_PID:-}" ] && kill "$REG_PID" 2>/dev/null && wait "$REG_PID" 2>/dev/null
}
trap cleanup EXIT
rm -rf "$WORK"; mkdir -p "$WORK"
for tool in skopeo curl python3 busybox; do
  command -v "$tool" >/dev/null || { bad "$tool is missing (scripts/deps.sh installs it)"; finish; }
done

IMAGE=$REGISTRY_ADDR/lamina/demo:1
push_demo_image "$WORK/image" "$IMAGE" || { bad "demo image pushed to $IMAGE"; finish; }
"$LAMINAD" --root "$WORK/lamina-root" --socket "$WORK/lamina.sock" --log-level info 2>"$WORK/laminad.log" &
DPID=$!
for _ in $(seq 100); do [ -S "$WORK/lamina.sock" ] && break; sleep 0.1; done
L() { "$LAMINA" --socket "$WORK/lamina.sock" "$@"; }

if out=$(L -o json pull "$IMAGE" 2>&1); then ok "lamina pull $IMAGE"
else bad "lamina pull: $out"; finish; fi
# The image manifest's digest, as the registry serves it.
MANIFEST=$(curl -fsS -o /dev/null -D - -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
  "http://$REGISTRY_ADDR/v2/lamina/demo/manifests/1" | tr -d '\r' | sed -n 's/^[Dd]ocker-[Cc]ontent-[Dd]igest: //p')

if L -o json index build "$IMAGE" > "$WORK/build1.json" 2>"$WORK/build1.err"; then
  if python3 - "$WORK/build1.json" <<'PY'
import json, sys
layers = json.load(open(sys.argv[1]))
assert len(layers) == 2, layers
for l in layers:
    assert l["index"].startswith("sha256:") and l["entries"] > 0 and l["checkpoints"] >= 1, l
PY
  then ok "index build: 2 layers indexed ($(python3 -c "import json,sys; print(', '.join('%d entries / %d B' % (l['entries'], l['size']) for l in json.load(open(sys.argv[1]))))" "$WORK/build1.json"))"
  else bad "index build output: $(cat "$WORK/build1.json")"; fi
else bad "index build: $(cat "$WORK/build1.err")"; finish; fi
L -o json index build "$IMAGE" > "$WORK/build2.json" 2>&1
if cmp -s "$WORK/build1.json" "$WORK/build2.json"; then ok "a second build finds the same indexes"
else bad "second build differs: $(diff "$WORK/build1.json" "$WORK/build2.json" | head -5)"; fi

if L -o json index push "$IMAGE" > "$WORK/push.json" 2>"$WORK/push.err"; then ok "index push"
else bad "index push: $(cat "$WORK/push.err")"; finish; fi
if python3 - "$WORK/push.json" "$WORK/build1.json" "$MANIFEST" "$REGISTRY_ADDR" <<'PY'
import json, sys, urllib.request
push = json.load(open(sys.argv[1])); built = json.load(open(sys.argv[2]))
manifest, addr = sys.argv[3], sys.argv[4]
base = "http://%s/v2/lamina/demo" % addr
def get(path, accept="application/vnd.oci.image.index.v1+json"):
    req = urllib.request.Request(base + path, headers={"Accept": accept})
    return urllib.request.urlopen(req).read()
assert push["subject"] == manifest, (push["subject"], manifest)
assert not push["referrers_api"], "docker-registry 2.8 has no referrers API"
fallback = json.loads(get("/manifests/" + manifest.replace(":", "-", 1)))
listed = [m for m in fallback["manifests"] if m["digest"] == push["artifact"]]
assert listed and listed[0].get("artifactType") == "application/vnd.lamina.layer-index.v1", fallback
art = json.loads(get("/manifests/" + push["artifact"], "application/vnd.oci.image.manifest.v1+json"))
assert art["subject"]["digest"] == manifest, art["subject"]
by_layer = {l["annotations"]["io.lamina.layer.digest"]: l["digest"] for l in art["layers"]}
assert by_layer == {l["layer"]: l["index"] for l in built}, (by_layer, built)
import hashlib
for d in by_layer.values():
    blob = get("/blobs/" + d, "*/*")
    assert "sha256:" + hashlib.sha256(blob).hexdigest() == d, d
print("artifact %s lists %d index blobs" % (push["artifact"], len(by_layer)))
PY
then ok "the registry lists the artifact under the image (fallback tag), its index blobs are there"
else bad "pushed artifact check"; fi
if L index build nosuch/image:1 >/dev/null 2>"$WORK/missing.err"; then bad "index build of an unknown image succeeded"
elif grep -q "is not recorded" "$WORK/missing.err"; then ok "unknown image: $(head -c 120 "$WORK/missing.err")"
else bad "unknown image error: $(cat "$WORK/missing.err")"; fi
finish
