#!/usr/bin/env bash
# crash.sh: laminad killed with SIGKILL at random points under a random mix of operations,
# every invariant checked after each restart (crates/lamina-crashtest).
#
# The busybox demo image is pushed to a docker-registry on 127.0.0.1 so that pulls and
# image removals are part of the mix. For each backend, lamina-crashtest runs 3 workers
# (prepare, view, write into mounted snapshots, commit, remove, label updates, merges,
# pulls, image removals, garbage collection and prune) and kills laminad CRASH_POINTS
# times; after each restart it checks that every acknowledged operation is there with the
# same tree, that every cut-off one happened wholly or not at all, that every snapshot
# mounts, that nothing is orphaned, and that after Cleanup the snapshot directories are
# exactly the records.
# Usage: crash.sh LAMINAD LAMINA_CRASHTEST WORKDIR   (as root; needs ../shared)
# Knobs: CRASH_POINTS per backend (default 40; the full run is 500),
#        CRASH_BACKENDS (default "overlayfs native block"), CRASH_SEED.
# Last line: "N passed, M failed".
set -uo pipefail
LAMINAD=$1 CRASHTEST=$2 WORK=$3
POINTS=${CRASH_POINTS:-40}
BACKENDS=${CRASH_BACKENDS:-overlayfs native block}
export BENCH_STATE=$WORK/bench BENCH_FS=host REGISTRY_ADDR=${REGISTRY_ADDR:-127.0.0.1:5091}
# shellcheck source=common.sh
source "$(dirname "$0")/common.sh"   # HERE, SHARED, lib.sh, ok, bad, summary
finish() { summary; exit; }
cleanup() {
  [ -n "${REG_PID:-}" ] && kill "$REG_PID" 2>/dev/null && wait "$REG_PID" 2>/dev/null
  grep -F " $WORK/" /proc/self/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null
}
trap cleanup EXIT
[ "$(id -u)" = 0 ] || { bad "crash.sh must run as root (it mounts snapshots)"; finish; }
for bin in "$LAMINAD" "$CRASHTEST"; do
  [ -x "$bin" ] || { bad "$bin is missing: build the workspace first"; finish; }
done
for tool in skopeo curl python3 busybox; do
  command -v "$tool" >/dev/null || { bad "$tool is missing (scripts/deps.sh installs it)"; finish; }
done
rm -rf "$WORK"; mkdir -p "$WORK"

IMAGE=$REGISTRY_ADDR/lamina/crash:1
push_demo_image "$WORK/image" "$IMAGE" || { bad "demo image pushed to $IMAGE"; finish; }

for backend in $BACKENDS; do
  seed=${CRASH_SEED:-$RANDOM$RANDOM}
  if "$CRASHTEST" --laminad "$LAMINAD" --work "$WORK/$backend" --backend "$backend" \
       --crash-points "$POINTS" --pull "$IMAGE" --seed "$seed" > "$WORK/$backend.out" 2>&1; then
    ok "$backend: $(tail -1 "$WORK/$backend.out")"
    sed -n '/cut off by a kill/,$p' "$WORK/$backend.out" | sed '$d' | sed 's/^/    /'
  else
    bad "$backend (seed $seed): $(grep -m5 -E 'VIOLATION|Error|error' "$WORK/$backend.out" | tr '\n' ';')"
    tail -30 "$WORK/$backend.out" | sed 's/^/    | /'
    echo "    | laminad log:"; tail -15 "$WORK/$backend/laminad.log" 2>/dev/null | sed 's/^/    | /'
  fi
done
finish
