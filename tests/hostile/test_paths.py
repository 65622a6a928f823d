"""Output paths: refused before the work when they cannot be written, and nothing is written
outside the folder the user named."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.hostile.conftest import cli, listing, refused


def _json_commands(c, d, onnx, t):
    return {
        "eval": ["eval", "--checkpoint", c, "--data", d, "--limit", 1],
        "bench": ["bench", "--checkpoint", c, "--iters", 1, "--warmup", 0],
        "check": ["check", onnx],
        "presets": ["presets"],
        "predict": ["predict", "--checkpoint", c, "--out", t / "pred", d / "JPEGImages"],
        "export": ["export", "--checkpoint", c, "--out", t / "exp", "--height", 64, "--width", 64],
    }


@pytest.mark.parametrize("kind", ["a folder", "under a file"])
@pytest.mark.parametrize("command", ["eval", "bench", "check", "presets", "predict", "export"])
def test_a_json_path_that_cannot_be_a_file_is_refused_first(command, kind, tiny_checkpoint, tiny_data,
                                                            artifacts, tmp_path):
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x")
    target = tmp_path / "adir" if kind == "a folder" else tmp_path / "afile" / "out.json"
    before = listing(tmp_path)
    args = _json_commands(tiny_checkpoint, tiny_data, artifacts / "model.onnx", tmp_path)[command]
    refused(cli(*args, "--json", target), "--json")
    assert listing(tmp_path) == before  # refused before any work: no export, no predictions


def test_report_and_out_folders_that_are_files(tiny_checkpoint, tiny_data, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    refused(cli("compare", "--checkpoint", tiny_checkpoint, "--data", tiny_data, "--artifacts", tmp_path / "a",
                "--report", afile), "--report")
    refused(cli("data", "calib", "--out", afile, "--count", 1), str(afile))
    refused(cli("data", "synth", "--out", afile, "--train", 1, "--val", 1), str(afile))
    refused(cli("predict", "--checkpoint", tiny_checkpoint, "--out", afile, tiny_data / "JPEGImages"), str(afile))
    refused(cli("export", "--checkpoint", tiny_checkpoint, "--out", afile), str(afile))
    assert listing(tmp_path) == ["afile"] and afile.read_text() == "x"


@pytest.mark.parametrize("name", ["../escaped", "/tmp/abs-escaped", "a/b", ".hidden", ".."])
@pytest.mark.parametrize("command", ["export", "import"])
def test_a_name_that_would_leave_the_output_folder_is_refused(command, name, tiny_checkpoint, artifacts, tmp_path):
    out = tmp_path / "deep" / "out"
    args = (["export", "--checkpoint", tiny_checkpoint] if command == "export"
            else ["import", artifacts / "model.onnx"])
    before = listing(tmp_path)
    refused(cli(*args, "--out", out, "--name", name), "--name")
    assert listing(tmp_path) == before and not (tmp_path.parent / "escaped").exists()


@pytest.mark.parametrize("command", ["eval", "compare", "train"])
def test_split_list_names_cannot_reach_outside_the_dataset(command, data_copy, tiny_checkpoint, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(outside / "x.jpg")
    split = "train" if command == "train" else "val"
    lst = data_copy / "ImageSets" / "Segmentation" / f"{split}.txt"
    lst.write_text(lst.read_text() + "../../outside/x\n")
    args = {"eval": ["eval", "--checkpoint", tiny_checkpoint, "--data", data_copy],
            "compare": ["compare", "--checkpoint", tiny_checkpoint, "--data", data_copy, "--artifacts",
                        tmp_path / "a", "--report", tmp_path / "r", "--iters", 1, "--warmup", 0],
            "train": ["train", "--data", data_copy, "--out", tmp_path / "run", "--steps", 1, "--batch", 2,
                      "--crop", 64, "--size", 64, "--aspp-depth", 8, "--device", "cpu"]}[command]
    refused(cli(*args), "../../outside/x")
    assert listing(outside) == ["x.jpg"]
