"""ONNX -> TensorRT engine (a plain plan file) plus its manifest ``<engine>.json``.

The recipe comes from ``plan.make_build_plan`` for the installed TensorRT version; this module only
applies it. ``trtexec_command`` and ``resolve_profiles`` are pure and testable without TensorRT.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, Mapping, Sequence, Tuple, cast

from aspp_deploy.errors import AsppDeployError, InputError
from aspp_deploy.io import atomic_write_bytes, atomic_write_text, json_text, sha256_file
from aspp_deploy.runtime.manifest import ArtifactEntry, EngineManifest, read_artifact_entry
from aspp_deploy.runtime.trt.plan import BuildPlan, BuildRequest, feature_support, make_build_plan, parse_version
from aspp_deploy.runtime.trt.runtime import (MANIFEST_FORMAT, dims_to_tuple, import_tensorrt, input_profile, manifest_path,
                                     numpy_dtype)

if TYPE_CHECKING:
    import tensorrt

DEFAULT_WORKSPACE_MB = 1024
Shape = Tuple[int, ...]  # typing.Tuple/Dict: the Jetson runtime also runs on Python 3.8 (JetPack 5)
Profiles = Dict[str, Tuple[Shape, Shape, Shape]]  # input name -> (min, opt, max)
TRTEXEC_FLAGS = {"FP16": "--fp16", "INT8": "--int8", "VERSION_COMPATIBLE": "--versionCompatible",
                 "GPU_FALLBACK": "--allowGPUFallback"}
# Substrings of the inspector's format text, in priority order (the first label a layer's tensors
# carry names the layer); UINT8 before INT8 because "UInt8" contains "Int8".
PRECISION_TOKENS = (("UINT8", ("UInt8", "UINT8")), ("INT8", ("Int8", "INT8")), ("FP8", ("FP8",)),
                    ("BF16", ("BF16", "BFloat16")), ("FP16", ("FP16", "Half")), ("FP32", ("FP32", "Float")),
                    ("INT32", ("Int32",)), ("INT64", ("Int64",)), ("BOOL", ("Bool",)))
# TensorRT 11's separate "DataType" value (a DataType name, normalised: lower case, alphanumerics).
DATATYPE_LABELS = {"float": "FP32", "float32": "FP32", "fp32": "FP32", "half": "FP16", "float16": "FP16",
                   "fp16": "FP16", "bf16": "BF16", "bfloat16": "BF16", "int8": "INT8", "uint8": "UINT8",
                   "fp8": "FP8", "float8": "FP8", "e4m3": "FP8", "int4": "INT4", "fp4": "FP4", "int32": "INT32",
                   "int64": "INT64", "bool": "BOOL"}


class BuildError(AsppDeployError):
    """TensorRT could not build the engine."""


def fmt_shape(shape: Sequence[int]) -> str:
    return "x".join("?" if d < 0 else str(d) for d in shape)


def resolve_profiles(network_shapes: Mapping[str, Shape], min_shapes: Mapping[str, Sequence[int]] | None = None,
                     opt_shapes: Mapping[str, Sequence[int]] | None = None,
                     max_shapes: Mapping[str, Sequence[int]] | None = None) -> Profiles | None:
    """One optimization profile's min/opt/max per input, or None when every input is static."""
    given = {k: dict(v or {}) for k, v in (("min", min_shapes), ("opt", opt_shapes), ("max", max_shapes))}
    unknown = set().union(*given.values()) - set(network_shapes)
    if unknown:
        raise InputError(f"shapes given for {sorted(unknown)}, but the ONNX inputs are {sorted(network_shapes)}")
    profiles: Profiles = {}
    for name, shape in network_shapes.items():
        lo, opt, hi = (tuple(int(d) for d in given[k][name]) if name in given[k] else None
                       for k in ("min", "opt", "max"))
        if lo is None and opt is None and hi is None:
            if any(d < 0 for d in shape):
                raise InputError(f"input {name!r} has dynamic shape {fmt_shape(shape)}: give its min/opt/max shapes")
            profiles[name] = (shape, shape, shape)
            continue
        opt = opt or hi or lo
        lo, hi = lo or opt, hi or opt
        assert lo is not None and opt is not None and hi is not None
        for label, s in (("min", lo), ("opt", opt), ("max", hi)):
            if len(s) != len(shape) or any(d <= 0 or (n >= 0 and d != n) for d, n in zip(s, shape)):
                raise InputError(f"{label} shape {fmt_shape(s)} for input {name!r} does not fit its ONNX shape "
                                 f"{fmt_shape(shape)} (only the ? dimensions may vary)")
        if any(not a <= b <= c for a, b, c in zip(lo, opt, hi)):
            raise InputError(f"input {name!r}: need min <= opt <= max, got {fmt_shape(lo)}, {fmt_shape(opt)}, "
                             f"{fmt_shape(hi)}")
        profiles[name] = (lo, opt, hi)
    if all(lo == hi == shape for (lo, _, hi), shape in zip(profiles.values(), network_shapes.values())):
        return None
    return profiles


