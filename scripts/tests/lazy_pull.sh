#!/usr/bin/env bash
# lazy_pull.sh: `lamina pull --lazy` (issue 5): layers mounted from the registry on demand,
# through the seekable indexes pushed beside the image, instead of being downloaded.
#
# Images: the bench generator's small image in gzip and in zstd (another seed, so other
# chain IDs), its medium image in gzip, and mkimage_all_types.py's image (gzip, zstd and
# plain layers holding every entry type), pushed (skopeo) to a docker-registry on
# 127.0.0.1 started here. Daemons, each on its own root and socket:
#  A  pulls every image fully, `lamina index build` + `index push` (the reference);
#  B  `pull --lazy --lazy-min-size 0` (background fill off: every byte read is fetched on
#     demand): the pull's JSON lists every layer as lazy and no layer blob is downloaded;
#     `lamina lazy` lists every layer: a live `laminad lazy-serve`, its FUSE mount (once),
#     total = the layer's uncompressed length, fetched <= total, a known state.
#     Restart: a reader holds files of a lazy rootfs open, half read; laminad B is killed
#     (-9); the servers go on, the reader finishes and its hashes equal the full pull's;
#     one server is killed too; B started again adopts the others (same pids) and mounts
#     that layer again; files never read before read correctly, a new rootfs mounts. Then
#     the rootfs of every lazy image equals the full pull's, `lamina manifest` entry by
#     entry (contents hashed).
#  C  (read timeout 1 s, 2 attempts, no background fill) with the registry frozen
#     (SIGSTOP: requests time out) and then stopped (connections refused): a read of bytes
#     not fetched yet fails with EIO in bounded time while the daemon answers; the
#     registry started again on the same storage and port, the same reads give the right
#     bytes, and `lamina lazy` counts them as fetched.
#  D  default lazy settings: a plain `lamina pull` mounts lazily exactly the layers of at
#     least lazy_min_layer_size (4 MiB), the background fill fetches them and checks them
#     against their diffIDs (state verified); `--no-lazy` downloads every layer.
# Cleanup: removing the lazy images' snapshots unmounts their layers and ends their
# servers; nothing stays mounted under WORKDIR, no lazy-serve process is left.
# Usage: lazy_pull.sh LAMINAD LAMINA WORKDIR   (as root; needs ../shared)
# Last line: "N passed, M failed".
set -uo pipefail
LAMINAD=$1 LAMINA=$2 WORK=$3
mkdir -p "$WORK" && WORK=$(cd "$WORK" && pwd) || { echo "cannot use $WORK"; echo "0 passed, 1 failed"; exit 1; }
export BENCH_STATE=$WORK/bench BENCH_FS=host REGISTRY_ADDR=${REGISTRY_ADDR:-127.0.0.1:5091}
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"   # HERE, SHARED, lib.sh, ok, bad, summary
finish() { summary; exit; }
declare -A DPID=()   # laminad processes by name (a, b, c, d)
RPID=                # a reader process
# The `laminad lazy-serve` processes our daemons started (they outlive laminad by design):
# those whose arguments lie under WORK.
serve_pids() {
  python3 - "$WORK" <<'PY'
import os, sys
work = sys.argv[1].rstrip("/") + "/"
for p in os.listdir("/proc"):
    try:
        argv = open("/proc/%s/cmdline" % p, "rb").read().split(b"\0")
    except OSError:
        continue
    args = [a.decode(errors="replace") for a in argv]
    if "lazy-serve" in args and any(a.startswith(work) for a in args):
        print(p)
PY
}
unmount_all() {
  for m in $(grep -F " $WORK/" /proc/self/mounts | awk '{print $2}' | sort -r); do umount -l "$m" 2>/dev/null; done
}
cleanup() {
  [ -n "$RPID" ] && kill "$RPID" 2>/dev/null && wait "$RPID" 2>/dev/null
  unmount_all
  for n in "${!DPID[@]}"; do
    [ -n "${DPID[$n]}" ] && kill "${DPID[$n]}" 2>/dev/null && wait "${DPID[$n]}" 2>/dev/null
  done
  for p in $(serve_pids); do kill "$p" 2>/dev/null; done
  sleep 0.5
  for p in $(serve_pids); do kill -9 "$p" 2>/dev/null; done
  unmount_all
  [ -n "${REG_PID:-}" ] && kill "$REG_PID" 2>/dev/null && wait "$REG_PID" 2>/dev/null
}
trap cleanup EXIT

[ "$(id -u)" = 0 ] || { bad "must run as root (FUSE and overlay mounts)"; finish; }
for tool in skopeo curl python3 docker-registry zstd; do
  command -v "$tool" >/dev/null || { bad "$tool is missing (scripts/deps.sh installs it)"; finish; }
done
[ -e /dev/fuse ] || { bad "/dev/fuse is missing: lazy layers are FUSE mounts"; finish; }
if curl -fsS "http://$REGISTRY_ADDR/v2/" >/dev/null 2>&1; then
  bad "something already answers on $REGISTRY_ADDR: this test stops and starts its own registry there"; finish
fi
# The help text goes through a variable, not a pipe: with pipefail, `grep -q` quitting at the
# first match can SIGPIPE lamina mid-write and fail the check at random.
pull_help=$("$LAMINA" pull --help 2>/dev/null || true)
if [[ $pull_help != *--lazy* ]]; then
  bad "$LAMINA pull has no --lazy option (lazy pull not built in)"; finish
fi
unmount_all
rm -rf "$WORK"; mkdir -p "$WORK"

