"""The one-file binary `dist/yogurt` runs every verb, not only those real runtimes call.

The runtimes' tests (cnitool, podman, containerd) never send GC or STATUS; the
binary leaves out standard library the plugin is thought not to need
(packaging/yogurt.spec), so each verb is run through it once here.
"""

from __future__ import annotations

import pytest
from conftest import BINARY, Node, require_binary

require_binary(__file__)


@pytest.mark.runtime
def test_the_binary_serves_add_check_status_gc_and_del(node: Node) -> None:
    exe = [str(BINARY)]
    conf = node.conf()
    keep, drop = node.netns(), node.netns()
    kept = node.add(conf, keep, exe=exe)
    node.add(conf, drop, exe=exe)
    check = node.run("CHECK", {**conf, "prevResult": kept}, keep, exe=exe)
    assert check.rc == 0, (check.out, check.stderr)
    status = node.run("STATUS", conf, None, exe=exe)
    assert status.rc == 0, (status.out, status.stderr)
    gc_conf = {**conf, "cni.dev/valid-attachments": [{"containerID": keep.name, "ifname": "eth0"}]}
    gc = node.run("GC", gc_conf, None, exe=exe)
    assert gc.rc == 0, (gc.out, gc.stderr)
    assert list(node.ends()) == [f"{keep.name}/eth0"]
    assert node.leases() == sorted(ip["address"].split("/")[0] for ip in kept["ips"])
    node.delete(conf, keep, exe=exe)


def test_the_binary_carries_no_openssl_and_no_unused_runtime_hook() -> None:
    """Every exec of the one-file binary unpacks every shared library it carries: OpenSSL
    (6 MB) came in once through a module no verb runs.  Its table of contents, as the
    bootloader reads it, must hold none of it, nor a runtime hook we have removed."""
    from PyInstaller.archive.readers import CArchiveReader

    names = list(CArchiveReader(str(BINARY)).toc)
    openssl = ("libssl", "libcrypto", "cryptography", "_ssl", "ossl-")
    carried = [n for n in names if any(k in n for k in openssl)]
    assert carried == []
    hooks = [n for n in names if n.startswith("pyi_rth_")]
    assert not {"pyi_rth_inspect", "pyi_rth_pkgutil", "pyi_rth_multiprocessing"} & set(hooks), hooks
