"""Nothing read from a file chooses code to run: a manifest's source record may rebuild one of our
checkpoints (plain tensors), never a factory, a TorchScript program or a torch.export archive."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from aspp_deploy.errors import InputError
from aspp_deploy.export.ensure import source_from_record
from tests.hostile.conftest import cli

FACTORY = '''
from pathlib import Path
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
    def forward(self, x):
        return self.conv(x)

def build(marker):
    Path(marker).write_text("the factory ran")
    return Net()
'''


def test_a_record_naming_a_command_runs_nothing(tmp_path, tiny_checkpoint):
    marker = tmp_path / "ran"
    record = {"kind": "factory", "arch": "subprocess:getoutput", "arch_args": {"cmd": f"touch {marker}"},
              "weights": str(tiny_checkpoint), "weights_sha256": __import__("aspp_deploy.io", fromlist=["x"])
              .sha256_file(tiny_checkpoint)}
    with pytest.raises(InputError, match="--arch subprocess:getoutput"):
        source_from_record(record)
    assert not marker.exists()


def test_a_checkpoint_record_pointing_at_a_program_is_not_loaded(tmp_path):
    from aspp_deploy.io import sha256_file

    scripted = tmp_path / "model.pt"  # a TorchScript program under a checkpoint's name
    torch.jit.save(torch.jit.script(torch.nn.Conv2d(3, 3, 1)), str(scripted))
    with pytest.raises(InputError, match="not a checkpoint"):
        source_from_record({"kind": "checkpoint", "checkpoint": str(scripted), "checkpoint_sha256": sha256_file(scripted)})
    for kind in ("torchscript", "torch.export"):
        with pytest.raises(InputError, match="--checkpoint"):
            source_from_record({"kind": kind, "file": str(scripted), "file_sha256": sha256_file(scripted)})


def test_compare_with_no_model_option_never_calls_the_recorded_factory(tmp_path, tiny_data):
    """The user runs their factory once, naming it; a later compare that names no model reuses the ONNX
    and leaves the PyTorch rows out, saying which flags would run them, instead of calling it again."""
    (tmp_path / "net.py").write_text(FACTORY)
    marker = tmp_path / "ran"
    torch.manual_seed(0)
    ns: dict = {}
    exec(FACTORY, ns)
    torch.save({"state_dict": ns["Net"]().state_dict()}, tmp_path / "w.pt")
    art = tmp_path / "art"
    r = cli("export", "--arch", f"{tmp_path / 'net.py'}:build", "--arch-args", json.dumps({"marker": str(marker)}),
            "--weights", tmp_path / "w.pt", "--height", "64", "--width", "64", "--classes", "a,b,c", "--out", art)
    assert r.exit_code == 0, r.output
    assert marker.exists()  # named on the command line: it ran
    marker.unlink()
    import shutil

    images, calib = tmp_path / "images", tmp_path / "calib"
    images.mkdir(), calib.mkdir()
    for k, path in enumerate(sorted((tiny_data / "JPEGImages").glob("*.jpg"))):
        shutil.copy(path, (images if k % 3 == 0 else calib) / path.name)
    r = cli("compare", "--artifacts", art, "--data", images, "--calib", calib, "--limit", "1",
            "--iters", "1", "--warmup", "0", "--report", tmp_path / "report", "--json", tmp_path / "c.json")
    assert not marker.exists(), "compare ran the factory a manifest named"
    assert "--arch" in r.output, r.output
