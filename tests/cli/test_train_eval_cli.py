import json

import torch
from typer.testing import CliRunner

from aspp_deploy.cli import app
from tests.conftest import make_checkpoint
from aspp_deploy.model.deeplab import ModelConfig

runner = CliRunner()


def one_line_error(result, fragment: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert fragment in result.output, result.output


def test_smoke_train_resume_and_eval(tmp_path, tiny_data):
    out = tmp_path / "run"
    args = ["train", "--data", str(tiny_data), "--out", str(out), "--batch", "2", "--crop", "64",
            "--aspp-depth", "16", "--size", "128", "--device", "cpu"]
    r = runner.invoke(app, args + ["--steps", "2"])
    assert r.exit_code == 0, r.output
    assert (out / "model.pt").is_file() and (out / "last.pt").is_file()
    r = runner.invoke(app, args + ["--steps", "4", "--resume"])
    assert r.exit_code == 0, r.output
    assert "resuming at step 2/4" in r.output
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 4
    report = tmp_path / "eval.json"
    r = runner.invoke(app, ["eval", "--checkpoint", str(out / "model.pt"), "--data", str(tiny_data),
                            "--json", str(report)])
    assert r.exit_code == 0, r.output
    result = json.loads(report.read_text())
    assert result["num_images"] == 4 and 0.0 <= result["miou"] <= 1.0
    assert sum(map(sum, result["confusion"])) == 4 * 128 * 128


def test_resume_with_other_settings_is_refused(tmp_path, tiny_data):
    out = tmp_path / "run"
    base = ["train", "--data", str(tiny_data), "--out", str(out), "--batch", "2", "--crop", "64",
            "--aspp-depth", "16", "--steps", "1"]
    assert runner.invoke(app, base).exit_code == 0
    one_line_error(runner.invoke(app, base + ["--lr", "0.1", "--resume"]), "only --steps may change")


def test_eval_bad_checkpoints(tmp_path, tiny_data):
    args = ["eval", "--data", str(tiny_data), "--checkpoint"]
    one_line_error(runner.invoke(app, args + [str(tmp_path / "missing.pt")]), "checkpoint not found")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00not a checkpoint" * 10)
    one_line_error(runner.invoke(app, args + [str(corrupt)]), "cannot read checkpoint")
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, plain)
    one_line_error(runner.invoke(app, args + [str(plain)]), "not an aspp-deploy checkpoint")
    other_classes = make_checkpoint(tmp_path / "c3.pt", ModelConfig(num_classes=3, aspp_depth=16))
    # tiny_data's dataset.json lists 6 classes: refused before any image (see test_eval_dataset_classes.py)
    one_line_error(runner.invoke(app, args + [str(other_classes)]), "predicts 3 classes")


def test_checkpoint_with_inconsistent_classes(tmp_path, tiny_checkpoint):
    raw = torch.load(tiny_checkpoint, weights_only=True)
    raw["classes"] = raw["classes"][:2]
    bad = tmp_path / "bad.pt"
    torch.save(raw, bad)
    one_line_error(runner.invoke(app, ["eval", "--checkpoint", str(bad), "--limit", "1"]),
                   "2 class names for a 6-class model")


def test_checkpoint_for_another_architecture(tmp_path, tiny_checkpoint):
    raw = torch.load(tiny_checkpoint, weights_only=True)
    raw["config"]["backbone"] = "resnet34"
    swapped = tmp_path / "swapped.pt"
    torch.save(raw, swapped)
    one_line_error(runner.invoke(app, ["eval", "--checkpoint", str(swapped), "--limit", "1"]),
                   "does not fit architecture resnet34")


def test_eval_bad_dataset(tmp_path, tiny_checkpoint):
    one_line_error(runner.invoke(app, ["eval", "--checkpoint", str(tiny_checkpoint), "--data",
                                       str(tmp_path)]), "not a VOC-style folder")


def test_help_runs_for_every_command():
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0
    for cmd in ("train", "eval", "export", "check", "data"):
        assert cmd in r.output
        assert runner.invoke(app, [cmd, "--help"]).exit_code == 0
