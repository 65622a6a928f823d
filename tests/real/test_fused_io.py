"""Fused I/O on a real trained model and real photos: MediaPipe's selfie segmenter (NHWC, one sigmoid
channel read as foreground probability > 0.5) imported with and without ``--fused-io``, and the tiny
DeepLab fixtures; ``Segmenter.predict`` must give the same masks either way."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from aspp_deploy.runtime.segmenter import Segmenter
from tests.real.test_real_models import imported

MIN_AGREEMENT = 0.999  # per photo: pixels where the fused and the unfused model's masks agree


@pytest.fixture(scope="module")
def selfie_pair(real_tflite, real_photos, tmp_path_factory) -> tuple[Path, Path]:
    plain = imported(real_tflite, real_photos, tmp_path_factory, "selfie")
    fused = imported(real_tflite, real_photos, tmp_path_factory, "selfie", "--fused-io")
    return plain / "model.onnx", fused / "model.onnx"


def _photos(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix == ".png")


def agreement(plain: Path, fused: Path, photos: list[Path]) -> tuple[list[float], list[float]]:
    """Per photo: mask agreement, and the unfused mask's foreground share (a mask that is all one class
    would agree trivially)."""
    agree, shares = [], []
    with Segmenter(plain) as a, Segmenter(fused) as b:
        assert b.preprocess.fused_io and not a.preprocess.fused_io
        for path in photos:
            ma, mb = a.predict(path), b.predict(path)
            assert ma.shape == mb.shape and mb.dtype == np.uint8
            agree.append(float((ma == mb).mean()))
            shares.append(float((ma > 0).mean()))
    return agree, shares


def test_selfie_fused_takes_uint8_nhwc_and_gives_the_unfused_masks(selfie_pair, real_photos):
    plain, fused = selfie_pair
    model = onnx.load(str(fused))
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.type.tensor_type.elem_type == TensorProto.UINT8 and out.type.tensor_type.elem_type == TensorProto.UINT8
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == [1, 256, 256, 3]
    assert [d.dim_value for d in out.type.tensor_type.shape.dim] == [1, 256, 256]
    entry = json.loads((fused.parent / "manifest.json").read_text())["artifacts"]["model.onnx"]
    assert entry["preprocess"]["fused_io"] and entry["spec"]["output"] == "probabilities"
    assert entry["model"]["tflite_runtime_check"]["argmax_agreement"] >= 0.999
    assert entry["parity"]["argmax_agreement"] >= 0.9999
    photos = _photos(real_photos)
    agree, shares = agreement(plain, fused, photos)
    assert len(photos) >= 10 and max(shares) > 0.1 and min(shares) < 0.9, shares  # people, and not everywhere
    assert min(agree) >= MIN_AGREEMENT, dict(zip((p.name for p in photos), agree))


def test_tiny_deeplab_fused_gives_the_unfused_masks_on_real_photos(fused_exported, exported, real_photos):
    agree, _ = agreement(exported, fused_exported, _photos(real_photos))
    assert min(agree) >= MIN_AGREEMENT, agree
