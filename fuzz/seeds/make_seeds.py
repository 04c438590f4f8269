#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets whose seeds are text or tar:
fuzz/corpus/<target>/seed-*. Small by design (a few valid and a few hostile samples per
target); libFuzzer grows its own corpus from them in a scratch directory.

The lazy index seeds are built by the project's own index builder:
`cargo run --example index_seeds` (fuzz/examples/index_seeds.rs).

Usage: python3 fuzz/seeds/make_seeds.py   (from anywhere; rewrites the seed files)
"""
import gzip
import io
import json
import os
import tarfile

FUZZ = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(FUZZ, "corpus")


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def tar(entries, fmt=tarfile.PAX_FORMAT):
    """entries: (name, type, extra) with type in file/dir/sym/hard/char/fifo."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for name, kind, extra in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1700000000
            info.mode = 0o644
            data = None
            if kind == "file":
                data = extra if isinstance(extra, bytes) else b""
                info.size = len(data)
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
            elif kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, extra
            elif kind == "hard":
                info.type, info.linkname = tarfile.LNKTYPE, extra
            elif kind == "char":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 0, 0
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            elif kind == "xattr":
                data = b"x"
                info.size = 1
                info.pax_headers = {"SCHILY.xattr.user.note": "hi",
                                    "SCHILY.xattr.trusted.overlay.opaque": "y"}
            t.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def layer_seeds():
    normal = tar([
        ("etc", "dir", None),
        ("etc/hostname", "file", b"lamina\n"),
        ("etc/link", "sym", "hostname"),
        ("etc/hard", "hard", "etc/hostname"),
        ("etc/.wh.gone", "file", b""),
        ("var", "dir", None),
        ("var/.wh..wh..opq", "file", b""),
        ("dev/null", "char", None),
        ("run/fifo", "fifo", None),
        ("a/" + "long" * 40 + "/name", "file", b"long name\n"),
        ("xattrs", "xattr", None),
    ])
    hostile = {
        "dotdot": [("../escape", "file", b"x"), ("a/../../escape2", "file", b"x")],
        "absolute": [("/escape", "file", b"x"), ("/etc/../../escape", "dir", None)],
        "symlink-up": [("up", "sym", ".."), ("up/escape", "file", b"x"),
                       ("up/up2", "sym", "../.."), ("up/up2/escape", "dir", None)],
        "symlink-root": [("root", "sym", "/"), ("root/escape", "file", b"x"),
                         ("etc", "sym", "/etc"), ("etc/passwd", "file", b"pwned\n")],
        "hardlink-out": [("h1", "hard", "../outside"), ("h2", "hard", "/etc/passwd"),
                         ("s", "sym", "/etc"), ("h3", "hard", "s/passwd"),
                         ("h4", "hard", "a"), ("h5", "hard", "etc/passwd")],
        "whiteout-up": [(".wh...", "file", b""), ("a/.wh...", "file", b""),
                        ("up", "sym", ".."), ("up/.wh.dest", "file", b"")],
    }
    write("layer_apply", "normal-tar", b"\x00" + normal)
    write("layer_apply", "normal-gzip", b"\x00" + gzip.compress(normal, mtime=0))
    write("layer_apply", "normal-as-zstd", b"\x03" + normal)
    write("layer_apply", "normal-native-lower", b"\x0c" + normal)
    for name, entries in hostile.items():
        write("layer_apply", name, b"\x00" + tar(entries))
    write("layer_apply", "gnu-longname", b"\x00" + tar(
        [("d/" + "x" * 200, "file", b"gnu"), ("d/" + "y" * 150, "sym", "../" * 60)],
        fmt=tarfile.GNU_FORMAT))
    write("layer_apply", "truncated", b"\x00" + normal[:700])


def text_seeds():
    for i, f in enumerate([
        "",
        "name==sha256:abc",
        'labels."containerd.io/gc.root"',
        "kind==committed,parent!=x",
        'labels.a~=/^b+$/\nname~=|[a-z]|',
        'labels."x"=="y\\"z",name~=k8s',
    ]):
        write("snapshot_filter", str(i), f)
    write("laminad_config", "full", """root = "/var/lib/lamina"
socket = "/run/lamina/lamina.sock"
socket_mode = "0660"
socket_group = 5
backend = "overlayfs"
log_level = "info"
max_layer_bytes = 68719476736
max_layer_entries = 10000000
max_concurrent_requests = 256
unpack_parallelism = 4
registry_config_path = "/etc/containerd/certs.d"
lazy_pull = true
lazy_min_layer_size = 1048576
lazy_chunk_size = 1048576
""")
    write("laminad_config", "block", 'backend = "block"\nwritable_quota = "1G"\n')
    write("laminad_config", "empty", "")
    write("hosts_toml", "mirrors", """server = "https://reg.example:5000"
capabilities = ["pull", "resolve", "push"]
ca = "ca.pem"

[host."https://mirror.example"]
capabilities = ["pull"]
skip_verify = true
override_path = true
client = [["client.pem", "client.key"], "combined.pem"]
[host."https://mirror.example".header]
X-Token = ["a", "b"]
""")
    write("hosts_toml", "plain", 'server = "http://127.0.0.1:5000"\n[host."http://127.0.0.1:5001"]\nca = ["/etc/ca.pem"]\n')
    write("registry_challenge", "bearer",
          'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull"')
    write("registry_challenge", "basic", 'Basic realm="Registry \\"Realm\\""')
    write("registry_challenge", "bare", "Bearer realm=https://a/t, scope=x,,service")
    for i, r in enumerate(["busybox", "docker.io/library/busybox:1.36",
                           "127.0.0.1:5000/lamina/demo:1",
                           "ghcr.io/a/b@sha256:" + "ab" * 32, "localhost/x:y@sha256:" + "0" * 64]):
        write("image_reference", str(i), r)


def json_seeds():
    d = "sha256:" + "a" * 64
    desc = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d, "size": 528}
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [dict(desc, platform={"architecture": "amd64", "os": "linux"}),
                           dict(desc, platform={"architecture": "arm64", "os": "linux",
                                                "variant": "v8"})]}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": d, "size": 100},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                            "digest": d, "size": 1000, "annotations": {"a": "b"}}],
                "subject": desc, "artifactType": "application/vnd.lamina.layer-index.v1"}
    config = {"architecture": "amd64", "os": "linux",
              "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
              "rootfs": {"type": "layers", "diff_ids": [d]},
              "history": [{"created_by": "x", "empty_layer": True}]}
    referrers = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                 "manifests": [dict(desc, artifactType="application/vnd.lamina.layer-index.v1")]}
    for sel, name, doc in [(0, "index", index), (1, "manifest", manifest), (2, "config", config),
                           (3, "token", {"token": "abc", "expires_in": 300}),
                           (3, "access-token", {"access_token": "abc"}),
                           (4, "referrers", referrers)]:
        write("registry_json", name, bytes([sel]) + json.dumps(doc).encode())


layer_seeds()
text_seeds()
json_seeds()
