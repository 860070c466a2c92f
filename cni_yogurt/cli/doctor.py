"""`yogurt doctor`: what this node lacks for ADD to work, and how to fix it."""

from __future__ import annotations

import json
from dataclasses import asdict

from cni_yogurt import health
from cni_yogurt.agent import report


def doctor(bpffs_dir: str, state_dir: str, as_json: bool) -> int:
    findings = [*health.node_findings(bpffs_dir, state_dir, cached=False), report.finding(state_dir)]
    if as_json:
        print(json.dumps([asdict(f) for f in findings], indent=1))
    else:
        for f in findings:
            print(f"{'ok ' if f.ok else 'BAD'} {f.name:<10} {f.detail}")
            if not f.ok and f.fix:
                print(f"    fix: {f.fix}")
    return 0 if all(f.ok for f in findings) else 1
