"""`yogurt upgrade`: after installing a new release, move every live line onto its programs.

The next ADD or GC does the same by itself; running this right after the
install does it at a moment of the operator's choosing, and loads the new
programs (bcc) outside any runtime's timeout.
"""

from __future__ import annotations

import json

from cni_yogurt import datapath
from cni_yogurt.datapath import Pins
from cni_yogurt.line import moving, recovery
from cni_yogurt.line.registry import Registry
from cni_yogurt.log import get_logger


def upgrade(bpffs_dir: str, state_dir: str, as_json: bool) -> int:
    pins = Pins.under(bpffs_dir)
    log = get_logger(None, command="upgrade")
    registry = Registry(
        state_dir,
        recover=lambda: recovery.rebuild(pins, state_dir),
        on_heal=lambda what: log.error("line registry healed", detail=what),
    )
    try:
        lost = datapath.ensure_loaded(pins, state_dir)
        moved = moving.move(registry, pins, log, lost)
    except Exception as exc:  # noqa: BLE001  (an admin command: say what failed, no traceback)
        log.error("upgrade failed", error=f"{type(exc).__name__}: {exc}")
        return 1
    left = [o.root for o in pins.others()]
    # Only this bpffsDir's ends: another network's on the same stateDir is not this upgrade's.
    unmoved = [e.key for e in registry.snapshot().values() if e.pins != pins.root and pins.sibling(e.pins)]
    if as_json:
        print(json.dumps({"pins": pins.root, "moved": moved, "older_pins": left, "not_moved": unmoved}))
    else:
        print(f"{moved} live ends moved onto {pins.root}")
        if left:
            print(f"older pins still in use: {', '.join(left)}")
        if unmoved:
            print(f"not moved (being added or deleted, or failed: see above): {', '.join(unmoved)}")
    return 0 if not unmoved else 1
