#!/usr/bin/env bash
# merge_bench.sh: Lamina's merge of 10 layers x 10,000 small files vs `cp -al` and `cp -a`
# of the same trees (issue 4), in one run.
#
# WHAT: the example crates/lamina-core/examples/merge_bench.rs (its header says exactly what
#   is built and timed). In short: 10 inputs, each a two-layer chain (a base layer of 100 dirs
#   x 100 files of 1-8 KiB, plus a layer adding one 1 KiB file), are merged into one tree of
#   100,010 files by
#     - Lamina, hard links: merge(key, [("", top-i)...]): walks each chain's tree, links
#       every file (this is the one comparable with cp -al), then syncfs
#     - Lamina, stacked: merge(key, [("", base-i), (base-i, top-i)...]): every input is one
#       layer over its parent, so its 20 layer dirs are stacked, no file work; then syncfs
#     - cp -al TREE/. DEST/ of the 20 layer dirs in the same order, then sync -f DEST
#     - cp -a  TREE/. DEST/ of the same, then sync -f DEST
#   Warm page cache for all (each method once untimed first), methods interleaved per run
#   (order rotated), RUNS runs, medians. Every result's entry list is checked against
#   cp -al's.
#
# HOW: builds the example (cargo --release), copies it into $OUTDIR/bin, makes a fresh
#   journaled ext4 on its own loop device (../shared/bench/lib.sh, BENCH_FS=loop, state under
#   $BENCH_STATE, default /tmp/perf-merge, so /tmp/perf of the other benchmarks is left
#   alone; never /, see ../shared/bench/README.md "Benchmark filesystem"), runs the example
#   on it, prints its Markdown table, then unmounts and detaches the loop device.
#
# USAGE: bash bench/merge_bench.sh               (as root, from any cwd; ~3 min with RUNS=5)
#        RUNS=1 MERGE_BENCH_DIRS=10 bash bench/merge_bench.sh   (smoke test)
#
# KNOBS (environment):
#   RUNS [5]                 timed runs per method; medians reported
#   MERGE_BENCH_DIRS [100]   directories (of 100 files) per input layer
#   BENCH_STATE [/tmp/perf-merge]  state dir (fs.img, loop device, results/)
#   BENCH_FS [loop]          loop | tmpfs | host (see ../shared/bench/lib.sh)
#   BENCH_FS_SIZE [8G]       size of the sparse loop image
#   CARGO_TARGET_DIR [/var/cache/lamina-target]
#   BUILD [always]           always = cargo build first; never = use the existing binary
#   PERF [0]                 1 = run the example under `perf record` ($OUTDIR/perf.data)
#   PERF_ARGS [-g]           its options, e.g. "--call-graph dwarf,16384 -F 499" (Rust release
#                            builds have no frame pointers: -g shows kernel stacks only)
#   OUTDIR [$BENCH_STATE/results/lamina-merge-<date>]  table.md, runs.log, machine.txt
#   KEEP_FS [0]              1 = leave the benchmark filesystem mounted at $BENCH_STATE/fsmnt
# Output: the Markdown table on stdout (also $OUTDIR/table.md); progress on stderr.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
SHARED=${SHARED:-$(cd "$REPO/../shared" && pwd)}
SHARED_BENCH=${SHARED_BENCH:-$SHARED/bench}

export BENCH_STATE=${BENCH_STATE:-/tmp/perf-merge}
export BENCH_FS_SIZE=${BENCH_FS_SIZE:-8G}
# shellcheck source=/dev/null
source "$SHARED_BENCH/lib.sh"   # fs_setup / fs_fresh / fs_teardown, FSMNT, BENCH_FS
BENCH_NAME=merge_bench
# shellcheck source=bench/common.sh
source "$HERE/common.sh"        # log, die, umount_under, take_bench_lock

RUNS=${RUNS:-5}
BUILD=${BUILD:-always}
PERF=${PERF:-0}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/lamina-target}
OUTDIR=${OUTDIR:-$BENCH_STATE/results/lamina-merge-$(date +%Y%m%d-%H%M%S)}

[ "$(id -u)" = 0 ] || die "run as root (loop device, mounts, owners)"
for c in cp sync mkfs.ext4 losetup mount umount; do
  command -v "$c" > /dev/null || die "$c not found"
done
[ "$PERF" = 1 ] && { command -v perf > /dev/null || die "PERF=1 but perf is not installed"; }

mkdir -p "$BENCH_STATE" "$OUTDIR/bin"
take_bench_lock

if [ "$BUILD" = always ]; then
  [ -d "$HOME/.cargo/bin" ] && PATH=$HOME/.cargo/bin:$PATH
  log "building the example (cargo build --release -p lamina-core --example merge_bench)"
  (cd "$REPO" && cargo build --release -p lamina-core --example merge_bench) >&2
fi
SRC_BIN=$CARGO_TARGET_DIR/release/examples/merge_bench
[ -x "$SRC_BIN" ] || die "$SRC_BIN missing (BUILD=always builds it)"
cp "$SRC_BIN" "$OUTDIR/bin/merge_bench"   # a rebuild during the run changes nothing

cleanup() {
  umount_under "$FSMNT"
  if [ "${KEEP_FS:-0}" != 1 ]; then fs_teardown; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fs_setup
fs_fresh
sync

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "cpu: $(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  echo "mem: $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
  echo "kernel: $(uname -r)"
  echo "fs: BENCH_FS=$BENCH_FS ($(findmnt -no SOURCE,FSTYPE,OPTIONS "$FSMNT" || true))"
  echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
  dirty=$(git -C "$REPO" status --porcelain --untracked-files=no -- crates/lamina-core 2>/dev/null | head -1)
  echo "commit: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')${dirty:+ + uncommitted changes in crates/lamina-core}"
} > "$OUTDIR/machine.txt"
cat "$OUTDIR/machine.txt" >&2

log "running: merge_bench $FSMNT/work $RUNS (results in $OUTDIR)"
CMD=("$OUTDIR/bin/merge_bench" "$FSMNT/work" "$RUNS")
if [ "$PERF" = 1 ]; then
  read -r -a perf_args <<< "${PERF_ARGS:--g}"
  CMD=(perf record "${perf_args[@]}" -o "$OUTDIR/perf.data" -- "${CMD[@]}")
fi
"${CMD[@]}" > "$OUTDIR/table.md" 2> >(tee "$OUTDIR/runs.log" >&2)
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUTDIR/machine.txt" >&2
cat "$OUTDIR/table.md"
log "done: $OUTDIR"
