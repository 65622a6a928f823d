"""Code runs only when the user names it: a TorchScript file or a torch.export archive given as
``--checkpoint`` is a program, loaded only with ``--trust-code`` (recognised by content, whatever its
name); our checkpoints need no flag. Also: deeply nested ``--arch-args`` and a failing
``torch.onnx.export`` are one clear line each."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Tuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.hostile.conftest import cli, refused

SIZE = ("--height", 64, "--width", 64)
# torch deprecates torch.jit.script/save/load in favour of torch.export; the files here are made with them
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


class MarkerOnLoad(nn.Module):
    """A TorchScript program that creates a file when it is loaded: its ``__setstate__`` (run by
    ``torch.jit.load``) maps ``marker`` with ``torch.from_file(shared=True)``, which creates it."""

    def __init__(self, marker: str):
        super().__init__()
        self.marker = marker
        self.weight = torch.randn(2, 3, 1, 1)

    def forward(self, x):
        return F.conv2d(x, self.weight)

    @torch.jit.export
    def __getstate__(self) -> Tuple[str, torch.Tensor, bool]:
        return (self.marker, self.weight, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[str, torch.Tensor, bool]) -> None:
        touched = torch.from_file(state[0], shared=True, size=1)  # creates the file
        self.marker = state[0]
        self.weight = state[1] + touched.sum() * 0  # used, so the call is not optimised away
        self.training = state[2]


@pytest.fixture
def program(tmp_path) -> tuple[Path, Path]:
    """(a TorchScript file named like a checkpoint, the marker its loading creates)."""
    marker = tmp_path / "loaded-it-ran"
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(MarkerOnLoad(str(marker))), str(path))
    assert not marker.exists()
    return path, marker


@pytest.fixture
def loads(monkeypatch) -> list[str]:
    """Every torch.jit.load / torch.export.load call made in this process (the calls still happen)."""
    calls: list[str] = []
    jit_load, export_load = torch.jit.load, torch.export.load

    def record_jit(*args, **kwargs):
        calls.append("torch.jit.load")
        return jit_load(*args, **kwargs)

    def record_export(*args, **kwargs):
        calls.append("torch.export.load")
        return export_load(*args, **kwargs)

    monkeypatch.setattr(torch.jit, "load", record_jit)
    monkeypatch.setattr(torch.export, "load", record_export)
    return calls


def _commands(model: Path, tmp: Path, data: Path) -> dict[str, list]:
    return {
        "export": ["export", "--checkpoint", model, *SIZE, "--out", tmp / "exp"],
        "eval": ["eval", "--checkpoint", model, "--data", data, "--limit", 1],
        "predict": ["predict", "--checkpoint", model, "--out", tmp / "pred", data / "JPEGImages"],
        "bench": ["bench", "--checkpoint", model, "--iters", 1, "--warmup", 0],
        "compare": ["compare", "--checkpoint", model, *SIZE, "--data", data, "--artifacts", tmp / "art",
                    "--report", tmp / "rep", "--limit", 1, "--iters", 1, "--warmup", 0],
        "bundle": ["bundle", "--checkpoint", model, "--artifacts", tmp / "art", "--out", tmp / "bundle"],
    }


@pytest.mark.parametrize("command", ["export", "eval", "predict", "bench", "compare", "bundle"])
def test_a_torchscript_checkpoint_is_refused_without_the_flag(command, program, loads, tmp_path, tiny_data):
    path, marker = program
    line = refused(cli(*_commands(path, tmp_path, tiny_data)[command]), "--trust-code")
    assert "TorchScript" in line and str(path) in line, line
    assert loads == [], f"{command} loaded the program: {loads}"
    assert not marker.exists(), f"{command} ran the program"
    assert not (tmp_path / "exp").exists() and not (tmp_path / "art" / "model.onnx").exists()


def test_a_torchscript_checkpoint_runs_with_the_flag(program, loads, tmp_path):
    path, marker = program
    out = tmp_path / "exp"
    r = cli("export", "--checkpoint", path, "--trust-code", *SIZE, "--out", out)
    assert r.exit_code == 0, r.output
    assert loads == ["torch.jit.load"] and marker.exists()  # the user said it is code: it ran
    entry = json.loads((out / "manifest.json").read_text())["artifacts"]["model.onnx"]
    assert entry["source"]["kind"] == "torchscript"
    assert any("run as code" in n and "--trust-code" in n for n in entry["model"]["source_notes"]), entry["model"]
    assert "run as code" in r.output


def _exported_program(path: Path) -> Path:
    torch.manual_seed(0)
    net = nn.Conv2d(3, 2, 1).eval()
    torch.export.save(torch.export.export(net, (torch.zeros(1, 3, 64, 64),)), str(path))
    return path


def test_a_torch_export_archive_named_pt_is_refused_without_the_flag(tmp_path, loads, tiny_data):
    archive = _exported_program(tmp_path / "weights.pt")  # a checkpoint's name: recognised by content
    for command in ("export", "eval", "compare"):
        line = refused(cli(*_commands(archive, tmp_path, tiny_data)[command]), "--trust-code")
        assert "torch.export archive" in line and "unpickles" in line, line
    assert loads == [], "torch.export.load was called without --trust-code"
    out = tmp_path / "exp"
    r = cli("export", "--checkpoint", archive, "--trust-code", *SIZE, "--out", out)
    assert r.exit_code == 0, r.output
    assert loads == ["torch.export.load"]
    entry = json.loads((out / "manifest.json").read_text())["artifacts"]["model.onnx"]
    assert entry["source"]["kind"] == "torch.export"
    assert any("run as code" in n for n in entry["model"]["source_notes"]), entry["model"]


def test_our_checkpoint_needs_no_flag_and_the_flag_changes_nothing(tiny_checkpoint, tmp_path, loads):
    for flag in ([], ["--trust-code"]):
        out = tmp_path / f"exp{len(flag)}"
        r = cli("export", "--checkpoint", tiny_checkpoint, *flag, *SIZE, "--out", out)
        assert r.exit_code == 0, r.output
        assert "run as code" not in r.output
        entry = json.loads((out / "manifest.json").read_text())["artifacts"]["model.onnx"]
        assert entry["source"]["kind"] == "checkpoint"
    assert loads == []


def test_deeply_nested_arch_args_are_one_line(tmp_path):
    weights = tmp_path / "w.pt"
    torch.save({"w": torch.zeros(1)}, weights)
    deep_list = "[" * 10000 + "]" * 10000
    deep_file = tmp_path / "args.json"
    deep_file.write_text('{"a": ' * 5000 + "1" + "}" * 5000)
    for args in (deep_list, deep_file, '{"a": ' + "[" * 33 + "]" * 33 + "}"):
        line = refused(cli("export", "--arch", "deeplabv3_resnet50", "--arch-args", args, "--weights", weights,
                           "--out", tmp_path / "e"), "--arch-args")
        assert "32 levels" in line, line
    # brackets inside a string are not nesting: this one gets past the arguments (to the weights check)
    r = cli("export", "--arch", f"{tmp_path / 'none.py'}:build", "--arch-args", json.dumps({"name": "[" * 100}),
            "--weights", weights, "--out", tmp_path / "e")
    assert "levels" not in r.output and "none.py" in r.output, r.output


PSP = '''
import torch
import torch.nn.functional as F
from torch import nn


class TinyPSP(nn.Module):
    """A PSPNet-like pyramid: stride-4 features pooled to 1, 2, 3 and 6 cells."""

    def __init__(self, classes=3):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, stride=4, padding=1)
        self.pools = nn.ModuleList(nn.AdaptiveAvgPool2d(s) for s in (1, 2, 3, 6))
        self.head = nn.Conv2d(20, classes, 1)

    def forward(self, x):
        f = self.stem(x)
        up = [F.interpolate(p(f), size=f.shape[-2:], mode="bilinear", align_corners=False) for p in self.pools]
        return self.head(torch.cat([f, *up], 1))


def build(classes=3):
    return TinyPSP(classes)
'''


def test_an_export_the_exporter_refuses_is_one_line_with_sizes_that_work(tmp_path, capfd):
    """The TorchScript exporter writes its whole IR graph to stderr when a pass fails: none of it
    reaches the console, and the one error line names the size and the sizes that would export."""
    (tmp_path / "psp.py").write_text(PSP)
    ns: dict = {}
    exec(PSP, ns)
    torch.save(ns["build"]().state_dict(), tmp_path / "psp.pt")
    args = ("export", "--arch", f"{tmp_path / 'psp.py'}:build", "--weights", tmp_path / "psp.pt")
    capfd.readouterr()
    line = refused(cli(*args, *SIZE, "--out", tmp_path / "bad"), "torch.onnx.export failed at 64x64")
    captured = capfd.readouterr()
    assert "graph(" not in captured.err + captured.out and "Torch IR" not in captured.err + captured.out, \
        captured.err[:2000]
    assert "%" not in line and "[Caused by" not in line and "Please feel free" not in line, line
    assert "divisible by 24" in line and "48x48 or 72x72" in line, line  # stride 4 x lcm(1, 2, 3, 6)
    r = cli(*args, "--height", 48, "--width", 72, "--out", tmp_path / "good")
    assert r.exit_code == 0, r.output
