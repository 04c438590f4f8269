#!/usr/bin/env bash
# block_bench.sh: laminad's block backend (committed layers as EROFS image files) vs its overlayfs
# backend, same binary, same image, in one run (issue 6's acceptance).
#
# WHAT: for the synthetic gzip image $SIZE (default medium: ../shared/bench/mkimage.py, 8 layers,
#   428 MB uncompressed, 45k tar entries) in a docker-registry on 127.0.0.1, per backend
#   (`laminad --backend overlayfs` and `laminad --backend block`):
#   1. pull-to-ready: `lamina pull --no-lazy REF` + `lamina rootfs REF DIR` until the writable
#      rootfs is mounted on DIR (= pull s + rootfs s), then a timed `sync` (+sync s; Lamina
#      syncfs'es before it commits, so this is what is left dirty). laminad's CPU (user+sys,
#      incl. waited-for children, i.e. every mkfs.erofs) over pull + rootfs.
#      --no-lazy: the block backend has no lazy layers, and an index artifact left in the
#      registry by lazy_bench.sh must not turn the overlayfs pull lazy.
#      Block only, where its extra time goes, from the layer images' own timestamps (ext4 keeps
#      birth times; mkfs.erofs creates layer.erofs.new first thing, the rename into layer.erofs
#      sets its ctime): unpack = pull start -> first image created; seal = first image created ->
#      last image renamed (mkfs.erofs + fsync of each image, one after another, plus the deletion
#      of each unpacked tree and the image's mount in between); of which mkfs.erofs+fsync = sum
#      over layers of (ctime - birth time); after = last image renamed -> pull returned (syncfs +
#      metadata commit + reply).
#   2. files on disk, after pull + rootfs + sync (the rootfs adds its empty writable snapshot):
#      - inodes: `find ROOT -xdev | wc -l` (ROOT = laminad's --root: what Lamina's root holds on
#        the host ext4; -xdev: the EROFS mounts' contents are not host inodes, their mount-point
#        directories are counted) and the df -i delta of the loop fs (IUsed after - IUsed of the
#        fresh fs before laminad started; also counts the rootfs mount-point dir);
#      - bytes: `du -sx --block-size=1 ROOT` (allocated), split into ROOT/content (the blobs, the
#        same for both) and ROOT/snapshots, and the df used delta of the loop fs (includes the
#        journal-free metadata ext4 allocates for the new inodes and dirs);
#      - peak during the pull: df and df -i of the loop fs sampled every 0.1 s (the block backend
#        unpacks each layer as a tree first, so it briefly holds trees and images at once);
#      - bytes written to the loop device (its /sys/block/loopN/stat, BENCH_FS=loop only) from the
#        pull's start until after the `sync`: data, metadata and journal, trees and images.
#   3. cold reads of the whole rootfs through the mount (caches dropped before each:
#      `sync; echo 3 > /proc/sys/vm/drop_caches`, which also evicts the EROFS images' pages):
#      - cold `find DIR | wc -l` alone (entries; must be equal for both backends);
#      - cold `find DIR -xdev -type f -print0 | xargs -0 cat > /dev/null` (every regular file
#        read once; MB/s = file bytes / s).
#      Bytes read from the loop device during the two cold reads (sectors read, /sys/block).
#      Checks, untimed, afterwards (page cache warm): number and bytes of regular files
#      (find -printf %s), a sha256 over all file contents in sorted path order, and a listing of
#      every entry (type, mode, owner, size except for directories, mtime, path, link target) saved per run and
#      compared between backends and runs: any difference is reported under the table.
#   Reported: per backend medians over RUNS, ratio block/overlayfs; per-run values in runs.tsv.
#
# HOW: the image is generated once (mkimage.py caches it) and pushed once (skopeo, blobs
#   byte-for-byte) to docker-registry on $REGISTRY_ADDR (shared lib.sh; storage persists under
#   $BENCH_STATE/registry; one already answering there is used as is). Runs are interleaved
#   (run 1: overlayfs then block, run 2: block then overlayfs, ...). Each run: a freshly formatted,
#   loop-mounted, journaled ext4 (lib.sh, BENCH_FS=loop; never /, see ../shared/bench/README.md
#   "Benchmark filesystem") holding laminad's fresh --root and the rootfs mount point
#   ($BENCH_STATE/fsmnt/rootfs); every layer blob is fetched with curl ($DOWNLOADS at a time,
#   untimed) right before the pull, so the registry's page cache is warm for both backends alike
#   despite the drop_caches of the run before; fresh laminad (empty config file: hermetic).
#   Teardown of a run: unmount the rootfs, SIGTERM laminad, record what is still mounted under
#   the benchmark fs (the EROFS layer mounts live under ROOT/snapshots/*/fs; $OUTDIR/teardown.txt)
#   and whether any loop device is backed by a file on it, unmount all of it (umount, else
#   umount -l), then the next run's fs_fresh re-formats the fs.
#   The laminad/lamina binaries are built (`cargo build --release -p laminad -p lamina-cli`,
#   always, unless BUILD=never) and copied into $OUTDIR/bin first, so a rebuild during the run
#   does not change what is measured. Prerequisites are apt-installed if missing (docker-registry
#   skopeo curl e2fsprogs erofs-utils util-linux mount python3 coreutils findutils).
#
# USAGE: bash bench/block_bench.sh                 (as root, from any cwd; ~1.5 min)
#        RUNS=1 bash bench/block_bench.sh          (smoke test)
#
# KNOBS (environment):
#   RUNS [3]              runs per backend, interleaved; medians reported
#   SIZE [medium]         mkimage.py preset (gzip)
#   BACKENDS ["overlayfs block"]  laminad --backend values measured (ratios need both)
#   DOWNLOADS [4]         concurrent curl downloads warming the registry's page cache
#   LAMINAD_LOG [info]    laminad --log-level
#   BENCH_STATE [/tmp/perf]  state dir (images/, registry/, fs.img, results/); BENCH_FS [loop]
#   REGISTRY_ADDR [127.0.0.1:5055]   (see ../shared/bench/lib.sh)
#   CARGO_TARGET_DIR [/var/cache/lamina-target]; LAMINAD, LAMINA [$CARGO_TARGET_DIR/release/...]
#   BUILD [always]        always = cargo build first; never = use the binaries as they are
#   OUTDIR [$BENCH_STATE/results/lamina-block-<date>]  runs.tsv, layers.tsv, per-run logs and
#                         listings, notes.txt, teardown.txt, table.md
#   KEEP_FS [0]           1 = leave the last benchmark filesystem mounted at $BENCH_STATE/fsmnt
# Output: Markdown table on stdout (also $OUTDIR/table.md); progress on stderr. Exit 1 if any run
#   failed (pull, rootfs, read) or the backends' trees differ, after the table.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
SHARED=${SHARED:-$(cd "$REPO/../shared" && pwd)}
SHARED_BENCH=${SHARED_BENCH:-$SHARED/bench}

