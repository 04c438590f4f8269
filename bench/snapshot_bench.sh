#!/usr/bin/env bash
# snapshot_bench.sh: Lamina (laminad) vs the reference snapshotter, through the snapshots gRPC API.
#
# WHAT: the snapshot operations a container runtime drives, measured on the unix socket of
#   - lamina : laminad --backend $BACKEND (this repo, release build)
#   - refsnap: containerd 1.6's own overlayfs snapshotter served standalone on a socket
#              (../shared/conformance/refsnap.sh -kind overlayfs)
#   ops: cycle = Prepare -> mount, write a 4 KiB file, umount -> Commit   (cycles/s)
#        stat  = Stat of each committed snapshot
#        walk  = Walk (List) of all snapshots: 2*N+1 of them (N commits + N views + base),
#                so the default N=5000 walks 10,001 snapshots
#        remove= Remove of every view, then every commit
#   (view, mounts, usage are measured on the way and reported below the goal rows.)
#
# HOW: the shared Go client ../shared/bench/snapshot_ops (built by ../shared/bench/build.sh
#   into $BENCH_STATE/bin) talks straight to each snapshotter's socket. Every run gets a freshly
#   formatted, loop-mounted, journaled ext4 (shared lib.sh, BENCH_FS=loop; never /, whose
#   no-journal ext4 slows file creation after deletes); the snapshotter root and the client's
#   mount dir both live on it, and the daemon is started fresh on it. Runs are interleaved
#   (lamina 1, refsnap 1, lamina 2, ...) and the table shows medians over runs.
#   Installs golang-go golang-github-containerd-containerd-dev (+ e2fsprogs etc.) if missing,
#   builds laminad (cargo --release, CARGO_TARGET_DIR) if the binary is missing.
#
# USAGE: bash bench/snapshot_bench.sh          (as root, from any cwd)
#
# KNOBS (environment):
#   RUNS [3]            runs per snapshotter, interleaved; medians reported
#   N [5000]            Prepare/Commit iterations per run (Walk covers 2*N+1 snapshots)
#   WALKS [5]           full Walks per run
#   BACKEND [overlayfs] laminad --backend
#   BENCH_STATE [/tmp/perf]  state dir (bin/, fs.img, results/); BENCH_FS [loop] (see lib.sh)
#   CARGO_TARGET_DIR [/var/cache/lamina-target]; LAMINAD [$CARGO_TARGET_DIR/release/laminad]
#   BUILD [auto]        auto = build laminad only if missing; always = cargo build first
#   OUTDIR [$BENCH_STATE/results/lamina-snapshot-<date>]  raw per-run JSON/text, logs, table.md
#   KEEP_FS [0]         1 = leave the last benchmark filesystem mounted at $BENCH_STATE/fsmnt
# Output: Markdown table on stdout (also $OUTDIR/table.md); progress on stderr.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
SHARED=${SHARED:-$(cd "$REPO/../shared" && pwd)}
SHARED_BENCH=${SHARED_BENCH:-$SHARED/bench}
REFSNAP_SH=${REFSNAP_SH:-$SHARED/conformance/refsnap.sh}

export BENCH_STATE=${BENCH_STATE:-/tmp/perf}
export BENCH_BIN=${BENCH_BIN:-$BENCH_STATE/bin}
# shellcheck source=/dev/null
source "$SHARED_BENCH/lib.sh"   # fs_setup / fs_fresh / fs_teardown, FSMNT, BENCH_FS

RUNS=${RUNS:-3}
N=${N:-5000}
WALKS=${WALKS:-5}
BACKEND=${BACKEND:-overlayfs}
BUILD=${BUILD:-auto}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/lamina-target}
LAMINAD=${LAMINAD:-$CARGO_TARGET_DIR/release/laminad}
OUTDIR=${OUTDIR:-$BENCH_STATE/results/lamina-snapshot-$(date +%Y%m%d-%H%M%S)}
SOCKDIR=$BENCH_STATE/sock
REFSNAP_STATE=${CONFORMANCE_STATE_DIR:-/var/tmp/snapshotter-conformance}

BENCH_NAME=snapshot_bench
# shellcheck source=common.sh
source "$HERE/common.sh"   # log, die, umount_under, stop_pid, install_pkgs, take_bench_lock

[ "$(id -u)" = 0 ] || die "must run as root (mounts, loop devices)"

# ---------------------------------------------------------------------------------------------
# Prerequisites (idempotent)
install_pkgs golang-go golang-github-containerd-containerd-dev e2fsprogs util-linux mount python3

mkdir -p "$BENCH_STATE" "$OUTDIR" "$SOCKDIR"
take_bench_lock

if [ ! -x "$BENCH_BIN/snapshot_ops" ]; then
  log "building the shared Go bench tools ($SHARED_BENCH/build.sh)"
  "$SHARED_BENCH/build.sh" >&2
