#!/usr/bin/env python3
"""Writes an OCI image layout whose three layers, one gzip, one zstd, one plain tar,
exercise every entry type and attribute a layer can carry: regular files (setuid,
setgid, sticky, other owners, sub-second mtimes), directories, symlinks, hard links
within a layer, character and block devices, fifos,
PAX xattrs, long names (PAX and GNU), file and directory whiteouts, an opaque directory
(no hard link into a lower layer and no GNU sparse entry: containerd 1.6 cannot unpack
either; Lamina's own tests cover both).

Usage: mkimage_all_types.py OUT_DIR [REF_NAME]   (needs the zstd command)
Deterministic: the same bytes every run."""
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

MTIME = 1_650_000_000


def entry(tf, name, kind=tarfile.REGTYPE, data=b"", mode=0o644, uid=0, gid=0,
          link="", dev=(0, 0), pax=None, mtime=MTIME, fmt=None):
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = mode
    ti.uid, ti.gid = uid, gid
    ti.uname = ti.gname = ""
    ti.mtime = mtime
    ti.linkname = link
    ti.devmajor, ti.devminor = dev
    if pax:
        ti.pax_headers = dict(pax)
    ti.size = len(data) if kind in (tarfile.REGTYPE,) else 0
    tf.addfile(ti, io.BytesIO(data) if ti.size else None)


def layer(build, fmt=tarfile.PAX_FORMAT):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        build(tf)
    return buf.getvalue()


def layer1(tf):
    entry(tf, "bin", tarfile.DIRTYPE, mode=0o755)
    entry(tf, "bin/su", data=b"#!/bin/sh\necho su\n", mode=0o4755)
    entry(tf, "bin/wall", data=b"wall", mode=0o2755, gid=5)
    entry(tf, "tmp", tarfile.DIRTYPE, mode=0o1777)
    entry(tf, "home", tarfile.DIRTYPE, mode=0o755)
    entry(tf, "home/user", tarfile.DIRTYPE, mode=0o750, uid=1000, gid=1000)
    entry(tf, "home/user/notes.txt", data=b"notes\n", mode=0o600, uid=1000, gid=1000,
          pax={"mtime": "1650000000.123456789"})
    entry(tf, "etc", tarfile.DIRTYPE, mode=0o755)
    entry(tf, "etc/hosts", data=b"127.0.0.1 localhost\n")
    entry(tf, "etc/precise", data=b"sub-second mtime\n", pax={"mtime": "1650000000.987654321"})
    entry(tf, "etc/shadow", data=b"root:*:1::::::\n", mode=0o640, gid=42)
    entry(tf, "etc/localtime", tarfile.SYMTYPE, link="/usr/share/zoneinfo/UTC", mode=0o777)
    entry(tf, "etc/hosts.link", tarfile.LNKTYPE, link="etc/hosts")
    entry(tf, "dev", tarfile.DIRTYPE, mode=0o755)
    entry(tf, "dev/null", tarfile.CHRTYPE, mode=0o666, dev=(1, 3))
    entry(tf, "dev/loop0", tarfile.BLKTYPE, mode=0o660, dev=(7, 0), gid=6)
    entry(tf, "run", tarfile.DIRTYPE, mode=0o755)
    entry(tf, "run/initctl", tarfile.FIFOTYPE, mode=0o600)
    entry(tf, "usr", tarfile.DIRTYPE, mode=0o755)
    entry(tf, "usr/bin", tarfile.DIRTYPE, mode=0o755)
    entry(tf, "usr/bin/python3.11", data=bytes(range(256)) * 64, mode=0o755)
    entry(tf, "usr/bin/ping", data=b"ping", mode=0o755,
          pax={"SCHILY.xattr.security.capability": "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"})
    entry(tf, "usr/share", tarfile.DIRTYPE, mode=0o755)
    entry(tf, "usr/share/doc", tarfile.DIRTYPE, mode=0o755, pax={"SCHILY.xattr.user.comment": "docs here"})
    long_dir = "usr/share/" + "d" * 120
    entry(tf, long_dir, tarfile.DIRTYPE, mode=0o755)
    entry(tf, long_dir + "/" + "f" * 150 + ".txt", data=b"long name (pax)\n")
    entry(tf, "var", tarfile.DIRTYPE, mode=0o755)
    entry(tf, "var/cache", tarfile.DIRTYPE, mode=0o755)
    entry(tf, "var/cache/old-1", data=b"old")
    entry(tf, "var/cache/old-2", data=b"old")
    entry(tf, "var/lib", tarfile.DIRTYPE, mode=0o755)
    entry(tf, "var/lib/gone", tarfile.DIRTYPE, mode=0o755)
    entry(tf, "var/lib/gone/file", data=b"x")
    entry(tf, "var/big.img", data=b"\0" * (1 << 20) + b"end")