def trtexec_command(plan: BuildPlan, onnx: Path | str, engine: Path | str, *, profiles: Profiles | None = None,
                    workspace_mb: int | None = None, timing_cache: Path | str | None = None,
                    calib_cache: Path | str | None = None) -> str:
    """The trtexec command line that builds the same engine on this TensorRT version."""
    args = ["trtexec", f"--onnx={onnx}", f"--saveEngine={engine}"]
    if plan.strongly_typed and plan.trt_version[0] == 10:  # 11.x is always strongly typed
        args.append("--stronglyTyped")
    args += [TRTEXEC_FLAGS[f] for f in plan.builder_flags if f != "GPU_FALLBACK"]
    if plan.use_calibrator and calib_cache is not None:
        args.append(f"--calib={calib_cache}")
    if profiles:
        for i, key in enumerate(("min", "opt", "max")):
            args.append(f"--{key}Shapes=" + ",".join(f"{n}:{fmt_shape(p[i])}" for n, p in profiles.items()))
    if workspace_mb is not None:
        args.append(f"--memPoolSize=workspace:{workspace_mb}")  # MiB on 8.x and later
    if plan.opt_level is not None:
        args.append(f"--builderOptimizationLevel={plan.opt_level}")
    if plan.hardware_compatibility_level == "AMPERE_PLUS":
        args.append("--hardwareCompatibilityLevel=ampere+")
    if plan.dla_core is not None:
        args += [f"--useDLACore={plan.dla_core}", "--allowGPUFallback"]
    if timing_cache is not None:
        args.append(f"--timingCacheFile={timing_cache}")
    args += ["--profilingVerbosity=detailed", "--skipInference" if plan.trt_version >= (8, 6) else "--buildOnly"]
    return " ".join(shlex.quote(str(a)) for a in args)


def _tensor_precision(tensor: Mapping[str, Any]) -> str | None:
    """Precision label of one inspector tensor entry. Up to 10.x the entry has one combined
    ``"Format/Datatype"`` string ("Channel major FP16 format ..."); TensorRT 11 split it into
    ``"DataType"`` (a type name such as "Float", "Half", "Int8") and ``"Format"`` (the layout,
    e.g. "Row major linear FP32 format (kLINEAR)"). The type name wins where both are present."""
    dtype = tensor.get("DataType")
    if isinstance(dtype, str) and dtype:
        key = "".join(ch for ch in dtype.lower() if ch.isalnum())
        key = key[1:] if key.startswith("k") and key[1:] in DATATYPE_LABELS else key
        if key in DATATYPE_LABELS:
            return DATATYPE_LABELS[key]
    for field in ("Format/Datatype", "Format", "DataType"):
        text = tensor.get(field)
        if isinstance(text, str) and text:
            found = next((label for label, tokens in PRECISION_TOKENS if any(t in text for t in tokens)), None)
            if found:
                return found
    return None


