"""The kernel-uml images: cache keys, lookup and the messages that say how to build them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wgpy.testbed.uml import build


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(build.CACHE_ENV, str(tmp_path))
    monkeypatch.delenv(build.KERNEL_ENV, raising=False)
    return tmp_path


def _fake_rootfs(root: Path) -> None:
    for rel in ("sbin/wgpy-init", "usr/bin/wg"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("")


def test_keys_cover_every_recipe_file_and_differ() -> None:
    on_disk = {p.name for p in build.RECIPE.iterdir()}
    assert on_disk == set(build.KERNEL_RECIPE) | set(build.ROOTFS_RECIPE)
    k, r = build.recipe_key(build.KERNEL_RECIPE), build.recipe_key(build.ROOTFS_RECIPE)
    assert len(k) == len(r) == 16 and k != r
    assert build.recipe_key(build.KERNEL_RECIPE) == k  # stable


def test_find_needs_both_and_says_how_to_build(cache: Path) -> None:
    assert build.find() is None
    why = build.missing_reason()
    assert "no UML kernel at" in why and "no guest root filesystem" in why
    assert "python -m wgpy.testbed.uml" in why and build.KERNEL_ENV in why
    kernel = build.kernel_path()
    assert kernel.parent.parent == cache and kernel.parent.name.startswith("kernel-")
    kernel.parent.mkdir()
    kernel.write_text("")
    os.chmod(kernel, 0o755)
    assert build.find() is None  # no root filesystem yet
    _fake_rootfs(build.rootfs_path())
    found = build.find()
    assert found is not None and found.kernel == kernel and found.rootfs == build.rootfs_path()


def test_a_given_kernel_replaces_the_cached_one(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    given = tmp_path / "linux.uml"
    monkeypatch.setenv(build.KERNEL_ENV, str(given))
    assert build.kernel_path() == given
    with pytest.raises(build.BuildError, match="not an executable"):
        build.build_kernel()  # never builds over a path the user gave
    given.write_text("")
    os.chmod(given, 0o755)
    assert build.build_kernel() == given
    _fake_rootfs(build.rootfs_path())
    assert build.find() == build.Images(given, build.rootfs_path())


def test_mirror_comes_from_apt_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "sources.list.d"
    d.mkdir()
    (d / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n"
    )
    real = Path

    def fake_path(p: str) -> Path:
        if p == "/etc/apt/sources.list":
            return tmp_path / "none.list"
        if p == "/etc/apt/sources.list.d":
            return d
        return real(p)

    monkeypatch.setattr(build, "Path", fake_path)
    assert build.apt_mirror() == "http://mirror.example/debian"
    (d / "debian.sources").unlink()
    assert build.apt_mirror() == build.DEFAULT_MIRROR
