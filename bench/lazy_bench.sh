#!/usr/bin/env bash
# lazy_bench.sh: lazy pull (FUSE layers read from the registry on demand) vs full pulls: the time
# until a command in the image has read a chosen 5 % of it (issue 5's acceptance).
#
# WHAT: for the synthetic gzip image $SIZE (default large: ../shared/bench/mkimage.py, 16 layers,
#   1960 MB, 120k entries) in a docker-registry on 127.0.0.1, the wall time from the start of the
#   pull until a reader has read, through a mounted rootfs of the image, every byte of a fixed list
#   of files that holds $PCT % (default 5) of the image's file bytes, for
#   - lazy   : lamina pull --lazy REF; lamina rootfs REF DIR; reader over DIR
#              (every layer with an index in the registry, >= laminad's lazy_min_layer_size, is a
#              FUSE file system served by `laminad lazy-serve`, reading the registry by range
#              requests; default laminad config: the background fill that completes a layer
#              starts lazy_fill_delay_ms = 2000 ms after the mount)
#   - nofill : the same with lazy_fill_delay_ms = $NOFILL_DELAY_MS (the fill never starts during
#              the run): what the reader alone pulls in, with nothing competing (LEGS knob)
#   - prefetch: lazy, plus `--prefetch-file LIST`, LIST recorded by an earlier lazy way of the
#              same run: `lamina lazy accessed REF` right after its reader finished (the files
#              the lazy layers' servers saw read, first read first; files of the unpacked small
#              layers are not in it). Without an earlier lazy way in LEGS, the reader's own list
#              (files.tsv) is used. Each lazy layer's server fetches the chunks of its listed
#              files right after its mount, 4 threads at a time, while the reader runs
#   - full   : lamina pull --no-lazy REF (all layers downloaded and unpacked in parallel) +
#              rootfs + reader
#   - ctd    : containerd 1.6: ctr images pull --plain-http --snapshotter overlayfs REF, then
#              ctr snapshots prepare KEY <chain id of the top layer> and the mount command that
#              `ctr snapshots mounts DIR KEY` prints, run by sh; reader over DIR
#   Reported per way: medians over RUNS of pull s, rootfs/mount s, read s and the total; ratios
#   lazy / full and lazy / ctd (the issue's goal: lazy <= 10 % of the full pull); for the lazy
#   ways also the bytes laminad fetched (`lamina lazy -o json`, sampled right after the reader
#   finished: per lazy layer "fetched" = bytes of its uncompressed stream in its chunk cache, as
#   the cache's bitmap was last saved, and "total"), laminad + lazy-serve CPU; for every way the
#   distribution of per-file read times (the reader writes them to $OUTDIR/<way>-r<n>.read-times.tsv).
#
#   THE FILE LIST (chosen once per script run, deterministically: same image -> same list;
#   written to $OUTDIR/files.tsv, one line per file: size, sha256, layer, path):
#   1. the image's final tree is computed from mkimage.py's uncompressed layer tars (stats JSON
#      under $BENCH_IMAGES): layers applied in order with whiteouts, opaque dirs, replacements and
#      hard links, as an unpack would; "file bytes" = sizes of its regular files (hard links count
#      as files, they are read as such).
#   2. the tree is cut into units: walking from /, a directory whose files total <= $UNIT_CAP_PCT %
#      of the file bytes (default 1 %) is one unit (a whole subtree: a package, a library dir), a
#      bigger one is walked into; a regular file directly in a walked-into directory is a unit of
#      its own if it is <= the cap (an executable, a shared library; bigger files, such as the
#      60-80 MB data blobs, are never chosen). Each unit belongs to the layer giving it most bytes.
#   3. units are taken round-robin over the layers (layer 0, 1, ..., 15, 0, ...), inside a layer in
#      the order of sha256("lazy_bench:" + path); a unit that would take the sum past
#      target * 1.02 is skipped; this stops once the sum reaches target * 0.98, target = PCT % of
#      the file bytes. The result is some 250 package-like subtrees and a few 8-15 MB single files
#      from all 16 layers (what a program, its interpreter and its libraries look like), listed
#      in the order picked (files of one unit in path order).
#   THE READER: python3 reads each listed file fully ($READERS at a time, default 1, in list
#   order), through the rootfs mount, and checks each file's byte count and sha256 against the
#   list (computed from the layer tars); any short, wrong or failing read (EIO) fails the run
#   loudly (the run is recorded as an error, the script exits 1 after the table).
#
# HOW: the image is generated once (mkimage.py caches it) and pushed once (skopeo, blobs
#   byte-for-byte) to docker-registry on $REGISTRY_ADDR (shared lib.sh, storage persists under
#   $BENCH_STATE/registry). Then, once per script run, a separate laminad on a fresh fs does
#   `lamina pull --no-lazy REF`, `lamina index build REF`, `lamina index push REF`, so the registry
#   holds the seekable indexes of these very binaries (an OCI artifact referring to the image,
#   under docker-registry's sha256-<hex> fallback tag). Every layer blob and every index blob is
#   then fetched once with curl ($DOWNLOADS at a time): the registry's page cache is warm for all
#   ways alike. Runs are interleaved (lazy 1, nofill 1, prefetch 1, full 1, ctd 1, lazy 2, ...); each run gets
#   a freshly formatted, loop-mounted, journaled ext4 (lib.sh, BENCH_FS=loop; never /) holding the
#   fresh daemon root (laminad --root, or containerd root/state) and the rootfs mount point;
#   nothing else is dropped (the registry's files stay in the page cache).
#   Teardown of a lamina run: `lamina lazy -o json` (fetched bytes; the servers' logs are copied),
#   unmount the rootfs, SIGTERM laminad; the lazy layers' FUSE mounts and their `laminad
#   lazy-serve` processes outlive laminad by design, so every mount still under the fs is then
#   unmounted (umount -l; a server exits when its mount goes) and any lazy-serve process of this
#   script's laminad copy still alive is SIGTERMed, after 10 s SIGKILLed ($OUTDIR/teardown.txt).
#   Anomalies (a lazy layer failed or unserved, `lamina lazy` contradicting the pull, a layer the
#   reader read from reported as 0 of 0 bytes, SIGKILL needed, ...) go to $OUTDIR/notes.txt and
#   under the table; a failed layer, pull, mount or read is an error.
#   The laminad/lamina binaries are copied into $OUTDIR/bin first, so a rebuild during the run
#   does not change what is measured. Prerequisites are apt-installed if missing (containerd runc
#   docker-registry skopeo pigz curl e2fsprogs util-linux mount python3).
#
# USAGE: bash bench/lazy_bench.sh                    (as root, from any cwd; ~10 min)
#        RUNS=1 bash bench/lazy_bench.sh             (smoke test)
#        SIZE=medium LEGS="lazy full" RUNS=1 bash bench/lazy_bench.sh
#
# KNOBS (environment):
#   RUNS [3]              runs per way, interleaved; medians reported
#   SIZE [large]          mkimage.py preset (gzip)
#   LEGS ["lazy nofill prefetch full ctd"]  ways measured, in this order within a run
#   PCT [5]               % of the image's file bytes the reader reads
#   UNIT_CAP_PCT [1]      largest unit (subtree or file) of the list, % of the file bytes
#   READERS [1]           reader threads
#   NOFILL_DELAY_MS [3600000]  lazy_fill_delay_ms of the nofill way
#   DOWNLOADS [4]         concurrent curl downloads warming the registry's page cache
#   LAMINAD_LOG [info]    laminad --log-level
#   BENCH_STATE [/tmp/perf]  state dir (images/, registry/, fs.img, results/); BENCH_FS [loop]
#   REGISTRY_ADDR [127.0.0.1:5055]   (see ../shared/bench/lib.sh)
#   CARGO_TARGET_DIR [/var/cache/lamina-target]; LAMINAD, LAMINA [$CARGO_TARGET_DIR/release/...]
#   BUILD [auto]          auto = build only if missing or without `pull --lazy`; always = cargo build
#   OUTDIR [$BENCH_STATE/results/lamina-lazy-<date>]  files.tsv, runs.tsv, per-run logs, table.md
#   KEEP_FS [0]           1 = leave the last benchmark filesystem mounted at $BENCH_STATE/fsmnt
# Output: Markdown tables on stdout (also $OUTDIR/table.md); progress on stderr. Exit 1 if any
#   run failed (wrong read, failed pull, no layer mounted lazily, ...), after the table.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
SHARED=${SHARED:-$(cd "$REPO/../shared" && pwd)}
SHARED_BENCH=${SHARED_BENCH:-$SHARED/bench}

