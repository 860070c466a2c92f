"""Host-side device names: derived from the attachment alone, the same in every release."""

from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import strategies as st

from cni_yogurt.line import naming, recovery


@given(st.text(min_size=1, max_size=300), st.text(min_size=1, max_size=15))
def test_names_are_sha256_of_the_attachment_and_ours(container_id: str, ifname: str) -> None:
    name = naming.host_ifname(container_id, ifname)
    want = hashlib.sha256(f"{container_id}\0{ifname}".encode()).hexdigest()
    assert name == "yg" + want[:13]  # DEL of a later release must find ADD's device by name
    assert len(name) == 15 and naming.is_ours(name)


def test_state_tag_is_the_same_hash_of_the_real_path() -> None:
    want = hashlib.sha256(b"/run/cni-yogurt").hexdigest()[:8]
    assert recovery.state_tag("/run/cni-yogurt") == want  # labels made by an older release stay ours


def test_foreign_names_are_not_ours() -> None:
    for name in ("eth0", "yg", "ygXYZ0123456789", "yg0123456789abcd", "xx0123456789abc"):
        assert not naming.is_ours(name)