def summarize_layers(engine_information: str) -> dict[str, Any]:
    """Per-layer precision from the engine inspector's JSON (``LayerInformationFormat.JSON``), in
    the schema of TensorRT 8.x-10.x (``Format/Datatype``) or 11.x (``DataType`` + ``Format``)."""
    info = json.loads(engine_information)
    layers = info.get("Layers", []) if isinstance(info, dict) else []
    order = [label for label, _ in PRECISION_TOKENS] + ["INT4", "FP4"]

    def precision(tensors: Any) -> str:
        labels = {_tensor_precision(t) for t in tensors or [] if isinstance(t, dict)} - {None}
        return next((label for label in order if label in labels), "unknown")

    rows = [{"name": layer.get("Name", ""), "type": layer.get("LayerType", ""),
             "in": precision(layer.get("Inputs")), "out": precision(layer.get("Outputs"))}
            if isinstance(layer, dict) else {"name": str(layer), "type": "", "in": "unknown", "out": "unknown"}
            for layer in layers]
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["out"]] = counts.get(row["out"], 0) + 1
    return {"count": len(rows), "precisions": counts, "layers": rows}


def io_tensors(engine: tensorrt.ICudaEngine) -> list[dict[str, Any]]:
    """Name, mode, dtype, shape (-1 = dynamic) and, for inputs, profile-0 min/opt/max of each I/O tensor."""
    trt = import_tensorrt()
    found = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        entry: dict[str, Any] = {"name": name, "mode": "input" if is_input else "output",
                                 "dtype": numpy_dtype(engine.get_tensor_dtype(name).name).name,
                                 "shape": list(dims_to_tuple(engine.get_tensor_shape(name)))}
        if is_input:
            lo, opt, hi = input_profile(engine, name)
            entry["profile"] = {"min": list(lo), "opt": list(opt), "max": list(hi)}
        found.append(entry)
    return found


def artifact_metadata(onnx_path: Path | str, entry: ArtifactEntry | None = None) -> dict[str, Any]:
    """preprocess / classes / palette from the ONNX's verified aspp-deploy manifest entry; {} when it
    has none (or one that does not verify). ``entry``: the entry as the caller read and verified it (the
    host reads the one embedded in the ONNX with the onnx package, which the device runtime lacks);
    without it, the entry in ``manifest.json`` beside the ONNX."""
    if entry is None:
        try:
            entry = read_artifact_entry(Path(onnx_path), None)
        except InputError:
            return {}
    record = entry.to_dict()
    return {key: record[key] for key in ("preprocess", "classes", "palette") if key in record}


def _builder_flag(name: str) -> tensorrt.BuilderFlag:
    flags = import_tensorrt().BuilderFlag  # members are looked up only for names the plan chose
    if name == "FP16":
        return flags.FP16
    if name == "INT8":
        return flags.INT8
    if name == "GPU_FALLBACK":
        return flags.GPU_FALLBACK
    if name == "VERSION_COMPATIBLE":
        return flags.VERSION_COMPATIBLE
    raise ValueError(f"unknown builder flag {name}")


def _network(builder: tensorrt.Builder, plan: BuildPlan) -> tensorrt.INetworkDefinition:
    kinds = import_tensorrt().NetworkDefinitionCreationFlag
    flags = 0
    if plan.explicit_batch_flag and hasattr(kinds, "EXPLICIT_BATCH"):  # gone from the enum in 11
        flags |= 1 << int(kinds.EXPLICIT_BATCH)
    if plan.strongly_typed and hasattr(kinds, "STRONGLY_TYPED"):
        flags |= 1 << int(kinds.STRONGLY_TYPED)
    return builder.create_network(flags)


