"""Real trained models on real photos: MediaPipe's person segmenter (MobileNetV3-style, HardSwish, SE
blocks, a transposed-convolution custom op, one sigmoid channel, NHWC) and BlazePose's segmentation
output (a different network: five outputs, a logit channel), imported from their TFLite files and
checked against the TFLite runtime (LiteRT) on real photos, then read by predict as two classes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from aspp_deploy.cli import app

runner = CliRunner()
NORMALISE = ["--mean", "0,0,0", "--std", "1,1,1"]  # MediaPipe feeds RGB in 0..1


def cli(*args) -> object:
    return runner.invoke(app, [str(a) for a in args])


def imported(real_tflite, real_photos, tmp_path_factory, name: str, *extra: str) -> Path:
    out = tmp_path_factory.mktemp(f"import-{name}")
    r = cli("import", real_tflite(name), "--out", out, "--data", real_photos, *NORMALISE, *extra)
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def selfie(real_tflite, real_photos, tmp_path_factory) -> Path:
    return imported(real_tflite, real_photos, tmp_path_factory, "selfie")


@pytest.fixture(scope="module")
def pose(real_tflite, real_photos, tmp_path_factory) -> Path:
    return imported(real_tflite, real_photos, tmp_path_factory, "pose", "--output-name", "Identity_2")


def masks_agree_with_litert(real_tflite, name: str, art: Path, photos: Path, output_index: int) -> list[float]:
    """Per photo: pixels where the adopted ONNX's mask equals LiteRT's thresholded output (prob > 0.5)."""
    pytest.importorskip("ai_edge_litert", reason="the TFLite runtime: pip install 'aspp-deploy[tflite]'")
    import onnxruntime as ort

    from aspp_deploy.runtime.preprocess import Preprocess
    from aspp_deploy.data.voc import load_image
    from aspp_deploy.export.tflite_import import tflite_reference

    entry = json.loads((art / "manifest.json").read_text())["artifacts"]["model.onnx"]
    pre = Preprocess.from_dict(entry["preprocess"])
    litert = tflite_reference(real_tflite(name))
    session = ort.InferenceSession(str(art / "model.onnx"), providers=["CPUExecutionProvider"])
    agree, fg = [], []
    for path in sorted(photos.glob("*.png")):
        x = pre(load_image(path))[None]
        ours = session.run(None, {session.get_inputs()[0].name: x})[0].argmax(1)[0]
        theirs = np.asarray(litert(x)[output_index])[0, ..., 0]
        ref = theirs > (0.0 if entry["spec"]["output"] == "logits" else 0.5)  # sigmoid(z) > 0.5 <=> z > 0
        agree.append(float((ours == ref).mean()))
        fg.append(float(ref.mean()))
    assert max(fg) > 0.1, "no photo shows a person to the model: the agreement below would prove nothing"
    return agree


def test_selfie_reads_as_binary_and_agrees_with_litert(selfie, real_tflite, real_photos):
    entry = json.loads((selfie / "manifest.json").read_text())["artifacts"]["model.onnx"]
    assert entry["classes"] == ["background", "foreground"]
    assert entry["spec"]["output_layout"] == "NHWC" and entry["spec"]["output"] == "probabilities"
    assert entry["outputs"][0]["shape"] == [1, 2, 256, 256]
    check = entry["model"]["tflite_runtime_check"]
    assert check["checked"] and check["argmax_agreement"] >= 0.999
    agree = masks_agree_with_litert(real_tflite, "selfie", selfie, real_photos, 0)
    assert min(agree) >= 0.995, agree


def test_pose_segmentation_output_by_name(pose, real_tflite, real_photos):
    entry = json.loads((pose / "manifest.json").read_text())["artifacts"]["model.onnx"]
    assert entry["spec"]["output"] == "logits" and len(entry["classes"]) == 2
    assert "Identity_2 is the segmentation map" in " ".join(entry["model"]["output_adaptations"])
    agree = masks_agree_with_litert(real_tflite, "pose", pose, real_photos, 2)
    assert min(agree) >= 0.995, agree


def test_unknown_output_name_is_one_line(real_tflite, tmp_path):
    r = cli("import", real_tflite("pose"), "--out", tmp_path, "--output-name", "nope", *NORMALISE)
    assert r.exit_code != 0 and "no such output" in r.output and "Identity_2" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "model.onnx").exists()


def test_predict_labels_people_not_everything_one_class(selfie, real_photos, tmp_path):
    r = cli("predict", real_photos, "--model", selfie / "model.onnx", "--out", tmp_path / "masks",
            "--json", tmp_path / "p.json")
    assert r.exit_code == 0, r.output
    record = json.loads((tmp_path / "p.json").read_text())
    text = json.dumps(record)
    assert "foreground" in text
    from PIL import Image

    fractions = [float((np.asarray(Image.open(p)) == 1).mean()) for p in sorted((tmp_path / "masks").glob("*.png"))]
    assert fractions and max(fractions) > 0.1 and min(fractions) < 0.05, fractions


@pytest.mark.parametrize("damage", ["truncated", "scrambled"])
def test_corrupt_tflite_is_one_line_nothing_written(real_tflite, tmp_path, damage):
    data = real_tflite("selfie").read_bytes()
    if damage == "truncated":
        data = data[: len(data) // 3]
    else:
        rng = np.random.default_rng(0)
        body = bytearray(data)
        for i in rng.integers(8, 4096, 400):
            body[i] = int(rng.integers(0, 256))
        data = bytes(body)
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(data)
    r = cli("import", bad, "--out", tmp_path / "art", *NORMALISE)
    assert r.exit_code != 0 and "bad.tflite" in r.output and "Traceback" not in r.output, r.output
    assert len([line for line in r.output.splitlines() if line.startswith("error:")]) == 1
    assert not (tmp_path / "art" / "model.onnx").exists()
