"""``onnx_from_checkpoint``: the whole export pipeline behind ``aspp-deploy export``.

Exporter: the TorchScript-based ``torch.onnx.export(dynamo=False)``. For this model it gives a
plain opset-17 graph (Conv with BatchNorm already folded in eval mode, Relu, Add, MaxPool,
GlobalAveragePool, Concat, Resize) that every TensorRT parser from 8.5 on reads; the dynamo
exporter needs onnxscript, writes opset 18+ (beyond the 8.5/8.6 parsers) and adds nothing here.
"""

from __future__ import annotations

import io
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from aspp_deploy.errors import InputError, ParityError
from aspp_deploy.export import passes as P
from aspp_deploy.export.manifest import embed, tool_versions, update_sidecar
from aspp_deploy.export.parity import ParityReport, compare_outputs
from aspp_deploy.export.trt_check import TRT_VERSIONS, check_for_trt
from aspp_deploy.io import atomic_write_bytes, ensure_writable, sha256_file
from aspp_deploy.model.checkpoint import Checkpoint, load_checkpoint

MIN_SIDE = 32
MAX_SIDE = 8192
DEFAULT_OPSET = 17


@dataclass
class ExportOptions:
    height: int | None = None  # None: the checkpoint's preprocessing size
    width: int | None = None
    batch: int = 1
    dynamic: frozenset[str] = frozenset()  # subset of {"batch", "spatial"}
    opset: int = DEFAULT_OPSET
    simplify: bool = True
    degenerate_atrous: bool = True
    pool_broadcast: bool = True
    argmax: bool = False
    argmax_dtype: str = "int32"
    name: str = "model"


@dataclass
class ExportResult:
    onnx_path: Path
    manifest_path: Path
    entry: dict
    notes: list[str] = field(default_factory=list)


def validate_options(opts: ExportOptions, ckpt: Checkpoint) -> tuple[int, int, list[str]]:
    notes = []
    h = opts.height or ckpt.preprocess.height
    w = opts.width or ckpt.preprocess.width
    for label, v in (("height", h), ("width", w)):
        if not MIN_SIDE <= v <= MAX_SIDE:
            raise InputError(f"--{label} {v} is impossible: it must be between {MIN_SIDE} and {MAX_SIDE}")
    if opts.batch < 1:
        raise InputError(f"--batch {opts.batch} is impossible: it must be at least 1")
    unknown = set(opts.dynamic) - {"batch", "spatial"}
    if unknown:
        raise InputError(f"--dynamic takes batch and/or spatial, not {', '.join(sorted(unknown))}")
    if not 13 <= opts.opset <= 20:
        raise InputError(f"--opset {opts.opset} is not supported: use 13..20 (17 for TensorRT 8.5/8.6)")
    os_ = ckpt.config.output_stride
    if h % os_ or w % os_:
        notes.append(f"{h}x{w} is not a multiple of the output stride {os_}: the feature grid does "
                     "not align with the input (valid, but edges are slightly less accurate)")
    return h, w, notes


def _export_torch(model, x, opts: ExportOptions) -> onnx.ModelProto:
    import torch

    axes = {}
    if opts.dynamic:
        dims_in = {0: "batch"} if "batch" in opts.dynamic else {}
        if "spatial" in opts.dynamic:
            dims_in.update({2: "height", 3: "width"})
        axes = {"input": dims_in, "logits": dict(dims_in)}
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buf, opset_version=opts.opset, dynamo=False,
                          input_names=["input"], output_names=["logits"], dynamic_axes=axes or None,
                          do_constant_folding=True)
    return onnx.load_from_string(buf.getvalue())


