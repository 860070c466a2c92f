"""Import submodules of a package without running the package's __init__.

The runtime execs this plugin for every container, so start-up time is
latency every pod pays.  `pyroute2/__init__.py` imports every subsystem
(asyncio, NDB, IPDB, nftables...: ~230 ms) and `structlog/__init__.py` pulls
in asyncio through its stdlib integration (~100 ms), while the parts we use
cost a fraction of that.  Registering a bare package module first lets
`import pkg.sub` find the submodules without executing `pkg/__init__.py`.
"""

from __future__ import annotations

import importlib.util
import sys
import types


def bare_package(name: str) -> None:
    """Make `name` importable as a package whose __init__ is not run."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError(f"{name} is not an installed package")
    module = types.ModuleType(name)
    module.__path__ = list(spec.submodule_search_locations)
    module.__spec__ = spec
    module.__file__ = spec.origin
    sys.modules[name] = module
