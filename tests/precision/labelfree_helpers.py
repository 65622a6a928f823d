"""A small real-ish binary (person/background) model and real photos, for the tests of accuracy
without labels: the tiny DeepLab-like net of tests/byom with 2 classes, exported at 64x64 through
`aspp-deploy export --arch`, its foreground bias set so about half of a photo is foreground; photos
are matplotlib's grace_hopper.jpg with crops and flips, and the shipped calibration images."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from PIL import Image, ImageOps

from aspp_deploy.runtime.calibration import SHIPPED_CALIBRATION

MODELS_FILE = Path(__file__).resolve().parents[1] / "byom" / "tiny_models.py"
CLASSES = "background,person"
SIZE = ["--height", "64", "--width", "64"]


def photos(folder: Path, count: int = 10) -> Path:
    """``count`` views of grace_hopper.jpg (crops at several places and scales, mirrored, rotated)."""
    from matplotlib import cbook

    folder.mkdir(parents=True, exist_ok=True)
    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as im:
        base = im.convert("RGB")
    w, h = base.size
    for i in range(count):
        side = int(min(w, h) * (0.55 + 0.04 * (i % 5)))
        x0, y0 = (i * 37) % (w - side), (i * 53) % (h - side)
        view = base.crop((x0, y0, x0 + side, y0 + side + (i % 3) * 20))
        if i % 2:
            view = ImageOps.mirror(view)
        if i % 4 == 3:
            view = view.rotate(90, expand=True)
        view.save(folder / f"hopper_{i:02d}.jpg", quality=92)
    return folder


def shipped_photos(folder: Path, count: int) -> Path:
    """A copy of the first ``count`` shipped calibration images."""
    folder.mkdir(parents=True, exist_ok=True)
    for p in sorted(SHIPPED_CALIBRATION.glob("*.jpg"))[:count]:
        shutil.copy(p, folder / p.name)
    return folder


def binary_weights(path: Path) -> Path:
    """Random weights (seed 0) of tests/byom/tiny_models.py's ``build(2)``, as a plain state dict."""
    import sys

    import torch

    sys.path.insert(0, str(MODELS_FILE.parent))
    try:
        import tiny_models  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    torch.manual_seed(0)
    net = tiny_models.build(2).eval()
    torch.save(net.state_dict(), path)
    return path


def balance_foreground(onnx_path: Path, images: list[Path]) -> None:
    """Set the last Conv's class-1 bias so that about half of the pixels of ``images`` are foreground
    (random weights otherwise predict one class everywhere), in place, manifest updated."""
    from aspp_deploy.backends.onnxruntime_backend import ort_session
    from aspp_deploy.runtime.preprocess import Preprocess
    from aspp_deploy.export.manifest import embed, read_onnx_manifest, write_with_entry

    entry = read_onnx_manifest(onnx_path).entry
    pre = Preprocess.from_dict(entry["preprocess"])
    sess = ort_session(onnx_path)
    diffs = []
    for p in images:
        with Image.open(p) as im:
            out = np.asarray(sess.run(None, {sess.get_inputs()[0].name: pre(im.convert("RGB"))[None]})[0])
        diffs.append((out[0, 1] - out[0, 0]).ravel())
    shift = float(np.median(np.concatenate(diffs)))
    model = onnx.load(str(onnx_path))
    conv = [n for n in model.graph.node if n.op_type == "Conv"][-1]
    bias = next(t for t in model.graph.initializer if t.name == conv.input[2])
    b = numpy_helper.to_array(bias).copy()
    b[1] -= shift
    bias.CopyFrom(numpy_helper.from_array(b, bias.name))
    embed(model, entry)
    write_with_entry(onnx_path, model.SerializeToString(), dict(entry))


def perturbed(src: Path, out: Path, scale: float = 0.3, seed: int = 0) -> Path:
    """A copy of ``src`` with noise on every Conv weight: a candidate that disagrees with it a little."""
    rng = np.random.default_rng(seed)
    model = onnx.load(str(src))
    weights = {n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    for t in model.graph.initializer:
        if t.name in weights:
            w = numpy_helper.to_array(t)
            t.CopyFrom(numpy_helper.from_array(
                (w + rng.normal(0, scale * float(np.abs(w).mean()), w.shape)).astype(w.dtype), t.name))
    onnx.save(model, str(out))
    return out
