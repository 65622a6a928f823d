"""``bundle_from_onnx``: assemble a Jetson bundle folder from exported / quantized ONNX files.

The folder is written in a temporary sibling of ``out`` and renamed into place at the end, so ``out``
is either the old bundle or the complete new one, never a half-written folder.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from aspp_deploy.bundle import deepstream, texts
from aspp_deploy.errors import InputError
from aspp_deploy.io import (atomic_save_image, atomic_write_text, is_replaceable as io_is_replaceable, json_text,
                            replace_folder, sha256_file)
from aspp_deploy.runtime.builder import choose_build, JETPACK, trtexec_line
from aspp_deploy.runtime.manifest import ArtifactEntry
from aspp_deploy.runtime.portable import copy_runtime, runtime_files
from aspp_deploy.runtime.preprocess import Preprocess
from aspp_deploy.runtime.selftest import input_reference, library_versions, REFERENCE
from aspp_deploy.runtime.trt.build import DEFAULT_WORKSPACE_MB
from aspp_deploy.serve import triton_config as triton
from aspp_deploy.serve.repository import TritonOptions, write_service

__all__ = ["FORMAT", "BundleRequest", "bundle_from_onnx", "copy_runtime", "is_replaceable", "replace_folder",
           "runtime_files"]

FORMAT = "aspp-deploy/jetson-bundle"
SELFTEST_IMAGES = 2
PRECISIONS = ("fp16", "int8")
Log = Callable[[str], None]


@dataclass
class BundleRequest:
    fp32_onnx: Path
    variants: Dict[str, Path]  # precision -> its ONNX ("fp16": model.fp16.onnx, "int8": model.int8-trt.onnx)
    out: Path
    name: str = "aspp"
    calib_images: List[Path] = field(default_factory=list)  # shipped for on-device INT8 calibration
    calib_cache: Optional[Path] = None  # a TensorRT calibration cache (+ .json) from `aspp-deploy build --legacy-int8`
    selftest_images: List[Path] = field(default_factory=list)


def _entry(path: Path) -> Dict[str, Any]:
    from aspp_deploy.export.manifest import read_onnx_manifest, refuse_external_data
    from aspp_deploy.export.trt_check import SIDECAR_KEY

    entry = dict(read_onnx_manifest(path).entry)
    refuse_external_data(path, "the bundle")  # it ships and rewrites models/<file> alone
    entry["onnx_sha256"] = sha256_file(path)
    entry["file"] = path.name
    entry.pop(SIDECAR_KEY, None)  # the bundle ships the pre-flight's summary, not the findings file
    return entry


def _check_sources(req: BundleRequest) -> tuple:
    """The FP32 entry and the variants' entries, checked to belong together."""
    fp32 = _entry(req.fp32_onnx)
    if fp32.get("precision", "fp32") != "fp32":
        raise InputError(f"{req.fp32_onnx} is {fp32.get('precision')}: give the FP32 ONNX from `aspp-deploy export`")
    deepstream.static_input(fp32)
    for key in ("preprocess", "classes", "inputs", "outputs"):
        if not fp32.get(key):
            raise InputError(f"{req.fp32_onnx}'s manifest has no {key}: export it again with `aspp-deploy export`")
    variants = {}
    for precision, path in req.variants.items():
        if precision not in PRECISIONS:
            raise InputError(f"unknown precision {precision!r}: the bundle takes {' and '.join(PRECISIONS)}")
        entry = _entry(path)
        if entry.get("precision") != precision or (precision == "int8" and entry.get("target") != "trt"):
            raise InputError(f"{path} is not a {precision} ONNX for TensorRT (its manifest says "
                             f"{entry.get('precision')}, target {entry.get('target')})")
        source = entry.get("source") or {}
        if source.get("onnx_sha256") != fp32["onnx_sha256"]:
            raise InputError(f"{path} was made from another FP32 ONNX than {req.fp32_onnx}: quantize it again")
        entry.setdefault("source", {})["onnx"] = req.fp32_onnx.name
        variants[precision] = entry
    if req.calib_cache is not None:
        if not req.calib_cache.is_file() or not Path(str(req.calib_cache) + ".json").is_file():
            raise InputError(f"calibration cache {req.calib_cache} (and its .json sidecar, written by "
                             "`aspp-deploy build --legacy-int8`) not found")
    return fp32, variants


def _copy(src: Path, root: Path, rel: str) -> str:
    dst = root / rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return rel


