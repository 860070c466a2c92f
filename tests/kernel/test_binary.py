"""The one-file binary `dist/yogurt` runs every verb, not only those real runtimes call.

The runtimes' tests (cnitool, podman, containerd) never send GC or STATUS; the
binary leaves out standard library the plugin is thought not to need
(packaging/yogurt.spec), so each verb is run through it once here.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

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


def test_the_binary_carries_ssl_alone_of_openssl_and_no_unused_runtime_hook() -> None:
    """Every exec of the one-file binary unpacks every shared library it carries.  OpenSSL is
    there for one module no verb imports, ssl (the agent's TLS to etcd, cluster/client.py):
    libssl, libcrypto and _ssl, nothing more of it (no _hashlib, no cryptography: the lab's
    certificates, its Rust extension and cffi).  Nor a runtime hook we have removed.  Read
    from its table of contents, as the bootloader reads it."""
    from PyInstaller.archive.readers import CArchiveReader

    names = list(CArchiveReader(str(BINARY)).toc)
    openssl = ("libssl", "libcrypto", "cryptography", "_ssl", "_hashlib", "cffi", "ossl-")
    carried = sorted(n.rsplit("/", 1)[-1].split(".")[0] for n in names if any(k in n for k in openssl))
    assert carried == ["_ssl", "libcrypto", "libssl"], carried
    hooks = [n for n in names if n.startswith("pyi_rth_")]
    assert not {"pyi_rth_inspect", "pyi_rth_pkgutil", "pyi_rth_multiprocessing"} & set(hooks), hooks


def test_the_binary_speaks_tls_to_etcd(tmp_path: Path) -> None:
    """`yogurt doctor --cluster` of dist/yogurt against a TLS etcd (a CA, a client certificate):
    the store answers it (its verdict is about the node, never registered here), where a build
    without ssl said "this build has no TLS".  The agent's TLS is the same client's
    (tests/kernel/test_image_cluster.py runs it)."""
    from cni_yogurt.lab.etcd import ETCD, EtcdLab

    assert ETCD, "no etcd: packaging/fetch-etcd.sh (make kernel-native runs it)"
    with EtcdLab(tls=True) as store:
        assert store.tls is not None
        cluster = tmp_path / "cluster.json"
        cluster.write_text(
            json.dumps(
                {"endpoints": store.endpoint_urls(), "node": "node-a", "address": "127.0.0.1"}
                | {"caFile": store.tls.ca, "certFile": store.tls.client_cert, "keyFile": store.tls.client_key}
            )
        )
        run = subprocess.run(
            [str(BINARY), "doctor", "--cluster", str(cluster)], capture_output=True, text=True, check=False
        )
    out = run.stdout + run.stderr
    assert "no TLS" not in out and "TLS" not in out, out
    assert "node 'node-a' is not registered" in out, out