export BENCH_STATE=${BENCH_STATE:-/tmp/perf}
export BENCH_IMAGES=${BENCH_IMAGES:-$BENCH_STATE/images}
# shellcheck source=/dev/null
source "$SHARED_BENCH/lib.sh"   # fs_*, registry_*, now/elapsed, jget

RUNS=${RUNS:-3}
SIZE=${SIZE:-medium}
BACKENDS=${BACKENDS:-overlayfs block}
DOWNLOADS=${DOWNLOADS:-4}
LAMINAD_LOG=${LAMINAD_LOG:-info}
BUILD=${BUILD:-always}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/lamina-target}
LAMINAD_SRC=${LAMINAD:-$CARGO_TARGET_DIR/release/laminad}
LAMINA_SRC=${LAMINA:-$CARGO_TARGET_DIR/release/lamina}
OUTDIR=${OUTDIR:-$BENCH_STATE/results/lamina-block-$(date +%Y%m%d-%H%M%S)}
SOCKDIR=$BENCH_STATE/sock
SOCK=$SOCKDIR/lamina-block.sock
REF=$REGISTRY_ADDR/bench/$SIZE:gzip
J=$BENCH_IMAGES/$SIZE-gzip.json

# shellcheck disable=SC2034   # read by common.sh's log
BENCH_NAME=block_bench
# shellcheck source=common.sh
source "$HERE/common.sh"   # log, die, umount_under, stop_pid, install_pkgs, take_bench_lock

[ "$(id -u)" = 0 ] || die "must run as root (mounts, loop devices, drop_caches)"
for b in $BACKENDS; do case $b in overlayfs|block|native) ;; *) die "BACKENDS: unknown backend '$b'";; esac; done

# ---------------------------------------------------------------------------------------------
# Prerequisites (idempotent)
install_pkgs docker-registry skopeo curl e2fsprogs erofs-utils util-linux mount python3 coreutils findutils

mkdir -p "$BENCH_STATE" "$OUTDIR/bin" "$SOCKDIR"
take_bench_lock

if [ "$BUILD" != never ]; then
  [ -d "$HOME/.cargo/bin" ] && PATH=$HOME/.cargo/bin:$PATH
  log "building laminad + lamina (cargo build --release, CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
  (cd "$REPO" && cargo build --release -p laminad -p lamina-cli) >&2
