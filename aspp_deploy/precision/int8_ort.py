"""INT8 with ONNX Runtime's static quantization (``quantize_static``, QDQ format).

Two recipes from the same machinery, because the best Q/DQ placement differs by runtime:

- ``CPU_RECIPE`` (``--target cpu``): what runs fastest in ONNX Runtime's CPU provider: ORT's
  pre-processing first (``quant_pre_process``: shape inference and graph optimisation), then
  QDQ with uint8 activations (asymmetric; after ReLU the whole range is used), int8 symmetric
  per-channel weights, every operator ORT has a quantized kernel for (MatMul and Gemm included:
  transformer blocks are quantized too), so that consecutive
  QLinearConv / QLinearAdd / quantized pooling and concat run without float round trips.
- ``TRT_RECIPE`` (``--target trt`` without ModelOpt): TensorRT's explicit-quantization rules:
  int8 symmetric activations (zero point 0) per tensor, int8 per-channel weights (axis 0), float
  biases, Q/DQ only on the *inputs* of Conv, MatMul, Gemm, MaxPool, GlobalAveragePool and Add, and on an
  Add only on its residual input (the other input comes straight from a Conv, so TensorRT fuses
  Conv+BN+ReLU+Add into one INT8 kernel). Same placement as ModelOpt's, checked in the tests.

Calibration goes through ``quantize_static``'s own ``calibration_cache_path`` (ORT >= 1.26),
pointed at a file named by the cache key, so the ranges are computed once per (model, images,
settings) and reused by every candidate of the accuracy-budget loop. Older ORT releases have no
such parameter: then every candidate recalibrates, and the manifest says the cache was off.

Memory: ``quantize_static`` left to calibrate by itself keeps every intermediate tensor of every
calibration image before it reduces them (the entropy and percentile calibrators: about 200 MB
per 512x512 image here, so 96 images peaked at 20 GB). ``stream_calibrate`` computes the same
ranges in chunks of a few images with ORT's own calibrator objects and writes them into that
cache file, which ``quantize_static`` then reads:

- MinMax: each chunk's per-tensor min/max merged into the running range (exactly the
  all-at-once result);
- Entropy/Percentile: two streamed passes. The first finds each tensor's global min/max (what
  the all-at-once histogram's range is made of); the second adds every chunk's histogram into
  bins fixed on that range. The histograms, hence the thresholds, are the all-at-once ones
  (the tests check it), where ORT's own chunked merging (``CalibStridedMinMax``) would re-bin as
  the range grows and give other thresholds. It costs one more inference pass over the images.

Older ORT releases (no cache parameter) fall back to ORT's strided calibration (``set_range``
chunks), which bounds memory the same way.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from aspp_deploy.export.fused_io import keep_fused_float
from aspp_deploy.io import TempFolder
from aspp_deploy.precision.cache import CacheLookup
from aspp_deploy.runtime.calibration import CalibrationData, ort_reader

DEFAULT_PERCENTILE = 99.999
METHODS = ("entropy", "minmax", "percentile")
# MatMul and Gemm (transformer blocks, attention, the Linear layers of a head): TensorRT runs them in
# INT8 with Q/DQ on both inputs, as ModelOpt places them.
TRT_OP_TYPES = ("Conv", "Add", "MaxPool", "GlobalAveragePool", "MatMul", "Gemm")
# Images per calibration chunk: intermediate tensors of one chunk are in memory at once (about
# 200 MB per 512x512 image for the shipped model), so the chunk is sized from a byte budget.
CHUNK_BUDGET_BYTES = 512 * 2**20
MAX_CHUNK_IMAGES = 8


@dataclass(frozen=True)
class OrtRecipe:
    name: str
    activation_type: str  # "uint8" or "int8"
    symmetric_activations: bool
    op_types: tuple[str, ...] | None  # None: every operator ORT can quantize
    inputs_only: bool  # no Q/DQ on operator outputs (TensorRT style)
    preprocess: bool  # run ORT's quant_pre_process first
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"recipe": self.name, "activations": self.activation_type, "weights": "int8",
                "per_channel": True, "symmetric_activations": self.symmetric_activations,
                "symmetric_weights": True, "op_types": list(self.op_types) if self.op_types else "all",
                "output_quantization": not self.inputs_only, "ort_preprocess": self.preprocess}


CPU_RECIPE = OrtRecipe("ort-cpu", "uint8", False, None, False, True)
TRT_RECIPE = OrtRecipe("ort-trt", "int8", True, TRT_OP_TYPES, True, False,
                       {"QuantizeBias": False, "AddQDQPairToWeight": False, "DedicatedQDQPair": False,
                        "ForceQuantizeNoInputCheck": True, "QDQOpTypePerChannelSupportToAxis": {"Conv": 0}})


def ort_supports_calibration_cache() -> bool:
    from onnxruntime.quantization import quantize_static

    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


class OrtInt8Builder:
    """Builds INT8 candidates of one FP32 model, each with its own set of excluded nodes."""

    def __init__(self, fp32: Path, work: Path, calib: CalibrationData, method: str, recipe: OrtRecipe,
                 cache: CacheLookup, percentile: float = DEFAULT_PERCENTILE) -> None:
        self.recipe, self.calib, self.method, self.percentile = recipe, calib, method, percentile
        self.cache = cache
        self.work = work
        self.model_path = fp32
        if recipe.preprocess:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            self.model_path = work / "ort-preprocessed.onnx"
            quant_pre_process(str(fp32), str(self.model_path))
        self.model_path = name_every_node(self.model_path, work / "ort-named.onnx")
        # Without a persistent cache, still calibrate once per run (a file in the work folder).
        self.cache_file: Path | None = None
        if ort_supports_calibration_cache():
            self.cache_file = cache.payload or work / "ranges.ort.json"
        self.calibrated = bool(cache.hit)
        self._graph: onnx.ModelProto | None = None
        self._tail: list[str] | None = None

    def graph(self) -> onnx.ModelProto:
        """The graph the quantizer sees (node names for the layer groups come from it), loaded once: read
        it, do not change it."""
        if self._graph is None:
            self._graph = onnx.load(str(self.model_path))
        return self._graph

    def output_tail(self) -> list[str]:
        """The nodes between the last convolution or matrix product and the graph's outputs (a Sigmoid,
        the background/foreground Concat of a binary model, an upsampling Resize): they stay in float
        with the recipes that quantize outputs, so the scores the argmax or threshold reads are never
        rounded to 8 bits over their whole range (BlazePose's mask logits span +-2000: one step of the
        8-bit grid moves its threshold at 0 by 15)."""
        if self._tail is not None:
            return self._tail
        if self.recipe.inputs_only:
            self._tail = []
            return self._tail
        graph = self.graph().graph
        producer = {o: n for n in graph.node for o in n.output}
        tail, todo = [], [o.name for o in graph.output]
        while todo:
            node = producer.get(todo.pop())
            if node is None or node.op_type in TAIL_STOP or node.name in tail or not node.name:
                continue
            tail.append(node.name)
            todo.extend(node.input)
        self._tail = tail
        return tail

    def build(self, exclude: list[str], out: Path) -> None:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        exclude = keep_fused_float(list(exclude) + [n for n in self.output_tail() if n not in exclude], self.graph())
        r = self.recipe
        qtype = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
        method = {"entropy": CalibrationMethod.Entropy, "minmax": CalibrationMethod.MinMax,
                  "percentile": CalibrationMethod.Percentile}[self.method]
        extra = {"ActivationSymmetric": r.symmetric_activations, "WeightSymmetric": True, **r.extra}
        if self.method == "percentile":
            extra["CalibPercentile"] = self.percentile
        if r.inputs_only:
            extra["OpTypesToExcludeOutputQuantization"] = sorted({n.op_type for n in self.graph().graph.node})
        kwargs = {}
        reader = ort_reader(self.calib)
        if self.cache_file is not None:
            kwargs["calibration_cache_path"] = str(self.cache_file)
            if not self.cache_file.is_file():
                from onnxruntime.quantization.calibrate import save_tensors_data

                ranges = stream_calibrate(self.model_path, self.calib, self.method, r.op_types, extra)
                self.cache_file.parent.mkdir(parents=True, exist_ok=True)
                save_tensors_data(ranges, self.cache_file)
        else:  # old ORT: its own calibration, limited to a chunk of batches at a time
            extra["CalibStridedMinMax"] = _divisor_at_most(len(self.calib), chunk_batches(self.calib))
        quantize_static(str(self.model_path), str(out), reader, quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(r.op_types) if r.op_types else None, per_channel=True,
                        activation_type=qtype[r.activation_type], weight_type=QuantType.QInt8,
                        nodes_to_exclude=list(exclude), calibrate_method=method, extra_options=extra, **kwargs)
        self.calibrated = True
        model = onnx.load(str(out))
        if r.inputs_only:
            keep_residual_qdq_only(model)
        else:
            float_outputs(model)
        if exclude:
            keep_inputs_float(model, self.graph(), set(exclude))
            keep_outputs_float(model, self.graph(), set(exclude))
        onnx.save(model, str(out))


def name_every_node(src: Path, out: Path) -> Path:
    """``src``, or a copy at ``out`` where every unnamed node has a unique name: the quantizer excludes
    nodes by name, so a node without one (ORT's pre-processing inlines a HardSwish into two unnamed
    nodes) could never be kept in higher precision. Returns the path to quantize."""
    model = onnx.load(str(src))
    taken = {n.name for n in model.graph.node if n.name}
    unnamed = [n for n in model.graph.node if not n.name]
    if not unnamed:
        return src
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name, k = f"{node.op_type}_{i}", 0
            while name in taken:
                k += 1
                name = f"{node.op_type}_{i}_{k}"
            node.name = name
            taken.add(name)
    onnx.save(model, str(out))
    return out


def chunk_batches(calib: CalibrationData, budget: int = CHUNK_BUDGET_BYTES) -> int:
    """Batches per calibration chunk: about ``budget`` bytes of intermediate tensors, at least one
    batch. An image's intermediates are counted as 64 times its input, which is what the shipped
    model's calibrated tensors add up to (about 200 MB per 512x512 image, measured)."""
    per_batch = 64 * calib.image_nbytes * calib.batch_size
    return max(1, min(MAX_CHUNK_IMAGES // calib.batch_size or 1, budget // max(per_batch, 1)))


def _divisor_at_most(n: int, k: int) -> int:
    """The largest divisor of ``n`` not above ``k`` (ORT's strided calibration needs one)."""
    return next(d for d in range(max(min(k, n), 1), 0, -1) if n % d == 0)


def _calibration_op_types(op_types: tuple[str, ...] | None) -> list[str]:
    """What ``quantize_static`` hands its calibrator: the recipe's operators, or every operator
    ORT can quantize when the recipe says all."""
    if op_types:
        return list(op_types)
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return list(set(QLinearOpsRegistry) | set(QDQRegistry))


def _calibrator_options(extra: dict) -> dict:
    """``quantize_static``'s mapping of its extra options to the calibrator's."""
    names = {"CalibTensorRangeSymmetric": "symmetric", "CalibMovingAverage": "moving_average",
             "CalibMovingAverageConstant": "averaging_constant", "CalibPercentile": "percentile"}
    return {key: extra[name] for name, key in names.items() if name in extra}


def stream_calibrate(model_path: Path, calib: CalibrationData, method: str,
                     op_types: tuple[str, ...] | None, extra: dict, chunk: int | None = None):
    """ORT's calibration ranges (a ``TensorsData``) for ``model_path`` on ``calib``, the same as
    ``quantize_static`` computes, with at most ``chunk`` batches of intermediate tensors in memory
    at a time (see the module docstring)."""
    from onnxruntime.quantization.calibrate import (CalibrationMethod, HistogramCalibrater, HistogramCollector,
                                                    create_calibrator)

    calibration_method = {"entropy": CalibrationMethod.Entropy, "minmax": CalibrationMethod.MinMax,
                          "percentile": CalibrationMethod.Percentile}[method]
    chunk = chunk or chunk_batches(calib)
    reader = ort_reader(calib)
    starts = range(0, len(calib), chunk)

    with TempFolder("aspp-calibrate-") as tmp:  # named with our pid: a killed run's is removed by the next
        calibrator = create_calibrator(Path(model_path), _calibration_op_types(op_types),
                                       augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                       calibrate_method=calibration_method,
                                       extra_options=_calibrator_options(extra))
        if not isinstance(calibrator, HistogramCalibrater):
            for start in starts:  # each call reduces its chunk and merges it into the running range
                reader.set_range(start, start + chunk)
                calibrator.collect_data(reader)
            return calibrator.compute_data()

        session = calibrator.infer_session
        names = [o.name for o in session.get_outputs()]
        inputs = {i.name for i in session.get_inputs()}
        wanted = [k for k, n in enumerate(names) if n in calibrator.tensors_to_calibrate]

        def chunks():
            for start in starts:
                outs: dict[str, list[np.ndarray]] = {}
                for batch in calib.batches(start, start + chunk):
                    values = session.run(None, batch)
                    for k in wanted:  # ORT #21922: an output that is an input aliases the feed
                        v = values[k]
                        outs.setdefault(names[k], []).append(copy.copy(v) if names[k] in inputs else v)
                yield outs

        # Pass 1: each tensor's global min and max (and of |x|, for the absolute histograms).
        stats: dict[str, list] = {}
        for outs in chunks():
            for name, arrays in outs.items():
                flat = np.concatenate([a.ravel() for a in arrays])
                if flat.size == 0:
                    lo = hi = alo = ahi = np.array(0, dtype=flat.dtype)
                else:
                    lo, hi = np.nanmin(flat), np.nanmax(flat)
                    a = np.abs(flat)
                    alo, ahi = np.nanmin(a), np.nanmax(a)
                old = stats.get(name)
                stats[name] = [lo, hi, alo, ahi] if old is None else \
                    [min(old[0], lo), max(old[1], hi), min(old[2], alo), max(old[3], ahi)]
        # Pass 2: histograms in bins fixed on the global range, summed chunk by chunk.
        collector = HistogramCollector(method=calibrator.method, symmetric=calibrator.symmetric,
                                       num_bins=calibrator.num_bins, num_quantized_bins=calibrator.num_quantized_bins,
                                       percentile=calibrator.percentile, scenario=calibrator.scenario)
        absolute = calibrator.method == "percentile" and calibrator.symmetric
        for name, (lo, hi, alo, ahi) in stats.items():
            dtype = np.asarray(lo).dtype
            if absolute:  # collect_absolute_value: bins over [min |x|, max |x|]
                edges = np.histogram(np.array([alo, ahi], dtype=dtype), bins=calibrator.num_bins)[1].astype(dtype)
                collector.histogram_dict[name] = (np.zeros(calibrator.num_bins, np.int64), edges, lo, hi)
            else:  # collect_value: bins over [-t, t], t = max(|min|, |max|)
                t = np.array(max(abs(lo), abs(hi)), dtype=dtype)
                edges = np.histogram(np.empty(0, dtype), calibrator.num_bins, range=(-t, t))[1]
                collector.histogram_dict[name] = (np.zeros(calibrator.num_bins, np.int64), edges, lo, hi, t)
        for outs in chunks():
            collector.collect(outs)
        calibrator.collector = collector
        return calibrator.compute_data()


def keep_residual_qdq_only(model: onnx.ModelProto) -> int:
    """On each Add whose inputs are both dequantized, drop the Q/DQ of the input that a Conv
    produced (TensorRT fuses that Conv with the Add); keep the residual one. Returns how many."""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    removed = 0
    dead: list[onnx.NodeProto] = []
    for add in [n for n in g.node if n.op_type == "Add"]:
        sources = []
        for k, name in enumerate(add.input):
            dq = producer.get(name)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is None or q.op_type != "QuantizeLinear":
                sources = []
                break
            src = producer.get(q.input[0])
            sources.append((k, dq, q, src))
        conv_inputs = [s for s in sources if s[3] is not None and s[3].op_type == "Conv"]
        if len(sources) != 2 or not conv_inputs:
            continue
        k, dq, q, _ = conv_inputs[0]
        add.input[k] = q.input[0]
        consumers[dq.output[0]] -= 1
        if consumers[dq.output[0]] == 0:
            dead.append(dq)
            consumers[q.output[0]] -= 1
            if consumers[q.output[0]] == 0:
                dead.append(q)
        removed += 1
    for n in dead:
        g.node.remove(n)
    return removed


def keep_inputs_float(model: onnx.ModelProto, original: onnx.ModelProto, names: set[str]) -> int:
    """Feed the nodes in ``names`` their float inputs, bypassing the Q/DQ pair in front of them.

    ``nodes_to_exclude`` only stops ORT from quantizing a node itself; with output quantization
    (the CPU recipe) its input still arrives through the producer's Q/DQ, so the node would see
    the INT8 rounding error anyway. Where ORT folded a ReLU into that Q (uint8 with zero point 0
    clamps), the ReLU is put back for the float path. Returns how many inputs were rewired.
    """
    g = model.graph
    inits = {t.name for t in g.initializer}
    orig_producer = {o: n for n in original.graph.node for o in n.output}
    rewired = 0
    for node in [n for n in g.node if n.name in names]:
        producer = {o: n for n in g.node for o in n.output}
        for k, t in enumerate(node.input):
            dq = producer.get(t)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producer.get(dq.input[0])
            if q is None or q.op_type != "QuantizeLinear" or q.input[0] in inits:
                continue
            x = q.input[0]
            before, now = orig_producer.get(x), producer.get(x)
            if before is not None and before.op_type != (now.op_type if now else None):
                if before.op_type != "Relu":
                    continue  # an activation we cannot restore: leave this input quantized
                x = _restore_relu(g, x, now)
            node.input[k] = x
            rewired += 1
    _drop_dead_qdq(g)
    return rewired


TAIL_STOP = {"Conv", "ConvTranspose", "MatMul", "Gemm", "QuantizeLinear", "DequantizeLinear"}


def float_outputs(model: onnx.ModelProto) -> int:
    """The graph's outputs leave in float: the Q/DQ pair ORT puts in front of each is replaced by an
    Identity of the float tensor. The scores the argmax or threshold reads are never rounded to 8 bits
    over their whole range: a binary model's logits span +-2000 (BlazePose's mask), where one step of
    the 8-bit grid moves the threshold at 0 by 15 and foreground IoU fell by about 6 points there
    alone. Returns how many outputs."""
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    inits = {t.name for t in g.initializer}
    done = 0
    for out in g.output:
        dq = producer.get(out.name)
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = producer.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear" or q.input[0] in inits:
            continue
        index = list(g.node).index(dq)
        g.node.remove(dq)
        g.node.insert(index, onnx.helper.make_node("Identity", [q.input[0]], [out.name], name=f"{out.name}_float"))
        done += 1
    _drop_dead_qdq(g)
    return done


def keep_outputs_float(model: onnx.ModelProto, original: onnx.ModelProto, names: set[str]) -> int:
    """Hand the outputs of the nodes in ``names`` on in float, bypassing the Q/DQ pair behind them.

    A node kept in higher precision still had its output quantized wherever a quantized node reads
    it (ORT puts a Q/DQ pair on every input of a quantized node): keeping the last layer of a binary
    segmenter (its logits, ahead of a Sigmoid) in FP32 recovered nothing, because the logits were
    rounded to 8 bits on their way out anyway. Each reader gets what it read in the original graph:
    the float tensor, or a ReLU of it where ORT folded that ReLU into the quantization. Returns how
    many inputs were rewired."""
    g = model.graph
    inits = {t.name for t in g.initializer}
    orig_nodes = {n.name: n for n in original.graph.node if n.name}
    orig_producer = {o: n for n in original.graph.node for o in n.output}
    kept_outputs = {o for n in g.node if n.name in names for o in n.output}
    rewired = 0
    producer = {o: n for n in g.node for o in n.output}
    for node in list(g.node):
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") or node.name in names:
            continue
        before = orig_nodes.get(node.name)
        if before is None:
            continue
        for k, t in enumerate(node.input):
            dq = producer.get(t)
            if dq is None or dq.op_type != "DequantizeLinear" or k >= len(before.input):
                continue
            q = producer.get(dq.input[0])
            if q is None or q.op_type != "QuantizeLinear" or q.input[0] in inits or q.input[0] not in kept_outputs:
                continue
            x, read = q.input[0], before.input[k]
            if read != x:
                relu = orig_producer.get(read)
                if relu is None or relu.op_type != "Relu" or relu.input[0] != x:
                    continue  # the reader read something else in the original: leave it
                x = _restore_relu(g, x, producer.get(x))
                producer = {o: n for n in g.node for o in n.output}
            node.input[k] = x
            rewired += 1
    _drop_dead_qdq(g)
    return rewired


def _restore_relu(g: onnx.GraphProto, x: str, producer: onnx.NodeProto | None) -> str:
    out = f"{x}_float_relu"
    if any(out in n.output for n in g.node):
        return out
    relu = onnx.helper.make_node("Relu", [x], [out], name=f"{x}_float_relu")
    index = 0 if producer is None else list(g.node).index(producer) + 1
    g.node.insert(index, relu)
    return out


def _drop_dead_qdq(g: onnx.GraphProto) -> None:
    outputs = {o.name for o in g.output}
    while True:
        used = {i for n in g.node for i in n.input} | outputs
        dead = [n for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
    used = {i for n in g.node for i in n.input}
    for t in [t for t in g.initializer if t.name not in used and t.name not in outputs]:
        g.initializer.remove(t)


def work_dir(parent: Path | None = None):
    """A temporary folder ``aspp-quantize-<pid>-*`` (a killed run's is removed by the next run)."""

    return TempFolder("aspp-quantize-", parent)