export BENCH_STATE=${BENCH_STATE:-/tmp/perf}
export BENCH_IMAGES=${BENCH_IMAGES:-$BENCH_STATE/images}
# shellcheck source=/dev/null
source "$SHARED_BENCH/lib.sh"   # fs_*, ctd_start/ctd_stop, registry_*, now/elapsed, jget

RUNS=${RUNS:-3}
SIZE=${SIZE:-large}
LEGS=${LEGS:-lazy nofill prefetch full ctd}
PCT=${PCT:-5}
UNIT_CAP_PCT=${UNIT_CAP_PCT:-1}
READERS=${READERS:-1}
NOFILL_DELAY_MS=${NOFILL_DELAY_MS:-3600000}
DOWNLOADS=${DOWNLOADS:-4}
LAMINAD_LOG=${LAMINAD_LOG:-info}
BUILD=${BUILD:-auto}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/lamina-target}
LAMINAD_SRC=${LAMINAD:-$CARGO_TARGET_DIR/release/laminad}
LAMINA_SRC=${LAMINA:-$CARGO_TARGET_DIR/release/lamina}
OUTDIR=${OUTDIR:-$BENCH_STATE/results/lamina-lazy-$(date +%Y%m%d-%H%M%S)}
SOCKDIR=$BENCH_STATE/sock
SOCK=$SOCKDIR/lamina-lazy.sock
NS=bench
REF=$REGISTRY_ADDR/bench/$SIZE:gzip
J=$BENCH_IMAGES/$SIZE-gzip.json

BENCH_NAME=lazy_bench
# shellcheck source=common.sh
source "$HERE/common.sh"   # log, die, umount_under, stop_pid, install_pkgs, take_bench_lock

[ "$(id -u)" = 0 ] || die "must run as root (mounts, loop devices, FUSE)"
for l in $LEGS; do case $l in lazy|nofill|prefetch|full|ctd) ;; *) die "LEGS: unknown way '$l' (lazy nofill prefetch full ctd)";; esac; done

# ---------------------------------------------------------------------------------------------
# Prerequisites (idempotent)
install_pkgs containerd runc docker-registry skopeo pigz curl e2fsprogs util-linux mount python3 coreutils
[ -e /dev/fuse ] || modprobe fuse 2>/dev/null || true
[ -e /dev/fuse ] || die "/dev/fuse is missing (no FUSE in this kernel?): lazy layers need it"

mkdir -p "$BENCH_STATE" "$OUTDIR/bin" "$SOCKDIR"
take_bench_lock

has_lazy() { local h; h=$("$1" pull --help 2>/dev/null) && grep -q -- '--lazy' <<<"$h"; }   # (no pipe: grep -q would SIGPIPE it under pipefail)
if [ "$BUILD" = always ] || [ ! -x "$LAMINAD_SRC" ] || [ ! -x "$LAMINA_SRC" ] || ! has_lazy "$LAMINA_SRC"; then
  [ -d "$HOME/.cargo/bin" ] && PATH=$HOME/.cargo/bin:$PATH
  log "building laminad + lamina (cargo build --release, CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
  (cd "$REPO" && cargo build --release -p laminad -p lamina-cli) >&2
fi
has_lazy "$LAMINA_SRC" || die "$LAMINA_SRC: 'lamina pull --help' shows no --lazy (lazy pulls not built yet)"
"$LAMINA_SRC" lazy --help > /dev/null 2>&1 || die "$LAMINA_SRC has no 'lazy' subcommand"
cp "$LAMINAD_SRC" "$OUTDIR/bin/laminad"; cp "$LAMINA_SRC" "$OUTDIR/bin/lamina"
LAMINAD=$OUTDIR/bin/laminad
LAMINA=$OUTDIR/bin/lamina
: > "$OUTDIR/laminad-default.toml"   # hermetic: never pick up /etc/lamina/laminad.toml
echo "lazy_fill_delay_ms = $NOFILL_DELAY_MS" > "$OUTDIR/laminad-nofill.toml"
{
  echo "repo HEAD $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')" \
       "($(git -C "$REPO" status --porcelain 2>/dev/null | grep -c . || true) changed files in tree)"
  echo "laminad built $(stat -c %y "$LAMINAD_SRC" | cut -d. -f1); $(containerd --version)"
  echo "$(uname -r), nproc=$(nproc)"
} > "$OUTDIR/versions.txt"
: > "$OUTDIR/notes.txt"
note() { log "note: $*"; echo "$*" >> "$OUTDIR/notes.txt"; }   # anomalies: shown under the table
teardown() { log "$*"; echo "$*" >> "$OUTDIR/teardown.txt"; }  # expected leftovers, cleaned up