def _parse(network: tensorrt.INetworkDefinition, logger: tensorrt.ILogger, onnx: Path) -> tensorrt.OnnxParser:
    trt = import_tensorrt()
    parser = trt.OnnxParser(network, logger)  # owns the weights: keep it alive until the build is done
    if parser.parse_from_file(str(onnx)):
        return parser
    has_names = feature_support(parse_version(trt.__version__))["parser_error_node_name"]
    problems = []
    for i in range(parser.num_errors):
        err = cast("tensorrt.ParserError", parser.get_error(i))
        where = f" at node {err.node_name() or err.node()} ({err.node_operator()})" if has_names else (
            f" at node #{err.node()}" if err.node() >= 0 else "")
        problems.append(err.desc() + where)
    raise InputError(f"TensorRT {trt.__version__} cannot parse {onnx}: {'; '.join(problems) or 'unknown error'}")


def engine_from_onnx(onnx_path: Path | str, out_path: Path | str, req: BuildRequest, *,
                     min_shapes: Mapping[str, Sequence[int]] | None = None,
                     opt_shapes: Mapping[str, Sequence[int]] | None = None,
                     max_shapes: Mapping[str, Sequence[int]] | None = None,
                     workspace_mb: int | None = DEFAULT_WORKSPACE_MB, opt_level: int | None = None,
                     timing_cache: Path | str | None = None,
                     calib_batches: Iterable[Mapping[str, Any]] | None = None,
                     calib_cache: Path | str | None = None, calib_data_key: str | None = None,
                     calib_algorithm: str = "entropy", dla_core: int | None = None, cuda: str = "auto",
                     entry: ArtifactEntry | None = None,
                     log: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """Build ``out_path`` from ``onnx_path`` and write ``<out_path>.json``; returns that manifest.
    ``entry``: the ONNX's verified manifest entry, when the caller has read it (see ``artifact_metadata``)."""
    from aspp_deploy.runtime.trt.calibrator import data_key_from_batches, feeder_of, make_calibrator
    from aspp_deploy.runtime.trt.cuda import get_cuda

    onnx, out = Path(onnx_path), Path(out_path)
    if not onnx.is_file():
        raise InputError(f"ONNX model not found: {onnx}")
    trt = import_tensorrt()
    gpu = get_cuda(cuda)  # a clear error before TensorRT meets a machine without a CUDA device
    onnx_sha256 = sha256_file(onnx)
    req = replace(req, opt_level=req.opt_level if opt_level is None else opt_level,
                  dla_core=req.dla_core if dla_core is None else dla_core)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    plan = make_build_plan(parse_version(trt.__version__), req,
                           dla_cores=builder.num_DLA_cores if req.dla_core is not None else None)
    for note in plan.notes:
        log(note)
    network = _network(builder, plan)
    parser = _parse(network, logger, onnx)
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    profiles = resolve_profiles({t.name: dims_to_tuple(t.shape) for t in inputs},
                                min_shapes, opt_shapes, max_shapes)

    config = builder.create_builder_config()
    if workspace_mb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    for name in plan.builder_flags:
        config.set_flag(_builder_flag(name))
    if plan.opt_level is not None:
        config.builder_optimization_level = plan.opt_level
    if plan.hardware_compatibility_level == "AMPERE_PLUS":
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    if plan.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = plan.dla_core
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    profile = None
    if profiles:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in profiles.items():
            profile.set_shape(name, trt.Dims(list(lo)), trt.Dims(list(opt)), trt.Dims(list(hi)))
        config.add_optimization_profile(profile)
    old_cache = Path(timing_cache).read_bytes() if timing_cache and Path(timing_cache).is_file() else b""
    cache = config.create_timing_cache(old_cache)
    if cache is None or not config.set_timing_cache(cache, False):
        log(f"timing cache {timing_cache} is from another device or TensorRT version: starting a new one")
        config.set_timing_cache(config.create_timing_cache(b""), False)

    calibrator, calib_path = None, None
    if plan.use_calibrator:
        calib_path = Path(calib_cache) if calib_cache else out.with_suffix(".calib")
        if calib_data_key is None:
            if not isinstance(calib_batches, (list, tuple)):
                raise InputError("give calib_data_key (a hash of the calibration images and preprocessing) "
                                 "when calibration batches are streamed")
            calib_data_key = data_key_from_batches(calib_batches)
        calibrator = make_calibrator(trt, calib_batches, calib_path, calib_algorithm, cuda=gpu,
                                     model_sha256=onnx_sha256, data_key=calib_data_key)
        batches = feeder_of(calibrator).batches
        if profiles and batches is not None and batches.spec != {n: p[1] for n, p in profiles.items()}:
            raise InputError(f"calibration batches {batches.spec} must have the profile's opt shapes")
        takes = {t.name: numpy_dtype(t.dtype.name) for t in inputs}  # uint8 for a fused-I/O network
        wrong = sorted(n for n, d in (batches.dtypes.items() if batches is not None else ()) if takes.get(n, d) != d)
        if batches is not None and wrong:
            raise InputError(f"calibration input {wrong[0]!r} is {batches.dtypes[wrong[0]]}; the network takes "
                             f"{takes[wrong[0]]} (calibrate with the ONNX's own manifest preprocessing)")
        config.int8_calibrator = calibrator
        if profile is not None:
            config.set_calibration_profile(profile)

    log(f"building {out.name} with TensorRT {trt.__version__} ({req.precision}) ...")
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if calibrator is not None:
        feeder = feeder_of(calibrator)
        feeder.close()
        if feeder.error is not None:
            raise feeder.error
    if serialized is None:
        raise BuildError(f"TensorRT {trt.__version__} could not build {out.name} (its log above says why)")
    data = bytes(serialized)
    del parser
    manifest_path(out).unlink(missing_ok=True)  # never leave an old manifest beside a new engine
    atomic_write_bytes(out, data)
    if timing_cache:
        atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))

    metadata = artifact_metadata(onnx, entry)
    if "preprocess" not in metadata:
        log(f"{onnx.name} has no aspp-deploy manifest: the engine manifest records no preprocessing")
    runtime = trt.Runtime(logger)
    if plan.version_compatible:
        runtime.engine_host_code_allowed = True
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise BuildError(f"TensorRT {trt.__version__} cannot deserialize the engine it just built")
    inspector = engine.create_engine_inspector()
    layers = summarize_layers(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    manifest = {
        "format": MANIFEST_FORMAT, "schema": 1, "engine": out.name, "engine_bytes": len(data),
        "engine_sha256": hashlib.sha256(data).hexdigest(), "tensorrt_version": trt.__version__,
        "gpu": {"name": gpu.device_name(), "compute_capability": list(gpu.compute_capability())},
        "precision": req.precision, "version_compatible": req.version_compatible,
        "hardware_compatibility_level": plan.hardware_compatibility_level, "dla_core": plan.dla_core,
        "plan": plan.to_dict(), "io": io_tensors(engine), "preprocess": None, **metadata,
        "source_onnx": {"path": str(onnx), "sha256": onnx_sha256, "kind": req.onnx_kind},
        "build_settings": {
            "workspace_mb": workspace_mb, "opt_level": plan.opt_level,
            "profiles": {n: {"min": list(p[0]), "opt": list(p[1]), "max": list(p[2])} for n, p in
                         (profiles or {}).items()},
            "timing_cache": str(timing_cache) if timing_cache else None,
            "calibration": {"algorithm": calib_algorithm, "cache": str(calib_path)} if calib_path else None},
        "build_seconds": round(seconds, 3),
        "layers": layers,
        "trtexec": trtexec_command(plan, onnx, out, profiles=profiles, workspace_mb=workspace_mb,
                                   timing_cache=timing_cache, calib_cache=calib_path),
    }
    manifest = EngineManifest.from_dict(manifest, manifest_path(out)).to_dict()  # written as every reader reads it
    atomic_write_text(manifest_path(out), json_text(manifest))
    log(f"wrote {out} ({len(data) / 1e6:.1f} MB, {seconds:.1f} s) and {manifest_path(out).name}")
    return manifest