fi
{ [ -x "$LAMINAD_SRC" ] && [ -x "$LAMINA_SRC" ]; } || die "no $LAMINAD_SRC / $LAMINA_SRC"
has_nolazy() { local h; h=$("$1" pull --help 2>/dev/null) && grep -q -- '--no-lazy' <<<"$h"; }   # (no pipe: SIGPIPE under pipefail)
has_nolazy "$LAMINA_SRC" || die "$LAMINA_SRC: 'lamina pull --help' shows no --no-lazy"
cp "$LAMINAD_SRC" "$OUTDIR/bin/laminad"; cp "$LAMINA_SRC" "$OUTDIR/bin/lamina"
LAMINAD=$OUTDIR/bin/laminad
LAMINA=$OUTDIR/bin/lamina
: > "$OUTDIR/laminad-empty.toml"   # hermetic: never pick up /etc/lamina/laminad.toml
{
  echo "repo HEAD $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')" \
       "($(git -C "$REPO" status --porcelain 2>/dev/null | grep -c . || true) changed files in tree)"
  echo "laminad built $(stat -c %y "$LAMINAD_SRC" | cut -d. -f1)"
  echo "$(uname -r), nproc=$(nproc), $(mkfs.erofs --help 2>&1 | head -1 || true)"
} > "$OUTDIR/versions.txt"
: > "$OUTDIR/notes.txt"
: > "$OUTDIR/teardown.txt"
note() { log "note: $*"; echo "$*" >> "$OUTDIR/notes.txt"; }   # anomalies: shown under the table
teardown() { log "$*"; echo "$*" >> "$OUTDIR/teardown.txt"; }  # what a run left behind, cleaned up

# ---------------------------------------------------------------------------------------------
# Process / mount bookkeeping: everything started here is stopped by PID; the trap cleans up.
LAMINAD_PID=
DF_PID=
ROOT=$FSMNT/lamina
ROOTFS=$FSMNT/rootfs

