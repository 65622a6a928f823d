"""Written files get the mode a plain write gives them under the user's umask (a service running as
another user can read a copied artifact), not mkstemp's 0600."""

from __future__ import annotations

import os
import stat

import pytest
from PIL import Image

from aspp_deploy.io import atomic_save_image, atomic_write_text
from tests.hostile.conftest import cli


@pytest.fixture
def umask():
    def set_mask(mask: int) -> None:
        os.umask(mask)

    old = os.umask(0o022)
    yield set_mask
    os.umask(old)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_honour_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    atomic_write_text(tmp_path / "a.json", "{}")
    atomic_save_image(Image.new("RGB", (4, 4)), tmp_path / "b.png")
    for name in ("a.json", "b.png"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


def test_cli_outputs_are_readable_by_others_under_the_usual_umask(tmp_path, umask, tiny_checkpoint):
    umask(0o022)
    r = cli("export", "--checkpoint", tiny_checkpoint, "--out", tmp_path / "art", "--height", 64, "--width", 64,
            "--json", tmp_path / "entry.json")
    assert r.exit_code == 0, r.output
    for f in [tmp_path / "entry.json", *(tmp_path / "art").iterdir()]:
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f