def _deepstream(root: Path, req: BundleRequest, fp32: dict, variants: dict, models: dict, log: Log) -> dict:
    # A fused-I/O model runs in nvinfer unfused (deepstream.py says why); one that returns class ids by itself cannot.
    fused = bool((fp32.get("preprocess") or {}).get("fused_io"))
    own_kind = (fp32.get("spec") or {}).get("output") if fused else fp32.get("output_kind")
    if fp32.get("outputs_class_ids") and (not fused or own_kind == "class_ids"):
        return {"skipped": "the model outputs class ids (exported with --argmax); nvinfer's segmentation parser "
                           "needs per-class scores: export without --argmax for DeepStream"}
    configs = {}
    for precision, entry in variants.items():
        ds_name = entry["file"].replace(".onnx", ".deepstream.onnx")
        ds_entry = {k: v for k, v in entry.items() if k not in ("onnx_sha256", "accuracy", "quantization", "trt_check",
                                                                 "trt_check_findings")}
        ds_entry.update({"file": ds_name, "deepstream": True,
                         "source": {"onnx": entry["file"], "onnx_sha256": entry["onnx_sha256"]}})
        output = deepstream.deepstream_onnx(root / "models" / entry["file"], root / "models" / ds_name,
                                            fp32["preprocess"]["std"], ds_entry,
                                            layout=fp32["preprocess"].get("layout", "NCHW"),
                                            output_kind=own_kind or "logits")
        ds_entry["onnx_sha256"] = sha256_file(root / "models" / ds_name)
        models[ds_name] = ds_entry
        config = f"deepstream/config_infer_primary_{req.name}_{precision}.txt"
        engine = f"engines/deepstream.{precision}.engine"
        text = deepstream.nvinfer_config(ds_entry if fused else fp32, precision, f"../models/{ds_name}", f"../{engine}",
                                         output_name=output["name"], fused_from=entry["file"] if fused else None)
        problems = deepstream.check_nvinfer_config(text)
        if problems:  # a bug here, never the user's input
            raise AssertionError(f"generated nvinfer config is invalid: {problems}")
        atomic_write_text(root / config, text)
        configs[precision] = {"config": config, "onnx": f"models/{ds_name}", "engine": engine,
                              "network_mode": deepstream.NETWORK_MODE[precision], "output": output["name"]}
        log(f"DeepStream {precision}: {config}")
    return {"configs": configs}


def _build_paths(models: dict, fp32_name: str, precisions: List[str], can_calibrate: bool, info: dict) -> dict:
    paths: Dict[str, Dict[str, Any]] = {}
    entries = {name: ArtifactEntry.from_dict(record, name) for name, record in models.items()}
    for _, version in JETPACK:
        key = f"{version[0]}.{version[1]}"
        paths[key] = {}
        for precision in precisions:
            try:
                choice = choose_build(entries, fp32_name, precision, version, can_calibrate=can_calibrate)
            except InputError as exc:
                paths[key][precision] = {"error": str(exc)}
                continue
            paths[key][precision] = {**choice.to_dict(), "trtexec": trtexec_line(
                choice, "models", info["engines"][precision], (info.get("calibration") or {}).get("device_cache"),
                DEFAULT_WORKSPACE_MB)}
    return paths


