# common.sh: what the shell test scripts share (sourced). Sets HERE (the repo) and SHARED
# (../shared), loads ../shared/bench/lib.sh (containerd, registry helpers) and counts
# results with ok/bad; `summary` prints the closing "N passed, M failed" line.
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SHARED=${SHARED:-$(cd "$HERE/../shared" && pwd)}
# shellcheck source=/dev/null
source "$SHARED/bench/lib.sh"
passed=0; failed=0
ok() { passed=$((passed+1)); echo "PASS: $*"; }
bad() { failed=$((failed+1)); echo "FAIL: $*"; }
summary() { echo "$passed passed, $failed failed"; [ "$failed" -eq 0 ]; }
