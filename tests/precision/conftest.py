"""Fixtures for the precision tests: a tiny exported DeepLab ONNX, calibration images, and a
hand-built model whose INT8 version is known to need the accuracy budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from aspp_deploy.runtime.preprocess import Preprocess
from aspp_deploy.data.synthetic import SynthConfig, write_calibration_folder
from aspp_deploy.data.voc import voc_palette, write_split_list
from aspp_deploy.export.manifest import embed, update_sidecar
from aspp_deploy.io import atomic_save_image
from tests.conftest import copy_model


@pytest.fixture
def fp32_model(tmp_path, exported) -> Path:
    """A private copy of the exported model (outputs are written beside it)."""
    return copy_model(exported, tmp_path / "model")


@pytest.fixture(scope="session")
def calib_dir(tmp_path_factory) -> Path:
    return write_calibration_folder(tmp_path_factory.mktemp("calib"), 8, cfg=SynthConfig(size=96))


def folder_listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# --- a model built to need the accuracy budget ---------------------------------------------

SIDE = 32
CLASSES = [f"c{i}" for i in range(6)]


def outlier_model(path: Path) -> Path:
    """conv1 (stem) puts a constant ~1000 in channel 0 next to small features; two later convs
    ignore channel 0 but read the small ones. Per-tensor INT8 of their inputs spends the whole
    range on the outlier and rounds the small features away, so only keeping those layers in
    higher precision recovers the FP32 segmentation."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32)
    b1 = np.zeros(8, np.float32)
    w1[0], b1[0] = 0.0, 1000.0
    w2 = (np.eye(8) + rng.normal(0, 0.3, (8, 8))).astype(np.float32).reshape(8, 8, 1, 1)
    w2[0, :], w2[:, 0] = 0.0, 0.0
    w2[0, 0] = 1.0  # channel 0 (the outlier) passes through unchanged
    w3 = rng.normal(0, 1.0, (6, 8, 1, 1)).astype(np.float32)
    w3[:, 0] = 0.0
    inits = [numpy_helper.from_array(a, n) for a, n in
             ((w1, "w1"), (b1, "b1"), (w2, "w2"), (w3, "w3"))]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="/backbone/conv1/Conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="/backbone/relu/Relu"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="/backbone/layer1/layer1.0/conv1/Conv"),
        helper.make_node("Relu", ["c2"], ["r2"], name="/backbone/layer1/layer1.0/relu/Relu"),
        helper.make_node("Conv", ["r2", "w3"], ["logits"], name="/classifier/classifier.4/Conv"),
    ]
    graph = helper.make_graph(nodes, "outlier", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, SIDE, SIDE])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 6, SIDE, SIDE])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    entry = {"kind": "onnx", "file": path.name, "precision": "fp32", "outputs_class_ids": False,
             "preprocess": Preprocess(SIDE, SIDE).to_dict(), "classes": CLASSES,
             "palette": [list(c) for c in voc_palette(len(CLASSES))], "model": {"note": "outlier test model"}}
    embed(model, entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    update_sidecar(path.parent, path.name, entry)
    return path


def labelled_by_model(model: Path, root: Path, count: int, seed: int) -> Path:
    """A VOC folder whose val masks are the FP32 model's own predictions (FP32 mIoU = 100)."""
    from aspp_deploy.backends.onnxruntime_backend import ort_session

    sess = ort_session(model)
    pre = Preprocess(SIDE, SIDE)
    rng = np.random.default_rng(seed)
    palette = [v for c in voc_palette() for v in c]
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "SegmentationClass").mkdir(parents=True, exist_ok=True)
    ids = []
    for i in range(count):
        img = Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8))
        name = f"val_{i:05d}"
        atomic_save_image(img, root / "JPEGImages" / f"{name}.png")
        logits = sess.run(None, {"input": pre(img)[None]})[0]
        mask = Image.fromarray(logits[0].argmax(0).astype(np.uint8), mode="P")
        mask.putpalette(palette)
        atomic_save_image(mask, root / "SegmentationClass" / f"{name}.png")
        ids.append(name)
    write_split_list(root, "val", ids)
    return root


def random_images(folder: Path, count: int, seed: int, size: int = SIDE) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"cal_{i:03d}.png")
    return folder
