#!/usr/bin/env bash
# Installs the Debian packages Lamina's build, tests and demos need (idempotent; as root).
# Runs `apt-get update` only when something is missing.
set -euo pipefail
PKGS=(containerd runc golang-go golang-github-containerd-containerd-dev docker-registry
      umoci skopeo erofs-utils fuse3 busybox-static e2fsprogs util-linux jq zstd python3 curl
      apache2-utils openssl python3-jwt python3-cryptography)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null
  apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "deps: cargo not found: install a Rust toolchain (rustup)" >&2; exit 1; }
