#!/usr/bin/env bash
# load_test.sh: laminad under load: 64 concurrent gRPC clients (lamina-loadtest) run a
# seeded mix of Prepare (with and without parents, with labels), View, Mounts, Stat,
# Update, Usage, List with filters, Commit, Remove, Cleanup, leases, merges, disk usage
# and prune over a key space they share, some of them mounting snapshots and writing
# files before committing, for a bounded time; for the overlayfs backend, then a shorter
# run for native. Per backend, on a fresh root:
#  1. snapshots kept through the run (a committed one and an active one on it, GC roots), made
#     with `lamina` before the load starts;
#  2. lamina-loadtest: zero errors other than the ones the races make correct
#     (AlreadyExists, NotFound, FailedPrecondition where due), laminad's peak VmRSS
#     within LOAD_MAX_RSS_MIB, its open fds back to where they started once the clients
#     are gone and the run removed what it made; p50/p99 per operation, calls/s and
#     memory are printed (latencies are reported, never judged);
#  3. laminad still runs and answers; after `lamina snapshot cleanup` every snapshot
#     directory under ROOT/snapshots has a record (only the kept two remain), and the
#     kept snapshots are intact;
#  4. laminad stops cleanly on SIGTERM (exit 0), starts again on the same root and still
#     has the kept snapshots; nothing is left mounted under the work dir.
# Usage: load_test.sh LAMINAD LAMINA LAMINA_LOADTEST WORKDIR   (as root)
# Knobs: LOAD_SECONDS (overlayfs run, default 30), LOAD_SECONDS_NATIVE (default 10; 0
# skips it), LOAD_CLIENTS (64), LOAD_SEED (1), LOAD_MAX_RSS_MIB (512).
# Last line: "N passed, M failed".
set -uo pipefail
LAMINAD=$1 LAMINA=$2 LOADTEST=$3 WORK=$4
LOAD_SECONDS=${LOAD_SECONDS:-30} LOAD_SECONDS_NATIVE=${LOAD_SECONDS_NATIVE:-10}
LOAD_CLIENTS=${LOAD_CLIENTS:-64} LOAD_SEED=${LOAD_SEED:-1} LOAD_MAX_RSS_MIB=${LOAD_MAX_RSS_MIB:-512}
passed=0; failed=0
ok() { passed=$((passed+1)); echo "PASS: $*"; }
bad() { failed=$((failed+1)); echo "FAIL: $*"; }
summary() { echo "$passed passed, $failed failed"; [ "$failed" -eq 0 ]; }
finish() { summary; exit; }
DPID=
cleanup() {
  [ -n "$DPID" ] && kill "$DPID" 2>/dev/null && wait "$DPID" 2>/dev/null
  for dir in $(grep -F " $WORK/" /proc/self/mounts | awk '{print $2}' | sort -r); do umount -l "$dir" 2>/dev/null; done
}
trap cleanup EXIT
[ "$(id -u)" = 0 ] || { bad "must run as root (the load mounts snapshots)"; finish; }
for f in "$LAMINAD" "$LAMINA" "$LOADTEST"; do
  [ -x "$f" ] || { bad "$f is not an executable (build the workspace first)"; finish; }
done
rm -rf "$WORK"; mkdir -p "$WORK"

start() { # start NAME BACKEND
  "$LAMINAD" --root "$WORK/$1/root" --socket "$WORK/$1/lamina.sock" --backend "$2" --log-level warn \
    >>"$WORK/$1/laminad.log" 2>&1 &
  DPID=$!
  for _ in $(seq 100); do [ -S "$WORK/$1/lamina.sock" ] && return 0; sleep 0.1; done
  tail -5 "$WORK/$1/laminad.log"; return 1
}
stop() { local rc=0; kill "$DPID" && wait "$DPID" || rc=$?; DPID=; return $rc; }