# --- daemons -------------------------------------------------------------------------
# config NAME [TOML LINE...]: WORK/NAME/config.toml (root, socket, log level, the lines).
config() {
  local n=$1; shift
  mkdir -p "$WORK/$n"
  { printf 'root = "%s"\nsocket = "%s"\nlog_level = "info"\n' "$WORK/$n/root" "$WORK/$n/lamina.sock"
    printf '%s\n' "$@"; } > "$WORK/$n/config.toml"
}
# start NAME: laminad on WORK/NAME/config.toml (log appended to WORK/NAME/laminad.log),
# waits until it answers.
start() {
  local n=$1
  "$LAMINAD" --config "$WORK/$n/config.toml" >>"$WORK/$n/laminad.log" 2>&1 &
  DPID[$n]=$!
  for _ in $(seq 300); do
    timeout 5 "$LAMINA" --socket "$WORK/$n/lamina.sock" images >/dev/null 2>&1 && return 0
    kill -0 "${DPID[$n]}" 2>/dev/null || break
    sleep 0.1
  done
  echo "laminad $n did not come up; its log:" >&2; tail -20 "$WORK/$n/laminad.log" >&2; return 1
}
# L NAME ARGS...: lamina against daemon NAME (time-limited: a hung call fails).
L() { local n=$1; shift; timeout 300 "$LAMINA" --socket "$WORK/$n/lamina.sock" "$@"; }
# running PID: the process exists and is not a zombie (servers outliving laminad are
# reparented; whoever adopts them reaps them).
running() { local st; st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null) && [ "${st%% *}" != Z ]; }
# py FILE EXPR [ARG...]: EXPR evaluated on the JSON in FILE (variable j; ARGs in sys.argv[3:]).
py() { python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); r=eval(sys.argv[2]); print(r if isinstance(r,str) else json.dumps(r))' "$@"; }

# --- images ---------------------------------------------------------------------------
started=$(now)
python3 "$SHARED/bench/mkimage.py" small medium --comp gzip --out "$WORK/images" >"$WORK/mkimage.log" 2>&1 \
  || { bad "mkimage.py small medium --comp gzip: $(tail -5 "$WORK/mkimage.log")"; finish; }
python3 "$SHARED/bench/mkimage.py" small --comp zstd --seed 2 --out "$WORK/images-seed2" >>"$WORK/mkimage.log" 2>&1 \
  || { bad "mkimage.py small --comp zstd --seed 2: $(tail -5 "$WORK/mkimage.log")"; finish; }
python3 "$HERE/scripts/tests/mkimage_all_types.py" "$WORK/images/all-types" all-types >>"$WORK/mkimage.log" 2>&1 \
  || { bad "mkimage_all_types.py: $(tail -5 "$WORK/mkimage.log")"; finish; }
registry_start || { bad "docker-registry did not start on $REGISTRY_ADDR"; finish; }
# Each image: "short name|OCI layout:ref|reference in the registry"
IMAGES=(
  "gzip|$WORK/images/small-gzip:small-gzip|$REGISTRY_ADDR/bench/small-gzip:1"
  "zstd|$WORK/images-seed2/small-zstd:small-zstd|$REGISTRY_ADDR/bench/small-zstd:1"
  "medium|$WORK/images/medium-gzip:medium-gzip|$REGISTRY_ADDR/bench/medium-gzip:1"
  "all-types|$WORK/images/all-types:all-types|$REGISTRY_ADDR/lamina/all-types:1"
)
declare -A REF=()
for spec in "${IMAGES[@]}"; do
  IFS='|' read -r name layout ref <<< "$spec"
  REF[$name]=$ref
  skopeo copy -q --preserve-digests --dest-tls-verify=false "oci:$layout" "docker://$ref" \
    || { bad "skopeo push of $ref"; finish; }
done
ok "${#IMAGES[@]} images built and pushed to $REGISTRY_ADDR in $(elapsed "$started" "$(now)") s"
# Every layer's uncompressed length ({digest: bytes}): what `lamina lazy` must show as total.
python3 - "$WORK/layer-sizes.json" "${IMAGES[@]}" <<'PY' || { bad "measuring the layers' uncompressed sizes"; finish; }
import json, os, subprocess, sys, zlib
sizes = {}
for spec in sys.argv[2:]:
    layout = spec.split("|")[1].rsplit(":", 1)[0]
    blob = lambda d: os.path.join(layout, "blobs", *d.split(":", 1))
    for m in json.load(open(os.path.join(layout, "index.json")))["manifests"]:
        for l in json.load(open(blob(m["digest"])))["layers"]:
            path = blob(l["digest"])
            magic = open(path, "rb").read(4)
            if magic[:2] == b"\x1f\x8b":
                n, d = 0, zlib.decompressobj(wbits=47)
                with open(path, "rb") as f:
                    data = f.read()
                while data:  # every gzip member
                    n += len(d.decompress(data))
                    n += len(d.flush())
                    data = d.unused_data
                    d = zlib.decompressobj(wbits=47)
            elif magic == b"\x28\xb5\x2f\xfd":
                n = len(subprocess.run(["zstd", "-dcq", path], stdout=subprocess.PIPE, check=True).stdout)
            else:
                n = os.path.getsize(path)
            sizes[l["digest"]] = n
json.dump(sizes, open(sys.argv[1], "w"))
PY
NAMES=(gzip zstd medium all-types)

# --- A: full pull, indexes built and pushed -------------------------------------------
config a
start a || { bad "laminad A did not start"; finish; }
for n in "${NAMES[@]}"; do
  if ! L a -o json pull "${REF[$n]}" > "$WORK/a/pull-$n.json" 2>"$WORK/a/err"; then
    bad "A: lamina pull ${REF[$n]}: $(cat "$WORK/a/err")"; finish; fi
  if ! L a -o json index push "${REF[$n]}" > "$WORK/a/push-$n.json" 2>"$WORK/a/err"; then
    bad "A: lamina index push ${REF[$n]}: $(cat "$WORK/a/err")"; finish; fi
  L a rootfs "${REF[$n]}" "$WORK/a/rootfs-$n" >/dev/null 2>"$WORK/a/err" \
    || { bad "A: lamina rootfs ${REF[$n]}: $(cat "$WORK/a/err")"; finish; }
done
summary_a=$(for n in "${NAMES[@]}"; do
  py "$WORK/a/push-$n.json" '"%d layers, %d entries" % (len(j["layers"]), sum(l["entries"] for l in j["layers"]))' | sed "s|^|$n: |"
done | paste -sd ';' | sed 's/;/; /g')
ok "A: full pull of ${#NAMES[@]} images, their indexes built and pushed ($summary_a)"

# --- B: lazy pull ----------------------------------------------------------------------
# Background fill off (24 h): every byte B serves below is fetched when read.
config b 'lazy_fill_delay_ms = 86400000'
start b || { bad "laminad B did not start"; finish; }
for n in "${NAMES[@]}"; do
  t0=$(now)
  if ! L b -o json pull --lazy --lazy-min-size 0 "${REF[$n]}" > "$WORK/b/pull-$n.json" 2>"$WORK/b/err"; then
    bad "B: lamina pull --lazy ${REF[$n]}: $(cat "$WORK/b/err")"; continue; fi
  t=$(elapsed "$t0" "$(now)")
  if python3 - "$WORK/b/pull-$n.json" "$WORK/a/push-$n.json" "$WORK/b/root" "$WORK/b/laminad.log" > "$WORK/b/check" <<'PY'
