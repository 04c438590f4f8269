#!/usr/bin/env bash
# Lamina's main job on its embedded defaults, from a fresh Debian machine (as root):
#   - installs the Debian packages it needs and builds Lamina (release);
#   - installs laminad and lamina into /usr/local/bin and starts laminad on its defaults
#     (root /var/lib/lamina, socket /run/lamina/lamina.sock), unless one is already serving;
#   - builds a small OCI image offline (scripts/mkimage_busybox.py): a busybox userland
#     layer, then a configuration layer that rewrites and deletes files of the first;
#   - imports it (its layers unpack side by side into committed snapshots), prepares a
#     writable rootfs on top, mounts it at /run/lamina/rootfs/demo, and runs a shell
#     command inside it with chroot.
# Re-running it replaces the demo rootfs and reuses the layers. Knobs: CARGO_TARGET_DIR.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/lamina-target}
SOCK=/run/lamina/lamina.sock
ROOTFS=/run/lamina/rootfs/demo
say() { printf '\n== %s\n' "$*"; }

[ "$(id -u)" = 0 ] || { echo "quickstart: run as root (laminad mounts filesystems)" >&2; exit 1; }
say "installing packages and building Lamina"
bash "$HERE/scripts/deps.sh"
(cd "$HERE" && cargo build --release --locked -p laminad -p lamina-cli)
install -m 0755 "$CARGO_TARGET_DIR/release/laminad" "$CARGO_TARGET_DIR/release/lamina" /usr/local/bin/

if lamina snapshot ls >/dev/null 2>&1; then
  say "laminad already serving on $SOCK"
else
  say "starting laminad (root /var/lib/lamina, socket $SOCK, log /var/log/laminad.log)"
  nohup laminad >>/var/log/laminad.log 2>&1 </dev/null &
  for _ in $(seq 100); do lamina snapshot ls >/dev/null 2>&1 && break; sleep 0.1; done
  lamina snapshot ls >/dev/null || { tail -20 /var/log/laminad.log; exit 1; }
fi

say "building the demo image offline (an OCI layout: busybox layer + configuration layer)"
IMAGE_DIR=/var/tmp/lamina-demo-image
rm -rf "$IMAGE_DIR"
IMAGE=$(python3 "$HERE/scripts/mkimage_busybox.py" "$IMAGE_DIR" "$(command -v busybox)")

say "importing it: layers unpack side by side into snapshots"
lamina import "$IMAGE_DIR"

say "mounting a writable rootfs of $IMAGE at $ROOTFS"
mountpoint -q "$ROOTFS" && umount "$ROOTFS"
lamina snapshot rm "rootfs:$ROOTFS" >/dev/null 2>&1 || true
lamina rootfs "$IMAGE" "$ROOTFS"

say "running a command in the rootfs"
chroot "$ROOTFS" /bin/sh -c '. /etc/os-release; echo "inside $PRETTY_NAME"; cat /etc/motd; test ! -e /etc/obsolete && echo "/etc/obsolete deleted by layer 2"; echo written > /root/hello; ls /'

say "images and snapshots"
lamina images
lamina snapshot tree
lamina snapshot usage
echo
echo "rootfs of $IMAGE mounted at $ROOTFS (writable; its changes live in snapshot rootfs:$ROOTFS)."
echo "containerd: add the output of 'laminad containerd-config' to /etc/containerd/config.toml"
