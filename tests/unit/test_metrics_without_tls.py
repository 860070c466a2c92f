"""The agent's metrics where ssl is left out (the one-file binary): prometheus_client still imports."""

from __future__ import annotations

import subprocess
import sys

# ssl made unimportable, as in the binary (its PYZ has no ssl): None in sys.modules.
PROBE = """
import sys
sys.modules["ssl"] = None
from cni_yogurt.agent import metrics
metrics._import_without_tls()
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.exposition import MetricsHandler, start_http_server
registry = CollectorRegistry()
Counter("probe", "a counter", registry=registry).inc()
print(generate_latest(registry).decode())
"""


def test_prometheus_client_imports_and_renders_without_ssl() -> None:
    run = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert "probe_total 1.0" in run.stdout


def test_without_the_stand_in_it_would_not() -> None:
    """The probe above can fail: prometheus_client does need ssl at import."""
    probe = PROBE.replace("metrics._import_without_tls()", "")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    assert run.returncode != 0 and "ssl" in run.stderr