import json, os, sys
img = json.load(open(sys.argv[1]))
img = img[0] if isinstance(img, list) else img
indexed = {l["layer"] for l in json.load(open(sys.argv[2]))["layers"]}
layers = [l["digest"] for l in img["layers"]]
lazy = img.get("lazy")
assert lazy is not None, "the pull's JSON has no 'lazy' field: %s" % sorted(img)
missing = [d for d in layers if d in indexed and d not in lazy]
log = open(sys.argv[4], errors="replace").read()
# A layer holding GNU sparse files may be refused (unpacked instead): only that is allowed.
refused = [d for d in missing if "sparse" in log and d in log]
assert not set(missing) - set(refused), "indexed layers not lazy: %s (lazy: %s)" % (sorted(set(missing) - set(refused)), lazy)
blobs = os.path.join(sys.argv[3], "content/blobs/sha256")
downloaded = [d for d in lazy if os.path.exists(os.path.join(blobs, d.split(":", 1)[1]))]
assert not downloaded, "lazy layers downloaded anyway: %s" % downloaded
print("%d/%d layers lazy%s" % (len(lazy), len(layers),
      ", refused as sparse (unpacked): %s" % refused if refused else ""))
PY
  then ok "B: pull --lazy $n in $t s: $(cat "$WORK/b/check"), no layer blob downloaded"
  else bad "B: pull --lazy $n: $(tail -1 "$WORK/b/check")"; fi
  L b rootfs "${REF[$n]}" "$WORK/b/rootfs-$n" >/dev/null 2>"$WORK/b/err" \
    || bad "B: lamina rootfs ${REF[$n]} (lazy): $(cat "$WORK/b/err")"
done

# lazy_check NAME OUT [PULL JSON...]: `lamina lazy -o json` of daemon NAME saved in OUT and
# checked: every lazy layer of the pulls listed, a live server, its mount a FUSE mount,
# total = the layer's uncompressed length, fetched <= total, a known state. Prints a summary.
lazy_check() {
  local n=$1 out=$2; shift 2
  L "$n" -o json lazy > "$out" 2>"$out.err" || { echo "lamina lazy: $(cat "$out.err")"; return 1; }
  python3 - "$out" "$WORK/layer-sizes.json" "$@" <<'PY'
import json, os, sys
rows = json.load(open(sys.argv[1]))
sizes = json.load(open(sys.argv[2]))
want = set()
for f in sys.argv[3:]:
    img = json.load(open(f)); img = img[0] if isinstance(img, list) else img
    want |= set(img["lazy"])
mounts = [l.split() for l in open("/proc/self/mounts")]
fuse = {m[1] for m in mounts if m[2].startswith("fuse")}
stacked = {m[1] for m in mounts if sum(n[1] == m[1] for n in mounts) > 1}
seen, states, errs = set(), {}, []
for r in rows:
    seen.add(r["layer"])
    states[r["state"]] = states.get(r["state"], 0) + 1
    if r["state"] not in ("fetching", "complete", "verified", "failed", "not-mounted"):
        errs.append("unknown state %r" % r["state"])
    if r["layer"] not in want:
        continue
    if r["state"] in ("failed", "not-mounted"):
        errs.append("%s is %s" % (r["layer"], r["state"]))
    try:
        assert int(r["pid"]) > 0
        assert open("/proc/%d/stat" % int(r["pid"])).read().rsplit(") ", 1)[1].split()[0] != "Z"
    except (AssertionError, OSError, ValueError, TypeError):
        errs.append("server pid %r of %s is not running" % (r["pid"], r["layer"]))
    if r["mount"] not in fuse:
        errs.append("%s is not a FUSE mount" % r["mount"])
    elif r["mount"] in stacked:
        errs.append("%s is mounted more than once (stacked mounts)" % r["mount"])
    if r["total"] != sizes[r["layer"]]:
        errs.append("%s: total %r, but the layer is %d bytes uncompressed (fetched %r)" % (r["layer"][:19], r["total"], sizes[r["layer"]], r["fetched"]))
    elif not 0 <= r["fetched"] <= r["total"]:
        errs.append("%s: fetched %r of total %r" % (r["layer"][:19], r["fetched"], r["total"]))
if want - seen:
    errs.append("lazy layers not listed: %s" % sorted(want - seen))
fetched = sum(r["fetched"] for r in rows); total = sum(r["total"] for r in rows)
print("%d layers listed, states %s, fetched %.1f of %.1f MB" % (len(rows),
      ", ".join("%s: %d" % kv for kv in sorted(states.items())), fetched / 1e6, total / 1e6))
if errs:
    print("; ".join(errs[:6]) + (" (and %d more)" % (len(errs) - 6) if len(errs) > 6 else "")); sys.exit(1)
PY
}
pulls_b=()
for n in "${NAMES[@]}"; do [ -s "$WORK/b/pull-$n.json" ] && pulls_b+=("$WORK/b/pull-$n.json"); done
if msg=$(lazy_check b "$WORK/b/lazy1.json" "${pulls_b[@]}"); then ok "B: lamina lazy: $msg"
else bad "B: lamina lazy: $msg"; fi

# --- B: restart while files are open ----------------------------------------------------
# pick_files ROOTFS: the reader's files (the largest of each directory group, 8) and files
# for after the restart (the second largest of each group, and some small ones), relative.
R=medium
python3 - "$WORK/a/rootfs-$R" "$WORK/restart-before.txt" "$WORK/restart-after.txt" <<'PY'
import os, sys
root = sys.argv[1]
groups = {}
for d, dirs, files in os.walk(root):
    dirs.sort()
    for f in sorted(files):
        p = os.path.join(d, f)
        st = os.lstat(p)
        if not os.path.isfile(p) or os.path.islink(p):
            continue
        rel = os.path.relpath(p, root)
        groups.setdefault("/".join(rel.split("/")[:2]), []).append((st.st_size, rel))
