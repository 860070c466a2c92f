"""The device label (line/recovery.py alias): an end's identity, the pod's too, within IFALIASZ."""

from __future__ import annotations

from cni_yogurt.line import naming
from cni_yogurt.line.recovery import IFALIASZ, alias, parse_alias
from cni_yogurt.line.registry import End


def _end(cid: str = "c1", pod: tuple[str, str, str] = ("", "", "")) -> End:
    end = End(cid, "eth0", "phone", "net", "/run/netns/x", naming.host_ifname(cid, "eth0"))
    end.pod_namespace, end.pod_name, end.pod_uid = pod
    return end


def test_the_label_names_the_pod() -> None:
    ident = parse_alias(alias(_end(pod=("shop", "web-0", "u-1")), "/run/x"))
    assert ident is not None
    assert (ident["pn"], ident["p"], ident["pu"], ident["c"], ident["l"]) == (
        "shop",
        "web-0",
        "u-1",
        "c1",
        "phone",
    )


def test_an_end_without_a_pod_is_labelled_as_before() -> None:
    ident = parse_alias(alias(_end(), "/run/x"))
    assert ident is not None and not {"p", "pn", "pu"} & set(ident) and ident["c"] == "c1"


def test_a_long_pod_gives_way_before_the_container_id() -> None:
    """Kubernetes names go up to 253 bytes: the pod is for people, the container ID finds the end."""
    label = alias(_end(pod=("n" * 63, "p" * 200, "u" * 36)), "/run/x")
    ident = parse_alias(label)
    assert len(label.encode()) <= IFALIASZ and ident is not None
    assert ident["c"] == "c1" and "p" not in ident and "pu" not in ident
