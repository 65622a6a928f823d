"""Argument validation: values no command can use are refused before any work, in one line."""

from __future__ import annotations

import pytest

from tests.hostile.conftest import cli, listing, refused


def _onnx(artifacts):
    return artifacts / "model.onnx"


# (command line built from the fixtures, a fragment of the error line)
CASES = {
    "eval --limit -1": (lambda a, c, d, t: ["eval", "--checkpoint", c, "--data", d, "--limit", -1], "--limit -1 is impossible"),
    "eval --threads -1": (lambda a, c, d, t: ["eval", "--checkpoint", c, "--data", d, "--threads", -1], "--threads -1"),
    "eval --device foo": (lambda a, c, d, t: ["eval", "--checkpoint", c, "--data", d, "--device", "foo"], "'foo' is not a device"),
    "bench --device foo": (lambda a, c, d, t: ["bench", "--checkpoint", c, "--device", "foo", "--iters", 1], "is not a device"),
    "bench ort --device foo": (lambda a, c, d, t: ["bench", "--backend", "onnxruntime", "--model", _onnx(a), "--device", "foo"], "is not a device"),
    "bench --warmup -1": (lambda a, c, d, t: ["bench", "--checkpoint", c, "--warmup", -1], "--warmup -1"),
    "bench --iters 0": (lambda a, c, d, t: ["bench", "--checkpoint", c, "--iters", 0], "--iters"),
    "bench --threads -1": (lambda a, c, d, t: ["bench", "--checkpoint", c, "--threads", -1], "--threads -1"),
    "predict --device foo": (lambda a, c, d, t: ["predict", "--checkpoint", c, "--device", "foo", "--out", t / "p", d / "JPEGImages"], "is not a device"),
    "predict --batch -1": (lambda a, c, d, t: ["predict", "--checkpoint", c, "--batch", -1, "--out", t / "p", d / "JPEGImages"], "--batch -1"),
    "predict --alpha nan": (lambda a, c, d, t: ["predict", "--checkpoint", c, "--alpha", "nan", "--out", t / "p", d / "JPEGImages"], "finite"),
    "quantize --max-miou-drop nan": (lambda a, c, d, t: ["quantize", "--model", _onnx(a), "--precision", "fp16", "--target", "cpu", "--max-miou-drop", "nan"], "finite"),
    "quantize --max-miou-drop inf": (lambda a, c, d, t: ["quantize", "--model", _onnx(a), "--precision", "fp16", "--target", "cpu", "--max-miou-drop", "inf"], "finite"),
    "quantize --max-miou-drop -1": (lambda a, c, d, t: ["quantize", "--model", _onnx(a), "--precision", "fp16", "--target", "cpu", "--max-miou-drop", "-1"], "impossible"),
    "quantize --percentile nan": (lambda a, c, d, t: ["quantize", "--model", _onnx(a), "--precision", "int8", "--target", "cpu", "--percentile", "nan"], "finite"),
    "compare --warmup -1": (lambda a, c, d, t: ["compare", "--checkpoint", c, "--data", d, "--artifacts", t / "a", "--report", t / "r", "--warmup", -1], "--warmup -1"),
    "compare --iters 0": (lambda a, c, d, t: ["compare", "--checkpoint", c, "--data", d, "--artifacts", t / "a", "--report", t / "r", "--iters", 0], "--iters"),
    "compare --limit -1": (lambda a, c, d, t: ["compare", "--checkpoint", c, "--data", d, "--artifacts", t / "a", "--report", t / "r", "--limit", -1], "--limit -1"),
    "export --scale nan": (lambda a, c, d, t: ["export", "--checkpoint", c, "--out", t / "e", "--scale", "nan"], "finite"),
    "export --scale inf": (lambda a, c, d, t: ["export", "--checkpoint", c, "--out", t / "e", "--scale", "inf"], "finite"),
    "export --height -5": (lambda a, c, d, t: ["export", "--checkpoint", c, "--out", t / "e", "--height", -5], "--height -5"),
    "export --batch 0": (lambda a, c, d, t: ["export", "--checkpoint", c, "--out", t / "e", "--batch", 0], "--batch 0"),
    "bundle --calib-images -1": (lambda a, c, d, t: ["bundle", "--onnx", _onnx(a), "--calib-images", -1, "--out", t / "b"], "--calib-images -1"),
    "build --workspace-mb -1": (lambda a, c, d, t: ["build", "--onnx", _onnx(a), "--workspace-mb", -1], "--workspace-mb -1"),
    "data synth --train -1": (lambda a, c, d, t: ["data", "synth", "--out", t / "s", "--train", -1, "--val", 1], "--train -1"),
    "data synth nothing": (lambda a, c, d, t: ["data", "synth", "--out", t / "s", "--train", 0, "--val", 0], "nothing to write"),
    "data calib --count -5": (lambda a, c, d, t: ["data", "calib", "--out", t / "c", "--count", -5], "--count -5"),
    "data calib --count 0": (lambda a, c, d, t: ["data", "calib", "--out", t / "c", "--count", 0], "--count 0"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_impossible_values_are_refused_before_any_work(case, artifacts, tiny_checkpoint, tiny_data, tmp_path):
    make, fragment = CASES[case]
    before = listing(tmp_path)
    refused(cli(*make(artifacts, tiny_checkpoint, tiny_data, tmp_path)), fragment)
    assert listing(tmp_path) == before, "a refused command wrote something"


TRAIN = {
    "--batch 0": (["--batch", 0], "--batch 0"),
    "--batch 1": (["--batch", 1], "at least 2 images"),
    "--crop 0": (["--crop", 0], "--crop 0"),
    "--lr nan": (["--lr", "nan"], "finite"),
    "--lr 0": (["--lr", 0], "--lr 0"),
    "--output-stride 7": (["--output-stride", 7], "use 8 or 16"),
    "--size 0": (["--size", 0], "--size 0"),
    "--steps -5": (["--steps", -5], "--steps -5"),
    "--steps 0": (["--steps", 0], "--steps 0"),
    "--aspp-depth 0": (["--aspp-depth", 0], "--aspp-depth 0"),
    "--threads -1": (["--threads", -1], "--threads -1"),
    "--device foo": (["--device", "foo"], "not a device"),
    "--rates a,b": (["--rates", "a,b"], "bad model options"),
}


@pytest.mark.parametrize("case", sorted(TRAIN))
def test_bad_train_arguments(case, tiny_data, tmp_path):
    extra, fragment = TRAIN[case]
    out = tmp_path / "run"
    refused(cli("train", "--data", tiny_data, "--out", out, "--steps", 1, "--batch", 2, "--crop", 64,
                "--size", 64, "--aspp-depth", 8, "--device", "cpu", *extra), fragment)
    assert listing(out) == []


@pytest.mark.parametrize("how", ["a JSON list", "no palette", "not JSON"])
def test_train_refuses_a_bad_dataset_json(how, data_copy, tmp_path):
    meta = data_copy / "dataset.json"
    meta.write_text({"a JSON list": "[1, 2]", "no palette": '{"classes": ["bg", "a"]}', "not JSON": "{"}[how])
    refused(cli("train", "--data", data_copy, "--out", tmp_path / "run", "--steps", 1, "--batch", 2,
                "--crop", 64, "--size", 64, "--aspp-depth", 8, "--device", "cpu"), "dataset.json")


@pytest.mark.parametrize("state", ["garbage bytes", "a dict that is not a training state"])
def test_train_resume_refuses_what_is_not_a_training_state(state, tiny_data, tmp_path):
    import torch

    out = tmp_path / "run"
    out.mkdir()
    if state == "garbage bytes":
        (out / "last.pt").write_bytes(b"\x80\x04 not a pickle at all")
    else:
        torch.save({"weights": torch.zeros(2)}, out / "last.pt")
    refused(cli("train", "--data", tiny_data, "--out", out, "--resume", "--steps", 1, "--batch", 2, "--crop", 64,
                "--size", 64, "--aspp-depth", 8, "--device", "cpu"), "--resume")
    assert listing(out) == ["last.pt"]


def test_train_resume_never_runs_pickled_code(tiny_data, tmp_path):
    """A state file whose pickle would run code on load is refused, and the code never runs."""
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(pickle.dumps({"config": Evil()}))
    refused(cli("train", "--data", tiny_data, "--out", out, "--resume", "--steps", 1, "--batch", 2, "--crop", 64,
                "--size", 64, "--aspp-depth", 8, "--device", "cpu"), "--resume")
    assert not marker.exists()