fi
REFSNAP_BIN=$REFSNAP_STATE/bin/refsnap
if [ ! -x "$REFSNAP_BIN" ] || [ "$(dirname "$REFSNAP_SH")/refsnap/main.go" -nt "$REFSNAP_BIN" ]; then
  log "building refsnap (refsnap.sh with no args builds it, then prints its usage)"
  "$REFSNAP_SH" >/dev/null 2>&1 || true
  [ -x "$REFSNAP_BIN" ] || die "refsnap build failed: run $REFSNAP_SH by hand to see why"
fi
if [ "$BUILD" = always ] || [ ! -x "$LAMINAD" ]; then
  [ -d "$HOME/.cargo/bin" ] && PATH=$HOME/.cargo/bin:$PATH
  log "building laminad (cargo build --release -p laminad, CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
  (cd "$REPO" && cargo build --release -p laminad) >&2
fi
[ -x "$LAMINAD" ] || die "no laminad binary at $LAMINAD"
: > "$OUTDIR/laminad-empty.toml"   # hermetic: never pick up /etc/lamina/laminad.toml

# ---------------------------------------------------------------------------------------------
# Process / mount bookkeeping: everything started here is stopped by PID; trap cleans up.
SRV_PID=
OPS_PID=

cleanup() {
  local rc=$?
  set +e
  stop_pid "$OPS_PID"; OPS_PID=
  stop_pid "$SRV_PID"; SRV_PID=
  umount_under "$FSMNT"
  if [ "${KEEP_FS:-0}" != 1 ]; then fs_teardown; fi
  rm -f "$SOCKDIR"/*.sock
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start_server() {   # start_server lamina|refsnap LOGFILE -> SRV_PID, SOCK
  local sn=$1 logf=$2 i
  SOCK=$SOCKDIR/$sn.sock
  rm -f "$SOCK"
  case $sn in
    lamina)  "$LAMINAD" --config "$OUTDIR/laminad-empty.toml" --root "$FSMNT/lamina" \
               --socket "$SOCK" --backend "$BACKEND" --log-level warn > "$logf" 2>&1 & ;;
    refsnap) "$REFSNAP_SH" -root "$FSMNT/refsnap" -socket "$SOCK" -kind overlayfs > "$logf" 2>&1 & ;;
  esac
  SRV_PID=$!
  for i in $(seq 1 600); do
    [ -S "$SOCK" ] && return 0
    kill -0 "$SRV_PID" 2>/dev/null || { tail -20 "$logf" >&2; die "$sn exited before serving"; }
    sleep 0.1
  done
  die "$sn did not create $SOCK within 60 s"
}

# ---------------------------------------------------------------------------------------------
# Runs
T0=$(date +%s.%N)
fs_setup
failures=()
log "N=$N (walk over $((2 * N + 1)) snapshots), WALKS=$WALKS, RUNS=$RUNS, BENCH_FS=$BENCH_FS, laminad backend=$BACKEND"
log "laminad: $LAMINAD ($(stat -c %y "$LAMINAD" | cut -d. -f1)); output: $OUTDIR"
for run in $(seq 1 "$RUNS"); do
  for sn in lamina refsnap; do
    tag=$sn-r$run
    fs_fresh
    mkdir -p "$FSMNT/mnt"
    sync
    start_server "$sn" "$OUTDIR/$tag.server.log"
    log "run $run/$RUNS $sn (pid $SRV_PID) ..."
    "$BENCH_BIN/snapshot_ops" -address "$SOCK" -snapshotter "$sn" -n "$N" -walks "$WALKS" \
      -mount=true -mountdir "$FSMNT/mnt" -prefix "bench-$tag" -lease off \
      -label "fs=$BENCH_FS run=$run backend=${sn/lamina/lamina-$BACKEND}" \
      -json "$OUTDIR/$tag.json" > "$OUTDIR/$tag.txt" 2> "$OUTDIR/$tag.err" &
    OPS_PID=$!
    rc=0; wait "$OPS_PID" || rc=$?; OPS_PID=
    cat "$OUTDIR/$tag.txt" "$OUTDIR/$tag.err" >&2
    if [ "$rc" != 0 ]; then
      failures+=("$tag: snapshot_ops exit $rc: $(head -c 300 "$OUTDIR/$tag.err" | tr '\n' ' ')")
      log "WARNING: $tag: snapshot_ops exited $rc (see $OUTDIR/$tag.err, $tag.server.log)"
    fi
    stop_pid "$SRV_PID"; SRV_PID=
    [ ! -S "$SOCK" ] || log "note: $sn left its socket behind after SIGTERM"
    umount_under "$FSMNT"
  done
done
WALL=$(elapsed "$T0" "$(date +%s.%N)")

# ---------------------------------------------------------------------------------------------
# Table (medians over runs)
python3 - "$OUTDIR" "$N" "$WALKS" "$BACKEND" "$WALL" "$BENCH_FS" > "$OUTDIR/table.md" <<'EOF'
import glob, json, os, statistics, sys
outdir, n, walks, backend, wall, fs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], float(sys.argv[5]), sys.argv[6]
runs = {"lamina": [], "refsnap": []}
for f in sorted(glob.glob(os.path.join(outdir, "*-r*.json"))):
    j = json.load(open(f))
    runs[j["snapshotter"]].append(j)

def op(j, name):
    return next((o for o in j["ops"] if o["op"] == name), None)

def med(sn, name, key):
    v = [op(j, name)[key] for j in runs[sn] if op(j, name) and op(j, name)["count"]]
    return statistics.median(v) if v else float("nan")

def rate(sn, name, per_call):
    # phase rate (count / phase wall), or for a step inside the cycle: 1 / mean latency
    if per_call:
        m = med(sn, name, "mean_us")
        return 1e6 / m if m == m and m > 0 else float("nan")
    return med(sn, name, "ops_per_s")

def ms(us): return "—" if us != us else ("%.3f" % (us / 1e3) if us < 100e3 else "%.0f" % (us / 1e3))
def num(x): return "—" if x != x else ("%.0f" % x if x >= 100 else "%.2f" % x)

rows = [  # (label, op, per_call, show latency, goal row)
    ("**cycle** prepare→mount+write+umount→commit (cycles/s)", "prepare", False, False, True),
    ("  ↳ prepare (1/mean)", "prepare", True, True, False),
    ("  ↳ mount+write 4 KiB+umount, client side (1/mean)", "mountwr", True, True, False),
    ("  ↳ commit (1/mean)", "commit", True, True, False),
    ("**stat**", "stat", False, True, True),
    ("**walk** (List) of %d snapshots (walks/s)" % (2 * n + 1), "walk", False, True, True),
    ("**remove** (views, then commits)", "remove", False, True, True),
    ("view", "view", False, True, False),
    ("mounts", "mounts", False, True, False),
    ("usage", "usage", False, True, False),
]
nl, nr = len(runs["lamina"]), len(runs["refsnap"])
print("### Lamina (laminad --backend %s) vs refsnap (containerd 1.6 overlayfs), snapshots gRPC socket" % backend)
print()
print("snapshot_ops -n %d -walks %d -mount, 1 client, depth 1; fresh journaled ext4 (BENCH_FS=%s) per run; "
      "medians of %d lamina / %d refsnap runs, interleaved. Wall time %.0f s." % (n, walks, fs, nl, nr, wall))
print()
print("| op | Lamina ops/s | p50 ms | p99 ms | refsnap ops/s | p50 ms | p99 ms | Lamina/refsnap | ≥1.5× |")
print("|---|---:|---:|---:|---:|---:|---:|---:|:---:|")
for label, name, per_call, lat, goal in rows:
    a, b = rate("lamina", name, per_call), rate("refsnap", name, per_call)
    ratio = a / b if a == a and b == b and b > 0 else float("nan")
    cells = [label, num(a)]
    cells += [ms(med("lamina", name, "p50_us")), ms(med("lamina", name, "p99_us"))] if lat else ["—", "—"]
    cells += [num(b)]
    cells += [ms(med("refsnap", name, "p50_us")), ms(med("refsnap", name, "p99_us"))] if lat else ["—", "—"]
    cells += ["—" if ratio != ratio else "%.2f×" % ratio, ("yes" if ratio >= 1.5 else "**no**") if goal else ""]
    print("| " + " | ".join(cells) + " |")
print()
for sn in ("lamina", "refsnap"):
    errs = sum(o["errors"] for j in runs[sn] for o in j["ops"])
    seen = sorted({j["walk_seen"] for j in runs[sn]})
    per_run = ", ".join("%.0f" % op(j, "prepare")["ops_per_s"] for j in runs[sn])
    print("- %s: %d errors; walk saw %s of %d snapshots; cycles/s per run: %s" % (sn, errs, "/".join(map(str, seen)), 2 * n + 1, per_run))
print("- cycle rows: ops/s = cycles per second of the whole phase; its p50/p99 are per step (↳ rows, "
      "whose ops/s = 1/mean latency). walk ops/s = full walks per second; p99 of %d walks ≈ max." % walks)
EOF
cat "$OUTDIR/table.md"
if [ ${#failures[@]} -gt 0 ]; then
  echo
  echo "**Errors** (see $OUTDIR):"
  for f in "${failures[@]}"; do echo "- $f"; done
fi | tee -a "$OUTDIR/table.md"
log "done in ${WALL}s; raw JSON, client output, server logs and table.md in $OUTDIR"
