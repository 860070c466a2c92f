"""The runtime execs the plugin per container: the ADD/DEL path must stay import-light."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("asyncio", "pyroute2.ndb", "pyroute2.ipdb", "pyroute2.iproute", "bcc", "structlog.stdlib")
# Small, but each costs a few ms per exec and the verbs do without: OpenSSL (hashlib), compressors (shutil).
AVOIDED = {"_hashlib", "shutil", "bz2", "lzma"}


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_verbs_import_no_heavy_modules() -> None:
    loaded = _loaded_after("import cni_yogurt.plugin, cni_yogurt.log")
    assert "pyroute2.netlink.rtnl.ifinfmsg" in loaded  # the part of pyroute2 we use
    assert not {m for m in loaded if m.startswith(HEAVY)}
    assert not loaded & AVOIDED


def test_netkit_kind_is_registered_with_pyroute2() -> None:
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    from cni_yogurt.kernel import netkit

    assert ifinfmsg.ifinfo.data_map["netkit"] is netkit.netkit_data


def test_front_end_imports_nothing_but_c_modules() -> None:
    """With an agent on the node, an exec only forwards: beyond what the interpreter loads anyway,
    the front end may load our own modules and C modules, nothing that runs Python at import."""
    baseline = _loaded_after("pass")
    loaded = _loaded_after("import cni_yogurt.entry, cni_yogurt.agent.frontend")
    extra = {m for m in loaded - baseline if not m.startswith("cni_yogurt")}
    assert extra <= {"_json", "_socket", "__future__"}, extra  # __future__: a few constants
