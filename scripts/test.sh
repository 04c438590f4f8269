#!/usr/bin/env bash
# The whole test suite, as CI runs it (as root, on a fresh Debian machine):
#   1. installs what it needs (scripts/deps.sh);
#   2. cargo fmt --check, clippy -D warnings, cargo test (unit + integration tests that
#      start real laminad processes and mount filesystems);
#   3. containerd's snapshotter conformance suite against laminad: overlayfs backend,
#      native backend, and a fresh laminad per subtest (CONFORMANCE_EXEC), both backends;
#   4. e2e.sh: a real containerd with Lamina as its proxy plugin unpacks an image and runs
#      containers, for both backends;
#   5. scripts/tests/compare_unpack.sh: an image imported or pulled by Lamina and by
#      containerd 1.6 gives the same rootfs, entry by entry;
#   6. scripts/tests/cri_remote.sh: containerd's CRI pulls an image and Lamina, as its
#      remote snapshotter, fetches and unpacks the layers; `ctr run` works on it.
#   7. scripts/tests/registry_access.sh: `lamina pull` from docker-registry with basic
#      and bearer-token auth, through hosts.toml mirrors, and over TLS with a private CA
#      and client certificates.
#   8. scripts/tests/lazy_index.sh: `lamina index build|push` of a pulled image: every layer
#      indexed, the indexes pushed as an OCI artifact that refers to the image.
#   9. scripts/tests/lazy_pull.sh: `lamina pull --lazy`: layers mounted from the registry
#      on demand equal a full pull byte for byte, outlive a laminad kill -9 (adopted on
#      restart), give EIO in bounded time while the registry is down, and go away with
#      their snapshots.
#  10. scripts/tests/full_disk.sh: a disk-filling pull fails cleanly (ResourceExhausted
#      naming the layer), the store stays intact and consistent, space is freed.
#  11. scripts/tests/load_test.sh: 64 concurrent gRPC clients, mixed operations; no error
#      but the semantically correct ones, bounded memory, no fd leak.
#  12. scripts/tests/crash.sh: lamina-crashtest kills laminad at random points of a random
#      operation mix (CRASH_POINTS per backend, 40 here; the full run is 500) and checks
#      every invariant after each restart.
#  13. scripts/tests/fuzz.sh: every cargo-fuzz target of fuzz/ for FUZZ_SECONDS (20) each.
# Everything runs on a freshly formatted loop-mounted ext4 (never on /, whose journal-less
# ext4 slows down after deletes). Last line: "N passed, M failed" over the suites.
# Knobs: CARGO_TARGET_DIR (default /var/cache/lamina-target), SHARED (default ../shared).
set -uo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED:-$(cd "$HERE/../shared" 2>/dev/null && pwd)}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/lamina-target}
export CARGO_TERM_COLOR=never
STATE=${LAMINA_TEST_STATE:-/var/tmp/lamina-test}
passed=0; failed=0; failures=()
step() { echo; echo "=== $* ==="; }
record() { # record NAME EXIT_CODE
  if [ "$2" -eq 0 ]; then passed=$((passed+1)); echo "--- ok: $1"; else failed=$((failed+1)); failures+=("$1"); echo "--- FAILED: $1"; fi
}
die() { echo "test.sh: $*" >&2; echo "0 passed, 1 failed"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root: the tests mount filesystems and run containerd"
[ -n "$SHARED" ] && [ -d "$SHARED/conformance" ] || die "shared/ not found beside the clone (set SHARED=)"
bash "$HERE/scripts/deps.sh" || die "installing dependencies failed"
[ -e /dev/fuse ] || modprobe fuse 2>/dev/null || true
[ -e /dev/fuse ] || die "/dev/fuse is missing (no FUSE in this kernel?): the lazy-layer tests need it"

# --- a fresh ext4 for everything the tests write ----------------------------------
mkdir -p "$STATE"
MNT=$STATE/mnt
cleanup() {
  [ -n "${DPID:-}" ] && kill "$DPID" 2>/dev/null && wait "$DPID" 2>/dev/null
  if mountpoint -q "$MNT"; then
    # unmount anything a failed test left mounted below, deepest first
    grep " $MNT/" /proc/self/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null
    umount -l "$MNT"
  fi
  rm -f "$STATE/fs.img"
}
trap cleanup EXIT
mountpoint -q "$MNT" && umount -l "$MNT"
mkdir -p "$MNT"
rm -f "$STATE/fs.img"
truncate -s 8G "$STATE/fs.img"
mkfs.ext4 -q -F "$STATE/fs.img" || die "mkfs.ext4 failed"
mount -o loop "$STATE/fs.img" "$MNT" || die "loop mount failed"
export LAMINA_TEST_DIR=$MNT/tests TMPDIR=$MNT/tmp
mkdir -p "$LAMINA_TEST_DIR" "$TMPDIR"

cd "$HERE"
step "cargo fmt --check"; cargo fmt --all -- --check; record "rustfmt" $?
step "cargo clippy -D warnings"; cargo clippy --workspace --all-targets --locked -- -D warnings; record "clippy" $?
step "cargo build"; cargo build --workspace --locked; rc=$?; record "build" $rc
[ $rc -eq 0 ] || { echo "$passed passed, $failed failed"; exit 1; }
step "cargo test"; cargo test --workspace --locked 2>&1; record "cargo test" $?

step "fuzz: every parser of outside input, a bounded run per target (cargo fuzz, AddressSanitizer)"
FUZZ_WORK=$MNT/fuzz bash "$HERE/scripts/tests/fuzz.sh" 2>&1
record "fuzz" "${PIPESTATUS[0]}"

LAMINAD=$CARGO_TARGET_DIR/debug/laminad
start_laminad() { # start_laminad BACKEND NAME
  local root=$MNT/$2/root sock=$MNT/$2/lamina.sock
  mkdir -p "$MNT/$2"
  "$LAMINAD" --root "$root" --socket "$sock" --backend "$1" --log-level warn 2>"$MNT/$2/laminad.log" &
  DPID=$!
  for _ in $(seq 100); do [ -S "$sock" ] && return 0; sleep 0.1; done
  cat "$MNT/$2/laminad.log"; return 1
}
stop_laminad() { kill "$DPID" && wait "$DPID"; local rc=$?; DPID=; return $rc; }

step "unpack equals containerd's, entry by entry (gzip, zstd, uncompressed)"
bash "$HERE/scripts/tests/compare_unpack.sh" "$LAMINAD" "$CARGO_TARGET_DIR/debug/lamina" "$MNT/compare" 2>&1 | grep -v '^\[small\]'
record "compare unpack with containerd" "${PIPESTATUS[0]}"

step "remote-snapshotter protocol through containerd's CRI (PullImage, no layer blob in containerd, ctr run)"
bash "$HERE/scripts/tests/cri_remote.sh" "$LAMINAD" "$CARGO_TARGET_DIR/debug/lamina" "$MNT/cri" 2>&1
record "CRI pull through Lamina" "${PIPESTATUS[0]}"

step "registry access (basic and token auth, hosts.toml mirrors, private CA TLS, client certificates)"
bash "$HERE/scripts/tests/registry_access.sh" "$LAMINAD" "$CARGO_TARGET_DIR/debug/lamina" "$MNT/registry" 2>&1
record "registry access" "${PIPESTATUS[0]}"

step "seekable layer indexes: built from a pulled image, pushed beside it (OCI referrers fallback)"
bash "$HERE/scripts/tests/lazy_index.sh" "$LAMINAD" "$CARGO_TARGET_DIR/debug/lamina" "$MNT/lazy-index" 2>&1
record "layer indexes" "${PIPESTATUS[0]}"

step "lazy pull: layers mounted from the registry on demand (equal to a full pull, restart, registry outage, cleanup)"
bash "$HERE/scripts/tests/lazy_pull.sh" "$LAMINAD" "$CARGO_TARGET_DIR/debug/lamina" "$MNT/lazy-pull" 2>&1
record "lazy pull" "${PIPESTATUS[0]}"

step "block backend: same trees as overlayfs, EROFS layer images, writable-layer quota (ENOSPC), nothing left after removal"
bash "$HERE/scripts/tests/block_mode.sh" "$LAMINAD" "$CARGO_TARGET_DIR/debug/lamina" "$MNT/block-mode" 2>&1
record "block mode" "${PIPESTATUS[0]}"

step "full disk: a pull that fills a small loop-mounted root fails with ENOSPC naming the layer; earlier snapshots intact, nothing left, space freed, consistent after restart (overlayfs, block); layer limits through lamina pull"
bash "$HERE/scripts/tests/full_disk.sh" "$LAMINAD" "$CARGO_TARGET_DIR/debug/lamina" "$MNT/full-disk" 2>&1
record "full disk" "${PIPESTATUS[0]}"

step "load: 64 concurrent clients, mixed operations, overlayfs 30 s + native 10 s (no unexpected errors, bounded memory, no fd leak)"
bash "$HERE/scripts/tests/load_test.sh" "$LAMINAD" "$CARGO_TARGET_DIR/debug/lamina" "$CARGO_TARGET_DIR/debug/lamina-loadtest" "$MNT/load" 2>&1
record "load test" "${PIPESTATUS[0]}"

step "crash harness: laminad killed with SIGKILL at random points, every invariant checked after each restart (overlayfs, native, block)"
bash "$HERE/scripts/tests/crash.sh" "$LAMINAD" "$CARGO_TARGET_DIR/debug/lamina-crashtest" "$MNT/crash" 2>&1
record "crash harness" "${PIPESTATUS[0]}"

export CONFORMANCE_TMPDIR=$MNT/conformance
mkdir -p "$CONFORMANCE_TMPDIR"
for backend in overlayfs native block; do
  step "containerd conformance suite, $backend backend, one daemon"
  if start_laminad "$backend" "conf-$backend"; then
    bash "$SHARED/conformance/run.sh" "$MNT/conf-$backend/lamina.sock" lamina 2>&1 | tail -25
    rc=${PIPESTATUS[0]}
    stop_laminad || rc=1
  else rc=1; fi
  record "conformance $backend" $rc

  step "containerd conformance suite, $backend backend, fresh laminad per subtest"
  CONFORMANCE_EXEC="$LAMINAD --root {root} --socket {socket} --backend $backend --log-level warn" \
    bash "$SHARED/conformance/run.sh" - lamina 2>&1 | tail -25
  record "conformance $backend (exec)" "${PIPESTATUS[0]}"

  step "e2e: containerd 1.6 with Lamina ($backend) as proxy plugin"
  if start_laminad "$backend" "e2e-$backend"; then
    E2E_BASE=$MNT/e2e-$backend/ctd bash "$SHARED/conformance/e2e.sh" "$MNT/e2e-$backend/lamina.sock" lamina 2>&1 | tail -60
    rc=${PIPESTATUS[0]}
    stop_laminad || rc=1
  else rc=1; fi
  record "e2e $backend" $rc
done

echo
[ "$failed" -eq 0 ] || printf 'failed suites: %s\n' "${failures[*]}"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
