#!/usr/bin/env bash
# pull_bench.sh: `lamina pull` vs containerd 1.6 `ctr images pull` (overlayfs), from a local registry.
#
# WHAT: wall time to pull the synthetic gzip images small / medium / large (../shared/bench/
#   mkimage.py: 23 MB / 428 MB / 1960 MB uncompressed) from a docker-registry on 127.0.0.1:
#   - containerd: ctr images pull --plain-http --snapshotter overlayfs ADDR/bench/SIZE:gzip
#                 (private containerd, CRI off; unpigz on PATH, as in the shared baseline)
#   - lamina    : lamina pull ADDR/bench/SIZE:gzip (laminad: all layers download at once into
#                 its content store, then all layers unpack side by side; syncfs before commit)
#   Each pull is followed by a timed `sync` (containerd never fsyncs unpacked files).
#   Against the machine's limit, measured once per script run:
#     limit = min(per-core gunzip rate x nproc, sequential write rate of the benchmark fs)
#     per-core gunzip rate = fastest of python zlib / gzip -dc / unpigz, pinned to one CPU,
#                            over the $LIMIT_IMAGE gzip layer blobs (page cache), MB/s of output
#     write rate           = dd $DD_MIB MiB of zeros, conv=fsync, onto a fresh loop ext4 (best of 2)
#   All MB are 10^6 bytes of *uncompressed* layer tar.
#   And against the work itself, each part timed alone: GNU tar -x of the image's uncompressed
#   layers (nproc at a time, fresh fs), gunzip at the limit's per-core rate, openssl sha256 of blobs
#   and tars (1 core); their sum spread over the cores is what a verified unpack cannot avoid.
#
# HOW: images are generated once (mkimage.py caches them) and pushed once (skopeo, blobs
#   byte-for-byte) to docker-registry on $REGISTRY_ADDR (shared lib.sh; its storage persists
#   under $BENCH_STATE/registry). Before the runs, the layer blobs of each size are fetched once
#   with curl, $DOWNLOADS at a time (warms the registry's page cache for both tools alike, and
#   gives the download-only time). Then, per run and size, interleaved:
#     (a) fresh fs + fresh containerd (root/state on it) -> time ctr pull, time sync
#     (b) fresh fs + fresh laminad (--root on it)         -> time lamina pull, time sync
#   "Fresh fs" = the shared lib.sh benchmark filesystem: a journaled ext4 on a loop device,
#   mkfs'd before every run (BENCH_FS=loop; never /, whose no-journal ext4 slows file creation
#   after deletions, see ../shared/bench/README.md). During (b) a poller notes when the last layer
#   blob has landed in laminad's content store: with download-then-unpack that splits Lamina's
#   time into download and unpack; with a streaming pull (unpack fed while downloading) it
#   marks the end of the streams, and what follows is the unpack tail + syncfs + commit.
#   After each pull (untimed) the regular files in the snapshots are counted and summed
#   so a short or wrong unpack shows up as a mismatch between the tools.
#   The laminad/lamina binaries are copied into $OUTDIR/bin first, so a rebuild during the run
#   does not change what is measured. Prerequisites are apt-installed if missing (containerd
#   runc docker-registry skopeo pigz curl e2fsprogs util-linux mount python3; no Go needed);
#   Lamina is built (cargo --release) if missing or too old to know `pull`.
#
# USAGE: bash bench/pull_bench.sh                 (as root, from any cwd)
#        SIZES=small RUNS=1 bash bench/pull_bench.sh   (smoke test, ~1 min)
#
# KNOBS (environment):
#   SIZES ["small medium large"]   RUNS [3] runs per tool and size; medians reported
#   LIMIT_IMAGE [medium]  image whose gzip blobs time the decompression limit
#   DD_MIB [2048]         MiB written by the disk-rate dd
#   DOWNLOADS [4]         concurrent curl downloads for the download-only time (laminad uses 4)
#   LAMINAD_LOG [info]    laminad --log-level (its log logs "pulled ... secs")
#   BENCH_STATE [/tmp/perf]  state dir (images/, registry/, fs.img, results/); BENCH_FS [loop]
#   REGISTRY_ADDR [127.0.0.1:5055]   (see ../shared/bench/lib.sh)
#   CARGO_TARGET_DIR [/var/cache/lamina-target]; LAMINAD, LAMINA [$CARGO_TARGET_DIR/release/...]
#   BUILD [auto]          auto = build only if missing or without `pull`; always = cargo build first
#   OUTDIR [$BENCH_STATE/results/lamina-pull-<date>]  runs.tsv, per-run logs, limits, table.md
#   KEEP_FS [0]           1 = leave the last benchmark filesystem mounted at $BENCH_STATE/fsmnt
# Output: Markdown tables on stdout (also $OUTDIR/table.md); progress on stderr.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
SHARED=${SHARED:-$(cd "$REPO/../shared" && pwd)}
SHARED_BENCH=${SHARED_BENCH:-$SHARED/bench}

