# common.sh: helpers shared by Lamina's benchmark scripts (sourced, not run).
# The caller sets BENCH_NAME (for log lines) before sourcing.

log() { echo "[${BENCH_NAME:-bench} $(date +%H:%M:%S)] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

umount_under() {   # unmount everything mounted below $1 (deepest first), not $1 itself
  { grep -F " $1/" /proc/self/mounts || true; } | awk '{print $2}' | sort -r |
    while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" || true; done
}

stop_pid() {   # stop_pid PID: SIGTERM, up to 30 s, then SIGKILL
  local pid=$1 i
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then log "pid $pid ignored SIGTERM for 30 s: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; fi
  wait "$pid" 2>/dev/null || true
}

install_pkgs() {   # install_pkgs PKG...: apt-get install what is missing (update only if needed)
  local need=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
  done
  [ ${#need[@]} -gt 0 ] || return 0
  log "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends "${need[@]}" >&2 ||
    { apt-get -o DPkg::Lock::Timeout=600 update >&2 &&
      apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends "${need[@]}" >&2; }
}

take_bench_lock() {   # one benchmark at a time per BENCH_STATE: they share the loop device and $FSMNT
  exec 9>"$BENCH_STATE/.snapshot_bench.lock"
  flock -n 9 || die "another benchmark holds $BENCH_STATE/.snapshot_bench.lock (snapshot_bench.sh or pull_bench.sh)"
}
