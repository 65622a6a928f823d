"""``onnx_from_source``: the whole export pipeline behind ``aspp-deploy export`` (any PyTorch source:
our checkpoint, a factory with weights, TorchScript, torch.export), and the steps it shares with
``aspp-deploy import`` (``finish_graph``, ``write_artifact``).

Exporter: the TorchScript-based ``torch.onnx.export(dynamo=False)``. For this model it gives a
plain opset-17 graph (Conv with BatchNorm already folded in eval mode, Relu, Add, MaxPool,
GlobalAveragePool, Concat, Resize) that every TensorRT parser from 8.5 on reads; the dynamo
exporter needs onnxscript, writes opset 18+ (beyond the 8.5/8.6 parsers) and adds nothing here.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from aspp_deploy.backends.onnxruntime_backend import ort_session
from aspp_deploy.data.voc import load_image
from aspp_deploy.errors import InputError, ParityError
from aspp_deploy.export import passes as P
from aspp_deploy.export.fused_io import fuse_io
from aspp_deploy.export.manifest import embed, tool_versions, write_with_entry
from aspp_deploy.export.parity import ParityReport, compare_outputs
from aspp_deploy.export.trt_check import SIDECAR_KEY, Preflight
from aspp_deploy.io import ensure_writable, TempFolder
from aspp_deploy.model.sources import ModelSource, load_source, resolve_for_source
from aspp_deploy.runtime.preprocess import Preprocess
from aspp_deploy.spec import GraphFacts, ModelSpec, ResolvedSpec, resolve_input

MIN_SIDE = 32
MAX_SIDE = 8192
DEFAULT_OPSET = 17


@dataclass
class ExportOptions:
    height: int | None = None  # None: the spec's, else the source's (our checkpoints), else 512
    width: int | None = None
    batch: int = 1
    dynamic: frozenset[str] | None = None  # subset of {"batch", "spatial"}; None: the spec's
    opset: int = DEFAULT_OPSET
    simplify: bool = True
    degenerate_atrous: bool = True
    pool_broadcast: bool = True
    argmax: bool = False
    argmax_dtype: str = "int32"
    name: str = "model"
    fused_io: bool = False  # uint8 pixels in, uint8 class ids out (export/fused_io.py); implies the argmax


@dataclass
class ExportResult:
    onnx_path: Path
    manifest_path: Path
    entry: dict
    notes: list[str] = field(default_factory=list)


def check_name(name: str) -> str:
    """A file stem for the artifact: one plain name, so nothing can be written outside ``--out``."""
    bad = (not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name
           or name.startswith(".") or Path(name).is_absolute() or len(name) > 200)
    if bad:
        raise InputError(f"--name {name!r} must be a plain file name (no folders, no leading dot): "
                         "the artifact is written inside --out")
    return name


def validate_options(opts: ExportOptions, h: int, w: int, stride: int | None) -> list[str]:
    notes = []
    for label, v in (("height", h), ("width", w)):
        if not MIN_SIDE <= v <= MAX_SIDE:
            raise InputError(f"--{label} {v} is impossible: it must be between {MIN_SIDE} and {MAX_SIDE}")
    if opts.batch < 1:
        raise InputError(f"--batch {opts.batch} is impossible: it must be at least 1")
    unknown = set(opts.dynamic or ()) - {"batch", "spatial"}
    if unknown:
        raise InputError(f"--dynamic takes batch and/or spatial, not {', '.join(sorted(unknown))}")
    if not 13 <= opts.opset <= 20:
        raise InputError(f"--opset {opts.opset} is not supported: use 13..20 (17 for TensorRT 8.5/8.6)")
    check_name(opts.name)
    if stride and (h % stride or w % stride):
        notes.append(f"{h}x{w} is not a multiple of the output stride {stride}: the feature grid does "
                     "not align with the input (valid, but edges are slightly less accurate)")
    return notes


def dynamic_axes(dynamic: frozenset[str] | set[str], layout: str, output_ids: bool) -> dict[str, dict[int, str]]:
    if not dynamic:
        return {}
    dims_in = {0: "batch"} if "batch" in dynamic else {}
    dims_out = dict(dims_in)
    if "spatial" in dynamic:
        dims_in.update({1: "height", 2: "width"} if layout == "NHWC" else {2: "height", 3: "width"})
        dims_out.update({1: "height", 2: "width"} if output_ids else {2: "height", 3: "width"})
    return {"input": dims_in, "output": dims_out}


def _export_torch(module, x, opts: ExportOptions, axes: dict, out_name: str,
                  size: tuple[int, int] | None = None, stride: int | None = None) -> onnx.ModelProto:
    """``torch.onnx.export`` to an in-memory model; a failure is one line (``size``: the input's height and
    width, named in it, with the sizes that would export when the failure is about the size)."""
    import torch

    named = {"input": axes["input"], out_name: axes["output"]} if axes else None
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode(), _exporter_log_silenced():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(module, (x,), buf, opset_version=opts.opset, dynamo=False,
                              input_names=["input"], output_names=[out_name], dynamic_axes=named,
                              do_constant_folding=True)
        except Exception as exc:  # the exporter fails in many ways on user models: one line, no traceback
            raise InputError(_export_failure(exc, module, x, size, stride)) from None
    return onnx.load_from_string(buf.getvalue())


@contextlib.contextmanager
def _exporter_log_silenced():
    """Keep torch's exporter log off the console. The TorchScript exporter switches its C++ log on for every
    export (``setup_onnx_logging`` tests ``_jit_is_onnx_log_enabled`` without calling it, so always), and
    when a graph pass fails it writes the whole TorchScript IR there (``_jit_onnx_log("Torch IR graph at
    exception: ", graph)``, straight to the process's stderr): hundreds of lines before our one error
    line. The log call is a no-op during the export, and the log is left as it was found."""
    import torch

    c = torch._C
    log = getattr(c, "_jit_onnx_log", None)
    is_enabled = getattr(c, "_jit_is_onnx_log_enabled", None)
    set_enabled = getattr(c, "_jit_set_onnx_log_enabled", None)
    was = bool(is_enabled()) if callable(is_enabled) else None
    if callable(log):
        c._jit_onnx_log = lambda *args, **kwargs: None
    try:
        yield
    finally:
        if callable(log):
            c._jit_onnx_log = log
        if was is not None and callable(set_enabled):
            set_enabled(was)


# Where the exporter's message stops being about the failure: its plea for a pull request, the IR value
# it blames (a TorchScript graph line), C++ provenance.
_MESSAGE_TAILS = (" Please feel free to request support", "[Caused by the value", "(Triggered internally at")
_ABOUT_SIZE = re.compile(r"size|shape|divisible|factor|dimension", re.IGNORECASE)


def exporter_message(exc: BaseException) -> str:
    """The first meaningful line of an exporter error, without the TorchScript IR it may carry."""
    lines = [line.strip() for line in str(exc).strip().splitlines()]
    text = next((line for line in lines if line and not line.startswith(("%", "graph(", "Torch IR"))), "")
    for tail in _MESSAGE_TAILS:
        if tail in text:
            text = text[:text.index(tail)]
    text = text.strip().rstrip(".,;:") or type(exc).__name__
    return text[:300]


def _export_failure(exc: BaseException, module, x, size: tuple[int, int] | None, stride: int | None) -> str:
    text = exporter_message(exc)
    at = f" at {size[0]}x{size[1]}" if size else ""
    line = f"torch.onnx.export failed{at}: {type(exc).__name__}: {text}"
    if size and _ABOUT_SIZE.search(text):
        line += f"; {pooling_size_hint(module, x, size) or _stride_hint(size, stride or 32)}"
    return line


def _stride_hint(size: tuple[int, int], stride: int) -> str:
    return (f"try a height and width divisible by {stride} (the usual output stride), e.g. "
            f"{_nearby(size, (stride, stride))}")


def _nearby(size: tuple[int, int], multiple: tuple[int, int]) -> str:
    """The sizes next to ``size`` whose sides are multiples of ``multiple`` ("48x48 or 96x96")."""
    (h, w), (mh, mw) = size, multiple
    low = (max(mh, h // mh * mh), max(mw, w // mw * mw))
    high = (-(-h // mh) * mh, -(-w // mw) * mw)
    return f"{low[0]}x{low[1]}" if low == high else f"{low[0]}x{low[1]} or {high[0]}x{high[1]}"


def pooling_size_hint(module, x, size: tuple[int, int]) -> str | None:
    """For a model with adaptive pooling (PSPNet's pyramid, ...): the input sizes its pooling can be
    exported at. The exporter writes adaptive pooling as fixed windows, which needs each pooled feature map
    to be a multiple of each output size; a forward pass at the failing size shows every pooling layer's
    input, hence its stride from the input (input size / feature size), and the input then has to be a
    multiple of stride x lcm(output sizes). None when the model has no adaptive pooling to measure."""
    import torch
    from torch import nn

    pools = [m for m in module.modules() if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d))] \
        if isinstance(module, nn.Module) and not isinstance(module, torch.jit.ScriptModule) else []
    if not pools:
        return None
    seen: list[tuple[int, int, int, int]] = []  # feature h, w; pooled h, w

    def hook(mod, inputs, output):
        feat, out = inputs[0].shape[-2:], output.shape[-2:]
        seen.append((int(feat[0]), int(feat[1]), int(out[0]), int(out[1])))

    handles = [m.register_forward_hook(hook) for m in pools]
    try:
        with torch.inference_mode():
            module(x)
    except Exception:  # noqa: BLE001 - only a hint: without it the generic one is given
        return None
    finally:
        for handle in handles:
            handle.remove()
    h, w = size
    multiple = [1, 1]
    bad: set[int] = set()
    for fh, fw, oh, ow in seen:
        for axis, (side, feat, out) in enumerate(((h, fh, oh), (w, fw, ow))):
            if feat <= 0 or out <= 0:
                continue
            if feat % out:
                bad.add(out)
            stride = max(1, round(side / feat))
            multiple[axis] = math.lcm(multiple[axis], stride * out)
    if not bad:
        return None
    mh, mw = multiple
    sizes = ", ".join(str(v) for v in sorted({o for *_, oh, ow in seen for o in (oh, ow)}))
    which = f"a height and width divisible by {mh}" if mh == mw else \
        f"a height divisible by {mh} and a width divisible by {mw}"
    return (f"its adaptive pooling (to {sizes}) exports only when each pooled feature map is a multiple of those "
            f"sizes: use {which}, e.g. {_nearby(size, (mh, mw))}")


def set_io_shape(value: onnx.ValueInfoProto, dims: list[int | str]) -> None:
    """Declare a graph input's or output's shape (ints static, strings symbolic)."""
    shape = value.type.tensor_type.shape
    del shape.dim[:]
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, int):
            dim.dim_value = d
        else:
            dim.dim_param = d


def declared_output_dims(pre: Preprocess, batch: int, axes: dict, num_classes: int | None,
                         output_ids: bool) -> list[int | str]:
    """The output's shape with meaningful names: batch, classes, height, width (never exporter names)."""
    out_axes = axes.get("output", {}) if axes else {}
    dims: list[int | str] = [out_axes.get(0, batch)]
    spatial = [out_axes.get(1 if output_ids else 2, pre.height), out_axes.get(2 if output_ids else 3, pre.width)]
    return dims + spatial if output_ids else dims + [num_classes or "classes"] + spatial


def _simplify(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    try:
        import onnxsim

        simplified, ok = onnxsim.simplify(model)
    except Exception as exc:  # onnxsim raises many kinds; any of them means "keep the checked graph"
        return model, f"onnxsim failed ({type(exc).__name__}: {str(exc)[:120]}); kept the checked graph"
    if not ok:
        return model, "onnxsim could not validate its result; kept the checked graph"
    return simplified, "simplified with onnxsim"


def _check(model: onnx.ModelProto, what: str = "the exported graph") -> onnx.ModelProto:
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise InputError(f"{what} fails onnx.checker: {str(exc).strip().splitlines()[0]}") from None
    return onnx.shape_inference.infer_shapes(model)


@dataclass
class Finished:
    graph: onnx.ModelProto       # after simplification and the exact passes (logits)
    final: onnx.ModelProto       # graph, or graph + ArgMax, or graph with fused I/O
    reports: list
    simplify_note: str
    notes: list[str]
    aspp: list[dict]


def finish_graph(graph: onnx.ModelProto, opts: ExportOptions, log: Callable[[str], None],
                 output_dims: list[int | str] | None = None, what: str = "the exported graph",
                 pre: Preprocess | None = None, num_classes: int | None = None) -> Finished:
    """checker -> onnxsim -> checker -> ASPP detection -> exact passes -> optional ArgMax, or fused I/O
    (``opts.fused_io``: ``pre`` is the model's preprocessing, ``num_classes`` its class count).

    Shared by export and import. ``output_dims`` re-declares the output shape after each rewrite, so
    exporter-made symbol names never reach the manifest."""

    def declare(m: onnx.ModelProto) -> onnx.ModelProto:
        if output_dims is not None:
            set_io_shape(m.graph.output[0], output_dims)
        return m

    graph = _check(declare(graph), what)
    _name_nodes(graph)
    simplify_note = "simplification off (--no-simplify)"
    if opts.simplify:
        graph, simplify_note = _simplify(graph)
        graph = _check(declare(graph), what)
    log(simplify_note)
    notes = []
    if any(n.op_type == "BatchNormalization" for n in graph.graph.node):
        notes.append("BatchNormalization nodes remain (not folded into a conv)")
    aspp = _find_aspp(graph)
    log(f"ASPP by graph structure: {'; '.join(a['describe'] for a in aspp) if aspp else 'none found'}")
    reports = []
    steps = [(opts.degenerate_atrous, P.degenerate_atrous), (opts.pool_broadcast, P.pool_broadcast)]
    for enabled, fn in steps:
        if enabled:
            new, rep = fn(graph)
            reports.append(P.with_ops_delta(graph, new, rep))
            graph = _check(declare(new), what)
    final = graph
    if opts.fused_io:
        if pre is None:
            raise ValueError("fused I/O needs the model's preprocessing")
        final, rep = fuse_io(graph, pre, num_classes)
        reports.append(P.with_ops_delta(graph, final, rep))
        final = _check(final, what)
    elif opts.argmax:
        final, rep = P.append_argmax(graph, opts.argmax_dtype)
        reports.append(P.with_ops_delta(graph, final, rep))
        final = _check(final, what)
    for rep in reports:
        log(f"pass {rep.name}: {len(rep.details)} change(s), {rep.flops_removed / 1e6:.1f} MFLOPs removed")
    return Finished(graph, final, reports, simplify_note, notes, aspp)


def _name_nodes(graph: onnx.ModelProto) -> None:
    """Give every unnamed node a unique name: quantizers keep nodes in higher precision by name."""
    taken = {n.name for n in graph.graph.node if n.name}
    for i, node in enumerate(graph.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


def _find_aspp(graph: onnx.ModelProto) -> list[dict]:
    try:
        from aspp_deploy.export.aspp_find import find_aspp
    except ImportError:
        return []
    out = []
    for match in find_aspp(graph):
        d = match.to_dict()
        d["describe"] = match.describe()
        out.append(d)
    return out


def parity_inputs(pre: Preprocess, shapes: list[tuple[int, int, int]], images: list[Path]) -> list[tuple[str, np.ndarray]]:
    """Random inputs at every (batch, H, W) in ``shapes`` and real images at the first one, in the
    model's layout."""

    cases = [(f"random {n}x{h}x{w}", pre.with_size(h, w).random_input(n, seed=i))
             for i, (n, h, w) in enumerate(shapes)]
    n, h, w = shapes[0]
    if images:
        sized = pre.with_size(h, w)
        arr = np.stack([sized(load_image(p)) for p in images[: max(n, 2)]])
        for i in range(0, len(arr), n):
            chunk = arr[i:i + n]
            if len(chunk) == n:
                cases.append((f"images {i}..{i + n - 1} at {h}x{w}", chunk))
    return cases


def verification_shapes(batch: int, dynamic, h: int, w: int, stride: int) -> list[tuple[int, int, int]]:
    shapes = [(batch, h, w)]
    if "batch" in dynamic:
        shapes.append((batch + 1, h, w))
    if "spatial" in dynamic:
        shapes.append((batch, max(MIN_SIDE, h // 2 + stride), max(MIN_SIDE, w // 2 - stride)))
        shapes.append((batch, h + 2 * stride, w + stride))
    return shapes


def run_parity(reference: Callable[[np.ndarray], np.ndarray], graph: onnx.ModelProto, final: onnx.ModelProto,
               cases: list[tuple[str, np.ndarray]], reference_ids: bool = False,
               fused: Preprocess | None = None) -> ParityReport:
    """ONNX Runtime on ``graph`` (and ``final`` when it differs: class ids) against ``reference``.

    ``fused``: ``final`` has fused I/O with this preprocessing and ``cases`` are uint8 pixel batches
    (``parity_inputs`` of it); ``final`` is fed them as they are, the reference and ``graph`` their
    normalised float input (``Preprocess.from_pixels``, what the fused graph computes inside)."""

    sessions = [("", ort_session_from_model(graph, ort_session), False)]
    if final is not graph:
        label = "fused I/O (uint8 in, class ids out), " if fused is not None else "class ids, "
        sessions.append((label, ort_session_from_model(final, ort_session), fused is not None))
    results = []
    for name, arr in cases:
        x = fused.from_pixels(arr) if fused is not None else arr
        ref = reference(x)
        for prefix, session, takes_pixels in sessions:
            feed = {session.get_inputs()[0].name: arr if takes_pixels else x}
            results.append(compare_outputs(prefix + name, ref, session.run(None, feed)[0], reference_ids))
    return ParityReport(results)


def describe_parity(parity: ParityReport) -> str:
    return (f"parity: max abs {parity.max_abs:.2e} ({parity.max_rel:.1e} of the output's scale "
            f"{parity.scale:.3g}), mean abs {parity.mean_abs:.2e}, "
            f"argmax agreement {parity.argmax_agreement:.6f} over {len(parity.cases)} case(s)")


def require_parity(parity: ParityReport, against: str) -> None:
    if not parity:
        raise ParityError(f"ONNX Runtime disagrees with {against}: argmax agreement "
                          f"{parity.argmax_agreement:.6f} (need {parity.min_agreement}), max abs {parity.max_abs:.3g} = "
                          f"{parity.max_rel:.2g} of the output's scale {parity.scale:.3g} (tolerance "
                          f"{parity.max_rel_tol:g}); nothing written")


def onnx_from_source(source: ModelSource, spec: ModelSpec, out_dir: Path, opts: ExportOptions,
                     images: list[Path] | None = None,
                     log: Callable[[str], None] = lambda m: None) -> ExportResult:
    """Export any PyTorch source: adapt its output, export, simplify, run the passes, verify parity
    against the PyTorch module on random and real inputs, write the ONNX and its manifest."""
    import torch

    t0 = time.perf_counter()
    unknown = set(opts.dynamic or ()) - {"batch", "spatial"}
    if unknown:
        raise InputError(f"--dynamic takes batch and/or spatial, not {', '.join(sorted(unknown))}")
    spec = spec.merged(height=opts.height, width=opts.width,
                       dynamic=sorted(opts.dynamic) if opts.dynamic is not None else None)
    pre0 = resolve_input(spec, GraphFacts(), source.preprocess)[0]
    notes = validate_options(opts, pre0.height, pre0.width, source.output_stride if source.config else None)
    resolved, module, plan = resolve_for_source(source, spec, opts.batch)
    if opts.argmax and not opts.fused_io and plan.kind == "class_ids":
        raise InputError("--argmax: the model already outputs class ids")
    ensure_writable(out_dir)
    pre = resolved.preprocess
    dynamic = frozenset(resolved.dynamic)
    if opts.fused_io and "spatial" in dynamic:
        raise InputError(f"--fused-io needs a fixed input height and width ({pre.height}x{pre.width}): export with "
                         "--dynamic batch, or without --dynamic")
    ids = plan.kind == "class_ids"
    out_name = "class_ids" if ids else "logits"
    axes = dynamic_axes(dynamic, pre.layout, ids)
    x = torch.zeros(pre.input_shape(opts.batch))
    log(f"exporting {source.label} at {'x'.join(map(str, x.shape))} ({pre.layout}), opset {opts.opset}")
    for note in plan.notes:
        log(f"adapted: {note}")
    graph = _export_torch(module, x, opts, axes, out_name, (pre.height, pre.width), source.output_stride)
    done = finish_graph(graph, opts, log, declared_output_dims(pre, opts.batch, axes, plan.num_classes, ids),
                        pre=pre, num_classes=len(resolved.classes))

    def reference(arr: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(arr)).numpy()

    fused = pre.fused() if opts.fused_io else None
    cases = parity_inputs(fused or pre, verification_shapes(opts.batch, dynamic, pre.height, pre.width,
                                                            source.output_stride), images or [])
    parity = run_parity(reference, done.graph, done.final, cases, reference_ids=ids, fused=fused)
    log(describe_parity(parity))
    require_parity(parity, "PyTorch")
    model_record = {"source": source.kind, "label": source.label, "config": source.config,
                    "output_adaptations": plan.notes, "source_notes": source.notes}
    src_record = dict(source.record, fingerprint=source.fingerprint(fingerprinted_spec(resolved, opts)))
    export_record = {"exporter": "torch.onnx.export(dynamo=False)", "dynamic": sorted(dynamic),
                     "batch": opts.batch, "simplify": done.simplify_note, "aspp": done.aspp,
                     "passes": [r.to_dict() for r in done.reports], "notes": notes + done.notes,
                     "seconds": round(time.perf_counter() - t0, 2)}
    entry = manifest_entry(done.final, resolved, f"{opts.name}.onnx", model=model_record, source=src_record,
                           export=export_record, parity=parity.to_dict(), argmax=opts.argmax or ids,
                           fused_io=opts.fused_io)
    onnx_path, manifest_path = write_artifact(done.final, entry, out_dir, opts.name)
    return ExportResult(onnx_path, manifest_path, entry, notes + done.notes + source.notes + resolved_notes(resolved))


def fingerprinted_spec(resolved: ResolvedSpec, opts: ExportOptions) -> dict:
    """What an artifact's source fingerprint covers besides the model: its spec, and fused I/O when it has it
    (a fused artifact is not the plain export a command that re-exports on demand wants; a plain one keeps
    the fingerprint it always had)."""
    return dict(resolved.to_dict(), fused_io=True) if opts.fused_io else resolved.to_dict()


def resolved_notes(resolved: ResolvedSpec) -> list[str]:
    return [f"assumed {a}" for a in resolved.assumed]


def onnx_from_checkpoint(checkpoint: Path | None, out_dir: Path, opts: ExportOptions,
                         images: list[Path] | None = None,
                         log: Callable[[str], None] = lambda m: None, spec: ModelSpec | None = None) -> ExportResult:
    """``onnx_from_source`` for a checkpoint, TorchScript or torch.export file (default: the shipped model)."""
    return onnx_from_source(load_source(checkpoint), spec or ModelSpec(), out_dir, opts, images, log)


def manifest_entry(graph: onnx.ModelProto, resolved: ResolvedSpec, file_name: str, *, model: dict, source: dict,
                   export: dict, parity: dict, argmax: bool, fused_io: bool = False) -> dict:
    """The manifest entry of an exported or imported graph; ``fused_io``: the graph takes uint8 pixels and
    returns uint8 class ids (its preprocessing record says so, ``Preprocess.fused_io``)."""
    argmax = argmax or fused_io
    return {
        "kind": "onnx", "file": file_name, "precision": "fp32",
        "inputs": tensor_records(graph.graph.input), "outputs": tensor_records(graph.graph.output),
        "outputs_class_ids": bool(argmax), "output_kind": "class_ids" if argmax else resolved.output_kind,
        "opset": next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")),
        "preprocess": resolved.preprocess.fused(fused_io).to_dict(), "classes": resolved.classes,
        "palette": resolved.palette,
        "spec": resolved.to_dict(), "assumed": resolved.assumed, "model": model, "source": source,
        "export": export, "parity": parity,
        "tools": tool_versions(),  # write_artifact adds the TensorRT pre-flight
    }


def write_artifact(graph: onnx.ModelProto, entry: dict, out_dir: Path, name: str) -> tuple[Path, Path]:
    """Embed the manifest, write the ONNX atomically, then its sidecar entry (with the file's sha256)."""
    onnx_path = out_dir / f"{check_name(name)}.onnx"
    return onnx_path, write_checked(onnx_path, graph, entry)


def write_checked(onnx_path: Path, graph: onnx.ModelProto, entry: dict) -> Path:
    """Run the TensorRT pre-flight on ``graph``: its summary goes into ``entry`` (hence the manifest and
    the ONNX metadata), every finding into the sidecar beside ``onnx_path``; then embed the entry and
    write the ONNX, the sidecar and the manifest entry. Returns the manifest's path."""
    preflight = Preflight.run(graph, onnx_path.name)
    entry.update(preflight.entry_fields())
    embed(graph, entry)
    return write_with_entry(onnx_path, graph.SerializeToString(), entry,
                            {entry[SIDECAR_KEY]["file"]: preflight.sidecar_bytes()})


def ort_session_from_model(graph: onnx.ModelProto, factory):
    with TempFolder("aspp-session-") as d:
        p = Path(d) / "candidate.onnx"
        p.write_bytes(graph.SerializeToString())
        return factory(p)


def tensor_records(values) -> list[dict]:
    """The manifest's record of graph inputs or outputs: name, NumPy dtype, shape (a dynamic dimension by its name)."""
    out = []
    for v in values:
        t = v.type.tensor_type
        out.append({"name": v.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
                    "shape": [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]})
    return out