big = sorted((sorted(v, reverse=True) for v in groups.values() if v), reverse=True)
before = [g[0][1] for g in big[:8]]
after = [g[1][1] for g in big[:8] if len(g) > 1]
small = sorted((s, r) for v in groups.values() for s, r in v if 0 < s < 4096 and r not in before)
after += [r for _, r in small[::max(1, len(small) // 6)][:6]]
open(sys.argv[2], "w").write("\n".join(before) + "\n")
open(sys.argv[3], "w").write("\n".join(after) + "\n")
PY
cat > "$WORK/reader.py" <<'PY'
# reader.py ROOT READY GO OUT FILE...: opens every file under ROOT, reads half of each but
# the last two (open, nothing read), writes READY, waits for GO, reads the rest of every
# file; OUT: {file: sha256}.
import hashlib, json, os, sys, time
root, ready, go, out = sys.argv[1:5]
files = sys.argv[5:]
open_files = []
for i, rel in enumerate(files):
    f = open(os.path.join(root, rel), "rb", buffering=0)
    h = hashlib.sha256()
    want = os.fstat(f.fileno()).st_size // 2 if i < len(files) - 2 else 0
    while want > 0:
        b = f.read(min(want, 1 << 20))
        if not b:
            break
        h.update(b); want -= len(b)
    open_files.append((rel, f, h))
with open(ready, "w") as r:
    r.write("%d\n" % os.getpid())
deadline = time.time() + 600
while not os.path.exists(go):
    if time.time() > deadline:
        sys.exit("no go signal")
    time.sleep(0.05)
res = {}
for rel, f, h in open_files:
    while True:
        b = f.read(1 << 20)
        if not b:
            break
        h.update(b)
    res[rel] = h.hexdigest()
json.dump(res, open(out, "w"))
PY
# hashes ROOT LIST: {file: sha256} of the files in LIST under ROOT (time-limited).
hashes() {
  timeout 300 python3 - "$1" "$2" <<'PY'
import hashlib, json, os, sys
root = sys.argv[1]
res = {}
for rel in open(sys.argv[2]).read().split():
    h = hashlib.sha256()
    with open(os.path.join(root, rel), "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    res[rel] = h.hexdigest()
print(json.dumps(res, sort_keys=True))
PY
}
# same_hashes A B: the two {file: sha256} JSON texts are equal (prints the differing files).
same_hashes() { python3 -c 'import json,sys; a,b=json.loads(sys.argv[1]),json.loads(sys.argv[2]); d=[k for k in a if a.get(k)!=b.get(k)]+[k for k in b if k not in a]; print(", ".join(d)); sys.exit(1 if d else 0)' "$1" "$2"; }

ref_before=$(hashes "$WORK/a/rootfs-$R" "$WORK/restart-before.txt")
ref_after=$(hashes "$WORK/a/rootfs-$R" "$WORK/restart-after.txt")
mapfile -t before < "$WORK/restart-before.txt"
rm -f "$WORK/ready" "$WORK/go" "$WORK/reader.json"
python3 "$WORK/reader.py" "$WORK/b/rootfs-$R" "$WORK/ready" "$WORK/go" "$WORK/reader.json" "${before[@]}" 2>"$WORK/reader.err" &
RPID=$!
for _ in $(seq 600); do [ -s "$WORK/ready" ] && break; kill -0 "$RPID" 2>/dev/null || break; sleep 0.1; done
if [ ! -s "$WORK/ready" ]; then
  bad "restart: the reader did not get ready (60 s): $(cat "$WORK/reader.err")"
else
  L b -o json lazy > "$WORK/b/lazy-before-kill.json" 2>&1
  servers=$(py "$WORK/b/lazy-before-kill.json" '" ".join(str(r["pid"]) for r in j)')
  kill -9 "${DPID[b]}"; wait "${DPID[b]}" 2>/dev/null; DPID[b]=
  alive=0; for p in $servers; do running "$p" && alive=$((alive+1)); done
  if [ "$alive" -eq "$(wc -w <<< "$servers")" ] && [ "$alive" -gt 0 ]; then
    ok "restart: laminad B killed (-9) with ${#before[@]} files open, half read; its $alive lazy-serve processes run on"
  else bad "restart: after kill -9 of laminad, $alive of $(wc -w <<< "$servers") lazy-serve processes run (pids: $servers)"; fi
  touch "$WORK/go"
  t0=$(now)
  for _ in $(seq 1200); do kill -0 "$RPID" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$RPID" 2>/dev/null; then
    bad "restart: the reader still reads 120 s after laminad died"; kill "$RPID"; wait "$RPID" 2>/dev/null
  elif wait "$RPID" && d=$(same_hashes "$(cat "$WORK/reader.json")" "$ref_before"); then
    ok "restart: with laminad down the reader finished ${#before[@]} files in $(elapsed "$t0" "$(now)") s, hashes equal the full pull's"
  else bad "restart: reader: $(cat "$WORK/reader.err") differing: ${d:-}"; fi
  RPID=
  # One server dies too while laminad is down (that of the gzip image's bottom layer):
  # laminad must mount that layer again when it starts.
  DEAD_LAYER=$(py "$WORK/b/pull-gzip.json" '(j[0] if isinstance(j, list) else j)["lazy"][0]')
  DEAD_PID=$(py "$WORK/b/lazy-before-kill.json" '[str(r["pid"]) for r in j if r["layer"] == sys.argv[3]][0]' "$DEAD_LAYER" 2>/dev/null)
  if [ -n "$DEAD_PID" ] && kill -9 "$DEAD_PID"; then
    for _ in $(seq 100); do running "$DEAD_PID" || break; sleep 0.1; done
  else bad "restart: no server listed for $DEAD_LAYER"; fi
fi
if start b; then
  if L b -o json lazy > "$WORK/b/lazy-after-restart.json" 2>&1 &&
     d=$(python3 - "$WORK/b/lazy-before-kill.json" "$WORK/b/lazy-after-restart.json" "${DEAD_LAYER:-}" <<'PY'
import json, os, sys
before = {r["layer"]: r for r in json.load(open(sys.argv[1]))}
after = {r["layer"]: r for r in json.load(open(sys.argv[2]))}
dead = sys.argv[3]
key = lambda r: (r["snapshot"], r["mount"], r["pid"])
errs = []
if set(before) != set(after) or not before:
    errs.append("layers before the kill but not after: %s, after only: %s" % (set(before) - set(after), set(after) - set(before)))
for l in set(before) & set(after):
    b, a = before[l], after[l]
    if l != dead and key(a) != key(b):
        errs.append("%s: %s became %s" % (l[:19], key(b), key(a)))
    if l == dead:
        mounts = [m.split()[1] for m in open("/proc/self/mounts") if m.split()[2].startswith("fuse")]
        try:
            alive = a["pid"] > 0 and open("/proc/%d/stat" % a["pid"]).read().rsplit(") ", 1)[1].split()[0] != "Z"
        except OSError:
            alive = False
        if a["pid"] == b["pid"] or not alive or a["state"] in ("not-mounted", "failed") or mounts.count(a["mount"]) != 1:
            errs.append("the layer whose server was killed (%s, pid %s) is now: pid %s (%s), state %s, %d FUSE mounts on %s" % (
                l[:19], b["pid"], a["pid"], "running" if alive else "not running", a["state"],
                mounts.count(a["mount"]), a["mount"]))
if errs:
    print("; ".join(errs[:6])); sys.exit(1)
print("%d layers kept their servers (pids %s ...), the one whose server was killed got a new one (pid %s -> %s)" % (
    len(after) - 1, " ".join(str(after[l]["pid"]) for l in sorted(after)[:4] if l != dead),
    before[dead]["pid"], after[dead]["pid"]))
PY
); then ok "restart: laminad B started again adopted its lazy layers: $d"
  else bad "restart: lamina lazy after the restart: $d"; fi
  if got=$(hashes "$WORK/b/rootfs-$R" "$WORK/restart-after.txt") && d=$(same_hashes "$got" "$ref_after"); then
    ok "restart: $(wc -l < "$WORK/restart-after.txt") files never read before read through the old rootfs, equal to the full pull's"
  else bad "restart: reading never-read files after the restart: differing: $d"; fi
  if L b rootfs "${REF[$R]}" "$WORK/b/rootfs-$R-2" >/dev/null 2>"$WORK/b/err"; then
    ok "restart: a new lamina rootfs of the lazy image mounts (compared below)"
  else bad "restart: lamina rootfs after the restart: $(cat "$WORK/b/err")"; fi
  # The gzip rootfs from before stacks the killed server's old mount: replaced by a new
  # one on the remounted layer (compared below).
  umount -l "$WORK/b/rootfs-gzip" && L b snapshot rm "rootfs:$WORK/b/rootfs-gzip" &&
    L b rootfs "${REF[gzip]}" "$WORK/b/rootfs-gzip" >/dev/null 2>"$WORK/b/err" ||
    bad "restart: a new rootfs of the gzip image on its remounted layer: $(cat "$WORK/b/err")"
else bad "restart: laminad B did not start again on its root: $(tail -5 "$WORK/b/laminad.log")"; fi

# --- B: every lazy rootfs equals the full pull's ----------------------------------------
compare() { # compare WHAT FULL_DIR LAZY_DIR
  local t0; t0=$(now)
  if ! timeout 900 "$LAMINA" manifest "$3" > "$3.manifest" 2>"$3.err"; then bad "$1: lamina manifest of the lazy rootfs: $(cat "$3.err")"; return; fi
  "$LAMINA" manifest "$2" > "$2.manifest"
  # The rootfs directory itself is a mount point on both sides; its line is not compared.
  if diff <(tail -n +2 "$2.manifest") <(tail -n +2 "$3.manifest") > "$3.diff"; then
    ok "$1: $(($(wc -l < "$3.manifest") - 1)) entries identical to the full pull's (contents hashed in $(elapsed "$t0" "$(now)") s)"
  else
    bad "$1: trees differ (full < > lazy), first differences:"; head -20 "$3.diff"
  fi
}
for n in "${NAMES[@]}"; do
  mountpoint -q "$WORK/b/rootfs-$n" || continue
  compare "B: lazy $n" "$WORK/a/rootfs-$n" "$WORK/b/rootfs-$n"
done
mountpoint -q "$WORK/b/rootfs-$R-2" && compare "B: lazy $R, rootfs made after the restart" "$WORK/a/rootfs-$R" "$WORK/b/rootfs-$R-2"
if msg=$(lazy_check b "$WORK/b/lazy2.json" "${pulls_b[@]}"); then ok "B: after reading everything, lamina lazy: $msg"
else bad "B: after reading everything, lamina lazy: $msg"; fi

# --- C: the registry goes away -----------------------------------------------------------
TIMEOUT_MS=1000 ATTEMPTS=2
bound=$(( ATTEMPTS * TIMEOUT_MS / 1000 + 30 ))   # attempts x timeout + backoff, with room
config c 'lazy_fill_delay_ms = 86400000' "lazy_read_timeout_ms = $TIMEOUT_MS" "lazy_read_attempts = $ATTEMPTS"
F=gzip
cat > "$WORK/read.py" <<'PY'
# read.py FILE: reads FILE whole; prints "ok SECONDS SHA256" or "errno N SECONDS MESSAGE".
import hashlib, sys, time
t = time.monotonic()
try:
    with open(sys.argv[1], "rb") as f:
        data = f.read()
    print("ok %.2f %s" % (time.monotonic() - t, hashlib.sha256(data).hexdigest()))
except OSError as e:
    print("errno %d %.2f %s" % (e.errno, time.monotonic() - t, e.strerror))
PY
# eio_read WHAT FILE: reads FILE (under C's rootfs) while the registry is away; the daemon
# must answer meanwhile and the read fail with EIO within the bound.
eio_read() {
  local what=$1 file=$2 out=$WORK/c/read-$1.out t0 during='' answered=''
  timeout $((bound + 60)) python3 "$WORK/read.py" "$WORK/c/rootfs/$file" > "$out" 2>&1 &
  RPID=$!
  sleep 0.3
  t0=$(now)
  if L c -o json lazy > "$WORK/c/lazy-$what.json" 2>&1 && L c images >/dev/null 2>&1; then
    answered="lamina lazy and images answered in $(elapsed "$t0" "$(now)") s"
  fi
  kill -0 "$RPID" 2>/dev/null && during=" (while the read waited)"
  wait "$RPID"; RPID=
  local result errno secs
  read -r result errno secs _ < "$out"
  if [ "$result" = errno ] && [ "$errno" = 5 ] && python3 -c "import sys; sys.exit(float(sys.argv[1]) > float(sys.argv[2]))" "$secs" "$bound"; then
    ok "fault, registry $what: reading $file (not fetched yet) failed with EIO after $secs s (bound $bound s: $ATTEMPTS attempts x $TIMEOUT_MS ms + backoff + 30 s)"
  else bad "fault, registry $what: reading $file: $(cat "$out") (wanted EIO within $bound s)"; fi
  if [ -n "$answered" ] && kill -0 "${DPID[c]}"; then
    ok "fault, registry $what: laminad C up, $answered$during (states: $(py "$WORK/c/lazy-$what.json" '", ".join(sorted({r["state"] for r in j}))'))"
  else bad "fault, registry $what: lamina lazy / images did not answer: $(head -c 300 "$WORK/c/lazy-$what.json")"; fi
}
if start c && L c -o json pull --lazy --lazy-min-size 0 "${REF[$F]}" > "$WORK/c/pull.json" 2>"$WORK/c/err" &&
   L c rootfs "${REF[$F]}" "$WORK/c/rootfs" >/dev/null 2>>"$WORK/c/err"; then
  if msg=$(lazy_check c "$WORK/c/lazy0.json" "$WORK/c/pull.json") &&
     py "$WORK/c/lazy0.json" 'sum(r["fetched"] for r in j)' | grep -qx 0; then
    ok "C: before any read: $msg"
  else bad "C: before any read, lamina lazy: $msg"; fi
  # The two largest files of the image, nothing of them read yet.
  (cd "$WORK/a/rootfs-$F" && find . -type f -printf '%s %P\n' | sort -rn | head -2 | cut -d' ' -f2-) > "$WORK/c/files.txt"
  ref_files=$(hashes "$WORK/a/rootfs-$F" "$WORK/c/files.txt")
  mapfile -t files < "$WORK/c/files.txt"
  # Frozen (SIGSTOP): connections hang, each range request runs into its timeout.
  kill -STOP "$REG_PID"
  eio_read frozen "${files[0]}"
  kill -CONT "$REG_PID"
  # Gone: connections refused.
  registry_stop
  if curl -fsS "http://$REGISTRY_ADDR/v2/" >/dev/null 2>&1; then bad "fault: the registry still answers after being stopped"; fi
  eio_read stopped "${files[1]}"
  registry_start || bad "fault: the registry did not start again"
  got=$(for f in "${files[@]}"; do
    timeout 120 python3 "$WORK/read.py" "$WORK/c/rootfs/$f" | { read -r result secs sum; echo "$f $result $secs $sum"; }
  done)
  if python3 -c 'import json,sys; want=json.loads(sys.argv[1]); got={l.split()[0]: l.split()[3] for l in sys.argv[2].splitlines() if l.split()[1] == "ok"}; sys.exit(got != want)' "$ref_files" "$got"; then
    ok "fault: registry back (same storage and port): the same reads give the right bytes ($(awk '{print $1 " in " $3 " s"}' <<< "$got" | paste -sd, | sed 's/,/, /g'))"
  else bad "fault: registry back: reads: $got (want $ref_files)"; fi
  # What was read is reported as fetched (give the bitmap a moment to be saved).
  want=$(awk '{s += $1} END {print s}' < <(cd "$WORK/a/rootfs-$F" && stat -c %s "${files[@]}"))
  for _ in $(seq 20); do
    L c -o json lazy > "$WORK/c/lazy-end.json" 2>&1
    have=$(py "$WORK/c/lazy-end.json" 'sum(r["fetched"] for r in j)')
    [ "${have:-0}" -ge "$want" ] 2>/dev/null && break
    sleep 0.5
  done
  if [ "${have:-0}" -ge "$want" ] 2>/dev/null; then ok "fault: lamina lazy counts $have bytes fetched after reading $want bytes of files"
  else bad "fault: 10 s after reading $want bytes of files, lamina lazy counts ${have:-?} bytes fetched ($(py "$WORK/c/lazy-end.json" '", ".join("%s %s/%s" % (r["layer"][7:19], r["fetched"], r["total"]) for r in j)'))"; fi
else bad "fault: laminad C with a lazy rootfs of ${REF[$F]}: $(cat "$WORK/c/err" 2>/dev/null)"; fi

# --- D: default settings: min layer size, background fill, --no-lazy ----------------------
config d
if start d && L d -o json pull "${REF[gzip]}" > "$WORK/d/pull.json" 2>"$WORK/d/err"; then
  if d=$(python3 - "$WORK/d/pull.json" <<'PY'
import json, sys
img = json.load(open(sys.argv[1])); img = img[0] if isinstance(img, list) else img
want = [l["digest"] for l in img["layers"] if l["size"] >= 4194304]
assert want and len(want) < len(img["layers"]), "the image should have layers on both sides of 4 MiB"
assert sorted(img["lazy"]) == sorted(want), "lazy %s, want %s" % (img["lazy"], want)
print("%d of %d layers lazy (sizes %s)" % (len(want), len(img["layers"]), ", ".join(str(l["size"]) for l in img["layers"])))
PY
); then ok "D: default config, plain lamina pull: exactly the layers of at least 4 MiB are lazy: $d"
  else bad "D: plain lamina pull with the default config: $d"; fi
  t0=$(now); state=
  for _ in $(seq 240); do
    L d -o json lazy > "$WORK/d/lazy.json" 2>&1 &&
      state=$(py "$WORK/d/lazy.json" '"all-verified" if j and all(r["state"] == "verified" and r["fetched"] == r["total"] > 0 for r in j) else ", ".join("%s %d/%d" % (r["state"], r["fetched"], r["total"]) for r in j)')
    [ "$state" = all-verified ] && break
    sleep 0.5
  done
  if [ "$state" = all-verified ]; then
    ok "D: the background fill fetched the lazy layers, checked against their diffIDs, within $(elapsed "$t0" "$(now)") s of the pull ($(py "$WORK/d/lazy.json" '", ".join("%s %s %d B" % (r["layer"][7:19], r["state"], r["total"]) for r in j)'))"
  else bad "D: background fill not verified 120 s after the pull: $state"; fi
  if L d -o json pull --no-lazy "${REF[zstd]}" > "$WORK/d/pull-nolazy.json" 2>"$WORK/d/err" &&
     d=$(python3 - "$WORK/d/pull-nolazy.json" "$WORK/d/root" <<'PY'
import json, os, sys
img = json.load(open(sys.argv[1])); img = img[0] if isinstance(img, list) else img
assert not img.get("lazy"), "lazy: %s" % img.get("lazy")
missing = [l["digest"] for l in img["layers"] if not os.path.exists(os.path.join(sys.argv[2], "content/blobs/sha256", l["digest"][7:]))]
assert not missing, "blobs not downloaded: %s" % missing
print("%d layers downloaded" % len(img["layers"]))
PY
); then ok "D: pull --no-lazy: nothing lazy, $d"
  else bad "D: pull --no-lazy: ${d:-$(cat "$WORK/d/err")}"; fi
else bad "D: laminad with the default config, lamina pull: $(cat "$WORK/d/err" 2>/dev/null)"; fi

# wait_fetched NAME BYTES: waits (up to 20 s) until daemon NAME's lazy layers hold BYTES
# in all (`lamina lazy`, in WORK/NAME/lazy.json); sets got to the bytes seen.
wait_fetched() {
  local n=$1 want=$2
  got=0
  for _ in $(seq 100); do
    L "$n" -o json lazy > "$WORK/$n/lazy.json" 2>/dev/null &&
      got=$(py "$WORK/$n/lazy.json" 'str(sum(r["fetched"] for r in j))')
    [ "$got" -ge "$want" ] && return 0
    sleep 0.2
  done
  return 1
}

# --- E: a prefetch list is fetched right after the mount, before anything reads ------------
# The biggest file of the gzip image (from A's full rootfs, by --prefetch) and the directory
# with the most file bytes not holding it (by --prefetch-file: a directory stands for every
# file below it) are prefetched, the background fill is off: without a single read, the
# layers must have their bytes.
config e "lazy_fill_delay_ms = 3600000"
big=$(find "$WORK/a/rootfs-gzip" -xdev -type f -printf '%s %P\n' | sort -n | tail -1)
big_size=${big%% *} big_path=${big#* }
# "BYTES DIR": the directory's distinct regular files' bytes (hard links once)
pdir=$(python3 - "$WORK/a/rootfs-gzip" "$big_path" <<'PY'
import os, sys
root, big = sys.argv[1], sys.argv[2]
best = (0, "")
for d, _, _ in os.walk(root):
    rel = os.path.relpath(d, root)
    if rel == "." or big.startswith(rel + "/"):
        continue
    seen, total = set(), 0
    for dd, _, files in os.walk(d):
        for f in files:
            st = os.lstat(os.path.join(dd, f))
            if os.path.isfile(os.path.join(dd, f)) and not os.path.islink(os.path.join(dd, f)) and st.st_ino not in seen:
                seen.add(st.st_ino); total += st.st_size
    best = max(best, (total, rel))
print(best[0], best[1])
PY
)
dir_size=${pdir%% *} dir_path=${pdir#* }
printf '# prefetch list\n\n/%s\n' "$dir_path" > "$WORK/e/prefetch.list"   # (config made WORK/e)
want=$((big_size + dir_size))
if [ -n "$big_path" ] && [ "${dir_size:-0}" -gt 0 ] && start e &&
   L e -o json pull --lazy --lazy-min-size 0 --prefetch "$big_path" --prefetch-file "$WORK/e/prefetch.list" \
     "${REF[gzip]}" > "$WORK/e/pull.json" 2>"$WORK/e/err"; then
  t0=$(now)
  if wait_fetched e "$want"; then
    ok "E: --prefetch $big_path ($big_size B) + --prefetch-file naming /$dir_path ($dir_size B): $got B fetched $(elapsed "$t0" "$(now)") s after the pull, nothing read"
  else bad "E: --prefetch $big_path ($big_size B) + /$dir_path ($dir_size B): only $got B fetched after 20 s ($(cat "$WORK/e/lazy.json" 2>/dev/null | tr -d '\n' | head -c 300))"; fi
  L e rootfs "${REF[gzip]}" "$WORK/e/rootfs" >/dev/null 2>"$WORK/e/err" &&
    cmp -s "$WORK/a/rootfs-gzip/$big_path" "$WORK/e/rootfs/$big_path" &&
    diff -r "$WORK/a/rootfs-gzip/$dir_path" "$WORK/e/rootfs/$dir_path" > "$WORK/e/diff" 2>&1 &&
    ok "E: the prefetched file and directory read equal to the full pull's" ||
    bad "E: the prefetched file or directory differs or does not read: $(cat "$WORK/e/err") $(head -c 300 "$WORK/e/diff" 2>/dev/null)"
else bad "E: lamina pull --lazy --prefetch --prefetch-file: big file '${big_path:-none found}', directory '${dir_path:-none found}' $(cat "$WORK/e/err" 2>/dev/null)"; fi

# --- F: the files read are recorded, first read first: the next pull's prefetch list --------
# E read (cmp) the big file, then (diff -r) every file of the directory, through the lazy
# rootfs. `lamina lazy accessed` must list the big file first, then each of those files
# (recorded by the servers at most a second later; empty files are never read, a file
# with other names is recorded under one of them: both left out of the check); prefetching
# does not count as reading.
# An image that does not exist is an error.
if [ -n "$big_path" ] && [ -n "$dir_path" ]; then
  (cd "$WORK/a/rootfs-gzip" && find "$dir_path" -type f -size +0 -links 1 -printf '/%p\n' | LC_ALL=C sort) > "$WORK/e/dir-files"
  for _ in $(seq 50); do
    L e lazy accessed "${REF[gzip]}" > "$WORK/e/accessed" 2>"$WORK/e/err" || break
    [ "$(head -1 "$WORK/e/accessed")" = "/$big_path" ] &&
      [ -z "$(LC_ALL=C sort "$WORK/e/accessed" | LC_ALL=C comm -13 - "$WORK/e/dir-files")" ] && break
    sleep 0.2
  done
  missing=$(LC_ALL=C sort "$WORK/e/accessed" 2>/dev/null | LC_ALL=C comm -13 - "$WORK/e/dir-files" | sed -n 1,3p | tr '\n' ' ')
  if [ "$(head -1 "$WORK/e/accessed")" = "/$big_path" ] && [ -z "$missing" ] &&
     [ "$(sort "$WORK/e/accessed" | uniq -d | wc -l)" = 0 ]; then
    ok "F: lamina lazy accessed: $(wc -l < "$WORK/e/accessed") files, /$big_path first, all $(wc -l < "$WORK/e/dir-files") files of /$dir_path, none twice"
  else bad "F: lamina lazy accessed: first '$(head -1 "$WORK/e/accessed" 2>/dev/null)' (want /$big_path), missing: ${missing:-none} $(cat "$WORK/e/err")"; fi
  if L e lazy accessed no.such/image:1 > /dev/null 2>"$WORK/e/err"; then
    bad "F: lamina lazy accessed of an unknown image succeeded"
  elif grep -q 'is not recorded here' "$WORK/e/err"; then ok "F: lamina lazy accessed of an unknown image: $(head -c 120 "$WORK/e/err" | tr '\n' ' ')"
  else bad "F: lamina lazy accessed of an unknown image failed unclearly: $(head -c 300 "$WORK/e/err")"; fi
else bad "F: no big file or directory from E to check"; fi

# --- G: a prefetch list published with the indexes is used by lazy pulls on other hosts ----
# A pushes the zstd image's indexes again with `--prefetch-file` naming its biggest file
# (the newest artifact is the one pulls use); a fresh laminad G (background fill off) pulls
# lazily with no list of its own: without a single read, that file's bytes are fetched.
# A list with a line break in a path is refused.
config g "lazy_fill_delay_ms = 3600000"
gbig=$(find "$WORK/a/rootfs-zstd" -xdev -type f -printf '%s %P\n' | sort -n | tail -1)
gbig_size=${gbig%% *} gbig_path=${gbig#* }
printf '# published\n/%s\n' "$gbig_path" > "$WORK/g/list"
if [ -n "$gbig_path" ] &&
   L a -o json index push --prefetch-file "$WORK/g/list" "${REF[zstd]}" > "$WORK/g/push.json" 2>"$WORK/g/err" &&
   start g && L g -o json pull --lazy --lazy-min-size 0 "${REF[zstd]}" > "$WORK/g/pull.json" 2>>"$WORK/g/err"; then
  t0=$(now)
  if wait_fetched g "$gbig_size"; then
    ok "G: index push --prefetch-file /$gbig_path ($gbig_size B); a lazy pull elsewhere with no list fetched $got B $(elapsed "$t0" "$(now)") s after it, nothing read"
  else bad "G: published list /$gbig_path ($gbig_size B): only $got B fetched after 20 s ($(tr -d '\n' < "$WORK/g/lazy.json" 2>/dev/null | head -c 300))"; fi
else bad "G: index push --prefetch-file / lazy pull: ${gbig_path:-no file found in the zstd rootfs of A} $(cat "$WORK/g/err" 2>/dev/null)"; fi
if python3 -c 'import sys; open(sys.argv[1], "w").write("a\rb\n")' "$WORK/g/bad-list" &&
   ! L a index push --prefetch-file "$WORK/g/bad-list" "${REF[zstd]}" > /dev/null 2>"$WORK/g/err" &&
   grep -q 'line break' "$WORK/g/err"; then ok "G: a prefetch list with a line break in a path is refused: $(head -c 150 "$WORK/g/err" | tr '\n' ' ')"
else bad "G: a prefetch list with a CR in a path: $(head -c 300 "$WORK/g/err")"; fi
if ! L g pull --lazy --prefetch-file "$WORK/g/bad-list" "${REF[zstd]}" > /dev/null 2>"$WORK/g/err" &&
   grep -q 'line break' "$WORK/g/err"; then ok "G: a pull whose own prefetch list has a CR in a path is refused: $(head -c 150 "$WORK/g/err" | tr '\n' ' ')"
else bad "G: lamina pull with a CR in a prefetch path: $(head -c 300 "$WORK/g/err")"; fi

# --- cleanup: removing the snapshots unmounts the lazy layers, their servers exit ----------
# remove_images NAME: every image of daemon NAME: rootfs unmounted and removed, the image
# forgotten, its chain removed top down.
remove_images() {
  local n=$1 dir key
  for dir in $(grep -F " $WORK/$n/rootfs" /proc/self/mounts | awk '{print $2}' | sort -r); do
    umount "$dir" || return 1
    L "$n" snapshot rm "rootfs:$dir" || return 1
  done
  L "$n" -o json images > "$WORK/$n/images.json" || return 1
  for key in $(py "$WORK/$n/images.json" '" ".join(i["name"] for i in j)'); do L "$n" images rm "$key" || return 1; done
  for key in $(py "$WORK/$n/images.json" '" ".join(c for i in j for c in reversed(i["chain_ids"]))'); do
    L "$n" snapshot rm "$key" || return 1
  done
  return 0
}
for n in b c d e g; do
  [ -n "${DPID[$n]:-}" ] || continue
  L "$n" -o json lazy > "$WORK/$n/lazy-final.json" 2>/dev/null
  pids=$(py "$WORK/$n/lazy-final.json" '" ".join(str(r["pid"]) for r in j)' 2>/dev/null)
  mnts=$(py "$WORK/$n/lazy-final.json" '" ".join(r["mount"] for r in j)' 2>/dev/null)
  if ! remove_images "$n" 2>"$WORK/$n/err"; then bad "cleanup $n: removing the images' snapshots: $(cat "$WORK/$n/err")"; continue; fi
  for _ in $(seq 100); do
    left=0; for p in $pids; do running "$p" && left=$((left+1)); done
    [ "$left" -eq 0 ] && break; sleep 0.1
  done
  still=$(for m in $mnts; do grep -F " $m " /proc/self/mounts; done | wc -l)
  listed=$(L "$n" -o json lazy 2>&1 | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))' 2>&1)
  if [ "$left" -eq 0 ] && [ "$still" -eq 0 ] && [ "$listed" = 0 ]; then
    ok "cleanup $n: snapshots removed: $(wc -w <<< "$mnts") lazy layers unmounted, their $(wc -w <<< "$pids") servers exited, lamina lazy lists none"
  else bad "cleanup $n: after removing every snapshot: $left servers still running, $still FUSE mounts left, lamina lazy lists $listed"; fi
done
for dir in $(grep -F " $WORK/a/rootfs" /proc/self/mounts | awk '{print $2}'); do umount "$dir"; done
for n in "${!DPID[@]}"; do
  [ -n "${DPID[$n]}" ] && kill "${DPID[$n]}" 2>/dev/null && wait "${DPID[$n]}" 2>/dev/null; DPID[$n]=
done
sleep 0.5
left_mounts=$(grep -cF " $WORK/" /proc/self/mounts)
left_servers=$(serve_pids | wc -w)
if [ "$left_mounts" -eq 0 ] && [ "$left_servers" -eq 0 ]; then ok "cleanup: every daemon stopped, nothing mounted under $WORK, no lazy-serve process left"
else bad "cleanup: $left_mounts mounts under $WORK, $left_servers lazy-serve processes left: $(grep -F " $WORK/" /proc/self/mounts | head -5)"; fi
finish