def _simplify(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    try:
        import onnxsim

        simplified, ok = onnxsim.simplify(model)
    except Exception as exc:  # onnxsim raises many kinds; any of them means "keep the checked graph"
        return model, f"onnxsim failed ({type(exc).__name__}: {str(exc)[:120]}); kept the checked graph"
    if not ok:
        return model, "onnxsim could not validate its result; kept the checked graph"
    return simplified, "simplified with onnxsim"


def _check(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise InputError(f"the exported graph fails onnx.checker: {str(exc).splitlines()[0]}") from None
    return onnx.shape_inference.infer_shapes(model)


def parity_inputs(pre, shapes: list[tuple[int, int, int]], images: list[Path]) -> list[tuple[str, np.ndarray]]:
    """Random inputs at every (batch, H, W) in ``shapes`` and real images at the first one."""
    from aspp_deploy.data.voc import load_image

    rng = np.random.default_rng(0)
    cases = [(f"random {n}x{h}x{w}", rng.standard_normal((n, 3, h, w)).astype(np.float32))
             for n, h, w in shapes]
    n, h, w = shapes[0]
    if images:
        sized = pre.with_size(h, w)
        arr = np.stack([sized(load_image(p)) for p in images[: max(n, 2)]])
        for i in range(0, len(arr), n):
            chunk = arr[i:i + n]
            if len(chunk) == n:
                cases.append((f"images {i}..{i + n - 1} at {h}x{w}", chunk))
    return cases


def verification_shapes(opts: ExportOptions, h: int, w: int, stride: int) -> list[tuple[int, int, int]]:
    shapes = [(opts.batch, h, w)]
    if "batch" in opts.dynamic:
        shapes.append((opts.batch + 1, h, w))
    if "spatial" in opts.dynamic:
        shapes.append((opts.batch, max(MIN_SIDE, h // 2 + stride), max(MIN_SIDE, w // 2 - stride)))
        shapes.append((opts.batch, h + 2 * stride, w + stride))
    return shapes


def onnx_from_checkpoint(checkpoint: Path | None, out_dir: Path, opts: ExportOptions,
                         images: list[Path] | None = None,
                         log: Callable[[str], None] = lambda m: None) -> ExportResult:
    import torch

    from aspp_deploy.backends.onnxruntime_backend import ort_session

    t0 = time.perf_counter()
    ckpt = load_checkpoint(checkpoint)
    h, w, notes = validate_options(opts, ckpt)
    ensure_writable(out_dir)
    model = ckpt.build()
    x = torch.zeros(opts.batch, 3, h, w)
    log(f"exporting {ckpt.config.backbone}/ASPP-{ckpt.config.head} at {opts.batch}x3x{h}x{w}, opset {opts.opset}")
    graph = _check(_export_torch(model, x, opts))
    simplify_note = "simplification off (--no-simplify)"
    if opts.simplify:
        graph, simplify_note = _simplify(graph)
        graph = _check(graph)
    log(simplify_note)
    if any(n.op_type == "BatchNormalization" for n in graph.graph.node):
        notes.append("BatchNormalization nodes remain (not folded into a conv)")
    reports = []
    steps = [(opts.degenerate_atrous, P.degenerate_atrous), (opts.pool_broadcast, P.pool_broadcast)]
    for enabled, fn in steps:
        if enabled:
            new, rep = fn(graph)
            reports.append(P.with_ops_delta(graph, new, rep))
            graph = _check(new)
    final = graph
    if opts.argmax:
        final, rep = P.append_argmax(graph, opts.argmax_dtype)
        reports.append(P.with_ops_delta(graph, final, rep))
        final = _check(final)
    for rep in reports:
        log(f"pass {rep.name}: {len(rep.details)} change(s), {rep.flops_removed / 1e6:.1f} MFLOPs removed")

    # parity: ONNX Runtime against PyTorch, on the logits and (with --argmax) on the class ids
    sessions = [("", ort_session_from_model(graph, ort_session))]
    if final is not graph:
        sessions.append(("class ids, ", ort_session_from_model(final, ort_session)))
    cases = []
    for name, arr in parity_inputs(ckpt.preprocess, verification_shapes(opts, h, w, ckpt.config.output_stride),
                                   images or []):
        with torch.inference_mode():
            ref = model(torch.from_numpy(arr)).numpy()
        for prefix, session in sessions:
            cases.append(compare_outputs(prefix + name, ref, session.run(None, {"input": arr})[0]))
    parity = ParityReport(cases)
    log(f"parity: max abs {parity.max_abs:.2e}, mean abs {parity.mean_abs:.2e}, "
        f"argmax agreement {parity.argmax_agreement:.6f} over {len(cases)} case(s)")
    if not parity:
        raise ParityError(f"ONNX Runtime disagrees with PyTorch: max abs {parity.max_abs:.3g} "
                          f"(tolerance {parity.max_abs_tol}), argmax agreement "
                          f"{parity.argmax_agreement:.6f} (need {parity.min_agreement}); nothing written")
    graph = final
    checks = {v: check_for_trt(graph, v).to_dict() for v in TRT_VERSIONS}

    onnx_path = out_dir / f"{opts.name}.onnx"
    entry = _manifest_entry(ckpt, graph, opts, h, w, reports, parity, checks, simplify_note, notes,
                            time.perf_counter() - t0, onnx_path.name)
    embed(graph, entry)
    atomic_write_bytes(onnx_path, graph.SerializeToString())
    entry["onnx_sha256"] = sha256_file(onnx_path)
    manifest_path = update_sidecar(out_dir, onnx_path.name, entry)
    return ExportResult(onnx_path, manifest_path, entry, notes)


def ort_session_from_model(graph: onnx.ModelProto, factory):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "candidate.onnx"
        p.write_bytes(graph.SerializeToString())
        return factory(p)


def _io(values) -> list[dict]:
    out = []
    for v in values:
        t = v.type.tensor_type
        out.append({"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
                    "shape": [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]})
    return out


def _manifest_entry(ckpt, graph, opts, h, w, reports, parity, checks, simplify_note, notes,
                    seconds, file_name) -> dict:
    return {
        "kind": "onnx", "file": file_name, "precision": "fp32",
        "inputs": _io(graph.graph.input), "outputs": _io(graph.graph.output),
        "outputs_class_ids": opts.argmax,
        "opset": next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")),
        "preprocess": ckpt.preprocess.with_size(h, w).to_dict(),
        "classes": ckpt.classes, "palette": ckpt.palette, "model": ckpt.config.to_dict(),
        "source": {"checkpoint": str(ckpt.path), "checkpoint_sha256": sha256_file(ckpt.path)
                   if ckpt.path else None},
        "export": {"exporter": "torch.onnx.export(dynamo=False)", "dynamic": sorted(opts.dynamic),
                   "batch": opts.batch, "simplify": simplify_note,
                   "passes": [r.to_dict() for r in reports], "notes": notes, "seconds": round(seconds, 2)},
        "parity": parity.to_dict(), "trt_check": checks, "tools": tool_versions(),
    }