export BENCH_STATE=${BENCH_STATE:-/tmp/perf}
export BENCH_IMAGES=${BENCH_IMAGES:-$BENCH_STATE/images}
# shellcheck source=/dev/null
source "$SHARED_BENCH/lib.sh"   # fs_*, ctd_start/ctd_stop, registry_*, now/elapsed, jget

SIZES=${SIZES:-small medium large}
RUNS=${RUNS:-3}
LIMIT_IMAGE=${LIMIT_IMAGE:-medium}
DD_MIB=${DD_MIB:-2048}
DOWNLOADS=${DOWNLOADS:-4}
LAMINAD_LOG=${LAMINAD_LOG:-info}
BUILD=${BUILD:-auto}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/lamina-target}
LAMINAD_SRC=${LAMINAD:-$CARGO_TARGET_DIR/release/laminad}
LAMINA_SRC=${LAMINA:-$CARGO_TARGET_DIR/release/lamina}
OUTDIR=${OUTDIR:-$BENCH_STATE/results/lamina-pull-$(date +%Y%m%d-%H%M%S)}
SOCKDIR=$BENCH_STATE/sock
SOCK=$SOCKDIR/lamina-pull.sock
NS=bench

BENCH_NAME=pull_bench
# shellcheck source=common.sh
source "$HERE/common.sh"   # log, die, umount_under, stop_pid, install_pkgs, take_bench_lock

[ "$(id -u)" = 0 ] || die "must run as root (mounts, loop devices)"

# ---------------------------------------------------------------------------------------------
# Prerequisites (idempotent)
install_pkgs containerd runc docker-registry skopeo pigz curl e2fsprogs util-linux mount python3 coreutils openssl

mkdir -p "$BENCH_STATE" "$OUTDIR/bin" "$SOCKDIR"
take_bench_lock

if [ "$BUILD" = always ] || [ ! -x "$LAMINAD_SRC" ] || [ ! -x "$LAMINA_SRC" ] ||
   ! "$LAMINA_SRC" pull --help > /dev/null 2>&1; then
  [ -d "$HOME/.cargo/bin" ] && PATH=$HOME/.cargo/bin:$PATH
  log "building laminad + lamina (cargo build --release, CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
  (cd "$REPO" && cargo build --release -p laminad -p lamina-cli) >&2
fi
"$LAMINA_SRC" pull --help > /dev/null 2>&1 || die "$LAMINA_SRC has no 'pull' subcommand"
cp "$LAMINAD_SRC" "$OUTDIR/bin/laminad"; cp "$LAMINA_SRC" "$OUTDIR/bin/lamina"
LAMINAD=$OUTDIR/bin/laminad
LAMINA=$OUTDIR/bin/lamina
: > "$OUTDIR/laminad-empty.toml"   # hermetic: never pick up /etc/lamina/laminad.toml
{
  echo "repo HEAD $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')" \
       "($(git -C "$REPO" status --porcelain 2>/dev/null | grep -c . || true) changed files in tree)"
  echo "laminad built $(stat -c %y "$LAMINAD_SRC" | cut -d. -f1); $(containerd --version)"
  echo "$(uname -r), nproc=$(nproc), $(unpigz --version 2>&1 | head -1)"
} > "$OUTDIR/versions.txt"

