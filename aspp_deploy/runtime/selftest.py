"""Checks a bundle can run on this device before any engine is built (no TensorRT needed).

* every file listed in ``bundle.json`` is present with its sha256 (nothing lost or altered in the copy);
* preprocessing here gives bit-identical model inputs to the toolkit that made the bundle: the
  reference is the sha256 of the toolkit's input array for a few shipped images (NumPy or Pillow
  releases could, in principle, resize or round differently).
"""

from __future__ import annotations

import hashlib
import platform
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from aspp_deploy.errors import InputError
from aspp_deploy.io import read_json_object, sha256_file
from aspp_deploy.runtime.images import preprocess_image
from aspp_deploy.runtime.preprocess import Preprocess

BUNDLE_JSON = "bundle.json"
REFERENCE = "selftest/reference.json"


def array_sha256(array: np.ndarray) -> str:
    """sha256 over dtype, shape and the C-order bytes of an array."""
    a = np.ascontiguousarray(array)
    h = hashlib.sha256(f"{a.dtype.str}|{tuple(int(s) for s in a.shape)}|".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def input_reference(image: Path, preprocess: Preprocess, name: str) -> Dict[str, Any]:
    """What the reference file records for one image (the bundle writes these with the toolkit)."""
    x = preprocess_image(image, preprocess)
    channels = np.moveaxis(x, -1, 0) if preprocess.input_layout == "NHWC" else x  # NHWC and fused pixels: last
    return {"file": name, "input_sha256": array_sha256(x), "shape": list(x.shape),
            "channel_mean": [float(v) for v in channels.reshape(channels.shape[0], -1).mean(axis=1)]}


def library_versions() -> Dict[str, str]:
    import PIL

    return {"python": platform.python_version(), "numpy": np.__version__, "pillow": PIL.__version__}


def _load_json(path: Path) -> Dict[str, Any]:
    return read_json_object(path, "run this from the bundle folder (or give --bundle DIR)")


def check_files(root: Path) -> List[str]:
    """Problems with the files ``bundle.json`` lists (missing or changed); [] when all match."""
    files = _load_json(root / BUNDLE_JSON).get("files", {})
    problems = []
    for rel, info in sorted(files.items()):
        path = root / rel
        if not path.is_file():
            problems.append(f"{rel} is missing")
        elif sha256_file(path) != info.get("sha256"):
            problems.append(f"{rel} differs from the bundle (sha256)")
    return problems


def check_preprocessing(root: Path) -> List[Dict[str, Any]]:
    """One result per reference image: ``identical`` and, when not, how far the channel means moved."""
    ref = _load_json(root / REFERENCE)
    pre = Preprocess.from_dict(ref["preprocess"])
    results = []
    for item in ref.get("images", []):
        here = input_reference(root / item["file"], pre, item["file"])
        drift = max(abs(a - b) for a, b in zip(here["channel_mean"], item["channel_mean"]))
        results.append({"file": item["file"], "identical": here["input_sha256"] == item["input_sha256"],
                        "max_channel_mean_drift": drift})
    if not results:
        raise InputError(f"{root / REFERENCE} lists no images")
    return results


def selftest(root: Path) -> Dict[str, Any]:
    ref = _load_json(Path(root) / REFERENCE)
    return {"files": check_files(Path(root)), "preprocessing": check_preprocessing(Path(root)),
            "here": library_versions(), "bundle_made_with": ref.get("made_with", {})}
