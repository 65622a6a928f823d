"""Accuracy without labels: a folder of photos and no masks, a binary (person/background) model that
is not the shipped one. The FP32 model's masks are the reference: FP32 against itself scores exactly
1.0, a perturbed candidate less; quantize without --data measures on calibration images held out
from calibration (never the synthetic split, whose labels mean nothing to this model)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aspp_deploy.cli import app
from aspp_deploy.data.images import data_kind, open_data
from aspp_deploy.errors import DatasetError
from aspp_deploy.export.manifest import read_onnx_manifest
from aspp_deploy.precision import accuracy as A
from aspp_deploy.precision.calibration import held_out_split
from tests.precision.labelfree_helpers import (CLASSES, MODELS_FILE, SIZE, balance_foreground, binary_weights,
                                               perturbed, photos)

runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def _allow_slower() -> list[str]:
    """quantize may refuse an INT8 file that is not faster than FP32 (a tiny model at 64x64 rarely is):
    these tests are about accuracy, so keep the file whatever its speed."""
    text = runner.invoke(app, ["quantize", "--help"], env={"COLUMNS": "300"}).output
    return ["--allow-slower"] if "--allow-slower" in text else []


def quantize(*args):
    return cli("quantize", *args, *_allow_slower())


@pytest.fixture(scope="module")
def binary_model(tmp_path_factory) -> Path:
    """model.onnx (FP32, 2 classes, 64x64) exported from PyTorch with `aspp-deploy export --arch`."""
    root = tmp_path_factory.mktemp("binary")
    weights = binary_weights(root / "weights.pt")
    r = cli("export", "--arch", f"{MODELS_FILE}:build", "--arch-args", '{"num_classes": 2}', "--weights", weights,
            *SIZE, "--classes", CLASSES, "--out", root / "art")
    assert r.exit_code == 0, r.output
    onnx_path = root / "art" / "model.onnx"
    balance_foreground(onnx_path, sorted(photos(root / "balance", 6).iterdir()))
    return onnx_path


@pytest.fixture(scope="module")
def hopper(tmp_path_factory) -> Path:
    return photos(tmp_path_factory.mktemp("hopper"), 10)


@pytest.fixture
def model_copy(tmp_path, binary_model) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(binary_model.parent, folder)
    return folder / binary_model.name


def _pre_classes(onnx_path: Path):
    m = read_onnx_manifest(onnx_path)
    return m.preprocess(), m.classes


def test_data_kind_says_what_a_folder_is(tmp_path, hopper, tiny_data):
    assert data_kind(tiny_data) == "masks" and data_kind(hopper) == "images"
    src = open_data(hopper)
    assert not src.labelled and src.labels == "fp32" and len(src) == 10
    assert [s.name for s in src.samples] == sorted(p.stem for p in hopper.iterdir())  # name order
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images")
    for bad in (tmp_path / "empty", tmp_path / "missing"):
        with pytest.raises(DatasetError) as e:
            data_kind(bad)
        assert "\n" not in str(e.value)


def test_fp32_against_itself_is_exactly_one_and_a_perturbed_model_is_not(binary_model, hopper, tmp_path):
    pre, classes = _pre_classes(binary_model)
    same = A.compare_on_val(binary_model, binary_model, hopper, pre, classes)
    assert same.labels == "fp32" and same.metric == "foreground IoU"
    assert same.miou == same.miou_fp32 == same.pixel_agreement == 1.0
    assert same.foreground_iou == same.foreground_iou_fp32 == 1.0
    assert same.worst_image == same.worst_image_fp32 == 1.0 and same.score_drop_points == 0.0
    assert same.worst_drop_points == 0.0

    cand = perturbed(binary_model, tmp_path / "cand.onnx", scale=0.1)
    cmp = A.compare_on_val(binary_model, cand, hopper, pre, classes)
    assert cmp.labels == "fp32" and cmp.miou_fp32 == 1.0 and cmp.foreground_iou_fp32 == 1.0
    assert cmp.foreground_iou is not None and cmp.worst_image is not None
    assert 0.0 < cmp.foreground_iou < 1.0 and cmp.miou < 1.0 and cmp.pixel_agreement < 1.0
    assert cmp.worst_image <= cmp.foreground_iou  # the worst image is no better than the whole set
    assert cmp.worst_image_name in {p.stem for p in hopper.iterdir()}
    assert cmp.worst_drop_points is not None and cmp.worst_drop_points >= cmp.score_drop_points > 0
    assert cmp.per_class_iou is not None and set(cmp.per_class_iou) == set(classes)
    d = cmp.to_dict()
    assert d["labels"] == "fp32" and d["accuracy_kind"] == "agreement with FP32 (no labels)"

    # the budget loop's Reference (stored FP32 outputs) gives the same figures, image by image
    ref = A.Reference(binary_model, hopper, pre, classes, limit=10)
    again = ref.compare(cand)
    assert again == cmp
    # and the cache key names the kind of labels; a cached comparison comes back whole
    from aspp_deploy.bench.result_cache import ResultCache

    cache = ResultCache(tmp_path / "cache")
    key, n = A.comparison_key("sha", cand, hopper, pre, classes, None)
    assert key["labels"] == "fp32" and n == 10
    first = A.cached_compare_on_val(cache, binary_model, "sha", cand, hopper, pre, classes)
    assert A._from_cache(cache, key) == first == cmp


def test_labelled_comparison_fills_the_same_fields(exported, tiny_data, tmp_path):
    pre, classes = _pre_classes(exported)
    cand = perturbed(exported, tmp_path / "cand.onnx", scale=0.2)
    cmp = A.compare_on_val(exported, cand, tiny_data, pre, classes)
    assert cmp.labels == "masks" and cmp.metric == "mIoU" and cmp.foreground_iou is None
    assert cmp.worst_image is not None and cmp.worst_image_fp32 is not None and cmp.worst_image_name
    assert cmp.miou_fp32 < 1.0  # FP32 against the masks, not against itself
    assert A.Reference(exported, tiny_data, pre, classes, limit=4).compare(cand) == cmp
    key, _ = A.comparison_key("sha", cand, tiny_data, pre, classes, None)
    assert key["labels"] == "masks"


def test_held_out_split_rules(tmp_path):
    folder = photos(tmp_path / "p", 12)
    calib, held, note = held_out_split(folder, 8)
    assert (len(calib), len(held), note) == (8, 4, None)
    calib, held, note = held_out_split(folder, 10)  # would leave 2: first 12 - max(4, 3) calibrate
    assert (len(calib), len(held)) == (8, 4) and note and "held out" in note
    calib, held, note = held_out_split(folder, 0)  # all: same rule
    assert (len(calib), len(held)) == (8, 4) and note
    assert not set(calib) & set(held) and calib + held == sorted(folder.iterdir())
    small = photos(tmp_path / "small", 7)
    with pytest.raises(DatasetError, match="accuracy needs more images or --data"):
        held_out_split(small, 4)


def test_quantize_without_data_holds_out_calibration_images(model_copy, tmp_path, monkeypatch):
    import aspp_deploy.eval.evaluate as E

    def no_synthetic(*a, **k):
        raise AssertionError("the synthetic split must not be used for this model")

    monkeypatch.setattr(E, "ensure_default_data", no_synthetic)
    calib = photos(tmp_path / "calib", 12)
    out = tmp_path / "q.json"
    # a wide budget: this test is about which images are measured, not whether this random tiny net survives INT8
    r = quantize("--onnx", model_copy, "--precision", "int8", "--target", "cpu", "--calib", calib,
            "--calib-size", "8", "--budget-images", "2", "--max-drop", "50", "--max-worst-drop", "0", "--json", out)
    assert r.exit_code == 0, r.output
    assert "agreement with FP32 (no labels)" in r.output
    entry = json.loads(out.read_text())
    acc = entry["accuracy"]
    assert acc["labels"] == "fp32" and acc["held_out_from_calibration"] is True
    assert acc["num_images"] == 4 and acc["miou_fp32"] == 1.0 and acc["foreground_iou_fp32"] == 1.0
    assert 0.0 <= acc["foreground_iou"] <= 1.0 and acc["worst_image"] <= acc["foreground_iou"] + 1e-12
    assert acc["worst_image_name"] in {f"hopper_{i:02d}" for i in range(8, 12)}  # a held-out image
    assert entry["quantization"]["calibration"]["images"] == 8
    assert str(calib) in acc["data"]


def test_quantize_without_data_small_folders(model_copy, tmp_path):
    few = photos(tmp_path / "few", 6)
    r = quantize("--onnx", model_copy, "--precision", "int8", "--target", "cpu", "--calib", few,
            "--budget-images", "0")
    assert r.exit_code == 1 and "accuracy needs more images or --data" in r.output, r.output
    # 10 images, --calib-size 64 (the default): calibrate on the first 6, hold out 4, and say so
    ten = photos(tmp_path / "ten", 10)
    out = tmp_path / "q.json"
    r = quantize("--onnx", model_copy, "--precision", "int8", "--target", "cpu", "--calib", ten,
            "--budget-images", "0", "--json", out)
    assert r.exit_code == 0, r.output
    entry = json.loads(out.read_text())
    assert entry["accuracy"]["num_images"] == 4 and entry["quantization"]["calibration"]["images"] == 6
    assert any("held out" in n for n in entry["notes"])


def test_quantize_with_an_image_folder_as_data(model_copy, hopper, tmp_path):
    from tests.precision.labelfree_helpers import shipped_photos

    calib = shipped_photos(tmp_path / "calib", 8)
    out = tmp_path / "q.json"
    r = quantize("--onnx", model_copy, "--precision", "int8", "--target", "cpu", "--calib", calib,
            "--data", hopper, "--budget-images", "0", "--eval-images", "5", "--json", out)
    assert r.exit_code == 0, r.output
    acc = json.loads(out.read_text())["accuracy"]
    assert acc["labels"] == "fp32" and acc["num_images"] == 5 and acc["held_out_from_calibration"] is False
    assert acc["split"] is None and acc["data"] == str(hopper)
    # calibration images that are also accuracy images are refused, as for a VOC split
    shutil.copy(hopper / "hopper_03.jpg", calib / "same_pixels.jpg")
    r = quantize("--onnx", model_copy, "--precision", "int8", "--target", "cpu", "--calib", calib,
            "--data", hopper, "--budget-images", "0")
    assert r.exit_code == 1 and "calibrate on images you do not evaluate on" in r.output


def test_only_the_shipped_model_uses_the_synthetic_split(binary_model, exported):
    from aspp_deploy.data.synthetic import CLASSES as SYNTH
    from aspp_deploy.eval.evaluate import is_shipped_model, shipped_checkpoint_sha256

    sha = shipped_checkpoint_sha256()
    assert sha and is_shipped_model(list(SYNTH), {"checkpoint_sha256": sha})
    assert not is_shipped_model(["background", "person"], {"checkpoint_sha256": sha})
    for model in (binary_model, exported):  # our test checkpoint has the synthetic classes, not the weights
        entry = read_onnx_manifest(model).entry
        assert not is_shipped_model(entry["classes"], entry.get("source"))
