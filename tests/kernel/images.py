"""Container images made on the spot from Debian's busybox-static, for the runtime tests.

No registry is reachable from the test machines, and none is needed: one static
busybox with a few applet links is a whole container. The same layer serves
podman (`podman import` of the root file system) and containerd (a `docker
save` archive for `ctr images import`, as its sandbox "pause" image).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

BUSYBOX = Path("/bin/busybox")  # busybox-static: statically linked, runs in any root
APPLETS = ("sh", "sleep", "ping", "ping6", "ip", "cat", "ls", "touch", "true", "hostname")


def _add(
    tar: tarfile.TarFile, name: str, kind: bytes, data: bytes = b"", mode: int = 0o644, link: str = ""
) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.size = kind, mode, link, len(data)
    info.mtime = 0  # reproducible: the same bytes, the same image id
    tar.addfile(info, io.BytesIO(data) if data else None)


def rootfs_layer() -> bytes:
    """An uncompressed tar of a root file system: /bin/busybox, applet links, /etc basics."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("bin", "dev", "etc", "proc", "sys", "tmp", "run"):
            _add(tar, d, tarfile.DIRTYPE, mode=0o1777 if d == "tmp" else 0o755)
        _add(tar, "bin/busybox", tarfile.REGTYPE, BUSYBOX.read_bytes(), mode=0o755)
        for applet in APPLETS:
            _add(tar, f"bin/{applet}", tarfile.SYMTYPE, link="busybox")
        _add(tar, "etc/passwd", tarfile.REGTYPE, b"root:x:0:0:root:/:/bin/sh\n")
        _add(tar, "etc/group", tarfile.REGTYPE, b"root:x:0:\n")
    return buf.getvalue()


def rootfs_tar(dest: Path) -> Path:
    """The root file system as a tar file, for `podman import`."""
    dest.write_bytes(rootfs_layer())
    return dest


def docker_archive(dest: Path, ref: str, cmd: list[str]) -> Path:
    """A one-layer image in `docker save` form (manifest.json, config, layer), tagged `ref`."""
    layer = rootfs_layer()
    layer_id = hashlib.sha256(layer).hexdigest()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": cmd, "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_id}"]},
        },
        sort_keys=True,
    ).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    layers = [f"{layer_id}/layer.tar"]
    manifest = json.dumps([{"Config": config_name, "RepoTags": [ref], "Layers": layers}]).encode()
    with tarfile.open(dest, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, f"{layer_id}", tarfile.DIRTYPE, mode=0o755)
        _add(tar, f"{layer_id}/layer.tar", tarfile.REGTYPE, layer)
        _add(tar, config_name, tarfile.REGTYPE, config)
        _add(tar, "manifest.json", tarfile.REGTYPE, manifest)
    return dest
