"""An IPAM delegate dies with the thread that ran it (cni/ipam.py): it asks for SIGKILL on its
parent's death, through setpriv where the node has it, else from a preexec function."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from cni_yogurt.cni import ipam

# A stand-in delegate: answers with the parent-death signal the kernel holds for it.
REPORTER = f"""#!{sys.executable}
import ctypes, json
sig = ctypes.c_int()
ctypes.CDLL(None).prctl(2, ctypes.byref(sig))  # PR_GET_PDEATHSIG
print(json.dumps({{"pdeathsig": sig.value}}))
"""


@pytest.fixture
def reporter(tmp_path: Path) -> str:
    path = tmp_path / "reporter"
    path.write_text(REPORTER)
    path.chmod(0o755)
    return str(path)


@pytest.mark.parametrize("through", ["setpriv", "preexec"])
def test_the_delegate_is_killed_when_its_caller_dies(
    reporter: str, through: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if through == "setpriv":
        if not any(os.access(p, os.X_OK) for p in ipam.SETPRIV):
            pytest.fail("setpriv is missing (util-linux, essential on Debian and Ubuntu)")
    else:
        monkeypatch.setattr(ipam, "SETPRIV", ())
    out = ipam.exec_delegate(reporter, "ADD", {"PATH": "/usr/bin:/bin"}, b"{}")
    assert json.loads(out) == {"pdeathsig": 9}