# ---------------------------------------------------------------------------------------------
# Process / mount bookkeeping: everything started here is stopped by PID; the trap cleans up.
LAMINAD_PID=
POLL_PID=

cleanup() {
  local rc=$?
  set +e
  stop_pid "$POLL_PID"; POLL_PID=
  stop_pid "$LAMINAD_PID"; LAMINAD_PID=
  ctd_stop
  registry_stop
  umount_under "$FSMNT"
  if [ "${KEEP_FS:-0}" != 1 ]; then fs_teardown; fi
  rm -f "$SOCK" "$FSMNT/limit-dd.tmp"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

cpu_of() {   # user+sys CPU seconds of a pid incl. waited-for children
  awk -v hz="$(getconf CLK_TCK)" '{print ($14+$15+$16+$17)/hz}' "/proc/$1/stat" 2>/dev/null || echo 0
}
files_bytes() {   # files_bytes DIR: "<regular files> <their bytes>" below DIR
  find "$1" -type f -printf '%s\n' 2>/dev/null | awk '{n++; b+=$1} END {printf "%d %d\n", n, b}'
}
py() { python3 -c "import sys; print($1)"; }

start_laminad() {   # start_laminad LOGFILE -> LAMINAD_PID
  local logf=$1 i
  rm -f "$SOCK"
  "$LAMINAD" --config "$OUTDIR/laminad-empty.toml" --root "$FSMNT/lamina" --socket "$SOCK" \
    --log-level "$LAMINAD_LOG" > "$logf" 2>&1 &
  LAMINAD_PID=$!
  for i in $(seq 1 600); do
    [ -S "$SOCK" ] && return 0
    kill -0 "$LAMINAD_PID" 2>/dev/null || { tail -20 "$logf" >&2; die "laminad exited before serving"; }
    sleep 0.1
  done
  die "laminad did not create $SOCK within 60 s"
}

# poll_blobs OUTFILE HEX...: writes the time ($EPOCHREALTIME) at which every blob exists in
# laminad's content store (renamed there after fsync), checking every 20 ms with builtins only
poll_blobs() {
  local out=$1 f; shift
  local dir=$FSMNT/lamina/content/blobs/sha256
  exec 8<> <(:)
  while :; do
    for f in "$@"; do [ -e "$dir/$f" ] || { read -rt 0.02 -u 8 || true; continue 2; }; done
    echo "$EPOCHREALTIME" > "$out"; return 0
  done
}

# ---------------------------------------------------------------------------------------------
# Images and registry
T0=$(now)
fs_setup
for s in $SIZES $LIMIT_IMAGE; do
  if [ ! -f "$BENCH_IMAGES/$s-gzip.json" ] || [ ! -d "$BENCH_IMAGES/$s-gzip" ]; then
    log "generating $s-gzip (mkimage.py, cached under $BENCH_IMAGES)"
    python3 "$SHARED_BENCH/mkimage.py" "$s" --comp gzip --out "$BENCH_IMAGES" >&2
  fi
done
registry_start
for s in $SIZES; do
  if ! curl -fsS -o /dev/null -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
      "http://$REGISTRY_ADDR/v2/bench/$s/manifests/gzip" 2>/dev/null; then
    log "pushing $s-gzip to $REGISTRY_ADDR/bench/$s:gzip"
    registry_push "$s-gzip"
  fi
done
log "BENCH_FS=$BENCH_FS SIZES='$SIZES' RUNS=$RUNS; $(head -1 "$OUTDIR/versions.txt"); output: $OUTDIR"

# ---------------------------------------------------------------------------------------------
# Machine limit (once)
LJ=$BENCH_IMAGES/$LIMIT_IMAGE-gzip.json
L_UB=$(jget "$LJ" "j['total']['tar_bytes']")
L_BLOBS=$(jget "$LJ" "' '.join('$BENCH_IMAGES/$LIMIT_IMAGE-gzip/blobs/sha256/'+l['digest'][7:] for l in j['layers'])")
# shellcheck disable=SC2086
cat $L_BLOBS > /dev/null   # page cache
timeit() { local t0 t1; t0=$(now); "$@" > /dev/null; t1=$(now); elapsed "$t0" "$t1"; }
# shellcheck disable=SC2086
t_zlib=$(timeit taskset -c 0 python3 -c "
import sys, zlib
for f in sys.argv[1:]:
    d = zlib.decompressobj(31)
    with open(f, 'rb') as fh:
        while True:
            b = fh.read(1 << 20)
            if not b: break
            d.decompress(b)
" $L_BLOBS)
t_gzip=$(timeit sh -c "taskset -c 0 gzip -dc $L_BLOBS")
t_unpigz=$(timeit sh -c "taskset -c 0 unpigz -dc $L_BLOBS")
# sha256 rate (1 core), for the reference below: an unpack must hash the blob and the tar
L_TARS=$(jget "$LJ" "' '.join(l['uncompressed_tar'] for l in j['layers'])")
# shellcheck disable=SC2086
cat $L_TARS > /dev/null
# shellcheck disable=SC2086
t_sha=$(timeit sh -c "taskset -c 0 openssl dgst -sha256 $L_TARS")
echo "sha256_core_mbps=$(py "'%.1f' % ($L_UB / 1e6 / $t_sha)")" >> "$OUTDIR/limits.raw"
t_dd=
for i in 1 2; do   # best of 2, each on a fresh fs
  fs_fresh; sync
  t=$(timeit dd if=/dev/zero of="$FSMNT/limit-dd.tmp" bs=1M count="$DD_MIB" conv=fsync status=none)
  rm -f "$FSMNT/limit-dd.tmp"
  echo "dd_pass$i=$t" >> "$OUTDIR/limits.raw"
  if [ -z "$t_dd" ] || [ "$(py "int($t < $t_dd)")" = 1 ]; then t_dd=$t; fi
done
NPROC=$(nproc)
python3 - "$L_UB" "$t_zlib" "$t_gzip" "$t_unpigz" "$t_dd" "$DD_MIB" "$NPROC" "$LIMIT_IMAGE" > "$OUTDIR/limits.txt" <<'EOF'
import sys
ub, tz, tg, tu, tdd, mib, nproc, img = float(sys.argv[1]), *map(float, sys.argv[2:6]), int(sys.argv[6]), int(sys.argv[7]), sys.argv[8]
rates = {"python zlib": ub / 1e6 / tz, "gzip -dc": ub / 1e6 / tg, "unpigz": ub / 1e6 / tu}
best = max(rates, key=rates.get)
disk = mib * 1048576 / 1e6 / tdd
decomp = rates[best] * nproc
limit = min(decomp, disk)
print("limit_mbps=%.1f" % limit)
print("decomp_core_mbps=%.1f" % rates[best])
print("disk_mbps=%.1f" % disk)
print("note=gunzip 1 core (%s, %s image): %s -> best %s %.0f MB/s x %d cores = %.0f MB/s; "
      "loop ext4 dd %d MiB conv=fsync (best of 2): %.0f MB/s; machine limit = %.0f MB/s (%s-bound)" % (
      img, "%.0f MB" % (ub / 1e6), ", ".join("%s %.0f" % kv for kv in rates.items()), best, rates[best],
      nproc, decomp, mib, disk, limit, "decompression" if decomp <= disk else "disk"))
EOF
LIMIT=$(sed -n 's/^limit_mbps=//p' "$OUTDIR/limits.txt")
log "$(sed -n 's/^note=//p' "$OUTDIR/limits.txt")"

# ---------------------------------------------------------------------------------------------
# Writing the files alone (once per size): the image's uncompressed layer tars (mkimage.py's
# cache, page-cached first) extracted by GNU tar, $NPROC layers at a time, each into its own
# directory of a fresh benchmark fs, no sync. That is the cost of creating the image's files on
# this machine with no decompression, no hashing and no content store; plus the limit's
# decompression time it gives a reference an unpack cannot beat by much.
for s in $SIZES; do
  tars=$(jget "$BENCH_IMAGES/$s-gzip.json" "' '.join(l['uncompressed_tar'] for l in j['layers'])")
  for t in $tars; do [ -f "$t" ] || die "uncompressed layer $t missing (mkimage.py cache): rm $BENCH_IMAGES/$s-gzip.json to regenerate"; done
  # shellcheck disable=SC2086
  cat $tars > /dev/null
  fs_fresh; sync
  mkdir -p "$FSMNT/tarx"
  t_tarx=$(timeit sh -c "printf '%s\n' $tars | xargs -P $NPROC -I{} sh -c 'd=$FSMNT/tarx/\$(basename {} .tar); mkdir -p \$d && tar -xf {} -C \$d'")
  echo "$s $t_tarx" >> "$OUTDIR/tarx.txt"
  log "tar -x of the $s uncompressed layers ($NPROC at a time, fresh fs, no sync): ${t_tarx}s"
done

# ---------------------------------------------------------------------------------------------
# Download alone (curl, once per size; also warms the registry's page cache for both tools)
for s in $SIZES; do
  digests=$(jget "$BENCH_IMAGES/$s-gzip.json" "' '.join(l['digest'] for l in j['layers'])")
  t_curl=$(timeit sh -c "printf '%s\n' $digests | xargs -P $DOWNLOADS -I{} curl -fsS -o /dev/null http://$REGISTRY_ADDR/v2/bench/$s/blobs/{}")
  t_curl=$(timeit sh -c "printf '%s\n' $digests | xargs -P $DOWNLOADS -I{} curl -fsS -o /dev/null http://$REGISTRY_ADDR/v2/bench/$s/blobs/{}")
  echo "$s $t_curl" >> "$OUTDIR/curl.txt"
  log "curl of the $s layer blobs ($DOWNLOADS at a time, to /dev/null, 2nd pass): ${t_curl}s"
done

# ---------------------------------------------------------------------------------------------
# Runs
TSV=$OUTDIR/runs.tsv
printf "tool\tsize\trun\tseconds\tsync_s\tunpack_s\tdownload_s\tcpu_s\tfiles\tfile_bytes\tuncompressed_bytes\tcompressed_bytes\tlayers\tload1\n" > "$TSV"
failures=()

run_containerd() {   # run_containerd SIZE RUN
  local size=$1 run=$2 tag=ctd-$1-r$2 ref=$REGISTRY_ADDR/bench/$1:gzip o unpack_s c0 c1 t0 t1 s0 s1 rc=0
  fs_fresh; sync
  load1=$(cut -d' ' -f1 /proc/loadavg)
  ctd_start "$FSMNT/ctd"
  c0=$(cpu_of "$CTD_PID"); t0=$(now)
  ctr -a "$CTD_SOCK" -n "$NS" images pull --plain-http --snapshotter overlayfs "$ref" > "$OUTDIR/$tag.out" 2>&1 || rc=$?
  t1=$(now); c1=$(cpu_of "$CTD_PID")
  s0=$(now); sync; s1=$(now)
  cp "$CTD_DIR/containerd.log" "$OUTDIR/$tag.containerd.log" 2>/dev/null || true
  if [ "$rc" != 0 ]; then
    failures+=("$tag: ctr pull exit $rc: $(tail -c 300 "$OUTDIR/$tag.out" | tr '\n' ' ')")
    log "WARNING: $tag failed (exit $rc), see $OUTDIR/$tag.out"; ctd_stop; return 0
  fi
  o=$(grep '^done:' "$OUTDIR/$tag.out" | tail -1 || true)   # "done: 7.05s" / "done: 950ms" / "done: 1m2.5s"
  unpack_s=$(echo "$o" | python3 -c "
import re, sys
m = re.match(r'done:\s*(?:(\d+)m)?([\d.]+)(ms|s)?', sys.stdin.read().strip())
print('' if not m else '%.3f' % (int(m.group(1) or 0) * 60 + float(m.group(2)) / (1000 if m.group(3) == 'ms' else 1)))")
  nsnap=$(ctr -a "$CTD_SOCK" -n "$NS" snapshots --snapshotter overlayfs ls | tail -n +2 | wc -l)
  [ "$nsnap" -ge "$NL" ] || failures+=("$tag: only $nsnap snapshots for $NL layers")
  read -r nf fb < <(files_bytes "$CTD_DIR/root/io.containerd.snapshotter.v1.overlayfs/snapshots")
  ctd_stop
  umount_under "$FSMNT"
  record containerd "$size" "$run" "$(elapsed "$t0" "$t1")" "$(elapsed "$s0" "$s1")" "$unpack_s" "" \
    "$(py "'%.2f' % ($c1 - $c0)")" "$nf" "$fb"
}

run_lamina() {   # run_lamina SIZE RUN
  local size=$1 run=$2 tag=lamina-$1-r$2 ref=$REGISTRY_ADDR/bench/$1:gzip c0 c1 t0 t1 s0 s1 rc=0 tdl dl= up=
  fs_fresh; sync
  load1=$(cut -d' ' -f1 /proc/loadavg)
  start_laminad "$OUTDIR/$tag.laminad.log"
  rm -f "$OUTDIR/$tag.blobs-at"
  # shellcheck disable=SC2086
  poll_blobs "$OUTDIR/$tag.blobs-at" $HEXES &
  POLL_PID=$!
  c0=$(cpu_of "$LAMINAD_PID"); t0=$(now)
  "$LAMINA" --socket "$SOCK" -o json pull "$ref" > "$OUTDIR/$tag.json" 2> "$OUTDIR/$tag.err" || rc=$?
  t1=$(now); c1=$(cpu_of "$LAMINAD_PID")
  s0=$(now); sync; s1=$(now)
  stop_pid "$POLL_PID"; POLL_PID=
  if [ "$rc" != 0 ]; then
    failures+=("$tag: lamina pull exit $rc: $(head -c 300 "$OUTDIR/$tag.err" | tr '\n' ' ')")
    log "WARNING: $tag failed (exit $rc), see $OUTDIR/$tag.err and $tag.laminad.log"
    stop_pid "$LAMINAD_PID"; LAMINAD_PID=; return 0
  fi
  nlj=$(python3 -c "
import json, sys
j = json.load(open(sys.argv[1])); j = j[0] if isinstance(j, list) else j
print(len(j.get('layers', [])), len(j.get('chain_ids', j.get('chainIds', []))))" "$OUTDIR/$tag.json" 2>/dev/null || echo "? ?")
  case $nlj in "$NL "*) ;; *) failures+=("$tag: pull JSON has layers/chain ids '$nlj', image has $NL layers");; esac
  if [ -s "$OUTDIR/$tag.blobs-at" ]; then
    tdl=$(cat "$OUTDIR/$tag.blobs-at")
    dl=$(elapsed "$t0" "$tdl"); up=$(elapsed "$tdl" "$t1")
  fi
  read -r nf fb < <(files_bytes "$FSMNT/lamina/snapshots")
  stop_pid "$LAMINAD_PID"; LAMINAD_PID=
  [ ! -S "$SOCK" ] || log "note: laminad left its socket behind after SIGTERM"
  umount_under "$FSMNT"
  record lamina "$size" "$run" "$(elapsed "$t0" "$t1")" "$(elapsed "$s0" "$s1")" "$up" "$dl" \
    "$(py "'%.2f' % ($c1 - $c0)")" "$nf" "$fb"
}

record() {   # record TOOL SIZE RUN SECONDS SYNC UNPACK DOWNLOAD CPU FILES FILEBYTES
  printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n" "$@" "$UB" "$CB" "$NL" "$load1" >> "$TSV"
  log "$(printf "%-10s %-6s run%s  %7.2fs  +sync %5.2fs  unpack/after-blobs %6s  blobs-stored-at %6s  cpu %6ss  %7.1f MB/s  files %s  load %s" \
    "$1" "$2" "$3" "$4" "$5" "${6:--}" "${7:--}" "$8" "$(py "$UB / 1e6 / $4")" "$9" "$load1")"
}

for run in $(seq 1 "$RUNS"); do
  for size in $SIZES; do
    J=$BENCH_IMAGES/$size-gzip.json
    UB=$(jget "$J" "j['total']['tar_bytes']"); CB=$(jget "$J" "j['total']['compressed_bytes']")
    NL=$(jget "$J" "len(j['layers'])")
    HEXES=$(jget "$J" "' '.join(l['digest'][7:] for l in j['layers'])")
    run_containerd "$size" "$run"
    run_lamina "$size" "$run"
  done
done
WALL=$(elapsed "$T0" "$(now)")

# ---------------------------------------------------------------------------------------------
# Tables (medians over runs)
python3 - "$TSV" "$OUTDIR/curl.txt" "$LIMIT" "$WALL" "$BENCH_FS" "$RUNS" "$(sed -n 's/^note=//p' "$OUTDIR/limits.txt")" \
  "$OUTDIR/tarx.txt" "$(sed -n 's/^decomp_core_mbps=//p' "$OUTDIR/limits.txt")" "$NPROC" \
  "$(sed -n 's/^sha256_core_mbps=//p' "$OUTDIR/limits.raw")" > "$OUTDIR/table.md" <<'EOF'
import csv, statistics, sys
tsv, curlf, limit, wall, fs, runs, note = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), sys.argv[5], sys.argv[6], sys.argv[7]
tarx = dict(l.split() for l in open(sys.argv[8]))
core_mbps, nproc, sha_mbps = float(sys.argv[9]), int(sys.argv[10]), float(sys.argv[11])
rows = list(csv.DictReader(open(tsv), delimiter="\t"))
curl = dict(l.split() for l in open(curlf)) if curlf else {}
sizes = list(dict.fromkeys(r["size"] for r in rows))
def med(tool, size, key):
    v = [float(r[key]) for r in rows if r["tool"] == tool and r["size"] == size and r[key] not in ("", None)]
    return statistics.median(v) if v else float("nan")
def f(x, fmt="%.2f"): return "—" if x != x else fmt % x
def first(size, key):
    return next(float(r[key]) for r in rows if r["size"] == size)
print("### `lamina pull` vs `ctr images pull` (containerd 1.6, overlayfs), gzip images, local registry")
print()
print("Medians of %s run(s) per tool, interleaved; fresh journaled ext4 (BENCH_FS=%s) and fresh daemon per run. "
      "Wall time of the whole script %.0f s. Machine limit: %s." % (runs, fs, wall, note))
print()
print("| size | uncompressed MB | containerd s | lamina s | ratio (ctd/lamina) | lamina MB/s | %% of machine limit (%.0f MB/s) |" % limit)
print("|---|---:|---:|---:|---:|---:|---:|")
for s in sizes:
    ub = first(s, "uncompressed_bytes") / 1e6
    c, l = med("containerd", s, "seconds"), med("lamina", s, "seconds")
    mbps = ub / l if l == l and l > 0 else float("nan")
    print("| %s | %.1f | %s | %s | %s | %s | %s |" % (s, ub, f(c), f(l), f(c / l if l == l and l > 0 else float("nan"), "%.2f×"),
          f(mbps, "%.1f"), f(100 * mbps / limit, "%.0f %%")))
print()
print("Where the time goes (medians, s):")
print()
print("| size | compressed MB | curl download alone | ctd: unpack part (ctr `done:`) | ctd CPU | ctd +sync | "
      "lamina: last blob stored at | lamina: after last blob | lamina CPU | lamina +sync | ratio incl. sync | files ctd / lamina |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
for s in sizes:
    c, l = med("containerd", s, "seconds") + med("containerd", s, "sync_s"), med("lamina", s, "seconds") + med("lamina", s, "sync_s")
    fc = sorted({r["files"] + "/" + r["file_bytes"] for r in rows if r["tool"] == "containerd" and r["size"] == s})
    fl = sorted({r["files"] + "/" + r["file_bytes"] for r in rows if r["tool"] == "lamina" and r["size"] == s})
    same = "same" if fc == fl and len(fc) == 1 else "**differ**"
    nfc = ",".join(x.split("/")[0] for x in fc) or "—"
    nfl = ",".join(x.split("/")[0] for x in fl) or "—"
    print("| %s | %.1f | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s / %s (%s) |" % (
        s, first(s, "compressed_bytes") / 1e6, f(float(curl.get(s, "nan"))),
        f(med("containerd", s, "unpack_s")), f(med("containerd", s, "cpu_s")), f(med("containerd", s, "sync_s")),
        f(med("lamina", s, "download_s")), f(med("lamina", s, "unpack_s")), f(med("lamina", s, "cpu_s")),
        f(med("lamina", s, "sync_s")), f(c / l if l > 0 else float("nan"), "%.2f×"), nfc, nfl, same))
print()
print("The work any verified unpack must do, each part measured alone on this machine and spread over %d cores: "
      "write the files (tar -x of the uncompressed layers, %d at a time, fresh fs, no sync), gunzip them "
      "(%.0f MB/s per core, the limit's rate), sha256 the blobs and the tars (%.0f MB/s per core, `openssl dgst -sha256`):"
      % (nproc, nproc, core_mbps, sha_mbps))
print()
print("| size | tar -x s | gunzip s | sha256 s | sum s | lamina s | sum / lamina |")
print("|---|---:|---:|---:|---:|---:|---:|")
for s in sizes:
    ub, cb = first(s, "uncompressed_bytes") / 1e6, first(s, "compressed_bytes") / 1e6
    tx = float(tarx.get(s, "nan"))
    dec = ub / (core_mbps * nproc)
    sha = (ub + cb) / (sha_mbps * nproc)
    l = med("lamina", s, "seconds")
    print("| %s | %s | %s | %s | %s | %s | %s |" % (s, f(tx), f(dec), f(sha), f(tx + dec + sha), f(l),
          f(100 * (tx + dec + sha) / l if l == l and l > 0 else float("nan"), "%.0f %%")))
print()
print("- MB = 10^6 bytes of uncompressed layer tar; lamina MB/s = uncompressed MB / lamina s; machine limit = "
      "min(1-core gunzip rate × cores, loop-ext4 write rate).")
print("- lamina last blob stored at = from the start of `lamina pull` until every layer blob is in laminad's content store "
      "(polled every 20 ms): the download part if it downloads first, the end of the streams if it unpacks while downloading; "
      "after last blob = the rest (unpack still running + syncfs + commit). "
      "ctd CPU = containerd's CPU incl. unpigz; lamina CPU = laminad's.")
print("- per-run lamina s: " + "; ".join("%s %s" % (s, ", ".join(r["seconds"] for r in rows if r["tool"] == "lamina" and r["size"] == s)) for s in sizes)
      + ". containerd s: " + "; ".join("%s %s" % (s, ", ".join(r["seconds"] for r in rows if r["tool"] == "containerd" and r["size"] == s)) for s in sizes))
EOF
cat "$OUTDIR/table.md"
if [ ${#failures[@]} -gt 0 ]; then
  echo
  echo "**Errors** (see $OUTDIR):"
  for x in "${failures[@]}"; do echo "- $x"; done
fi | tee -a "$OUTDIR/table.md"
log "done in ${WALL}s; runs.tsv, logs, limits.txt and table.md in $OUTDIR"
