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
# push_demo_image DIR REF: builds the busybox demo image (2 layers) as an OCI layout in DIR,
# starts the private registry (lib.sh's registry_start, REGISTRY_ADDR) and pushes it as REF.
push_demo_image() {
  python3 "$HERE/scripts/mkimage_busybox.py" "$1" "$(command -v busybox)" >/dev/null || { echo "building the demo image failed" >&2; return 1; }
  registry_start || { echo "docker-registry did not start" >&2; return 1; }
  skopeo copy -q --dest-tls-verify=false "oci:$1:latest" "docker://$2" || { echo "skopeo push of $2 failed" >&2; return 1; }
}
