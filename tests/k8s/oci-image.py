#!/usr/bin/env python3
"""Writes a single-layer OCI image-layout tar from a root directory, for `ctr images import`.

usage: oci-image.py [--entrypoint PATH] ROOTFS NAME OUT.tar [CMD...]

NAME is the reference containerd records (io.containerd.image.name), e.g. localhost/busybox:local.
With --entrypoint, PATH is the image's Entrypoint and CMD its default arguments (a pod's `args`
then replace only the arguments). The output is deterministic: file times, owners and the gzip
header are fixed.
"""
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile


def normalized(info):
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mtime = 0
    return info


def layer_tar(rootfs):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(os.listdir(rootfs)):
            tar.add(os.path.join(rootfs, entry), arcname=entry, filter=normalized)
    return buf.getvalue()


def add_bytes(tar, name, data):
    info = normalized(tarfile.TarInfo(name))
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def main():
    args = sys.argv[1:]
    entrypoint = None
    if args[:1] == ["--entrypoint"]:
        if len(args) < 2:
            sys.exit(__doc__)
        entrypoint, args = [args[1]], args[2:]
    if len(args) < 3:
        sys.exit(__doc__)
    rootfs, name, out, cmd = args[0], args[1], args[2], args[3:]
    raw = layer_tar(rootfs)
    gz = gzip.compress(raw, compresslevel=6, mtime=0)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": cmd or None,
        },
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]},
    }
    if entrypoint:
        config["config"]["Entrypoint"] = entrypoint
    config_blob = json.dumps(config, sort_keys=True).encode()

    def desc(media_type, blob):
        return {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(blob).hexdigest(),
                "size": len(blob)}

    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": desc("application/vnd.oci.image.config.v1+json", config_blob),
        "layers": [desc("application/vnd.oci.image.layer.v1.tar+gzip", gz)],
    }
    manifest_blob = json.dumps(manifest, sort_keys=True).encode()
    index_entry = desc("application/vnd.oci.image.manifest.v1+json", manifest_blob)
    index_entry["annotations"] = {
        "io.containerd.image.name": name,
        "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1],
    }
    index = {"schemaVersion": 2, "manifests": [index_entry]}
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        add_bytes(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add_bytes(tar, "index.json", json.dumps(index, sort_keys=True).encode())
        for blob in (gz, config_blob, manifest_blob):
            add_bytes(tar, "blobs/sha256/" + hashlib.sha256(blob).hexdigest(), blob)


if __name__ == "__main__":
    main()