def geometry_images(height: int, width: int) -> Dict[str, Any]:
    """Synthetic RGB images (PNG-friendly patterns) around the model size: smaller, larger, and the two
    mixed cases (narrower but taller, wider but shorter), where resampling code differs most.
    Pillow 10.4 and 13 differ by one level on some pixels of the narrower-but-taller case."""
    import numpy as np
    from PIL import Image

    sizes = {"smaller": (max(8, width // 2), max(8, height // 2)), "larger": (width * 3 // 2, height * 3 // 2),
             "narrow-tall": (max(8, width // 2 + 1), height * 3 // 2 + 1),
             "wide-short": (width * 3 // 2 + 1, max(8, height // 2 + 1))}
    images = {}
    for name, (w, h) in sizes.items():
        y, x = np.mgrid[0:h, 0:w]
        rgb = np.stack([(x * 7 + y * 3) % 256, ((x ^ y) * 5) % 256, (x * y // 7) % 256], axis=-1)
        images[name] = Image.fromarray(rgb.astype(np.uint8))
    return images


def _selftest(root: Path, images: List[Path], pre: dict) -> dict:
    if not images:
        raise InputError("no images for the bundle's preprocessing self-test")
    preprocess = Preprocess.from_dict(pre)
    refs = []
    for image in images[:SELFTEST_IMAGES]:
        rel = _copy(image, root, f"selftest/{image.name}")
        refs.append(input_reference(root / rel, preprocess, rel))
    for name, image in geometry_images(preprocess.height, preprocess.width).items():
        rel = f"selftest/geometry-{name}.png"
        atomic_save_image(image, root / rel)
        refs.append(input_reference(root / rel, preprocess, rel))
    atomic_write_text(root / REFERENCE, json.dumps({"preprocess": pre, "images": refs,
                                                    "made_with": library_versions()}, indent=2) + "\n")
    return {"reference": REFERENCE, "count": len(refs)}


def _assemble(root: Path, req: BundleRequest, fp32: dict, variants: dict, log: Log) -> dict:
    from aspp_deploy.export.manifest import FORMAT as MANIFEST_FORMAT
    from aspp_deploy.export.manifest import tool_versions

    precisions = list(req.variants)
    stem = req.fp32_onnx.stem
    models = {fp32["file"]: fp32, **{e["file"]: e for e in variants.values()}}
    _copy(req.fp32_onnx, root, f"models/{fp32['file']}")
    for precision, path in req.variants.items():
        _copy(path, root, f"models/{variants[precision]['file']}")
    log(f"models: {', '.join(models)}")
    info: Dict[str, Any] = {
        "format": FORMAT, "schema": 1, "target": "jetson", "name": req.name,
        "created": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "toolkit": tool_versions("pillow"),
        "model": {"source_onnx": str(req.fp32_onnx), "onnx": f"models/{fp32['file']}",
                  "inputs": fp32["inputs"], "outputs": fp32["outputs"],
                  "outputs_class_ids": bool(fp32.get("outputs_class_ids")), "preprocess": fp32["preprocess"],
                  "classes": fp32["classes"], "palette": fp32.get("palette"), "source": fp32.get("source")},
        "precisions": precisions, "primary": precisions[0],
        "onnx": {"fp32": f"models/{fp32['file']}", **{p: f"models/{e['file']}" for p, e in variants.items()}},
        "engines": {p: f"engines/{stem}.{p}.engine" for p in precisions},
    }
    if "int8" in precisions and req.calib_images:
        calib = {"images": "calibration/images", "count": len(req.calib_images),
                 "device_cache": f"engines/{stem}.int8.calib"}
        for image in req.calib_images:
            _copy(image, root, f"calibration/images/{image.name}")
        if req.calib_cache is not None:
            calib["shipped_cache"] = _copy(req.calib_cache, root, f"calibration/{stem}.int8.calib")
            _copy(Path(str(req.calib_cache) + ".json"), root, f"calibration/{stem}.int8.calib.json")
        info["calibration"] = calib
        atomic_write_text(root / "calibration/README.md", texts.calibration_readme(info))
        log(f"calibration: {len(req.calib_images)} image(s)")
    info["deepstream"] = _deepstream(root, req, fp32, variants, models, log)
    atomic_write_text(root / "models/manifest.json", json_text({"format": MANIFEST_FORMAT, "artifacts": models},
                                                               sort_keys=True))
    repo = "triton/model_repository"
    trt_model, onnx_model = f"{req.name}_trt", f"{req.name}_onnx"
    trt_entry = variants[precisions[0]]  # the plan is built from the primary precision: same I/O as FP32 here
    for model_name, backend, entry in ((trt_model, "tensorrt", trt_entry), (onnx_model, "onnxruntime", fp32)):
        (root / repo / model_name / "1").mkdir(parents=True, exist_ok=True)
        atomic_write_text(root / repo / model_name / "config.pbtxt", triton.config_pbtxt(model_name, entry, backend))
    # The segmentation service: images in, masks at their size out, preprocessing in the Python backend,
    # the network on the TensorRT plan through business-logic scripting (images -> <name> -> <name>_trt).

    write_service(root / repo, req.name, None, fp32, TritonOptions(name=req.name, executor="triton", target="trt"))
    info["triton"] = {"repository": repo, "trt_model": trt_model, "onnx_model": onnx_model, "service_model": req.name,
                      "plan_from": info["engines"][precisions[0]], "plan_to": f"{repo}/{trt_model}/1/{triton.PLAN_FILE}",
                      "onnx_from": info["onnx"]["fp32"], "onnx_to": f"{repo}/{onnx_model}/1/{triton.ONNX_FILE}"}
    copy_runtime(root)
    info["selftest"] = _selftest(root, req.selftest_images or req.calib_images, fp32["preprocess"])
    info["build_paths"] = _build_paths(models, fp32["file"], precisions, bool(req.calib_images), info)
    atomic_write_text(root / "requirements.txt", texts.requirements_txt())
    atomic_write_text(root / "build.sh", texts.build_sh(info))
    os.chmod(root / "build.sh", 0o755)
    atomic_write_text(root / "README.md", texts.readme_md(info))
    info["files"] = {p.relative_to(root).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
                     for p in sorted(root.rglob("*")) if p.is_file()}
    atomic_write_text(root / "bundle.json", json_text(info))
    return info


def is_replaceable(out: Path, marker: str = "bundle.json", fmt: str = FORMAT) -> bool:
    """True when ``out`` may be replaced by a bundle: missing, empty, or a folder this tool wrote
    (``aspp_deploy.io.is_replaceable``; ``marker`` and ``fmt`` default to the bundle's)."""
    return io_is_replaceable(out, marker, fmt)


def bundle_from_onnx(req: BundleRequest, log: Log = lambda m: None) -> dict:
    """Write the bundle folder ``req.out`` (replacing an older bundle there); returns ``bundle.json``'s content."""
    out = Path(req.out)
    if not is_replaceable(out):
        raise InputError(f"{out} exists and is not an aspp-deploy bundle: choose another --out (it is never overwritten)")
    fp32, variants = _check_sources(req)
    return replace_folder(out, lambda root: _assemble(root, req, fp32, variants, log))