def layer2(tf):
    # GNU format: long names through ././@LongLink.
    entry(tf, "usr", tarfile.DIRTYPE, mode=0o755)
    entry(tf, "usr/bin", tarfile.DIRTYPE, mode=0o755)
    # A hard link into a lower layer is left out: containerd 1.6 cannot unpack one onto
    # overlayfs ("link ...: no such file"), and this image is compared with its unpack.
    # Lamina's own tests cover that case (crates/lamina-core/tests/unpack.rs).
    entry(tf, "usr/bin/python3.12", data=b"python 3.12", mode=0o755)
    entry(tf, "usr/bin/python3", tarfile.LNKTYPE, link="usr/bin/python3.12")
    entry(tf, "opt", tarfile.DIRTYPE, mode=0o755)
    entry(tf, "opt/" + "g" * 130, tarfile.DIRTYPE, mode=0o755)
    entry(tf, "opt/" + "g" * 130 + "/gnu-long-name", data=b"gnu long name\n")
    entry(tf, "etc", tarfile.DIRTYPE, mode=0o755)
    entry(tf, "etc/.wh.shadow")
    entry(tf, "etc/hosts", data=b"::1 localhost\n")
    entry(tf, "var", tarfile.DIRTYPE, mode=0o755)
    entry(tf, "var/lib", tarfile.DIRTYPE, mode=0o755)
    entry(tf, "var/lib/.wh.gone")


def layer3(tf):
    entry(tf, "var", tarfile.DIRTYPE, mode=0o755)
    entry(tf, "var/cache", tarfile.DIRTYPE, mode=0o700)
    entry(tf, "var/cache/.wh..wh..opq")
    entry(tf, "var/cache/new", data=b"new\n")
    entry(tf, "home", tarfile.DIRTYPE, mode=0o755)
    entry(tf, "home/user", tarfile.DIRTYPE, mode=0o750, uid=1000, gid=1000)
    entry(tf, "home/user/notes.txt", data=b"edited\n", mode=0o644, uid=1000, gid=1000)
    entry(tf, "bin", tarfile.DIRTYPE, mode=0o755)
    entry(tf, "bin/tool", data=b"tool", mode=0o755)
    entry(tf, "bin/tool-link", tarfile.LNKTYPE, link="bin/tool")


def write_blob(out, data):
    d = hashlib.sha256(data).hexdigest()
    with open(os.path.join(out, "blobs", "sha256", d), "wb") as f:
        f.write(data)
    return "sha256:" + d


def main():
    out = sys.argv[1]
    ref = sys.argv[2] if len(sys.argv) > 2 else "all-types"
    os.makedirs(os.path.join(out, "blobs", "sha256"), exist_ok=True)
    tars = [layer(layer1), layer(layer2, tarfile.GNU_FORMAT), layer(layer3)]
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0) as g:
        g.write(tars[0])
    zst = subprocess.run(["zstd", "-q", "-3", "-c"], input=tars[1], stdout=subprocess.PIPE, check=True).stdout
    blobs = [(gz.getvalue(), "application/vnd.oci.image.layer.v1.tar+gzip"),
             (zst, "application/vnd.oci.image.layer.v1.tar+zstd"),
             (tars[2], "application/vnd.oci.image.layer.v1.tar")]
    layers = [{"mediaType": mt, "digest": write_blob(out, b), "size": len(b)} for b, mt in blobs]
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(t).hexdigest() for t in tars]},
    }, sort_keys=True).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": write_blob(out, config), "size": len(config)},
        "layers": layers,
    }, sort_keys=True).encode()
    md = write_blob(out, manifest)
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": len(manifest),
        "annotations": {"org.opencontainers.image.ref.name": ref, "io.containerd.image.name": "docker.io/lamina/" + ref + ":latest"},
    }]}
    with open(os.path.join(out, "index.json"), "w") as f:
        json.dump(index, f)
    with open(os.path.join(out, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    # An importable archive of the same layout.
    with tarfile.open(out.rstrip("/") + ".tar", "w", format=tarfile.PAX_FORMAT) as tf:
        for root, _, files in sorted(os.walk(out)):
            for name in sorted(files):
                p = os.path.join(root, name)
                tf.add(p, arcname=os.path.relpath(p, out))
    print(md)


if __name__ == "__main__":
    main()