run_backend() { # run_backend BACKEND SECONDS
  local b=$1 secs=$2 n=$1
  local sock=$WORK/$n/lamina.sock
  L() { timeout 120 "$LAMINA" --socket "$sock" "$@"; }
  mkdir -p "$WORK/$n/mnt"
  start "$n" "$b" || { bad "$b: laminad did not start"; return; }
  # 1. snapshots that must outlive the load: not the load test's own, and GC roots (the
  #    load's prunes and collections remove everything nothing holds).
  local root=--label=containerd.io/gc.root=keep
  if ! { L snapshot prepare "$root" keep-active-base "" >/dev/null && L snapshot commit "$root" keep-base keep-active-base >/dev/null &&
         L snapshot prepare "$root" keep-active keep-base >/dev/null; } 2>"$WORK/$n/err"; then
    bad "$b: snapshots to keep: $(cat "$WORK/$n/err")"; stop; return
  fi
  # 2. the load.
  echo "--- $b: lamina-loadtest, $LOAD_CLIENTS clients, ${secs} s, seed $LOAD_SEED"
  timeout $((secs + 600)) "$LOADTEST" --socket "$sock" --clients "$LOAD_CLIENTS" --duration "$secs" \
    --seed "$LOAD_SEED" --max-rss-mib "$LOAD_MAX_RSS_MIB" --mount-dir "$WORK/$n/mnt" \
    --json "$WORK/$n/load.json" > "$WORK/$n/load.out" 2>&1
  local rc=$?
  cat "$WORK/$n/load.out"
  local figures
  figures=$(grep -E '^[0-9]+ calls in|^laminad (VmRSS|open fds)' "$WORK/$n/load.out" | paste -sd ';' -)
  if [ $rc -eq 0 ]; then ok "$b: $LOAD_CLIENTS clients, ${secs} s, no unexpected errors, memory and fds bounded ($figures)"
  else bad "$b: lamina-loadtest exited $rc ($(grep '^result:' "$WORK/$n/load.out"))"; fi
  # 3. alive, answering, and no directory without its record.
  if kill -0 "$DPID" 2>/dev/null && L snapshot ls >/dev/null 2>"$WORK/$n/err"; then
    ok "$b: laminad still runs and answers after the load"
  else bad "$b: laminad died or does not answer: $(cat "$WORK/$n/err"); log: $(tail -3 "$WORK/$n/laminad.log")"; fi
  L snapshot cleanup >/dev/null 2>"$WORK/$n/err" || bad "$b: lamina snapshot cleanup: $(cat "$WORK/$n/err")"
  local records dirs
  records=$(L snapshot ls 2>/dev/null | grep -c -E '^(keep|lt-)' || true)
  dirs=$(find "$WORK/$n/root/snapshots" -mindepth 1 -maxdepth 1 | wc -l)
  if [ "$records" -eq 2 ] && [ "$dirs" -eq 2 ]; then
    ok "$b: after Cleanup, $dirs snapshot directories for $records records (the kept two; the run removed its own)"
  else bad "$b: after Cleanup, $dirs snapshot directories, $records records (want 2 and 2): $(L snapshot ls 2>&1 | head -5)"; fi
  local info  # read whole first: grep -q under pipefail would fail on lamina's SIGPIPE
  info=$(L snapshot info keep-base 2>&1)
  if grep -q 'kind: *committed' <<<"$info" && L snapshot mounts keep-active >/dev/null 2>&1; then
    ok "$b: the snapshots made before the load are intact"
  else bad "$b: kept snapshots: $(head -3 <<<"$info")"; fi
  # 4. a clean stop, a restart on the same root, nothing left mounted.
  if stop; then ok "$b: laminad stopped cleanly on SIGTERM"; else bad "$b: laminad exited non-zero on SIGTERM"; fi
  if start "$n" "$b" && L snapshot info keep-base >/dev/null 2>&1 && L snapshot info keep-active >/dev/null 2>&1 && stop; then
    ok "$b: laminad restarts on the root and keeps its snapshots"
  else bad "$b: restart: $(tail -3 "$WORK/$n/laminad.log")"; [ -n "$DPID" ] && stop; fi
  if grep -qF " $WORK/$n/" /proc/self/mounts; then
    bad "$b: mounts left under $WORK/$n: $(grep -F " $WORK/$n/" /proc/self/mounts | awk '{print $2}' | head -3)"
  else ok "$b: nothing left mounted"; fi
}

run_backend overlayfs "$LOAD_SECONDS"
[ "$LOAD_SECONDS_NATIVE" -gt 0 ] && run_backend native "$LOAD_SECONDS_NATIVE"
finish
