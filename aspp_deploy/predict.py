"""Segment a user's own images with any artifact: the Python API behind ``aspp-deploy predict``.

``open_model`` opens an artifact on a backend (PyTorch sources, ONNX Runtime, TensorRT and whatever
``aspp_deploy.backends.registry`` adds) together with what its manifest records: preprocessing,
classes, palette and the batch it takes. ``predict_images`` streams over image files (never more than
one batch in memory), writes per image a class-id mask PNG (palette mode, the model's colours) at the
image's own size and optionally an overlay with a class legend, and returns per-image class areas.
Unreadable images are skipped and reported; output names stay inside the output folder and never
overwrite each other.

Example::

    from aspp_deploy.predict import find_images, open_model, predict_images

    with open_model("onnxruntime", Path("artifacts/model.onnx")) as model:
        files, _ = find_images([Path("photos")])
        summary = predict_images(model, files, Path("predictions"), overlay=True)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from PIL import Image

from aspp_deploy.backends import registry
from aspp_deploy.backends.base import ModelFacts, Runner, RunnerEngine
from aspp_deploy.backends.torch_backend import open_torch_source
from aspp_deploy.data.voc import IMAGE_EXTENSIONS, IMAGE_FORMATS, load_image
from aspp_deploy.errors import AsppDeployError, InputError
from aspp_deploy.io import atomic_save_image, ensure_writable
from aspp_deploy.runtime.app import StreamOutputs, area_record, mask_image, safe_stem, segment_stream
from aspp_deploy.runtime.images import overlay_with_legend
from aspp_deploy.runtime.pipeline import StreamStats
from aspp_deploy.runtime.preprocess import Preprocess
from aspp_deploy.runtime.segmenter import Segmenter
from aspp_deploy.spec import spec_from_flags

DEFAULT_DYNAMIC_BATCH = 4
MASK_SUFFIX = ".mask.png"
OVERLAY_SUFFIX = ".overlay.png"
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


@dataclass
class PredictModel:
    """A runner with what feeding it and reading its output needs; ``segmenter`` runs it (the runtime's
    ``Segmenter`` over the runner: preprocessing, batches, inference, post-processing)."""

    runner: Runner
    preprocess: Preprocess
    classes: list[str]
    palette: list[list[int]]
    backend: str
    artifact: str
    precision: str
    batch: int                 # images per inference
    static_batch: int | None   # the artifact's fixed batch (inputs are padded to it), None when dynamic
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        engine = RunnerEngine(self.runner, ModelFacts(self.preprocess, self.classes, self.palette), self.static_batch)
        self.segmenter = Segmenter(engine, batch=self.batch)

    def close(self) -> None:
        self.segmenter.close()

    def __enter__(self) -> "PredictModel":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the model ------------------------------------------------------------------------------------------


def backend_for(model: Path) -> str:
    """The registry backend whose artifacts end like ``model`` (the first one listed wins)."""
    suffixes = getattr(registry, "SUFFIXES", {})
    for name in registry.BACKENDS:
        if model.suffix.lower() in suffixes.get(name, ()):
            return name
    known = sorted({s for name in registry.BACKENDS for s in suffixes.get(name, ())})
    raise InputError(f"cannot tell which backend runs {model.name}: give --backend "
                     f"({', '.join(registry.BACKENDS)}); artifacts end in {' / '.join(known)}")


def artifact_description(model: Path) -> dict[str, Any]:
    """preprocess / classes / palette / batch / precision from an artifact's manifest: an ONNX's (embedded
    or ``manifest.json``), an engine's ``ENGINE.json``, or, for another backend's file, the manifest of
    the ONNX of the same name beside it."""
    suffix = model.suffix.lower()
    if suffix in ENGINE_SUFFIXES:
        from aspp_deploy.runtime.manifest import EngineManifest

        engine = EngineManifest.read(model)  # InputError without its preprocessing recorded
        assert engine.preprocess is not None
        io = [t for t in engine.extra.get("io") or [] if isinstance(t, dict) and t.get("mode") == "input"]
        shape = list(io[0].get("shape") or []) if io else []
        profile = (io[0].get("profile") or {}) if io else {}
        first = shape[0] if shape else 1
        static = int(first) if isinstance(first, int) and first > 0 else None
        max_batch = int((profile.get("max") or [0])[0] or 0) or None
        return {"preprocess": engine.preprocess, "classes": engine.classes, "palette": engine.palette,
                "precision": str(engine.precision or "fp32"), "static_batch": static, "max_batch": max_batch}
    onnx_path = model if suffix == ".onnx" else model.with_suffix(".onnx")
    if not model.is_file():
        raise InputError(f"model not found: {model}")
    if not onnx_path.is_file():
        raise InputError(f"{model.name} has no manifest: predict reads the preprocessing, classes and palette "
                         f"from the ONNX it was made from ({onnx_path.name} beside it, not found)")
    from aspp_deploy.export.manifest import read_onnx_manifest

    entry = read_onnx_manifest(onnx_path).typed
    return {"preprocess": entry.preprocess, "classes": list(entry.classes), "palette": [list(c) for c in entry.palette],
            "precision": str(entry.precision), "static_batch": entry.static_batch, "max_batch": None}


def _choose_batch(asked: int, static: int | None, max_batch: int | None, name: str) -> int:
    if asked < 0:
        raise InputError("--batch must be >= 1 (0: the model's batch)")
    if static is not None:
        if asked and asked != static:
            raise InputError(f"{name} has a static batch of {static}; --batch {asked} asked for "
                             "(export with --dynamic batch for other batch sizes)")
        return static
    batch = asked or DEFAULT_DYNAMIC_BATCH
    if max_batch is not None and batch > max_batch:
        if asked:
            raise InputError(f"{name} takes at most {max_batch} images per batch; --batch {asked} asked for")
        batch = max_batch
    return batch


def open_model(backend: str | None = None, model: Path | None = None, source_options: tuple = (None, None, None, None),
               spec: Any = None, batch: int = 0, device: str = "cpu", threads: int = 0,
               pipelined: bool = False) -> PredictModel:
    """Open ``model`` on ``backend`` (None: from the file's suffix).

    ``torch`` runs a PyTorch source: ``model`` (a checkpoint) or ``source_options`` =
    ``(checkpoint, arch, arch_args, weights)`` as ``aspp-deploy eval`` takes them, resolved with ``spec``;
    with neither, the shipped checkpoint. Every other backend opens ``model`` through the registry and
    reads the model description from its manifest. ``pipelined``: the model will run in the stream
    pipeline (see ``registry.open_runner``)."""
    checkpoint, arch, arch_args, weights = source_options
    torch_options = checkpoint is not None or arch is not None
    if backend is None:
        if model is not None:
            backend = backend_for(model)
        elif torch_options:
            backend = "torch"
        else:
            raise InputError("no model: give --model ARTIFACT (an ONNX from `aspp-deploy export`, an engine from "
                             "`aspp-deploy build`), or --checkpoint / --arch with --weights for PyTorch")
    if backend not in registry.BACKENDS:
        raise InputError(f"unknown backend {backend!r}; choose one of {', '.join(registry.BACKENDS)}")
    if backend == "torch":
        if model is not None and torch_options:
            raise InputError("give the PyTorch model once: --model or --checkpoint / --arch, not both")
        if model is not None:
            registry.check_artifact_kind("torch", model)
            checkpoint = model
        return _open_torch((checkpoint, arch, arch_args, weights), spec, batch, device, threads)
    if torch_options:
        raise InputError(f"--checkpoint / --arch / --weights describe a PyTorch model: use --backend torch, "
                         f"or give the {backend} artifact with --model")
    if spec is not None:
        raise InputError(f"--spec / --height / --width / --classes describe a PyTorch model; {model or 'the artifact'}'s "
                         "manifest already records its spec (export again with them to change it)")
    if model is None:
        raise InputError(f"--backend {backend} needs --model ARTIFACT (see `aspp-deploy export` / `aspp-deploy build`)")
    registry.check_artifact_kind(backend, model)
    if not model.is_file():  # named before a missing runtime: the file is what the user can fix here
        raise InputError(f"model not found: {model}")
    registry.require_backend(backend)
    desc = artifact_description(model)
    chosen = _choose_batch(batch, desc["static_batch"], desc["max_batch"], model.name)
    runner = registry.open_runner(backend, model, desc["precision"], device, threads, pipelined)
    return PredictModel(runner, desc["preprocess"], [str(c) for c in desc["classes"]], desc["palette"], backend,
                        str(model), runner.info.precision or desc["precision"], chosen, desc["static_batch"])


def _open_torch(source_options: tuple, spec: Any, batch: int, device: str, threads: int) -> PredictModel:
    runner, resolved = open_torch_source(source_options, spec if spec is not None else spec_from_flags(None),
                                         device, threads)
    chosen = _choose_batch(batch, None, None, runner.source.label)
    return PredictModel(runner, resolved.preprocess, list(resolved.classes), [list(c) for c in resolved.palette],
                        "torch", runner.info.artifact, runner.info.precision, chosen, None,
                        notes=[f"assumed {a}" for a in resolved.assumed])


# -- inputs and output names ---------------------------------------------------------------------------


def find_images(inputs: Sequence[Path]) -> tuple[list[Path], list[str]]:
    """Image files from files and folders (a folder's images by name, not recursive), and notes about
    what was passed over. A named file is always kept (it fails later, with its name, when it is not a
    readable image); a folder contributes its files ending in one of ``IMAGE_EXTENSIONS`` (any case)."""
    if not inputs:
        raise InputError("no images given: name image files or a folder of images")
    files: list[Path] = []
    notes: list[str] = []
    seen: set[Path] = set()
    for path in inputs:
        path = Path(path)
        if path.is_dir():
            entries = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
            found = [p for p in entries if p.suffix.lower() in IMAGE_EXTENSIONS]
            others = sorted({p.suffix.lower() or p.name for p in entries if p not in found})
            if others:
                notes.append(f"{path}: skipped {len(entries) - len(found)} file(s) that are not images "
                             f"({', '.join(others)}; readable: {IMAGE_FORMATS})")
            if not found:
                raise InputError(f"{path} has no images ({IMAGE_FORMATS})")
        else:
            found = [path]
        for p in found:
            key = p.resolve()
            if key not in seen:
                seen.add(key)
                files.append(p)
    return files, notes


def output_stems(files: Sequence[Path]) -> list[str]:
    """One distinct stem per input, in order: the image's own stem, then ``stem-2``, ``stem-3``... when an
    earlier input took it (same name in another folder, or ``a.jpg`` beside ``a.png``). Compared without
    case, so case-insensitive file systems cannot merge two outputs either."""
    taken: set[str] = set()
    stems = []
    for path in files:
        base = safe_stem(Path(path).stem)
        stem, n = base, 1
        while stem.lower() in taken:
            n += 1
            stem = f"{base}-{n}"
        taken.add(stem.lower())
        stems.append(stem)
    return stems


def contained(out: Path, name: str) -> Path:
    """``out / name``, refusing any name that would resolve outside ``out``."""
    target = (out / name).resolve()
    if target.parent != out.resolve():
        raise InputError(f"output name {name!r} would leave {out}")
    return out / name


# -- prediction -------------------------------------------------------------------------------------------


@dataclass
class _Loaded:
    index: int
    path: Path
    stem: str
    image: Any  # PIL image


def _batches(files: Sequence[Path], stems: Sequence[str], batch: int,
             on_fail: Callable[[int, Path, str], None]) -> Iterator[list[_Loaded]]:
    chunk: list[_Loaded] = []
    for i, (path, stem) in enumerate(zip(files, stems)):
        try:
            chunk.append(_Loaded(i, path, stem, load_image(path)))
        except AsppDeployError as exc:
            on_fail(i, path, str(exc))
            continue
        except (MemoryError, Image.DecompressionBombError):
            on_fail(i, path, f"{path} is too large to decode here")
            continue
        if len(chunk) == batch:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def predict_images(model: PredictModel, files: Sequence[Path], out: Path, overlay: bool = False,
                   alpha: float = 0.5, progress: Callable[[int, int], None] | None = None,
                   warn: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Segment ``files`` in batches of ``model.batch``; write ``<stem>.mask.png`` (and, with ``overlay``,
    ``<stem>.overlay.png``) into ``out``. Returns the summary (per-image outputs and class areas, the
    images that could not be read, timings) that ``--json`` writes."""
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"--alpha must be in [0, 1], got {alpha}")
    ensure_writable(out)
    stems = output_stems(files)
    for stem in stems:
        contained(out, stem + MASK_SUFFIX)
    pre, seg = model.preprocess, model.segmenter
    records: list[dict[str, Any] | None] = [None] * len(files)
    failed: list[dict[str, str]] = []
    timing = {"load_preprocess": 0.0, "inference": 0.0, "postprocess_write": 0.0}
    done = 0

    def on_fail(i: int, path: Path, message: str) -> None:
        nonlocal done
        failed.append({"input": str(path), "error": message})
        warn(f"{message} (skipped)")
        done += 1
        if progress:
            progress(done, len(files))

    start = time.perf_counter()
    t0 = start
    for chunk in _batches(files, stems, model.batch, on_fail):
        t1 = time.perf_counter()
        before = dict(seg.timing)
        masks = seg.segment([item.image for item in chunk])  # a static batch is filled by repeating the last image
        spent = {k: seg.timing[k] - before[k] for k in before}
        t2 = time.perf_counter()
        for item, mask in zip(chunk, masks):
            width, height = item.image.size
            mask_path = contained(out, item.stem + MASK_SUFFIX)
            atomic_save_image(mask_image(mask, model.palette), mask_path)
            record: dict[str, Any] = {"input": str(item.path), "mask": str(mask_path), "size": [width, height]}
            if overlay:
                overlay_path = contained(out, item.stem + OVERLAY_SUFFIX)
                atomic_save_image(overlay_with_legend(item.image, mask, model.palette, model.classes, alpha),
                                  overlay_path)
                record["overlay"] = str(overlay_path)
            record["areas"] = area_record(mask, model.classes)
            records[item.index] = record
        del masks, chunk
        t3 = time.perf_counter()
        timing["load_preprocess"] += t1 - t0 + spent["preprocess"]
        timing["inference"] += spent["inference"]
        timing["postprocess_write"] += spent["postprocess"] + t3 - t2
        t0 = t3
        done = sum(r is not None for r in records) + len(failed)
        if progress:
            progress(done, len(files))
    seconds = time.perf_counter() - start
    images = [r for r in records if r is not None]
    per = max(1, len(images))
    return {"backend": model.backend, "artifact": model.artifact, "precision": model.precision,
            "device": model.runner.info.device, "input": [pre.height, pre.width], "batch": model.batch,
            "classes": list(model.classes), "palette": [list(c) for c in model.palette], "out": str(out),
            "count": len(images), "failed": failed, "images": images, "seconds": round(seconds, 3),
            "ms_per_image": {k: round(1000 * v / per, 2) for k, v in
                             {"total": seconds, **timing}.items()}}


def class_totals(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Per class over all predicted images: in how many images it appears and its share of all pixels."""
    totals: dict[str, dict[str, Any]] = {}
    pixels = 0
    for record in summary["images"]:
        w, h = record["size"]
        pixels += w * h
        for name, area in record["areas"].items():
            row = totals.setdefault(name, {"class": name, "id": area["id"], "images": 0, "pixels": 0})
            if area["pixels"]:
                row["images"] += 1
                row["pixels"] += area["pixels"]
    rows = sorted(totals.values(), key=lambda r: r["id"])
    for row in rows:
        row["fraction"] = row["pixels"] / pixels if pixels else 0.0
    return rows


def predict_stream(model: PredictModel, source: str, out: Path, outputs: StreamOutputs, alpha: float = 0.5,
                   drop_late: bool = True, max_frames: int = 0, fps: float | None = None,
                   progress: Callable[[StreamStats], None] | None = None) -> dict[str, Any]:
    """Segment a video file, image sequence, camera or network stream (``runtime.video`` names them) in
    the pipelined runtime and write ``outputs`` into ``out``; returns the summary that ``--json`` writes."""
    ensure_writable(out)
    summary = segment_stream(model.segmenter, source, out, outputs, alpha=alpha, drop_late=drop_late,
                             max_frames=max_frames, fps=fps, progress=progress)
    pre = model.preprocess
    return {"backend": model.backend, "artifact": model.artifact, "precision": model.precision,
            "device": model.runner.info.device, "input": [pre.height, pre.width], "batch": model.batch,
            "classes_of_model": list(model.classes), "out": str(out), **summary}
