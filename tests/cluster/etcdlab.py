"""The tests' etcd lab: cni_yogurt/lab/etcd.py (in the package, for `yogurt demo --nodes 2` too), with
the etcd this module names (a test may replace ETCD), and `python tests/cluster/etcdlab.py [--tls]`."""

from __future__ import annotations

import contextlib
import signal
from typing import Any

from cni_yogurt.lab import etcd as _lab
from cni_yogurt.lab.etcd import ETCD, ETCD_FROM, TLSFiles, etcd_version, find_etcd, free_ports, make_tls

__all__ = ["ETCD", "ETCD_FROM", "EtcdLab", "TLSFiles", "etcd_version", "find_etcd", "free_ports", "make_tls"]


class EtcdLab(_lab.EtcdLab):
    def __init__(self, *args: Any, **kw: Any) -> None:
        kw.setdefault("etcd", ETCD)
        super().__init__(*args, **kw)


def main() -> None:
    """`python tests/cluster/etcdlab.py [--tls]`: a lab to try things against, until Ctrl-C."""
    import json
    import sys

    tls = "--tls" in sys.argv[1:]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with EtcdLab(tls=tls) as lab:
        cfg: dict[str, object] = {"endpoints": lab.endpoint_urls(), "node": "node-a"}
        if lab.tls:
            cfg.update(caFile=lab.tls.ca, certFile=lab.tls.client_cert, keyFile=lab.tls.client_key)
        print(json.dumps({"cluster": cfg}, indent=2))
        print(f"members' data and logs: {lab.dir}; Ctrl-C stops them and removes it", file=sys.stderr)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    main()
