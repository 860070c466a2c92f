"""Fixtures for the cluster store tests: a real three-member etcd on 127.0.0.1 (etcdlab.py).

No root needed.  A missing etcd fails the tests (`make cluster` unpacks one, packaging/fetch-etcd.sh),
it never skips them; the run's header names the etcd used and where it came from.  Tests that only
read and write share one lab, each under its own key prefix; tests that kill members get a lab of
their own.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from etcdlab import ETCD, ETCD_FROM, EtcdLab, etcd_version

from cni_yogurt.cluster.keys import Keys

_prefixes = itertools.count()


def pytest_report_header() -> str:
    version = ".".join(map(str, etcd_version(ETCD))) if ETCD else "none"
    return f"etcd: {ETCD or '-'} ({version}, from {ETCD_FROM})"


@pytest.fixture(scope="session")
def lab() -> Iterator[EtcdLab]:
    with EtcdLab() as shared:
        yield shared


@pytest.fixture
def own_lab() -> Iterator[EtcdLab]:
    with EtcdLab() as mine:
        yield mine


@pytest.fixture(scope="session")
def tls_lab() -> Iterator[EtcdLab]:
    with EtcdLab(tls=True) as secure:
        yield secure


@pytest.fixture
def keys(request: pytest.FixtureRequest) -> Keys:
    """A key prefix no other test uses."""
    return Keys(f"/test/{next(_prefixes)}-{request.node.name[:40].replace('[', '-').replace(']', '')}")
