#!/usr/bin/env bash
# Lamina's main job on its embedded defaults, from a fresh Debian machine (as root):
#   - installs the Debian packages it needs and builds Lamina (release);
#   - installs laminad and lamina into /usr/local/bin and starts laminad on its defaults
#     (root /var/lib/lamina, socket /run/lamina/lamina.sock), unless one is already serving;
#   - builds a small image offline, as two committed layers: a busybox userland, then a
#     configuration layer that overwrites and deletes files of the first;
#   - prepares a writable rootfs on top and mounts it at /run/lamina/rootfs/demo, then runs
#     a shell command inside it with chroot.
# Re-running it replaces the demo rootfs and reuses the layers. Knobs: CARGO_TARGET_DIR.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/lamina-target}
SOCK=/run/lamina/lamina.sock
ROOTFS=/run/lamina/rootfs/demo
BUILD=/run/lamina/build
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

build_layer() { # build_layer NAME PARENT FUNCTION: fill a new layer through a real mount
  local name=$1 parent=$2 fill=$3
  if lamina snapshot info "$name" >/dev/null 2>&1; then echo "layer $name exists"; return; fi
  lamina snapshot rm "$name-build" >/dev/null 2>&1 || true
  mkdir -p "$BUILD"
  lamina snapshot prepare "$name-build" ${parent:+"$parent"} --target "$BUILD" >/dev/null
  "$fill" "$BUILD"
  lamina snapshot umount "$BUILD"
  lamina snapshot commit "$name" "$name-build" --label "lamina.demo=layer"
  echo "committed layer $name"
}
busybox_layer() {
  local d=$1 bb
  bb=$(command -v busybox)
  mkdir -p "$d"/{bin,sbin,etc,root,tmp,proc,dev,usr/bin,usr/sbin,var/log}
  chmod 1777 "$d/tmp"; chmod 0700 "$d/root"
  cp "$bb" "$d/bin/busybox"
  for applet in $("$bb" --list); do [ "$applet" = busybox ] || ln -sf busybox "$d/bin/$applet"; done
  printf 'root:x:0:0:root:/root:/bin/sh\n' >"$d/etc/passwd"
  printf 'root:x:0:\n' >"$d/etc/group"
  printf 'image layer 1: busybox\n' >"$d/etc/motd"
  printf 'to be deleted by layer 2\n' >"$d/etc/obsolete"
}
config_layer() {
  local d=$1
  printf 'image layer 2: configuration\n' >"$d/etc/motd"
  printf 'NAME=lamina-demo\nID=lamina-demo\nPRETTY_NAME="Lamina demo image"\n' >"$d/etc/os-release"
  rm -f "$d/etc/obsolete"
}

say "building the demo image offline (two layers)"
build_layer demo/busybox "" busybox_layer
build_layer demo/config demo/busybox config_layer

say "mounting a writable rootfs at $ROOTFS"
mountpoint -q "$ROOTFS" && umount "$ROOTFS"
lamina snapshot rm demo/rootfs >/dev/null 2>&1 || true
mkdir -p "$ROOTFS"
lamina snapshot prepare demo/rootfs demo/config --label lamina.demo=rootfs --target "$ROOTFS"

say "running a command in the rootfs"
chroot "$ROOTFS" /bin/sh -c '. /etc/os-release; echo "inside $PRETTY_NAME"; cat /etc/motd; test ! -e /etc/obsolete && echo "/etc/obsolete deleted by layer 2"; echo written > /root/hello; ls /'

say "snapshots"
lamina snapshot tree
lamina snapshot usage
echo
echo "rootfs mounted at $ROOTFS (writable; its changes live in snapshot demo/rootfs)."
echo "containerd: add the output of 'laminad containerd-config' to /etc/containerd/config.toml"