# ---------------------------------------------------------------------------------------------
# Process / mount bookkeeping: everything started here is stopped by PID; the trap cleans up.
LAMINAD_PID=
ROOTFS=$FSMNT/rootfs

# pids of `laminad lazy-serve` processes running this script's copy of laminad
lazy_servers() {
  local p exe
  for p in /proc/[0-9]*; do
    exe=$(readlink "$p/exe" 2>/dev/null) || continue
    [ "$exe" = "$LAMINAD" ] || continue
    tr '\0' ' ' < "$p/cmdline" 2>/dev/null | grep -q ' lazy-serve' && echo "${p#/proc/}"
  done
  return 0
}

# kill_lazy_servers TAG: unmount what is left under the fs, stop leftover lazy-serve processes
kill_lazy_servers() {
  local tag=$1 left
  left=$({ grep -F " $FSMNT/" /proc/self/mounts || true; } | awk '{print $3}' | sort | uniq -c | tr -s ' \n' ' ')
  [ -z "$left" ] || teardown "$tag: mounted under the fs after laminad stopped (count, type):$left-> umount -l"
  { grep -F " $FSMNT/" /proc/self/mounts || true; } | awk '{print $2}' | sort -r |
    while read -r m; do umount -l "$m" || true; done
  left=$(lazy_servers | tr '\n' ' ')
  [ -z "$left" ] && return 0
  teardown "$tag: $(echo "$left" | wc -w) laminad lazy-serve processes alive after laminad stopped (they outlive it by design): SIGTERM"
  # shellcheck disable=SC2086
  kill -TERM $left 2>/dev/null || true
  for _ in $(seq 1 100); do
    [ -z "$(lazy_servers)" ] && return 0
    sleep 0.1
  done
  left=$(lazy_servers | tr '\n' ' ')
  note "$tag: laminad lazy-serve ignored SIGTERM for 10 s (pids $left): SIGKILL"
  # shellcheck disable=SC2086
  kill -KILL $left 2>/dev/null || true
  sleep 0.5
}

