#!/usr/bin/env bash
# fuzz.sh: every fuzz target of fuzz/ (cargo fuzz, libFuzzer), each for a bounded time:
# the parsers that take outside input (layers, lazy-layer indexes, snapshot filters,
# laminad's config, hosts.toml, registry challenges and JSON, image references).
#
# Each target starts from its checked-in seeds (fuzz/corpus/TARGET/seed-*) and grows a
# scratch corpus under WORK; a crash, hang (an input running over 10 s) or out-of-memory
# (over 2 GiB) fails the target, and its input is kept and its path printed, with the
# command that replays it. Found crashes belong in a regression test of the crate that
# owns the parser.
#
# Toolchain: the stable one is enough. cargo-fuzz passes nightly-only flags
# (-Zsanitizer=address and cargo -Z options); RUSTC_BOOTSTRAP=1 lets stable rustc and
# cargo take them. AddressSanitizer links and runs on stable this way (its runtime ships
# with the standard library), so the targets are built with it.
#
# Usage: fuzz.sh [TARGET...]   (default: every target in fuzz/Cargo.toml)
# Environment: FUZZ_SECONDS  seconds per target (default 20)
#              FUZZ_WORK     scratch corpora, artifacts and logs (default /var/tmp/lamina-fuzz)
#              FUZZ_TARGET_DIR  build cache (default /var/cache/lamina-fuzz-target)
# Last line: "N passed, M failed".
set -uo pipefail
HERE=$(cd "$(dirname "$0")/../.." && pwd)
SECONDS_EACH=${FUZZ_SECONDS:-20}
WORK=${FUZZ_WORK:-/var/tmp/lamina-fuzz}
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-/var/cache/lamina-fuzz-target}
export RUSTC_BOOTSTRAP=1
SANITIZER=address

passed=0; failed=0
ok() { passed=$((passed+1)); echo "PASS: $*"; }
bad() { failed=$((failed+1)); echo "FAIL: $*"; }
summary() { echo "$passed passed, $failed failed"; [ "$failed" -eq 0 ]; }
finish() { summary; exit; }

mkdir -p "$WORK"
case $SECONDS_EACH in ''|*[!0-9]*|0) bad "FUZZ_SECONDS must be a positive number of seconds, not '$SECONDS_EACH'"; finish;; esac
command -v cargo >/dev/null || { bad "cargo is missing (install Rust with rustup)"; finish; }
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz is missing: cargo install cargo-fuzz --locked"
  if ! cargo install cargo-fuzz --locked >"$WORK.install.log" 2>&1 && ! cargo fuzz --version >/dev/null 2>&1; then
    bad "cannot install cargo-fuzz (cargo install cargo-fuzz --locked): $(tail -5 "$WORK.install.log")"
    finish
  fi
fi
command -v c++ >/dev/null || { bad "no C++ compiler (c++) to build libFuzzer: apt-get install g++"; finish; }

if [ $# -gt 0 ]; then targets=("$@")
else mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' "$HERE/fuzz/Cargo.toml" | grep -v '^lamina-fuzz$'); fi
[ ${#targets[@]} -gt 0 ] || { bad "no fuzz targets found in $HERE/fuzz/Cargo.toml"; finish; }

cd "$HERE" || exit 1
echo "building the fuzz targets (sanitizer: $SANITIZER, cache $CARGO_TARGET_DIR)"
if ! cargo fuzz build --sanitizer "$SANITIZER" >"$WORK/build.log" 2>&1; then
  bad "cargo fuzz build: $(grep -m5 -E '^error' "$WORK/build.log"; tail -5 "$WORK/build.log")"
  finish
fi

for t in "${targets[@]}"; do
  corpus=$WORK/corpus/$t artifacts=$WORK/artifacts/$t/ log=$WORK/$t.log
  rm -rf "$corpus" "$artifacts"; mkdir -p "$corpus" "$artifacts"
  # Layers and layer+index inputs need room; the other inputs are short texts.
  case $t in layer_apply|lazy_index_read) max_len=131072;; lazy_index_decode) max_len=65536;; *) max_len=8192;; esac
  # New inputs go to the scratch corpus (first directory); the seeds are only read.
  cargo fuzz run --sanitizer "$SANITIZER" "$t" "$corpus" "$HERE/fuzz/corpus/$t" -- \
    -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -max_len="$max_len" \
    -artifact_prefix="$artifacts" -print_final_stats=1 >"$log" 2>&1
  rc=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1)
  found=$(find "$artifacts" -type f 2>/dev/null | head -1)
  if [ "$rc" -eq 0 ] && [ -z "$found" ]; then
    ok "$t: ${SECONDS_EACH}s, ${runs:-?} inputs, ${cov:-cov: ?}"
  elif [ -n "$found" ]; then
    kind=$(basename "$found"); kind=${kind%%-*}   # crash, timeout, oom, leak, slow-unit
    bad "$t: $kind — input kept at $found; replay: RUSTC_BOOTSTRAP=1 cargo fuzz run $t $found (log $log)"
    grep -m3 -A3 "panicked at" "$log" | head -12
  else
    bad "$t: cargo fuzz run exited $rc without a crash input (log $log): $(tail -3 "$log")"
  fi
done
finish
