"""Finding kernel headers for bcc without a hand-made /lib/modules link (fake trees, no root)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cni_yogurt.kernel import headers


def _debian_split(src: Path, release: str) -> tuple[Path, Path]:
    """Debian's two halves: linux-headers-<rel>-amd64 (generated) and -common (the trees)."""
    arch = src / f"linux-headers-{release}-amd64"
    common = src / f"linux-headers-{release}-common"
    for d in ("include/generated/uapi", "include/config", "arch/x86/include/generated"):
        (arch / d).mkdir(parents=True)
    (arch / "Makefile").write_text("include common\n")
    for d in ("include/linux", "include/uapi/linux", "arch/x86/include/asm", "arch/x86/include/uapi"):
        (common / d).mkdir(parents=True)
    (common / "include/linux/kconfig.h").write_text("/* kconfig */\n")
    (common / "include/uapi/linux/bpf.h").write_text("/* bpf */\n")
    return arch, common


@pytest.fixture
def src(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "usr-src"
    root.mkdir()
    monkeypatch.setattr(headers, "SRC", str(root))
    monkeypatch.setattr(headers, "MODULES", str(tmp_path / "lib-modules"))
    monkeypatch.setattr(headers, "KHEADERS", str(tmp_path / "no-kheaders.tar.xz"))
    return root


def test_newest_split_headers_are_merged_into_one_tree(src: Path, tmp_path: Path) -> None:
    _debian_split(src, "6.1.0-9")
    arch, common = _debian_split(src, "6.1.0-56")
    tree = headers.bcc_kernel_source(str(tmp_path / "state"))
    assert tree is not None and tree.endswith("linux-headers-6.1.0-56-amd64")
    t = Path(tree)
    # both halves under one include/: what bcc's -I and -include need
    assert (t / "include/linux/kconfig.h").read_text() == "/* kconfig */\n"
    assert (t / "include/uapi/linux/bpf.h").exists()
    assert (t / "include/generated").resolve() == (arch / "include/generated").resolve()
    assert (t / "arch/x86/include/asm").resolve() == (common / "arch/x86/include/asm").resolve()
    assert (t / "arch/x86/include/generated").resolve() == (arch / "arch/x86/include/generated").resolve()
    assert (t / "Makefile").exists()
    # made once, then reused
    assert headers.bcc_kernel_source(str(tmp_path / "state")) == tree


def test_a_self_contained_tree_is_used_as_it_is(src: Path, tmp_path: Path) -> None:
    arch, common = _debian_split(src, "5.15.0-1")
    os.rename(common / "include/linux", arch / "include/linux")
    assert headers.bcc_kernel_source(str(tmp_path)) == str(arch)


def test_no_headers_anywhere(src: Path, tmp_path: Path) -> None:
    assert headers.bcc_kernel_source(str(tmp_path)) is None
    assert headers.describe() is None


def test_arch_half_without_its_common_half_is_not_used(src: Path, tmp_path: Path) -> None:
    arch, common = _debian_split(src, "6.1.0-56")
    os.rename(common, src / "elsewhere")
    assert headers.bcc_kernel_source(str(tmp_path)) is None


def test_running_kernel_build_needs_no_tree(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(headers, "running_kernel_build", lambda: "/lib/modules/x/build")
    assert headers.bcc_kernel_source(str(tmp_path)) is None
    assert headers.describe() == "/lib/modules/x/build"