cleanup() {
  local rc=$?
  set +e
  mountpoint -q "$ROOTFS" 2>/dev/null && { umount "$ROOTFS" || umount -l "$ROOTFS"; }
  stop_pid "$LAMINAD_PID"; LAMINAD_PID=
  ctd_stop
  kill_lazy_servers cleanup > /dev/null 2>&1
  registry_stop
  umount_under "$FSMNT"
  if [ "${KEEP_FS:-0}" != 1 ]; then fs_teardown; fi
  rm -f "$SOCK"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

cpu_of() {   # user+sys CPU seconds of a pid incl. waited-for children
  awk -v hz="$(getconf CLK_TCK)" '{print ($14+$15+$16+$17)/hz}' "/proc/$1/stat" 2>/dev/null || echo 0
}
cpu_sum() {   # cpu_sum PID...: sum of cpu_of
  local s=0 p
  for p in "$@"; do s=$(python3 -c "print($s + $(cpu_of "$p"))"); done
  echo "$s"
}
py() { python3 -c "import sys; print($1)"; }

start_laminad() {   # start_laminad CONFIG LOGFILE -> LAMINAD_PID
  local conf=$1 logf=$2
  rm -f "$SOCK"
  "$LAMINAD" --config "$conf" --root "$FSMNT/lamina" --socket "$SOCK" \
    --log-level "$LAMINAD_LOG" > "$logf" 2>&1 &
  LAMINAD_PID=$!
  for _ in $(seq 1 600); do
    [ -S "$SOCK" ] && return 0
    kill -0 "$LAMINAD_PID" 2>/dev/null || { tail -20 "$logf" >&2; die "laminad exited before serving"; }
    sleep 0.1
  done
  die "laminad did not create $SOCK within 60 s"
}
L() { "$LAMINA" --socket "$SOCK" "$@"; }

# ---------------------------------------------------------------------------------------------
# Image and registry
T0=$(now)
fs_setup
if [ ! -f "$J" ] || [ ! -d "$BENCH_IMAGES/$SIZE-gzip" ]; then
  log "generating $SIZE-gzip (mkimage.py, cached under $BENCH_IMAGES)"
  python3 "$SHARED_BENCH/mkimage.py" "$SIZE" --comp gzip --out "$BENCH_IMAGES" >&2
fi
for t in $(jget "$J" "' '.join(l['uncompressed_tar'] for l in j['layers'])"); do
  [ -f "$t" ] || die "uncompressed layer $t missing (mkimage.py cache): rm $J to regenerate"
done
registry_start
[ -n "${REG_PID:-}" ] || note "a docker-registry not started by this script already answered on $REGISTRY_ADDR: used as is"
if ! curl -fsS -o /dev/null -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    "http://$REGISTRY_ADDR/v2/bench/$SIZE/manifests/gzip" 2>/dev/null; then
  log "pushing $SIZE-gzip to $REF"
  registry_push "$SIZE-gzip"
fi
MANIFEST=$(curl -fsS -o /dev/null -D - -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
  "http://$REGISTRY_ADDR/v2/bench/$SIZE/manifests/gzip" | tr -d '\r' | sed -n 's/^[Dd]ocker-[Cc]ontent-[Dd]igest: //p')
[ -n "$MANIFEST" ] || die "no manifest digest for $REF"
CHAIN=$(python3 -c "
import hashlib, json, sys
c = None
for l in json.load(open(sys.argv[1]))['layers']:
    c = l['diff_id'] if c is None else 'sha256:' + hashlib.sha256((c + ' ' + l['diff_id']).encode()).hexdigest()
print(c)" "$J")
log "BENCH_FS=$BENCH_FS SIZE=$SIZE LEGS='$LEGS' RUNS=$RUNS PCT=$PCT READERS=$READERS; $(head -1 "$OUTDIR/versions.txt"); output: $OUTDIR"

# ---------------------------------------------------------------------------------------------
# The file list (see the header): $OUTDIR/files.tsv + $OUTDIR/files-summary.json
log "choosing the file list ($PCT % of the file bytes, units <= $UNIT_CAP_PCT %)"
python3 - "$J" "$PCT" "$UNIT_CAP_PCT" "$OUTDIR/files.tsv" "$OUTDIR/files-summary.json" <<'EOF'
import collections, hashlib, json, sys, tarfile
stats, pct, cap_pct, out, summary = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
J = json.load(open(stats))
# 1. the final tree: path -> (kind f/d/o, size, layer of the entry, (layer, data offset) of the bytes)
view = {}
def drop(prefix, below=None):
    for k in [k for k, v in view.items() if k.startswith(prefix) and (below is None or v[2] < below)]:
        del view[k]
for li, l in enumerate(J["layers"]):
    with tarfile.open(l["uncompressed_tar"]) as t:
        for m in t:
            p = m.name.rstrip("/")
            p = p[2:] if p.startswith("./") else p
            d, _, b = p.rpartition("/")
            if b == ".wh..wh..opq":
                drop(d + "/", li); continue
            if b.startswith(".wh."):
                q = (d + "/" if d else "") + b[4:]
                view.pop(q, None); drop(q + "/"); continue
            old = view.get(p)
            if m.isdir():
                if old is None or old[0] != "d": view[p] = ("d", 0, li, None)
                continue
            if old is not None and old[0] == "d": drop(p + "/")
            if m.islnk():
                tgt = view[m.linkname.rstrip("/").removeprefix("./")]
                assert tgt[0] == "f", (p, m.linkname)
                view[p] = ("f", tgt[1], li, tgt[3])
            elif m.isreg():
                assert not m.issparse(), "sparse file %s: not supported here" % p
                view[p] = ("f", m.size, li, (li, m.offset_data))
            else:
                view[p] = ("o", 0, li, None)
files = {p: v for p, v in view.items() if v[0] == "f"}
total = sum(v[1] for v in files.values())
target, cap = total * pct / 100, total * cap_pct / 100
# 2. units: subtrees (or single files) <= cap, walking into anything bigger
children = collections.defaultdict(list)
for p in view:
    children[p.rpartition("/")[0]].append(p)
subtree = collections.Counter()
for p, v in files.items():
    parts = p.split("/")
    for i in range(len(parts)):
        subtree["/".join(parts[:i])] += v[1]
def under(p):
    if view[p][0] == "f": return [p]
    return [f for c in children.get(p, []) for f in under(c)]
units = []
def walk(d):
    for c in sorted(children.get(d, [])):
        k = view[c][0]
        if k == "f" and 0 < files[c][1] <= cap:
            units.append((c, files[c][1], [c]))
        elif k == "d" and subtree[c] > cap:
            walk(c)
        elif k == "d" and subtree[c] > 0:
            units.append((c, subtree[c], sorted(under(c))))
walk("")
bylayer = collections.defaultdict(list)
for u in units:
    lb = collections.Counter()
    for f in u[2]: lb[files[f][2]] += files[f][1]
    bylayer[min(lb, key=lambda l: (-lb[l], l))].append(u)
# 3. round-robin over the layers, pseudo-random but fixed order inside a layer
queues = {l: collections.deque(sorted(bylayer[l], key=lambda u: hashlib.sha256(("lazy_bench:" + u[0]).encode()).hexdigest()))
          for l in sorted(bylayer)}
picked, s, tol = [], 0, 0.02
while s < target * (1 - tol) and any(queues.values()):
    for l, q in queues.items():
        while q:
            u = q.popleft()
            if s + u[1] <= target * (1 + tol):
                picked.append(u); s += u[1]; break
        if s >= target * (1 - tol): break
# sha256 of each chosen file, read from the layer tars
fhs = {li: open(l["uncompressed_tar"], "rb") for li, l in enumerate(J["layers"])}
per_layer, nf = collections.Counter(), 0
with open(out, "w") as o:
    o.write("# lazy_bench file list: %s, %.1f %% of %d file bytes (%d bytes in %d files, %d units); "
            "size\tsha256\tlayer\tpath\n" % (J["ref"], 100 * s / total, total, s, sum(len(u[2]) for u in picked), len(picked)))
    for u in picked:
        for f in u[2]:
            _, size, li, (sl, off) = files[f]
            h, fh, left = hashlib.sha256(), fhs[sl], size
            fh.seek(off)
            while left:
                b = fh.read(min(left, 1 << 20))
                assert b, "short tar %s" % f
                h.update(b); left -= len(b)
            o.write("%d\t%s\t%d\t%s\n" % (size, h.hexdigest(), li, f))
            per_layer[li] += size; nf += 1
json.dump({"total_file_bytes": total, "target_bytes": int(target), "bytes": s, "files": nf, "units": len(picked),
           "largest_file": max(files[f][1] for u in picked for f in u[2]),
           "unit_kinds": {"subtrees": sum(1 for u in picked if view[u[0]][0] == "d"),
                          "single_files": sum(1 for u in picked if view[u[0]][0] == "f")},
           "per_layer_bytes": {str(k): per_layer[k] for k in sorted(per_layer)}}, open(summary, "w"), indent=1)
print("%d files, %d bytes (%.2f %% of %d), %d units over %d layers" % (nf, s, 100 * s / total, total, len(picked), len(per_layer)),
      file=sys.stderr)
EOF
SEL_BYTES=$(jget "$OUTDIR/files-summary.json" "j['bytes']")
SEL_FILES=$(jget "$OUTDIR/files-summary.json" "j['files']")
awk -F'\t' '!/^#/ { print "/" $4 }' "$OUTDIR/files.tsv" > "$OUTDIR/prefetch.txt"   # fallback list of the prefetch way: the reader's files, in order
log "file list: $SEL_FILES files, $SEL_BYTES bytes -> $OUTDIR/files.tsv"

# The reader: prints "<files> <bytes>", exits 1 (message on stderr) on any short/wrong/failing read
cat > "$OUTDIR/reader.py" <<'EOF'
import concurrent.futures, hashlib, os, sys, time
lst, root, threads, times = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
todo = [l.rstrip("\n").split("\t", 3) for l in open(lst) if not l.startswith("#")]
took = {}
def read(e):
    t0 = time.perf_counter()
    size, digest, path = int(e[0]), e[1], os.path.join(root, e[3])
    h, n, buf = hashlib.sha256(), 0, bytearray(1 << 20)
    try:
        with open(path, "rb", buffering=0) as f:
            while True:
                k = f.readinto(buf)
                if not k: break
                h.update(memoryview(buf)[:k]); n += k
    except OSError as e:
        raise SystemExit("reader: %s: %s" % (path, e))
    if n != size or h.hexdigest() != digest:
        raise SystemExit("reader: %s: read %d bytes, sha256 %s; expected %d bytes, sha256 %s" % (path, n, h.hexdigest(), size, digest))
    took[e[3]] = time.perf_counter() - t0
    return n
if threads <= 1:
    total = sum(read(e) for e in todo)
else:
    with concurrent.futures.ThreadPoolExecutor(threads) as ex:
        total = sum(ex.map(read, todo))
with open(times, "w") as o:   # seconds per file (open to close, incl. hashing), list order
    for e in todo: o.write("%.6f\t%s\t%s\t%s\n" % (took[e[3]], e[0], e[2], e[3]))
print(len(todo), total)
EOF

# ---------------------------------------------------------------------------------------------
# Indexes: a separate laminad pulls the image, builds and pushes its seekable indexes
log "index setup: lamina pull --no-lazy + index build + index push (separate laminad, fresh fs)"
fs_fresh; sync
start_laminad "$OUTDIR/laminad-default.toml" "$OUTDIR/setup.laminad.log"
t=$(now)
L -o json pull --no-lazy "$REF" > "$OUTDIR/setup.pull.json" 2> "$OUTDIR/setup.pull.err" ||
  die "setup: lamina pull failed: $(tail -c 400 "$OUTDIR/setup.pull.err")"
t1=$(now)
L -o json index build "$REF" > "$OUTDIR/setup.index-build.json" 2> "$OUTDIR/setup.index-build.err" ||
  die "setup: lamina index build failed: $(tail -c 400 "$OUTDIR/setup.index-build.err")"
t2=$(now)
L -o json index push "$REF" > "$OUTDIR/setup.index-push.json" 2> "$OUTDIR/setup.index-push.err" ||
  die "setup: lamina index push failed: $(tail -c 400 "$OUTDIR/setup.index-push.err")"
t3=$(now)
log "setup: pull $(elapsed "$t" "$t1") s, index build $(elapsed "$t1" "$t2") s, index push $(elapsed "$t2" "$t3") s"
stop_pid "$LAMINAD_PID"; LAMINAD_PID=
kill_lazy_servers setup
umount_under "$FSMNT"
# the index artifact(s) listed under the fallback tag, and their blobs
INDEX_BLOBS=$(python3 - "$REGISTRY_ADDR" "$SIZE" "$MANIFEST" "$OUTDIR/setup.index-build.json" "$OUTDIR/index-blobs.json" 2> "$OUTDIR/index-check.err" <<'EOF'
import json, sys, urllib.request
addr, size, manifest, built, out = sys.argv[1:6]
base = "http://%s/v2/bench/%s" % (addr, size)
def get(path, accept):
    return json.loads(urllib.request.urlopen(urllib.request.Request(base + path, headers={"Accept": accept})).read())
fb = get("/manifests/" + manifest.replace(":", "-", 1), "application/vnd.oci.image.index.v1+json")
arts = [m for m in fb["manifests"] if m.get("artifactType") == "application/vnd.lamina.layer-index.v1"]
assert arts, "no lamina index artifact under the fallback tag: %s" % fb
blobs, info = [], []
for a in arts:
    m = get("/manifests/" + a["digest"], "application/vnd.oci.image.manifest.v1+json")
    info.append({"artifact": a["digest"], "layers": [{"index": l["digest"], "size": l["size"],
                 "layer": l.get("annotations", {}).get("io.lamina.layer.digest")} for l in m["layers"]]})
    blobs += [l["digest"] for l in m["layers"]]
json.dump({"artifacts": info}, open(out, "w"), indent=1)
mine = {l["index"] for l in json.load(open(built))}
if mine != {l["index"] for l in info[-1]["layers"]}:
    print("NOTE: the last index artifact listed (the one lazy pulls use) is not this run's index build", file=sys.stderr)
print(" ".join(blobs))
EOF
) || die "the registry has no usable index artifact for $REF after index push: $(tail -c 400 "$OUTDIR/index-check.err")"
while read -r l; do note "${l#NOTE: }"; done < <(grep "^NOTE: " "$OUTDIR/index-check.err" || true)
NIDX=$(jget "$OUTDIR/index-blobs.json" "len(j['artifacts'])")
[ "$NIDX" = 1 ] || note "$NIDX index artifacts are listed under the fallback tag of $MANIFEST (pushes by other laminad builds made other index bytes; lazy pulls use the last one listed, this run's)"
IDX_BYTES=$(jget "$OUTDIR/index-blobs.json" "sum(l['size'] for a in j['artifacts'][-1:] for l in a['layers'])")
log "indexes in the registry: $(echo "$INDEX_BLOBS" | wc -w) blobs, $IDX_BYTES bytes (last artifact)"

# Warm the registry's page cache for every way alike: every layer blob and index blob, once
LAYER_DIGESTS=$(jget "$J" "' '.join(l['digest'] for l in j['layers'])")
t=$(now)
# shellcheck disable=SC2086
printf '%s\n' $LAYER_DIGESTS $INDEX_BLOBS | xargs -P "$DOWNLOADS" -I{} curl -fsS -o /dev/null "http://$REGISTRY_ADDR/v2/bench/$SIZE/blobs/{}"
log "registry page cache warmed (curl of all layer and index blobs, $DOWNLOADS at a time): $(elapsed "$t" "$(now)") s"

# ---------------------------------------------------------------------------------------------
# Runs
TSV=$OUTDIR/runs.tsv
printf "way\trun\ttotal_s\tpull_s\trootfs_s\tread_s\tread_bytes\tfetched_bytes\tlazy_total_bytes\tlazy_layers\tcpu_s\tserver_cpu_s\tload1\n" > "$TSV"
failures=()
record() {   # record WAY RUN TOTAL PULL ROOTFS READ READBYTES FETCHED LAZYTOTAL LAZYLAYERS CPU SERVERCPU
  printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n" "$@" "$load1" >> "$TSV"
  log "$(printf "%-6s run%s  total %7.2fs = pull %6.2fs + rootfs %5.2fs + read %6.2fs  fetched %s  lazy layers %s  cpu %s+%s s  load %s" \
    "$1" "$2" "$3" "$4" "$5" "$6" "${8:--}" "${10:--}" "${11}" "${12:--}" "$load1")"
}

read_files() {   # read_files TAG -> READ_OUT ("files bytes") or returns 1
  local tag=$1
  python3 "$OUTDIR/reader.py" "$OUTDIR/files.tsv" "$ROOTFS" "$READERS" "$OUTDIR/$tag.read-times.tsv" > "$OUTDIR/$tag.read.out" 2> "$OUTDIR/$tag.read.err" || return 1
  READ_OUT=$(cat "$OUTDIR/$tag.read.out")
  [ "$READ_OUT" = "$SEL_FILES $SEL_BYTES" ] || { echo "reader read '$READ_OUT', expected '$SEL_FILES $SEL_BYTES'" >> "$OUTDIR/$tag.read.err"; return 1; }
}

run_lamina() {   # run_lamina WAY RUN   (WAY: lazy, nofill, prefetch, full)
  local way=$1 run=$2 tag=$1-r$2 conf=$OUTDIR/laminad-default.toml rc=0 t0 t1 t2 t3 c1 pids scpu=''
  local -a flags=(--lazy)
  [ "$way" = nofill ] && conf=$OUTDIR/laminad-nofill.toml
  if [ "$way" = prefetch ]; then
    if [ -s "$OUTDIR/r$run.recorded.txt" ]; then flags+=(--prefetch-file "$OUTDIR/r$run.recorded.txt")
    else note "$tag: no list recorded by a lazy way of run $run: the reader's own list is the prefetch list"
      flags+=(--prefetch-file "$OUTDIR/prefetch.txt"); fi
  fi
  [ "$way" = full ] && flags=(--no-lazy)
  fs_fresh; sync
  load1=$(cut -d' ' -f1 /proc/loadavg)
  start_laminad "$conf" "$OUTDIR/$tag.laminad.log"
  mkdir -p "$ROOTFS"
  t0=$(now)
  L -o json pull "${flags[@]}" "$REF" > "$OUTDIR/$tag.pull.json" 2> "$OUTDIR/$tag.pull.err" || rc=$?
  t1=$(now)
  if [ "$rc" = 0 ]; then
    L rootfs "$REF" "$ROOTFS" > "$OUTDIR/$tag.rootfs.out" 2>&1 || rc=$?
    t2=$(now)
    if [ "$rc" = 0 ]; then
      read_files "$tag" || rc=reader
      t3=$(now)
    else rc="rootfs $rc: $(tail -c 300 "$OUTDIR/$tag.rootfs.out" | tr '\n' ' ')"; fi
  else rc="pull $rc: $(tail -c 300 "$OUTDIR/$tag.pull.err" | tr '\n' ' ')"; fi
  # fetched bytes and servers, right after the reader
  L -o json lazy > "$OUTDIR/$tag.lazy.json" 2> "$OUTDIR/$tag.lazy.err" || note "$tag: lamina lazy -o json failed: $(head -c 300 "$OUTDIR/$tag.lazy.err" | tr '\n' ' ')"
  c1=$(cpu_of "$LAMINAD_PID")
  pids=$(lazy_servers | tr '\n' ' ')
  for f in "$FSMNT"/lamina/snapshots/*/lazy/serve.log; do   # the servers' logs
    [ -f "$f" ] || continue
    mkdir -p "$OUTDIR/$tag.serve-logs"; cp "$f" "$OUTDIR/$tag.serve-logs/$(basename "$(dirname "$(dirname "$f")")").log"
  done
  # shellcheck disable=SC2086
  [ -z "$pids" ] || scpu=$(cpu_sum $pids)
  # then the files the servers saw read (the prefetch way's list)
  if [ "$way" != full ] && [ "$rc" = 0 ]; then
    sleep 1.2   # servers write what was read once a second (the run's time has been taken)
    L lazy accessed "$REF" > "$OUTDIR/$tag.accessed.txt" 2> "$OUTDIR/$tag.accessed.err" &&
      cp "$OUTDIR/$tag.accessed.txt" "$OUTDIR/r$run.recorded.txt" ||
      note "$tag: lamina lazy accessed failed: $(head -c 300 "$OUTDIR/$tag.accessed.err" | tr '\n' ' ')"
  fi
  # line 1: fetched, total, lazy layers listed, lazy layers in the pull's JSON; then NOTE/FAIL lines
  python3 - "$OUTDIR/$tag.lazy.json" "$OUTDIR/$tag.pull.json" "$J" "$OUTDIR/files-summary.json" "$way" \
    > "$OUTDIR/$tag.lazy-check.txt" <<'EOF' || echo "0 0 0 -1" > "$OUTDIR/$tag.lazy-check.txt"
import json, sys
def load(p):
    try: return json.load(open(p))
    except Exception: return None
lz, pull, J, S, way = load(sys.argv[1]) or [], load(sys.argv[2]), load(sys.argv[3]), load(sys.argv[4]), sys.argv[5]
pl = pull[0] if isinstance(pull, list) and pull else pull
names = (pl.get("lazy") or []) if isinstance(pl, dict) else None
print(sum(l["fetched"] for l in lz), sum(l["total"] for l in lz), len(lz), -1 if names is None else len(names))
index = {l["digest"]: i for i, l in enumerate(J["layers"])}
for l in lz:
    i = index.get(l["layer"], "?"); chosen = S["per_layer_bytes"].get(str(i), 0)
    if l["state"] == "failed":
        print("FAIL layer %s (%s) failed: %s" % (i, l["layer"][:19], l.get("detail", "")))
    elif l["state"] == "not-mounted" or not l.get("pid"):
        print("NOTE layer %s: lamina lazy says state %s, pid %s right after the reader" % (i, l["state"], l.get("pid")))
    if l["total"] == 0:
        print("NOTE layer %s: lamina lazy reports fetched 0 of total 0 bytes (its chunk bitmap not written yet) "
              "although the reader has read %d bytes of files from that layer" % (i, chosen))
if way != "full" and names is not None:
    listed = sorted(index.get(d, "?") for d in (l["layer"] for l in lz))
    named = sorted(index.get(d, "?") for d in names)
    if listed != named:
        print("NOTE pull JSON 'lazy' names layers %s, lamina lazy lists %s" % (named, listed))
EOF
  read -r fetched ltotal nlz npull < "$OUTDIR/$tag.lazy-check.txt"
  while read -r kind msg; do
    case $kind in
      NOTE) note "$tag: $msg";;
      FAIL) failures+=("$tag: $msg");;
    esac
  done < <(tail -n +2 "$OUTDIR/$tag.lazy-check.txt")
  # teardown: rootfs, laminad, then whatever it left behind
  if mountpoint -q "$ROOTFS"; then umount "$ROOTFS" || { note "$tag: umount rootfs failed, umount -l"; umount -l "$ROOTFS"; }; fi
  stop_pid "$LAMINAD_PID"; LAMINAD_PID=
  kill_lazy_servers "$tag"
  umount_under "$FSMNT"
  if [ "$rc" != 0 ]; then
    [ "$rc" = reader ] && rc="reader: $(tail -c 400 "$OUTDIR/$tag.read.err" | tr '\n' ' ')"
    failures+=("$tag: $rc")
    log "WARNING: $tag failed: $rc (see $OUTDIR/$tag.*)"; return 0
  fi
  if [ "$way" != full ]; then
    [ "$npull" -gt 0 ] 2>/dev/null || failures+=("$tag: lamina pull --lazy mounted no layer lazily (pull JSON 'lazy': $npull)")
    [ "$nlz" -gt 0 ] || failures+=("$tag: lamina lazy lists no lazy layer")
  else
    [ "$npull" -le 0 ] 2>/dev/null || failures+=("$tag: lamina pull --no-lazy mounted $npull layers lazily")
  fi
  record "$way" "$run" "$(elapsed "$t0" "$t3")" "$(elapsed "$t0" "$t1")" "$(elapsed "$t1" "$t2")" "$(elapsed "$t2" "$t3")" \
    "$SEL_BYTES" "$fetched" "$ltotal" "$npull" "$c1" "$scpu"
}

run_ctd() {   # run_ctd RUN
  local run=$1 tag=ctd-r$1 rc=0 t0 t1 t2 t3 c1 key=lazy-bench-rootfs mcmd
  fs_fresh; sync
  load1=$(cut -d' ' -f1 /proc/loadavg)
  ctd_start "$FSMNT/ctd"
  mkdir -p "$ROOTFS"
  t0=$(now)
  ctr -a "$CTD_SOCK" -n "$NS" images pull --plain-http --snapshotter overlayfs "$REF" > "$OUTDIR/$tag.pull.out" 2>&1 || rc=$?
  t1=$(now)
  if [ "$rc" = 0 ]; then
    { ctr -a "$CTD_SOCK" -n "$NS" snapshots --snapshotter overlayfs prepare "$key" "$CHAIN" &&
      mcmd=$(ctr -a "$CTD_SOCK" -n "$NS" snapshots --snapshotter overlayfs mounts "$ROOTFS" "$key") &&
      echo "$mcmd" > "$OUTDIR/$tag.mount.sh" && sh -e "$OUTDIR/$tag.mount.sh"; } > "$OUTDIR/$tag.rootfs.out" 2>&1 || rc=$?
    t2=$(now)
    if [ "$rc" = 0 ]; then
      read_files "$tag" || rc=reader
      t3=$(now)
    else rc="prepare/mount $rc: $(tail -c 300 "$OUTDIR/$tag.rootfs.out" | tr '\n' ' ')"; fi
  else rc="ctr pull $rc: $(tail -c 300 "$OUTDIR/$tag.pull.out" | tr '\n' ' ')"; fi
  c1=$(cpu_of "$CTD_PID")
  if mountpoint -q "$ROOTFS"; then umount "$ROOTFS" || umount -l "$ROOTFS"; fi
  cp "$CTD_DIR/containerd.log" "$OUTDIR/$tag.containerd.log" 2>/dev/null || true
  ctd_stop
  umount_under "$FSMNT"
  if [ "$rc" != 0 ]; then
    [ "$rc" = reader ] && rc="reader: $(tail -c 400 "$OUTDIR/$tag.read.err" | tr '\n' ' ')"
    failures+=("$tag: $rc")
    log "WARNING: $tag failed: $rc (see $OUTDIR/$tag.*)"; return 0
  fi
  record ctd "$run" "$(elapsed "$t0" "$t3")" "$(elapsed "$t0" "$t1")" "$(elapsed "$t1" "$t2")" "$(elapsed "$t2" "$t3")" \
    "$SEL_BYTES" "" "" "" "$c1" ""
}

for run in $(seq 1 "$RUNS"); do
  for way in $LEGS; do
    case $way in
      ctd) run_ctd "$run";;
      *) run_lamina "$way" "$run";;
    esac
  done
done
WALL=$(elapsed "$T0" "$(now)")

# ---------------------------------------------------------------------------------------------
# Tables (medians over runs)
python3 - "$TSV" "$J" "$OUTDIR" "$WALL" "$BENCH_FS" "$RUNS" "$PCT" "$READERS" "$LEGS" "$(nproc)" "$IDX_BYTES" > "$OUTDIR/table.md" <<'EOF'
import csv, json, os, statistics, sys
tsv, stats, outdir, wall, fs, runs, pct, readers, legs, nproc, idx_bytes = sys.argv[1:12]
J = json.load(open(stats)); S = json.load(open(os.path.join(outdir, "files-summary.json")))
rows = list(csv.DictReader(open(tsv), delimiter="\t"))
NAN = float("nan")
def vals(way, key): return [float(r[key]) for r in rows if r["way"] == way and r[key] not in ("", None)]
def med(way, key):
    v = vals(way, key); return statistics.median(v) if v else NAN
def f(x, fmt="%.2f"): return "—" if x != x else fmt % x
def ratio(a, b): return a / b if a == a and b == b and b > 0 else NAN
names = {"lazy": "lazy (`pull --lazy`, default config)", "nofill": "lazy, background fill off",
         "prefetch": "lazy + prefetch list recorded by the lazy way (`--prefetch-file`)",
         "full": "full parallel pull (`pull --no-lazy`)", "ctd": "containerd 1.6 `ctr images pull` (overlayfs)"}
ways = [w for w in legs.split() if any(r["way"] == w for r in rows)]
print("### Time until a command has read %s %% of the %s image (%d layers, %.0f MB, %d entries)" % (
    pct, J["preset"] if isinstance(J.get("preset"), str) else "", len(J["layers"]), J["total"]["tar_bytes"] / 1e6, J["total"]["entries"]))
print()
print("The reader (python3, %s thread(s)) reads %d files, %.1f MB (%.2f %% of the file bytes; %d units: %d subtrees, %d single files, "
      "from %d layers; list in files.tsv) through the rootfs mount and checks each file's size and sha256. "
      "Medians of %s run(s) per way, interleaved; fresh journaled ext4 (BENCH_FS=%s) and fresh daemon per run; "
      "registry on loopback, its page cache warm. Wall time of the whole script %.0f s." % (
      readers, S["files"], S["bytes"] / 1e6, 100 * S["bytes"] / S["total_file_bytes"], S["units"], S["unit_kinds"]["subtrees"],
      S["unit_kinds"]["single_files"], len(S["per_layer_bytes"]), runs, fs, float(wall)))
print()
lazy_t = med("lazy", "total_s")
print("| way | pull s | rootfs s | read s | total s | lazy / this |")
print("|---|---:|---:|---:|---:|---:|")
for w in ways:
    t = med(w, "total_s")
    print("| %s | %s | %s | %s | **%s** | %s |" % (names[w], f(med(w, "pull_s")), f(med(w, "rootfs_s")), f(med(w, "read_s")),
          f(t), f(100 * ratio(lazy_t, t), "%.1f %%")))
print()
if "lazy" in ways and "full" in ways:
    r = ratio(lazy_t, med("full", "total_s"))
    print("- **lazy / full pull = %s** (goal <= 10 %%: %s)%s" % (f(100 * r, "%.1f %%"), "met" if r <= 0.10 else "**not met**",
          "; lazy / containerd = %s" % f(100 * ratio(lazy_t, med("ctd", "total_s")), "%.1f %%") if "ctd" in ways else ""))
    print()
lz = [w for w in ways if w in ("lazy", "nofill", "prefetch")]
if lz:
    print("Lazy ways in detail (medians): `lamina lazy -o json` right after the reader finished: fetched = bytes of the "
          "lazy layers' uncompressed streams in their chunk caches (on-demand reads + background fill), total = their "
          "uncompressed size (the image: %.0f MB uncompressed, %.0f MB gzip); CPU seconds of laminad (incl. waited-for "
          "children) and of the `lazy-serve` processes, sampled at the same time. The image's seekable indexes in the "
          "registry (what a lazy pull reads first): %.1f MB, %.1f %% of its compressed layers." % (
          J["total"]["tar_bytes"] / 1e6, J["total"]["compressed_bytes"] / 1e6, int(idx_bytes) / 1e6,
          100 * int(idx_bytes) / J["total"]["compressed_bytes"]))
    print()
    print("| way | lazy layers | fetched MB | of lazy layers' total MB | fetched / bytes read | laminad CPU s | lazy-serve CPU s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for w in lz:
        fe, tot = med(w, "fetched_bytes"), med(w, "lazy_total_bytes")
        print("| %s | %s | %s | %s | %s | %s | %s |" % (names[w], f(med(w, "lazy_layers"), "%d"), f(fe / 1e6, "%.1f"),
              f(tot / 1e6, "%.1f"), f(ratio(fe, S["bytes"]), "%.2f×"), f(med(w, "cpu_s")), f(med(w, "server_cpu_s"))))
    print()
    # per layer, from the last successful run of each lazy way
    by_digest = {l["digest"]: i for i, l in enumerate(J["layers"])}
    print("Per layer (last run of each lazy way; fetched / total as `lamina lazy` reports them):")
    print()
    print("| layer | compressed MB | chosen MB | " + " | ".join("%s fetched MB / total MB, state" % w for w in lz) + " |")
    print("|---:|---:|---:|" + "---|" * len(lz))
    per = {}
    for w in lz:
        runs_w = [r["run"] for r in rows if r["way"] == w]
        p = os.path.join(outdir, "%s-r%s.lazy.json" % (w, runs_w[-1])) if runs_w else None
        try:
            d = json.load(open(p))
            if isinstance(d, dict): d = next((v for v in d.values() if isinstance(v, list)), [])
        except Exception:
            d = []
        per[w] = {by_digest.get(l.get("layer", l.get("digest"))): l for l in d}
    for i, l in enumerate(J["layers"]):
        cells = []
        for w in lz:
            x = per[w].get(i)
            if x is None: cells.append("not lazy")
            else:
                fe = int(x.get("fetched_bytes", x.get("fetched", 0)) or 0); tot = int(x.get("total_bytes", x.get("total", 0)) or 0)
                cells.append("%.1f / %.1f, %s" % (fe / 1e6, tot / 1e6, x.get("state", "?")))
        print("| %d | %.1f | %.1f | %s |" % (i, l["compressed_bytes"] / 1e6, S["per_layer_bytes"].get(str(i), 0) / 1e6, " | ".join(cells)))
    print()
print("Per-file read time (open to close incl. sha256, from each way's last run; reads of one thread add up to the read s "
      "only with READERS=1):")
print()
print("| way | p50 ms | p90 ms | p99 ms | max ms | sum s | files > 10 ms (their s) | files of >= 1 MB: count, s |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for w in ways:
    runs_w = [r["run"] for r in rows if r["way"] == w]
    try:
        t = [(float(a), int(b)) for a, b, _, _ in (l.rstrip("\n").split("\t", 3) for l in open(os.path.join(outdir, "%s-r%s.read-times.tsv" % (w, runs_w[-1]))))]
    except Exception:
        continue
    x = sorted(v for v, _ in t)
    q = lambda p: x[min(len(x) - 1, int(p * len(x)))] * 1000
    slow = [v for v in x if v > 0.010]
    big = [v for v, sz in t if sz >= 1 << 20]
    print("| %s | %.2f | %.2f | %.1f | %.0f | %.2f | %d (%.2f) | %d, %.2f |" % (names[w], q(0.5), q(0.9), q(0.99), x[-1] * 1000, sum(x),
          len(slow), sum(slow), len(big), sum(big)))
print()
print("- pull s = `lamina pull` / `ctr images pull` until it returns; rootfs s = `lamina rootfs` / `ctr snapshots prepare` + "
      "`ctr snapshots mounts` + mount; read s = the reader; total = from the start of the pull to the reader's end.")
loads = [float(r["load1"]) for r in rows]
if loads:
    busy = max(loads) > 1.5 * int(nproc)
    print("- 1-minute load average at the start of the runs: %.1f–%.1f on %s cores (this script's own runs keep it near 2)%s" % (
          min(loads), max(loads), nproc, "; **the machine was busy with other jobs: the figures carry that noise**" if busy else "."))
print("- per-run totals, s (load average at the start of the run): " + "; ".join("%s %s" % (w, ", ".join(
      "%s (%s)" % (r["total_s"], r["load1"]) for r in rows if r["way"] == w)) for w in ways) + ".")
EOF
cat "$OUTDIR/table.md"
if [ -s "$OUTDIR/notes.txt" ]; then
  echo
  echo "Notes (anomalies seen on the way; per run in $OUTDIR/notes.txt):"
  sed -E 's/^(lazy|nofill|prefetch|full|ctd)-r[0-9]+: /\1: /' "$OUTDIR/notes.txt" | sort | uniq -c |
    awk '{n = $1; sub(/^ *[0-9]+ /, ""); print "- " $0 (n > 1 ? " (" n " runs)" : "")}'
fi | tee -a "$OUTDIR/table.md"
if [ ${#failures[@]} -gt 0 ]; then
  echo
  echo "**Errors** (see $OUTDIR):"
  for x in "${failures[@]}"; do echo "- $x"; done
fi | tee -a "$OUTDIR/table.md"
log "done in ${WALL}s; files.tsv, runs.tsv, logs and table.md in $OUTDIR"
[ ${#failures[@]} -eq 0 ] || exit 1
