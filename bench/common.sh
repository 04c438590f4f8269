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
