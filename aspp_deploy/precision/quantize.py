"""``quantized_onnx_from_fp32``: the whole pipeline behind ``aspp-deploy quantize``.

check the source -> calibration images (manifest preprocessing, disjoint from val) -> cache key
-> builder for (precision, target, backend) -> accuracy-budget loop -> accuracy on the
validation split in ONNX Runtime -> TensorRT pre-flight -> manifest entry -> atomic write.

Which tool makes which file (see each module's docstring for why):

=============  ======================================  ==========================================
output         ``--backend auto`` (ModelOpt installed)  without ModelOpt / ``--backend ort``
=============  ======================================  ==========================================
fp16           ModelOpt AutoCast                       onnxconverter-common ``float16``
int8, trt      ModelOpt ONNX PTQ, converted to opset   ORT ``quantize_static``, TensorRT recipe
               17 (FP32 high precision)
int8, cpu      ORT ``quantize_static``, CPU recipe     same
=============  ======================================  ==========================================
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import onnx

from aspp_deploy.bench.result_cache import FOLDER as RESULTS_FOLDER, ResultCache
from aspp_deploy.data.images import LABEL_TEXT, DataSource
from aspp_deploy.errors import InputError, MissingDependencyError
from aspp_deploy.export.graph import load_onnx
from aspp_deploy.export.manifest import (embed, manifest_of, refuse_external_data, tool_versions,
                                         write_with_entry)
from aspp_deploy.export.trt_check import SIDECAR_KEY, Preflight
from aspp_deploy.io import ensure_writable, sha256_file
from aspp_deploy.precision.accuracy import cached_compare_on_val, LazyReference
from aspp_deploy.precision.budget import Budget, BudgetResult, choose_method, MethodTrial, quietly, run_budget
from aspp_deploy.precision.cache import CacheKey, CacheLookup, CalibrationCache
from aspp_deploy.precision.calibration import check_disjoint_from_val, choose_data
from aspp_deploy.precision.fp16 import onnxconverter_available
from aspp_deploy.precision.groups import budget_groups
from aspp_deploy.precision.int8_ort import CPU_RECIPE, METHODS, OrtInt8Builder, TRT_RECIPE, work_dir
from aspp_deploy.precision.modelopt_backend import canonical_tensors, modelopt_available
from aspp_deploy.precision import speed  # speed.measure looked up when called (tests stand in for it)
from aspp_deploy.precision.speed import fp16_variant, NoWorthwhileInt8, slower_note, verdict
from aspp_deploy.runtime.calibration import DEFAULT_CALIB_SIZE, SHIPPED_CALIBRATION, CalibrationData, data_digest
from aspp_deploy.runtime.preprocess import Preprocess

PRECISIONS = ("fp16", "int8")
TARGETS = ("trt", "cpu")
BACKENDS = ("auto", "modelopt", "ort")
DEFAULT_METHOD = {"trt": "entropy", "cpu": "auto"}  # auto: measured (see _choose_method)
AUTO_TRIALS = (("minmax", None), ("entropy", None), ("percentile", 99.99), ("percentile", 99.999))
MODELOPT_AUTO_TRIALS = (("entropy", None), ("minmax", None))
DEFAULT_MAX_MIOU_DROP = 0.5
DEFAULT_BUDGET_IMAGES = 8
FP16_AUTOCAST_IMAGES = 8
CACHE_FOLDER = "calibration-cache"
QUANTIZED_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger", "MatMulInteger",
                 "DynamicQuantizeLinear", "QLinearMatMul"}


@dataclass
class QuantizeOptions:
    precision: str = "int8"
    target: str = "trt"
    calib: Path | None = None  # None: the shipped calibration/ folder
    calib_size: int = DEFAULT_CALIB_SIZE
    method: str | None = None  # None: DEFAULT_METHOD[target]
    percentile: float = 99.999
    data: Path | None = None  # VOC folder for the val split; None: the default synthetic data
    out: Path | None = None
    max_miou_drop: float = DEFAULT_MAX_MIOU_DROP
    budget_images: int = DEFAULT_BUDGET_IMAGES  # 0: no budget loop
    eval_images: int = 0  # 0: the whole val split
    cache_dir: Path | None = None  # None: <output folder>/calibration-cache
    use_cache: bool = True
    backend: str = "auto"
    high_precision: str = "fp32"  # trt target: precision of the parts left unquantized
    threads: int = 0
    max_worst_drop: float = 7.0  # points of the task metric on the worst budget image (0: unchecked)
    speed: bool = False  # int8: time FP32 against INT8 (and FP16) here; cpu target: refuse a slower INT8
    allow_slower: bool = False  # cpu target: write the INT8 file even when it is not faster than FP32


@dataclass
class QuantizeResult:
    onnx_path: Path
    manifest_path: Path
    entry: dict
    notes: list[str] = field(default_factory=list)


def default_output(src: Path, precision: str, target: str) -> Path:
    suffix = "fp16" if precision == "fp16" else f"int8-{target}"
    return src.with_name(f"{src.stem}.{suffix}.onnx")


def validate(opts: QuantizeOptions) -> str:
    """Check the options; returns the calibration method to use."""
    if opts.precision not in PRECISIONS:
        raise InputError(f"--precision {opts.precision} is not supported: use {' or '.join(PRECISIONS)}")
    if opts.target not in TARGETS:
        raise InputError(f"--target {opts.target} is not supported: use {' or '.join(TARGETS)}")
    if opts.backend not in BACKENDS:
        raise InputError(f"--backend {opts.backend} is not supported: use {', '.join(BACKENDS)}")
    if opts.high_precision not in ("fp32", "fp16"):
        raise InputError(f"--high-precision {opts.high_precision} is not supported: use fp32 or fp16")
    method = opts.method or DEFAULT_METHOD[opts.target]
    if method not in METHODS + ("auto",):
        raise InputError(f"--method {method} is not supported: use auto, {', '.join(METHODS)}")
    if not 0 < opts.percentile <= 100:
        raise InputError(f"--percentile {opts.percentile} is impossible: use a value in (0, 100]")
    for name, value in (("--max-drop", opts.max_miou_drop), ("--max-worst-drop", opts.max_worst_drop), ("--budget-images", opts.budget_images),
                        ("--eval-images", opts.eval_images), ("--calib-size", opts.calib_size)):
        if value < 0:
            raise InputError(f"{name} {value} is impossible: it must be 0 or more")
    return method


def check_source(src: Path) -> tuple[onnx.ModelProto, dict]:
    """The FP32 source and its manifest entry; refuses anything already reduced."""
    model = load_onnx(src, external_data=False)  # the manifest verifies the external data files, if any
    manifest = manifest_of(model, Path(src))
    refuse_external_data(src, "quantize")  # its backends read the file by path: one self-contained file
    q = [n for n in model.graph.node if n.op_type in QUANTIZED_OPS]
    if q:
        raise InputError(f"{src} is already quantized ({len(q)} {q[0].op_type}/... nodes): "
                         "quantize the FP32 model it came from")
    half = [t.name for t in model.graph.initializer if t.data_type in (onnx.TensorProto.FLOAT16,
                                                                       onnx.TensorProto.BFLOAT16)]
    if half or manifest.entry.get("precision", "fp32") != "fp32":
        raise InputError(f"{src} is already reduced precision ({manifest.entry.get('precision') or 'fp16'}"
                         f" weights): quantize the FP32 model it came from")
    return model, manifest.entry


def _batch_and_input(model: onnx.ModelProto) -> tuple[str, int]:
    inp = model.graph.input[0]
    dims = inp.type.tensor_type.shape.dim
    batch = dims[0].dim_value if dims and dims[0].HasField("dim_value") else 1
    return inp.name, max(batch, 1)



def choose_backend(opts: QuantizeOptions, method: str) -> str:
    """'modelopt', 'ort' (or 'converter' for fp16 without ModelOpt)."""
    if opts.precision == "int8" and opts.target == "cpu":
        if opts.backend == "modelopt":
            raise InputError("--target cpu uses ONNX Runtime's quantizer: drop --backend modelopt")
        return "ort"
    if opts.backend == "ort":
        if opts.precision == "fp16":
            return "converter"
        return "ort"
    wants_percentile = opts.precision == "int8" and method == "percentile"
    if opts.backend == "modelopt":
        if wants_percentile:
            raise InputError("ModelOpt calibrates with entropy or minmax: use one of them, or --backend ort")
        if not modelopt_available():
            raise MissingDependencyError("ModelOpt is not installed: pip install 'aspp-deploy[quant]' "
                                         "(or use --backend ort)")
        return "modelopt"
    if not wants_percentile and modelopt_available():
        return "modelopt"
    if opts.precision == "fp16":
        if not onnxconverter_available():
            raise MissingDependencyError("FP16 needs ModelOpt or onnxconverter-common: "
                                         "pip install 'aspp-deploy[quant]'")
        return "converter"
    return "ort"


def quantized_onnx_from_fp32(src: Path, opts: QuantizeOptions,
                             log: Callable[[str], None] = lambda m: None) -> QuantizeResult:
    t0 = time.perf_counter()
    src = Path(src)
    method = validate(opts)
    model, fp32_entry = check_source(src)
    pre = Preprocess.from_dict(fp32_entry["preprocess"])
    classes = list(fp32_entry["classes"])
    out = Path(opts.out) if opts.out else default_output(src, opts.precision, opts.target)
    if out.suffix != ".onnx":
        raise InputError(f"--out {out} must end in .onnx")
    if out.resolve() == src.resolve():
        raise InputError(f"--out {out} is the source model: choose another file name")
    ensure_writable(out.parent)
    backend = choose_backend(opts, method)
    calib_folder = Path(opts.calib) if opts.calib else SHIPPED_CALIBRATION
    limit = FP16_AUTOCAST_IMAGES if opts.precision == "fp16" else opts.calib_size
    # --data (masks or plain images); else the synthetic split (shipped model) or held-out calib images
    files, data_root, data_notes = choose_data(opts.data, calib_folder, limit, classes, fp32_entry.get("source"))
    check_disjoint_from_val(files, data_root)
    log(f"accuracy: {LABEL_TEXT[data_root.labels]}, on {data_root}")
    input_name, batch = _batch_and_input(model)
    calib = CalibrationData(files, pre, input_name, batch).load()
    log(f"calibration: {len(files)} image(s) from {calib_folder}, preprocessed to {pre.height}x{pre.width}")

    settings = _key_settings(opts, method, backend, pre, input_name, batch)
    src_sha = sha256_file(src)
    key = CacheKey(src_sha, data_digest(files), settings, label=out.name)
    cache_dir = (opts.cache_dir or out.parent / CACHE_FOLDER) if opts.use_cache else None

    # accuracy of a candidate measured before (same candidate bytes, images, settings) is reused
    results = ResultCache(out.parent / RESULTS_FOLDER if opts.use_cache else None)
    cache = CalibrationCache(cache_dir)
    payload_suffix = ".trt-cache.txt" if backend == "modelopt" else ".ort.json"
    if opts.precision == "int8" and method != "auto":
        lookup = cache.lookup(key, payload_suffix)
        log(f"calibration cache: {lookup.reason}")
    else:  # --method auto: one cache entry per method tried (_choose_method)
        lookup = CacheLookup(key, None, False, "fp16: no calibration ranges" if opts.precision == "fp16"
                             else "one entry per calibration method tried")

    notes: list[str] = list(data_notes)
    with work_dir() as tmp:
        work = Path(tmp)
        if lookup.payload is not None:
            lookup.payload.parent.mkdir(parents=True, exist_ok=True)
        reference = None
        if opts.budget_images:
            reference = LazyReference(src, src_sha, data_root, pre, classes, opts.budget_images,
                                      threads=opts.threads, cache=results)
        method_choice, first = None, None
        if method == "auto" and opts.precision == "int8":
            method, lookup, builder, first, method_choice = _choose_method(
                backend, opts, src, work, calib, reference, cache, payload_suffix, src_sha, files, out.name,
                pre, input_name, batch, log)
        else:
            builder = _builder(backend, opts, src, work, calib, method, lookup)
        groups, granularity = budget_groups(builder.graph())
        candidate, budget = run_budget(builder, reference, groups, opts.max_miou_drop, work, log,
                                       worst_points=opts.max_worst_drop, first=first, granularity=granularity)
        if lookup.payload is not None:
            cache.commit(lookup)
        speed_report = _speed_and_verdict(opts, src, candidate, calib, budget, work, log)
        notes += getattr(builder, "notes", [])
        if budget.met is False:
            notes.append(f"accuracy budget missed: {budget.final_drop:.2f} points > {opts.max_miou_drop:g} "
                         "even with every helpful layer group kept in higher precision")
        log(f"measuring accuracy ({LABEL_TEXT[data_root.labels]}) on {data_root}")
        accuracy = cached_compare_on_val(results, src, src_sha, candidate, data_root, pre, classes,
                                         opts.eval_images or None, threads=opts.threads)

        result_model = canonical_tensors(onnx.load(str(candidate)))  # one encoding: same values, same bytes
    preflight = Preflight.run(result_model, out.name)
    entry = _entry(fp32_entry, src, out, result_model, opts, method, backend, files, calib_folder, lookup,
                   budget, accuracy.to_dict(), preflight.entry_fields(), data_root, notes, time.perf_counter() - t0)
    _survival_entry(entry, result_model, opts, method_choice, speed_report)
    embed(result_model, entry)
    manifest_path = write_with_entry(out, result_model.SerializeToString(), entry,
                                     {entry[SIDECAR_KEY]["file"]: preflight.sidecar_bytes()})
    return QuantizeResult(out, manifest_path, entry, notes)


def _builder(backend: str, opts: QuantizeOptions, src: Path, work: Path, calib: CalibrationData,
             method: str, lookup: CacheLookup):
    import shutil

    # The quantizers read a private copy, never the user's file: ModelOpt saves the model it loaded back
    # to the path it was given, which rewrote the source ONNX's modification time.
    private = work / "source.onnx"
    shutil.copyfile(src, private)
    src = private
    if opts.precision == "fp16":
        if backend == "modelopt":
            from aspp_deploy.precision.modelopt_backend import ModelOptFp16Builder

            return ModelOptFp16Builder(src, work, calib, FP16_AUTOCAST_IMAGES)
        from aspp_deploy.precision.fp16 import ConverterFp16Builder

        return ConverterFp16Builder(src)
    if backend == "modelopt":
        from aspp_deploy.precision.modelopt_backend import ModelOptInt8Builder

        return ModelOptInt8Builder(src, work, calib, method, lookup, opts.high_precision)

    recipe = CPU_RECIPE if opts.target == "cpu" else TRT_RECIPE
    return quietly(OrtInt8Builder, src, work, calib, method, recipe, lookup, opts.percentile)


def _key_settings(opts: QuantizeOptions, method: str, backend: str, pre, input_name: str, batch: int) -> dict:
    """Everything that shapes the calibration ranges (not which layers are kept: that is after)."""
    versions = tool_versions("nvidia-modelopt")
    recipe = {"modelopt": {"recipe": "modelopt-trt", "high_precision": opts.high_precision},
              "ort": (CPU_RECIPE if opts.target == "cpu" else TRT_RECIPE).to_dict()}.get(backend, {})
    return {"precision": opts.precision, "target": opts.target, "backend": backend, "method": method,
            "percentile": opts.percentile if method == "percentile" else None,
            "preprocess": pre.to_dict(), "input": input_name, "batch": batch, **recipe,
            "onnxruntime": versions.get("onnxruntime"),
            "nvidia-modelopt": versions.get("nvidia-modelopt") if backend == "modelopt" else None}


def _entry(fp32_entry: dict, src: Path, out: Path, model: onnx.ModelProto, opts: QuantizeOptions, method: str,
           backend: str, files: list[Path], calib_folder: Path, lookup: CacheLookup, budget: BudgetResult,
           accuracy: dict, checks: dict, data_root: DataSource, notes: list[str], seconds: float) -> dict:
    from aspp_deploy.export.onnx_export import tensor_records

    tool = {"modelopt": "nvidia-modelopt (ModelOpt ONNX PTQ)" if opts.precision == "int8"
            else "nvidia-modelopt (AutoCast)", "ort": "onnxruntime.quantization.quantize_static",
            "converter": "onnxconverter_common.float16"}[backend]
    counts = {op: sum(1 for n in model.graph.node if n.op_type == op)
              for op in ("QuantizeLinear", "DequantizeLinear", "Cast")}
    entry = {k: fp32_entry[k] for k in ("preprocess", "classes", "palette", "model", "outputs_class_ids")
             if k in fp32_entry}
    entry.update({
        "kind": "onnx", "file": out.name, "precision": opts.precision,
        "target": opts.target if opts.precision == "int8" else "any",
        "inputs": tensor_records(model.graph.input), "outputs": tensor_records(model.graph.output),
        "opset": next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        "source": {"onnx": src.name, "onnx_sha256": lookup.key.model_sha256,
                   "checkpoint_sha256": fp32_entry.get("source", {}).get("checkpoint_sha256")},
        "quantization": {
            "tool": tool, "backend": backend, "settings": lookup.key.settings,
            "high_precision": opts.high_precision if opts.precision == "int8" and opts.target == "trt" else None,
            "node_counts": counts,
            "calibration": None if opts.precision == "fp16" and backend != "modelopt" else {
                "folder": str(calib_folder), "images": len(files),
                "method": method if opts.precision == "int8" else "autocast reference run",
                "data_sha256": lookup.key.data_sha256, "cache": lookup.to_dict()},
            "budget": budget.to_dict(),
        },
        "accuracy": {**accuracy, "data": str(data_root), "split": data_root.split,
                     "held_out_from_calibration": opts.data is None and not data_root.labelled},
        **checks,  # "trt_check" (a summary per version) and the findings sidecar's name and sha256
        "trt_versions": [v for v, c in checks["trt_check"].items() if c["ok"]],
        "notes": notes, "seconds": round(seconds, 2),
        "tools": tool_versions("nvidia-modelopt", "onnxconverter-common"),
    })
    return entry


# --- INT8 that survives real networks: the method chosen by measurement, the speed verdict ----------


def _choose_method(backend: str, opts: QuantizeOptions, src: Path, work: Path, calib: CalibrationData, reference,
                   cache: CalibrationCache, payload_suffix: str, src_sha: str, files: list[Path], label: str,
                   pre, input_name: str, batch: int, log: Callable[[str], None]):
    """``--method auto``: quantize everything with each calibration method (minmax, entropy, percentile
    99.99 and 99.999; ModelOpt: entropy and minmax), measure each by the task metric on the budget
    images and keep the best. Each method has its own calibration cache entry (its key names the
    method), so a rerun recalibrates nothing. Without a budget loop (``--budget-images 0``) nothing
    can be measured: the target's usual method is used and the manifest says so.

    Returns (method, its cache lookup, its builder, (its all-quantized candidate, comparison) or None,
    the record for the manifest)."""
    import dataclasses

    fixed = "entropy" if opts.target == "trt" or backend == "modelopt" else "minmax"
    trials = [MethodTrial(m if p is None else f"{m} {p:g}", m, p)
              for m, p in (MODELOPT_AUTO_TRIALS if backend == "modelopt" else AUTO_TRIALS)]
    made: dict[str, tuple] = {}

    def make(t: MethodTrial):
        o = dataclasses.replace(opts, method=t.method, percentile=t.percentile or opts.percentile)
        key = CacheKey(src_sha, data_digest(files), _key_settings(o, t.method, backend, pre, input_name, batch),
                       label=label)
        lookup = cache.lookup(key, payload_suffix)
        if lookup.payload is not None:
            lookup.payload.parent.mkdir(parents=True, exist_ok=True)
        folder = work / f"method-{len(made)}"  # each method its own files (ranges, preprocessed copy)
        folder.mkdir()
        made[t.label] = (lookup, _builder(backend, o, src, folder, calib, t.method, lookup), folder)
        log(f"method {t.label}: calibration cache: {lookup.reason}")
        return made[t.label]

    if reference is None:
        t = next(t for t in trials if t.method == fixed)
        lookup, builder, _ = make(t)
        return fixed, lookup, builder, None, {
            "requested": "auto", "chosen": t.label, "why": "no budget images to measure on (--budget-images 0): "
                                                            f"the {opts.target} target's usual method", "tried": []}

    def build_all(t: MethodTrial) -> Path:
        lookup, builder, folder = make(t)
        out = folder / "all-quantized.onnx"
        quietly(builder.build, [], out)
        if lookup.payload is not None:
            cache.commit(lookup)
        return out

    best, path, cmp, why = choose_method(trials, build_all, reference, Budget(opts.max_miou_drop, opts.max_worst_drop),
                                         log)
    lookup, builder, _ = made[best.label]
    return best.method, lookup, builder, (path, cmp), {
        "requested": "auto", "chosen": best.label, "percentile": best.percentile, "why": why,
        "tried": [t.to_dict() for t in trials]}


def _speed_and_verdict(opts: QuantizeOptions, src: Path, candidate: Path, calib: CalibrationData, budget: BudgetResult,
                       work: Path, log: Callable[[str], None]):
    """Time FP32 against the chosen INT8 mix (and FP16) when ``opts.speed``; on the cpu target, refuse
    (``NoWorthwhileInt8``, nothing written) a mix that misses the budget, keeps everything in higher
    precision, or is not faster than FP32 (unless ``opts.allow_slower``). Returns the timing or None."""
    if opts.precision != "int8":
        return None
    budget_text = f"{opts.max_miou_drop:g} points on average" + (
        f", {opts.max_worst_drop:g} on the worst image" if opts.max_worst_drop > 0 else "")
    report = None
    if opts.speed and budget.met is not False and not budget.everything_kept:
        variants = {"fp32": src, "int8": candidate}
        fp16 = fp16_variant(src, work / "speed-fp16.onnx")
        if fp16 is not None:
            variants["fp16"] = fp16
        log("timing FP32 against INT8" + (" and FP16" if fp16 else "") + " (interleaved rounds)")
        report = speed.measure(variants, calib.batch(0), threads=opts.threads, log=log)
        log(f"speed: {report.summary()}")
    if opts.target == "cpu" and budget.met is not None:  # judged only where the budget loop ran
        why_not = verdict(budget.met, budget.everything_kept, None if opts.allow_slower else report,
                          budget.metric, budget_text)
        if why_not:
            raise NoWorthwhileInt8(why_not)
    return report


def _survival_entry(entry: dict, model: onnx.ModelProto, opts: QuantizeOptions, method_choice: dict | None,
                    speed_report) -> None:
    """The manifest's record of how the method was chosen, the speed against FP32/FP16, and whether
    matrix products (transformer blocks) were quantized."""
    if opts.precision != "int8":
        return
    q = entry["quantization"]
    if q.get("calibration"):
        q["calibration"]["method_choice"] = method_choice or {
            "requested": opts.method or DEFAULT_METHOD[opts.target], "chosen": q["calibration"]["method"],
            "why": "given with --method" if opts.method else f"the {opts.target} target's default", "tried": []}
        if q["calibration"]["method"] == "percentile":
            q["calibration"]["percentile"] = (method_choice or {}).get("percentile") or opts.percentile
    q["speed"] = speed_report.to_dict() if speed_report is not None else None

    note = slower_note(speed_report)
    if note:
        entry["notes"].append(note)
    producer = {o: n for n in model.graph.node for o in n.output}
    mm = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm")]
    if mm:
        quantized = [n for n in mm if any(producer.get(i) is not None and producer[i].op_type == "DequantizeLinear"
                                          for i in n.input)]
        q["matmul"] = {"total": len(mm), "quantized": len(quantized)}
        if len(quantized) < len(mm):
            entry["notes"].append(f"{len(mm) - len(quantized)} of {len(mm)} MatMul/Gemm node(s) left in higher "
                                  "precision (kept by the accuracy budget, or the quantizer's own rules: ModelOpt "
                                  "leaves small matrix products unquantized)")