cleanup() {
  local rc=$?
  set +e
  stop_pid "$DF_PID"; DF_PID=
  mountpoint -q "$ROOTFS" 2>/dev/null && { umount "$ROOTFS" || umount -l "$ROOTFS"; }
  stop_pid "$LAMINAD_PID"; LAMINAD_PID=
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
py() { python3 -c "import sys; print($1)"; }
L() { "$LAMINA" --socket "$SOCK" "$@"; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
# dev_io FIELD: /sys/block/<loop>/stat field (3 = sectors read, 7 = sectors written) in bytes of
# the benchmark fs's loop device; empty unless BENCH_FS=loop
dev_io() {
  [ "$BENCH_FS" = loop ] || return 0
  awk -v f="$1" '{printf "%.0f\n", $f * 512}' "/sys/block/$(basename "$(cat "$BENCH_STATE/fs.loopdev")")/stat"
}
io_delta() { [ -n "$1" ] && [ -n "$2" ] && echo $(($2 - $1)); return 0; }
fs_used() {   # "<used bytes> <used inodes>" of the benchmark fs (statfs)
  stat -f -c '%b %f %S %c %d' "$FSMNT" | awk '{printf "%.0f %.0f\n", ($1 - $2) * $3, $4 - $5}'
}

# df_poll OUTFILE: "<epoch> <used bytes> <used inodes>" of the benchmark fs every 0.1 s
df_poll() {
  local out=$1
  exec 8<> <(:)
  while :; do
    echo "$EPOCHREALTIME $(fs_used)" >> "$out"
    read -rt 0.1 -u 8 || true
  done
}

start_laminad() {   # start_laminad BACKEND LOGFILE -> LAMINAD_PID
  local backend=$1 logf=$2
  rm -f "$SOCK"
  "$LAMINAD" --config "$OUTDIR/laminad-empty.toml" --root "$ROOT" --socket "$SOCK" \
    --backend "$backend" --log-level "$LAMINAD_LOG" > "$logf" 2>&1 &
  LAMINAD_PID=$!
  for _ in $(seq 1 600); do
    [ -S "$SOCK" ] && return 0
    kill -0 "$LAMINAD_PID" 2>/dev/null || { tail -20 "$logf" >&2; die "laminad --backend $backend exited before serving"; }
    sleep 0.1
  done
  die "laminad did not create $SOCK within 60 s"
}

warm_registry() {   # every layer blob once through the registry (its page cache), untimed
  # shellcheck disable=SC2086
  printf '%s\n' $DIGESTS | xargs -P "$DOWNLOADS" -I{} curl -fsS -o /dev/null "http://$REGISTRY_ADDR/v2/bench/$SIZE/blobs/{}"
}

# ---------------------------------------------------------------------------------------------
# Image and registry
T0=$(now)
fs_setup
if [ ! -f "$J" ] || [ ! -d "$BENCH_IMAGES/$SIZE-gzip" ]; then
  log "generating $SIZE-gzip (mkimage.py, cached under $BENCH_IMAGES)"
  python3 "$SHARED_BENCH/mkimage.py" "$SIZE" --comp gzip --out "$BENCH_IMAGES" >&2
fi
registry_start
[ -n "${REG_PID:-}" ] || note "a docker-registry not started by this script already answered on $REGISTRY_ADDR: used as is"
if ! curl -fsS -o /dev/null -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    "http://$REGISTRY_ADDR/v2/bench/$SIZE/manifests/gzip" 2>/dev/null; then
  log "pushing $SIZE-gzip to $REF"
  registry_push "$SIZE-gzip"
fi
UB=$(jget "$J" "j['total']['tar_bytes']"); CB=$(jget "$J" "j['total']['compressed_bytes']")
NL=$(jget "$J" "len(j['layers'])"); NE=$(jget "$J" "j['total']['entries']")
DIGESTS=$(jget "$J" "' '.join(l['digest'] for l in j['layers'])")
log "BENCH_FS=$BENCH_FS SIZE=$SIZE ($NL layers, $UB tar bytes, $NE entries) BACKENDS='$BACKENDS' RUNS=$RUNS; $(head -1 "$OUTDIR/versions.txt"); output: $OUTDIR"

# ---------------------------------------------------------------------------------------------
# Runs
TSV=$OUTDIR/runs.tsv
printf "backend\trun\tpull_s\trootfs_s\tready_s\tsync_s\tcpu_s\tunpack_s\tseal_s\tmkfs_s\tafter_s\thost_inodes\tdf_inodes\tdu_bytes\tcontent_bytes\tsnap_bytes\tdf_bytes\tpeak_df_bytes\tpeak_df_inodes\timage_bytes\terofs_mounts\tentries\tfind_s\tcat_s\tfiles\tfile_bytes\tcontent_sha\tlisting_sha\twritten_bytes\tread_bytes\tload1\n" > "$TSV"
LAYERS=$OUTDIR/layers.tsv
printf "backend\trun\tsnapshot\tbirth\tctime\tmkfs_s\tgap_before_s\tallocated_bytes\tsize_bytes\n" > "$LAYERS"
failures=()

run_one() {   # run_one BACKEND RUN
  local b=$1 run=$2 tag=$1-r$2 rc=0 t0 t1 t2 s0 s1 c0 c1 base_b base_i w0 w1
  local unpack_s='' seal_s='' mkfs_s='' after_s='' image_bytes='' nmnt peak_b peak_i
  fs_fresh
  if [ -n "$(find "$FSMNT" -mindepth 1 -maxdepth 1 ! -name lost+found)" ]; then
    failures+=("$tag: the fresh fs at $FSMNT is not empty: $(find "$FSMNT" -mindepth 1 -maxdepth 1 | tr '\n' ' ')"); return 0
  fi
  warm_registry
  sync
  read -r base_b base_i < <(fs_used)
  load1=$(cut -d' ' -f1 /proc/loadavg)
  start_laminad "$b" "$OUTDIR/$tag.laminad.log"
  rm -f "$OUTDIR/$tag.df.txt"
  df_poll "$OUTDIR/$tag.df.txt" &
  DF_PID=$!
  w0=$(dev_io 7); c0=$(cpu_of "$LAMINAD_PID"); t0=$(now)
  L -o json pull --no-lazy "$REF" > "$OUTDIR/$tag.pull.json" 2> "$OUTDIR/$tag.pull.err" || rc=$?
  t1=$(now)
  if [ "$rc" = 0 ]; then
    L rootfs "$REF" "$ROOTFS" > "$OUTDIR/$tag.rootfs.out" 2>&1 || rc=rootfs:$?
  else rc=pull:$rc; fi
  t2=$(now); c1=$(cpu_of "$LAMINAD_PID")
  s0=$(now); sync; s1=$(now); w1=$(dev_io 7)
  stop_pid "$DF_PID"; DF_PID=
  if [ "$rc" != 0 ]; then
    failures+=("$tag: $rc: $(cat "$OUTDIR/$tag.pull.err" "$OUTDIR/$tag.rootfs.out" 2>/dev/null | tail -c 300 | tr '\n' ' ')")
    log "WARNING: $tag failed ($rc), see $OUTDIR/$tag.* and $tag.laminad.log"
    teardown_run "$tag"; return 0
  fi
  mountpoint -q "$ROOTFS" || failures+=("$tag: lamina rootfs returned 0 but $ROOTFS is not a mount point")

  # --- files on disk (untimed)
  local host_inodes du_b content_b snap_b df_b df_i
  host_inodes=$(find "$ROOT" -xdev | wc -l)
  du_b=$(du -sx --block-size=1 "$ROOT" | cut -f1)
  content_b=$(du -sx --block-size=1 "$ROOT/content" | cut -f1)
  snap_b=$(du -sx --block-size=1 "$ROOT/snapshots" | cut -f1)
  read -r df_b df_i < <(fs_used)
  df_b=$((df_b - base_b)); df_i=$((df_i - base_i))
  read -r peak_b peak_i < <(awk -v b="$base_b" -v i="$base_i" \
    '$2 > mb {mb = $2} $3 > mi {mi = $3} END {printf "%.0f %.0f\n", mb - b, mi - i}' "$OUTDIR/$tag.df.txt")
  nmnt=$({ grep -F " $ROOT/snapshots/" /proc/self/mounts || true; } | awk '$3 == "erofs"' | wc -l)
  { grep -F " $FSMNT/" /proc/self/mounts || true; } > "$OUTDIR/$tag.mounts.txt"
  if [ "$b" = block ]; then
    [ "$nmnt" = "$NL" ] || note "$tag: $nmnt EROFS mounts under $ROOT/snapshots for $NL layers"
    # layer images: birth (mkfs.erofs created layer.erofs.new) and ctime (renamed into place)
    local imgs
    imgs=$(find "$ROOT/snapshots" -xdev -maxdepth 2 -name 'layer.erofs' 2>/dev/null | sort)
    [ "$(echo "$imgs" | grep -c . || true)" = "$NL" ] || note "$tag: $(echo "$imgs" | grep -c . || true) layer.erofs files for $NL layers"
    if [ -n "$imgs" ]; then
      # shellcheck disable=SC2086
      stat -c '%n %.9W %.9Z %b %B %s' $imgs | python3 -c "
import sys
t0, t1, b, run, out = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4], open(sys.argv[5], 'a')
rows = []
for l in sys.stdin:
    n, w, z, blk, bs, sz = l.split()
    rows.append((float(w), float(z), n.split('/')[-2], int(blk) * int(bs), int(sz)))
rows.sort()
prev = None
for w, z, sid, alloc, sz in rows:
    out.write('%s\t%s\t%s\t%.3f\t%.3f\t%.3f\t%s\t%d\t%d\n' % (b, run, sid, w - t0, z - t0, z - w,
              '' if prev is None else '%.3f' % (w - prev), alloc, sz))
    prev = z
if rows and rows[0][0] > 0:
    print('%.3f %.3f %.3f %.3f %d' % (rows[0][0] - t0, rows[-1][1] - rows[0][0], sum(z - w for w, z, *_ in rows),
          t1 - rows[-1][1], sum(r[3] for r in rows)))
" "$t0" "$t1" "$b" "$run" "$LAYERS" > "$OUTDIR/$tag.seal.txt"
      read -r unpack_s seal_s mkfs_s after_s image_bytes < "$OUTDIR/$tag.seal.txt" || true
      [ -n "$mkfs_s" ] || note "$tag: no birth times on the layer images (stat %W): no unpack/seal split"
    fi
  else
    [ "$nmnt" = 0 ] || note "$tag: $nmnt EROFS mounts under $ROOT/snapshots with --backend $b"
  fi

  # --- cold reads through the rootfs mount
  local entries find_s cat_s r0 r1 files fbytes csha lsha rd0 rd1
  drop_caches
  rd0=$(dev_io 3)
  r0=$(now); entries=$(find "$ROOTFS" | wc -l); r1=$(now)
  find_s=$(elapsed "$r0" "$r1")
  drop_caches
  r0=$(now)
  if ! find "$ROOTFS" -xdev -type f -print0 | xargs -0 cat > /dev/null 2> "$OUTDIR/$tag.cat.err"; then
    failures+=("$tag: find | xargs cat failed: $(head -c 300 "$OUTDIR/$tag.cat.err" | tr '\n' ' ')")
  fi
  r1=$(now); rd1=$(dev_io 3)
  cat_s=$(elapsed "$r0" "$r1")
  # --- checks (warm, untimed)
  read -r files fbytes < <(find "$ROOTFS" -xdev -type f -printf '%s\n' | awk '{n++; s+=$1} END {printf "%.0f %.0f\n", n, s}')
  csha=$(cd "$ROOTFS" && find . -xdev -type f -print0 | LC_ALL=C sort -z | xargs -0 cat | sha256sum | cut -c1-16)
  # (a directory's size is the file system's own business: ext4 4096, EROFS its dirents' bytes)
  (cd "$ROOTFS" && find . -xdev -mindepth 1 -printf '%y %#m %U:%G %s %T@ %P\t%l\n' |
    awk '$1 == "d" {$4 = "-"} {print}' | LC_ALL=C sort) > "$OUTDIR/$tag.listing"
  lsha=$(sha256sum < "$OUTDIR/$tag.listing" | cut -c1-16)

  teardown_run "$tag"
  record "$b" "$run" "$(elapsed "$t0" "$t1")" "$(elapsed "$t1" "$t2")" "$(elapsed "$t0" "$t2")" "$(elapsed "$s0" "$s1")" \
    "$(py "'%.2f' % ($c1 - $c0)")" "$unpack_s" "$seal_s" "$mkfs_s" "$after_s" \
    "$host_inodes" "$df_i" "$du_b" "$content_b" "$snap_b" "$df_b" "$peak_b" "$peak_i" "$image_bytes" "$nmnt" \
    "$entries" "$find_s" "$cat_s" "$files" "$fbytes" "$csha" "$lsha" \
    "$(io_delta "$w0" "$w1")" "$(io_delta "$rd0" "$rd1")"
}

teardown_run() {   # unmount the rootfs, stop laminad, unmount what it left under the fs
  local tag=$1 left loops
  if mountpoint -q "$ROOTFS"; then
    umount "$ROOTFS" || { note "$tag: umount $ROOTFS failed: umount -l"; umount -l "$ROOTFS"; }
  fi
  stop_pid "$LAMINAD_PID"; LAMINAD_PID=
  [ ! -S "$SOCK" ] || teardown "$tag: laminad left its socket behind after SIGTERM"
  left=$({ grep -F " $FSMNT/" /proc/self/mounts || true; } | awk '{print $3}' | sort | uniq -c | tr -s ' \n' ' ')
  [ -z "$left" ] || teardown "$tag: mounted under the fs after laminad stopped (count, type):$left"
  loops=$(losetup -a 2>/dev/null | grep -F "$FSMNT/" || true)
  [ -z "$loops" ] || note "$tag: loop devices backed by files on the benchmark fs after laminad stopped: $(echo "$loops" | tr '\n' ' ')"
  { grep -F " $FSMNT/" /proc/self/mounts || true; } | awk '{print $2}' | sort -r |
    while read -r m; do umount "$m" 2>/dev/null || { teardown "$tag: umount $m failed: umount -l"; umount -l "$m" || true; }; done
  left=$({ grep -F " $FSMNT/" /proc/self/mounts || true; } | wc -l)
  [ "$left" = 0 ] || note "$tag: $left mounts still under $FSMNT after unmounting"
}

record() {
  printf "%s\t" "$@" >> "$TSV"; printf "%s\n" "$load1" >> "$TSV"
  log "$(printf "%-9s run%s  ready %6.2fs (pull %6.2f + rootfs %5.2f)  +sync %5.2fs  cpu %6ss  seal %5ss  host inodes %6s  du %5d MB  cold find %5.2fs  cold cat %6.2fs  load %s" \
    "$1" "$2" "$5" "$3" "$4" "$6" "$7" "${9:--}" "${12}" "$(( ${14} / 1000000 ))" "${23}" "${24}" "$load1")"
}

read -ra order <<<"$BACKENDS"
for run in $(seq 1 "$RUNS"); do
  if [ $((run % 2)) = 1 ]; then seq_b=("${order[@]}"); else seq_b=(); for ((k = ${#order[@]} - 1; k >= 0; k--)); do seq_b+=("${order[k]}"); done; fi
  for b in "${seq_b[@]}"; do run_one "$b" "$run"; done
done
umount_under "$FSMNT"
WALL=$(elapsed "$T0" "$(now)")

# the backends' trees: listings compared line by line (first run of each backend vs the first run)
ref=
for f in "$OUTDIR"/*-r1.listing; do [ -e "$f" ] && { ref=$f; break; }; done
for f in "$OUTDIR"/*-r*.listing; do
  { [ -e "$f" ] && [ -n "$ref" ]; } || continue
  [ "$f" = "$ref" ] && continue
  if ! cmp -s "$ref" "$f"; then
    n=$(diff "$ref" "$f" | grep -c '^[<>]' || true)
    diff "$ref" "$f" | head -40 > "$f.diff" || true
    failures+=("tree of $(basename "$f" .listing) differs from $(basename "$ref" .listing): $n listing lines (type mode owner size-but-not-of-dirs mtime path target), first ones in $(basename "$f").diff")
  fi
done

# ---------------------------------------------------------------------------------------------
# Table (medians over runs)
python3 - "$TSV" "$LAYERS" "$WALL" "$BENCH_FS" "$RUNS" "$SIZE" "$UB" "$CB" "$NL" "$NE" "$BACKENDS" \
  "$(head -1 "$OUTDIR/versions.txt")" > "$OUTDIR/table.md" <<'EOF'
import csv, statistics, sys
tsv, layers, wall, fs, runs, size, ub, cb, nl, ne, backends, head = sys.argv[1:13]
ub, cb, nl, ne = int(ub), int(cb), int(nl), int(ne)
rows = list(csv.DictReader(open(tsv), delimiter="\t"))
bk = backends.split()
def vals(b, key):
    out = []
    for r in rows:
        if r["backend"] == b and r.get(key) not in ("", None):
            try: out.append(float(r[key]))
            except ValueError: pass
    return out
def med(b, key):
    v = vals(b, key)
    return statistics.median(v) if v else float("nan")
def f(x, fmt="%.2f"):
    return "—" if x != x else fmt % x
def ratio(a, b):
    return float("nan") if not (a == a and b == b) or a == 0 else b / a
def fr(r):
    return "—" if r != r else ("%.2f×" % r if r >= 0.1 else "%.4f×" % r)
ov = "overlayfs" if "overlayfs" in bk else bk[0]
others = [b for b in bk if b != ov]
loads = sorted({r["load1"] for r in rows})
print("### Block backend (EROFS layer images) vs overlayfs backend: `%s` image (gzip), local registry" % size)
print()
print("Same laminad binary (`--backend X`), %d layers, %.1f MB uncompressed (%.1f MB gzip), %d tar entries. "
      "Medians of %s run(s) per backend, interleaved; fresh loop ext4 (BENCH_FS=%s) and fresh laminad root per run; "
      "`lamina pull --no-lazy`. Wall time of the whole script %.0f s; load average at run starts %s–%s. %s."
      % (nl, ub / 1e6, cb / 1e6, ne, runs, fs, float(wall), loads[0] if loads else "?", loads[-1] if loads else "?", head))
print()
hdr = "| metric | " + " | ".join(bk) + " | " + " | ".join("%s / %s" % (o, ov) for o in others) + " |"
print(hdr)
print("|---|" + "---:|" * (len(bk) + len(others)))
MB = 1e6
def row(label, key, fmt="%.2f", scale=1.0, ratio_ok=True):
    m = {b: med(b, key) / scale for b in bk}
    cells = [f(m[b], fmt) for b in bk]
    rs = [fr(ratio(m[ov], m[o])) if ratio_ok else "" for o in others]
    print("| %s | %s | %s |" % (label, " | ".join(cells), " | ".join(rs)))
row("**pull-to-ready s** (`lamina pull` + `lamina rootfs`)", "ready_s")
row("↳ `lamina pull` s", "pull_s")
row("↳ `lamina rootfs` s (prepare + mount)", "rootfs_s", "%.3f")
row("`sync` after it, s", "sync_s")
row("laminad CPU s (pull + rootfs, incl. mkfs.erofs)", "cpu_s")
row("↳ block: unpack (pull start → first image created) s", "unpack_s", ratio_ok=False)
row("↳ block: seal (first image created → last renamed) s", "seal_s", ratio_ok=False)
row("&nbsp;&nbsp;↳ of which mkfs.erofs + fsync, summed over layers, s", "mkfs_s", ratio_ok=False)
row("↳ block: after the last image (syncfs, commit, reply) s", "after_s", "%.3f", ratio_ok=False)
row("**inodes on the host fs**: `find ROOT -xdev \\| wc -l`", "host_inodes", "%.0f")
row("inodes: df -i delta of the loop fs", "df_inodes", "%.0f")
row("**bytes on disk** MB: `du -sx ROOT`", "du_bytes", "%.1f", MB)
row("↳ ROOT/content (blobs) MB", "content_bytes", "%.1f", MB)
row("↳ ROOT/snapshots MB", "snap_bytes", "%.1f", MB)
row("↳ of which layer.erofs images (allocated) MB", "image_bytes", "%.1f", MB, ratio_ok=False)
row("bytes: df used delta of the loop fs MB", "df_bytes", "%.1f", MB)
row("written to the loop device during pull + rootfs + sync MB", "written_bytes", "%.1f", MB)
row("peak during pull: df used delta MB", "peak_df_bytes", "%.1f", MB)
row("peak during pull: df -i delta", "peak_df_inodes", "%.0f")
row("EROFS mounts under ROOT/snapshots", "erofs_mounts", "%.0f", ratio_ok=False)
row("rootfs entries (`find DIR \\| wc -l`)", "entries", "%.0f")
row("**cold `find DIR \\| wc -l`** s", "find_s", "%.3f")
row("**cold `find DIR -xdev -type f -print0 \\| xargs -0 cat`** s", "cat_s")
m = {b: (med(b, "file_bytes") / MB / med(b, "cat_s") if med(b, "cat_s") > 0 else float("nan")) for b in bk}
print("| ↳ read MB/s (file bytes / s) | %s | %s |" % (" | ".join(f(m[b], "%.0f") for b in bk),
      " | ".join(fr(ratio(m[ov], m[o])) for o in others)))
row("read from the loop device during cold find + cold cat MB", "read_bytes", "%.1f", MB)
row("regular files read", "files", "%.0f")
row("their bytes MB", "file_bytes", "%.1f", MB)
print()
sig = {b: sorted({(r["entries"], r["files"], r["file_bytes"], r["content_sha"], r["listing_sha"]) for r in rows if r["backend"] == b}) for b in bk}
allsig = sorted({s for b in bk for s in sig[b]})
if len(allsig) == 1:
    e, n, by, cs, ls = allsig[0]
    print("- Same tree through both backends in every run: %s entries, %s regular files, %s bytes, content sha256 %s…, "
          "listing (type, mode, owner, size but not of dirs, mtime, path, link target) sha256 %s…." % (e, n, by, cs, ls))
else:
    print("- **The rootfs differs between runs or backends** (entries, files, bytes, content sha, listing sha): "
          + "; ".join("%s: %s" % (b, sig[b]) for b in bk))
lr = list(csv.DictReader(open(layers), delimiter="\t"))
if lr:
    first_run = lr[0]["run"]
    one = [r for r in lr if r["run"] == first_run and r["backend"] == lr[0]["backend"]]
    print("- Block, run %s, layer images in the order they were made (s from the pull's start: created → renamed, "
          "mkfs.erofs + fsync, gap since the previous rename (tree deletion + mount), image MB): %s."
          % (first_run, "; ".join("#%s %s→%s (%s s, gap %s, %.1f MB)" % (r["snapshot"], r["birth"], r["ctime"], r["mkfs_s"],
             r["gap_before_s"] or "—", int(r["allocated_bytes"]) / MB) for r in one)))
print("- pull-to-ready = from the start of `lamina pull --no-lazy` until `lamina rootfs` returned with the rootfs mounted. "
      "laminad CPU = user+sys of laminad and its waited-for children (every mkfs.erofs). "
      "Files on disk are taken after pull, rootfs and `sync`; `find ROOT -xdev` counts what Lamina's root holds on the "
      "host ext4 (an EROFS mount point counts once, its contents not); the df deltas are against the fresh fs before laminad "
      "started. Cold = after `sync; echo 3 > /proc/sys/vm/drop_caches`; MB = 10^6 bytes.")
print("- per-run pull-to-ready s: " + "; ".join("%s %s" % (b, ", ".join(r["ready_s"] for r in rows if r["backend"] == b)) for b in bk)
      + ". cold cat s: " + "; ".join("%s %s" % (b, ", ".join(r["cat_s"] for r in rows if r["backend"] == b)) for b in bk) + ".")
EOF
{
  cat "$OUTDIR/table.md"
  if [ -s "$OUTDIR/notes.txt" ]; then echo; echo "Notes:"; sed 's/^/- /' "$OUTDIR/notes.txt"; fi
  if [ -s "$OUTDIR/teardown.txt" ]; then echo; echo "Teardown (what each run left behind; cleaned up):"; sed 's/^/- /' "$OUTDIR/teardown.txt" | sort | uniq; fi
  if [ ${#failures[@]} -gt 0 ]; then
    echo; echo "**Errors** (see $OUTDIR):"
    for x in "${failures[@]}"; do echo "- $x"; done
  fi
} > "$OUTDIR/table.md.new"
mv "$OUTDIR/table.md.new" "$OUTDIR/table.md"
cat "$OUTDIR/table.md"
log "done in ${WALL}s; runs.tsv, layers.tsv, logs, listings and table.md in $OUTDIR"
[ ${#failures[@]} = 0 ] || exit 1
