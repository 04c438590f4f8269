#!/usr/bin/env python3
"""Builds, offline, a small OCI image layout of a busybox userland for Lamina's demo:
layer 1 (gzip) = busybox and its applet links, /etc basics, /etc/obsolete; layer 2 (plain
tar) = a new /etc/motd and /etc/os-release and a whiteout of /etc/obsolete.

Usage: mkimage_busybox.py OUT_DIR [BUSYBOX_BINARY]   -> prints the image name"""
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

NAME = "docker.io/lamina/demo:latest"
MTIME = 1_700_000_000


def add(tf, name, kind=tarfile.REGTYPE, data=b"", mode=0o644, link=""):
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.mtime, ti.linkname = kind, mode, MTIME, link
    ti.size = len(data) if kind == tarfile.REGTYPE else 0
    tf.addfile(ti, io.BytesIO(data) if ti.size else None)


def tar_of(fill):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        fill(tf)
    return buf.getvalue()


def main():
    out = sys.argv[1]
    busybox = sys.argv[2] if len(sys.argv) > 2 else "/bin/busybox"
    with open(busybox, "rb") as f:
        bb = f.read()
    applets = subprocess.run([busybox, "--list"], stdout=subprocess.PIPE, check=True, text=True).stdout.split()

    def layer1(tf):
        for d, mode in [("bin", 0o755), ("sbin", 0o755), ("etc", 0o755), ("root", 0o700), ("tmp", 0o1777),
                        ("proc", 0o755), ("sys", 0o755), ("dev", 0o755), ("var", 0o755), ("var/log", 0o755)]:
            add(tf, d, tarfile.DIRTYPE, mode=mode)
        add(tf, "bin/busybox", data=bb, mode=0o755)
        for a in sorted(set(applets) - {"busybox"}):
            add(tf, "bin/" + a, tarfile.SYMTYPE, mode=0o777, link="busybox")
        add(tf, "etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n")
        add(tf, "etc/group", data=b"root:x:0:\n")
        add(tf, "etc/motd", data=b"image layer 1: busybox\n")
        add(tf, "etc/obsolete", data=b"deleted by layer 2\n")

    def layer2(tf):
        add(tf, "etc", tarfile.DIRTYPE, mode=0o755)
        add(tf, "etc/motd", data=b"image layer 2: configuration\n")
        add(tf, "etc/os-release", data=b'NAME=lamina-demo\nID=lamina-demo\nPRETTY_NAME="Lamina demo image"\n')
        add(tf, "etc/.wh.obsolete")

    os.makedirs(os.path.join(out, "blobs", "sha256"), exist_ok=True)

    def blob(data):
        d = hashlib.sha256(data).hexdigest()
        with open(os.path.join(out, "blobs", "sha256", d), "wb") as f:
            f.write(data)
        return "sha256:" + d

    tars = [tar_of(layer1), tar_of(layer2)]
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0) as g:
        g.write(tars[0])
    layers = [
        {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": blob(gz.getvalue()), "size": len(gz.getvalue())},
        {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": blob(tars[1]), "size": len(tars[1])},
    ]
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
                         "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(t).hexdigest() for t in tars]}},
                        sort_keys=True).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": blob(config), "size": len(config)},
                           "layers": layers}, sort_keys=True).encode()
    index = {"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                                 "digest": blob(manifest), "size": len(manifest),
                                                 "annotations": {"io.containerd.image.name": NAME, "org.opencontainers.image.ref.name": "latest"}}]}
    with open(os.path.join(out, "index.json"), "w") as f:
        json.dump(index, f)
    with open(os.path.join(out, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    print(NAME)


if __name__ == "__main__":
    main()
