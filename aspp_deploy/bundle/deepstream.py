"""DeepStream ``Gst-nvinfer``: a semantic-segmentation config and the ONNX variant it runs, both from the manifest.

Two things about nvinfer decide what we ship (facts from NVIDIA's nvinfer guide and its sources):

* Preprocessing is ``y = net-scale-factor * (x - offsets[c])`` on 0..255 pixels, with ONE scale factor for
  all channels; our models normalise with a per-channel std. So the DeepStream ONNX starts with a
  ``Mul`` by ``1/std[c]`` and the config uses ``net-scale-factor = 1/255`` and ``offsets = 255*mean[c]``:
  ``(x - 255 m_c) / 255 / s_c`` is exactly the toolkit's ``(x/255 - m_c) / s_c``.
* The segmentation post-processor takes, per pixel, the class whose value is above both
  ``segmentation-threshold`` and -1 (it starts its running maximum at -1), i.e. it expects
  probabilities. Our models output logits (which may all be below -1), so the DeepStream ONNX ends
  with a ``Softmax`` over the classes; the argmax is unchanged.

A fused-I/O model (uint8 pixels in, uint8 class ids out: ``aspp-deploy export --fused-io``) cannot run
in nvinfer as it is: nvinfer always feeds the network the float tensor its own preprocessing makes
(``net-scale-factor``/``offsets``, on the GPU) and its segmentation parser reads per-class scores. The
plugin that can hand nvinfer a uint8 tensor, nvdspreprocess (``tensor-data-type=1``, with nvinfer's
``input-tensor-from-meta=1``), does so only through a custom tensor-preparation library: its default
library writes float tensors. So the DeepStream variant of a fused model is the same network without
its fused head and tail (``fused_io.unfuse_io``): the normalisation still runs on the GPU, in nvinfer's
preprocessing, and the config says so. Class ids straight from the network would also need the
application to read them from ``output-tensor-meta``; that is not generated.
"""

from __future__ import annotations

import configparser
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from aspp_deploy.errors import InputError
from aspp_deploy.io import atomic_write_bytes

# The [property] keys of Gst-nvinfer, as documented in the DeepStream SDK Developer Guide, page
# "Gst-nvinfer" (docs.nvidia.com/metropolis/deepstream/dev-guide/text/DS_plugin_gst-nvinfer.html),
# table "Gst-nvinfer Property Group Supported Keys", cross-checked with the key names that the
# plugin's own gstnvinfer_property_parser.h defines (DeepStream 6.x / 7.x).
NVINFER_PROPERTY_KEYS = frozenset({
    # element configuration
    "gie-unique-id", "process-mode", "interval", "labelfile-path", "gpu-id", "secondary-reinfer-interval",
    "output-tensor-meta", "enable-dla", "use-dla-core", "disable-output-host-copy",
    # runtime engine parameters
    "batch-size", "tensor-meta-pool-size", "network-mode", "model-engine-file", "int8-calib-file",
    "workspace-size",
    # generic model parameters
    "output-blob-names", "is-classifier", "network-type", "force-implicit-batch-dim", "infer-dims",
    "output-io-formats", "layer-device-precision",
    # preprocessing
    "model-color-format", "net-scale-factor", "offsets", "mean-file", "maintain-aspect-ratio",
    "symmetric-padding", "scaling-filter", "scaling-compute-hw", "network-input-order",
    "input-tensor-from-meta",
    # custom implementations
    "custom-lib-path", "parse-bbox-func-name", "parse-bbox-instance-mask-func-name",
    "engine-create-func-name", "parse-classifier-func-name", "custom-network-config",
    # model formats
    "model-file", "proto-file", "uff-file", "uff-input-order", "input-dims", "uff-input-dims",
    "uff-input-blob-name", "tlt-encoded-model", "tlt-model-key", "onnx-file",
    # detector / classifier / segmentation
    "num-detected-classes", "enable-dbscan", "cluster-mode", "classifier-type", "classifier-threshold",
    "classifier-async-mode", "segmentation-threshold", "segmentation-output-order", "output-instance-mask",
    # secondary-mode object filters
    "input-object-min-width", "input-object-min-height", "input-object-max-width", "input-object-max-height",
    "operate-on-gie-id", "operate-on-class-ids", "filter-out-class-ids",
})
NETWORK_MODE = {"fp32": 0, "int8": 1, "fp16": 2}  # nvinfer network-mode
NETWORK_TYPE_SEGMENTATION = 2
COLOR_FORMAT = {"RGB": 0, "BGR": 1}  # model-color-format (2 = GRAY)
SCALING_FILTER = {"nearest": 0, "bilinear": 1, "bicubic": 2}  # NvBufSurfTransform_Inter: Nearest, Bilinear, Algo1 (GPU cubic)
NET_SCALE_FACTOR = 1.0 / 255.0
REQUIRED_KEYS = ("gpu-id", "net-scale-factor", "offsets", "model-color-format", "model-engine-file",
                 "network-type", "output-blob-names", "num-detected-classes", "infer-dims", "network-mode",
                 "batch-size")
# INT8 decision. The DeepStream INT8 model is explicitly quantized (Q/DQ ONNX). Gst-nvinfer's own
# engine build (nvdsinfer_model_builder.cpp, DeepStream 6.x-7.x sources) sets BuilderFlag::kINT8 only
# when it has a calibrator, i.e. an accessible int8-calib-file; otherwise it logs "INT8 calibration
# file not specified. Trying FP16 mode." and builds with the FP16 flag alone. It always builds weakly
# typed (no kSTRONGLY_TYPED), which TensorRT 10.x recommends and 11.x requires for Q/DQ models, and on
# 8.x a Q/DQ network needs the INT8 flag. No config key makes that build right on every generation, so
# the INT8 config refuses it: it has no onnx-file (nvinfer cannot build from nothing and stops with an
# error) and only loads the engine the bundle's build.sh made with the recipe for the device's
# TensorRT. FP16/FP32 configs keep onnx-file. An int8-calib-file (legacy calibrated FP32 ONNX) is
# the one INT8 case nvinfer builds right, so with one the onnx-file stays.
PROBABILITIES = "probabilities"


def static_input(entry: Mapping[str, Any]) -> list:
    shape = list(entry["inputs"][0]["shape"])
    if len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in shape):
        raise InputError(f"the ONNX input has shape {shape}: a Jetson bundle needs a static input (export "
                         "without --dynamic, or `aspp-deploy import MODEL.onnx --dynamic ''` to pin the dynamic axes)")
    return shape


def nvinfer_config(entry: Mapping[str, Any], precision: str, onnx_file: str, engine_file: str, *,
                   output_name: str = PROBABILITIES, int8_calib_file: str | None = None, gpu_id: int = 0,
                   fused_from: str | None = None) -> str:
    """The nvinfer config text for the DeepStream ONNX made from the model described by ``entry``
    (``fused_from``: the fused-I/O ONNX the DeepStream one was unfused from, said in the comments)."""
    pre = entry["preprocess"]
    nhwc = pre.get("layout", "NCHW") == "NHWC"
    shape = static_input(entry)
    batch, height, width, channels = shape if nhwc else (shape[0], shape[2], shape[3], shape[1])
    if channels != 3:
        raise InputError(f"nvinfer feeds 3-channel images; the model takes {channels} channels")
    if pre.get("channel_order", "RGB") not in COLOR_FORMAT:
        raise InputError(f"channel order {pre.get('channel_order')} has no nvinfer model-color-format")
    if pre.get("resize", "bilinear") not in SCALING_FILTER:
        raise InputError(f"resize filter {pre.get('resize')} has no nvinfer scaling-filter")
    if precision not in NETWORK_MODE:
        raise InputError(f"unknown precision {precision!r}")
    # y = (pixel * scale - mean) / std = (1/std) * scale * (pixel - mean/scale): 1/std is in the ONNX
    scale = float(pre.get("scale", NET_SCALE_FACTOR))
    offsets = ";".join(_num(float(m) / scale) for m in pre["mean"])
    policy = pre.get("policy", "stretch")
    geometry = {"stretch": ["maintain-aspect-ratio=0"],
                "letterbox": ["maintain-aspect-ratio=1", "symmetric-padding=1"],
                "center_crop": ["maintain-aspect-ratio=0"]}[policy]
    caveats = []
    if policy == "letterbox" and any(int(v) for v in pre.get("pad_value", [0, 0, 0])):
        caveats.append(f"# CAVEAT: nvinfer pads with black; the model was measured with pad value {pre['pad_value']}.")
    if policy == "center_crop":
        caveats.append("# CAVEAT: nvinfer cannot resize-then-centre-crop: it stretches the frame instead. Crop the")
        caveats.append("# frames upstream (nvvideoconvert src-crop / nvdspreprocess) to match the toolkit's measurements.")
    classes = [_comment(str(c)) for c in entry["classes"]]
    for what, value in (("ONNX file", onnx_file), ("engine file", engine_file), ("output name", output_name),
                        ("calibration file", int8_calib_file or "")):
        _value(what, value)
    lines = [
        "# Gst-nvinfer config for semantic segmentation, generated by `aspp-deploy bundle` from the model manifest.",
        f"# Model input {'x'.join(map(str, shape))} {pre.get('layout', 'NCHW')} {pre.get('channel_order', 'RGB')}, "
        f"resized ({pre.get('resize', 'bilinear')}, policy {policy}) to the network size.",
        *caveats,
        *([f"# {_comment(fused_from)} has fused I/O (uint8 pixels in, uint8 class ids out). nvinfer always feeds the",
           "# network float tensors from its own preprocessing (on the GPU) and its segmentation parser reads",
           "# per-class scores, so this DeepStream ONNX is the same network without the fused head and tail.",
           "# (A uint8 input needs nvdspreprocess tensor-data-type=1 with a custom tensor-preparation library,",
           "# its default library writes float tensors, and class ids need output-tensor-meta parsing: not generated.)"]
          if fused_from else []),
        "# nvinfer computes y = net-scale-factor * (pixel - offsets[c]) with one scale for all channels; the",
        f"# per-channel 1/std {list(pre['std'])} is folded into a Mul at the start of {onnx_file.rsplit('/', 1)[-1]},",
        "# so these values reproduce the toolkit's normalisation exactly.",
        f"# Output {_comment(repr(output_name))}: softmax over {len(classes)} classes (nvinfer's segmentation parser expects",
        "# probabilities), argmax -> class id:",
        *[f"#   {i}: {name}" for i, name in enumerate(classes)],
        "[property]",
        f"gpu-id={gpu_id}",
        f"net-scale-factor={_num(scale)}",
        f"offsets={offsets}",
        f"model-color-format={COLOR_FORMAT[pre.get('channel_order', 'RGB')]}",
    ]
    if precision == "int8" and not int8_calib_file:
        # The INT8 decision above REQUIRED_KEYS: no onnx-file, so nvinfer can only load the engine build.sh made.
        lines[lines.index("[property]"):lines.index("[property]")] = [
            f"# INT8: {onnx_file.rsplit('/', 1)[-1]} is explicitly quantized (Q/DQ). nvinfer must NOT build it: with",
            "# network-mode=1 and no int8-calib-file it drops to FP16 (\"INT8 calibration file not specified.",
            "# Trying FP16 mode.\"), and its builder (DeepStream 6.x/7.x sources) builds weakly typed, while TensorRT 10.x",
            "# recommends and 11.x requires strong typing for Q/DQ models. So this config has no onnx-file: build",
            "# the engine first with the bundle's",
            f"# build.sh (python -m aspp_deploy.runtime build --onnx {_bundle_path(onnx_file)}",
            f"#   --precision int8 --out {_bundle_path(engine_file)}, run from the bundle folder), which picks",
            "# the right recipe for this TensorRT; without that engine nvinfer stops with an error instead.",
        ]
    else:
        lines.append(f"onnx-file={onnx_file}")
    lines.append(f"model-engine-file={engine_file}")
    if int8_calib_file:
        lines.append(f"int8-calib-file={int8_calib_file}")
    lines += [
        f"infer-dims={channels};{height};{width}",
        *(["network-input-order=1"] if nhwc else []),
        f"batch-size={batch}",
        f"network-mode={NETWORK_MODE[precision]}",
        f"network-type={NETWORK_TYPE_SEGMENTATION}",
        f"output-blob-names={output_name}",
        f"num-detected-classes={len(classes)}",
        "segmentation-threshold=0.0",
        *geometry,
        f"scaling-filter={SCALING_FILTER[pre.get('resize', 'bilinear')]}",
        "process-mode=1",
        "gie-unique-id=1",
        "",
    ]
    return "\n".join(lines)


def _value(what: str, value: str) -> str:
    """A ``key=value`` value of the nvinfer config (a GLib key file): one line of printable text, or an
    InputError (a newline would end the value and add a key of the name's choosing)."""
    if any(not c.isprintable() for c in value) or value != value.strip():
        raise InputError(f"the nvinfer config cannot hold the {what} {value!r}: rename it to printable "
                         "characters without surrounding spaces")
    return value


def _comment(text: str) -> str:
    """``text`` for a ``#`` comment line: every non-printable character (a newline would start a line
    of the name's choosing) written as its Python escape."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _bundle_path(config_relative: str) -> str:
    """A path written relative to the config's folder (``../models/x``) as seen from the bundle root."""
    return config_relative[3:] if config_relative.startswith("../") else config_relative


def _num(value: float) -> str:
    return repr(float(value))


def read_nvinfer_config(text: str) -> dict:
    """The ``[property]`` group as a dict (keys as written); InputError when it cannot be parsed."""
    parser = configparser.ConfigParser(interpolation=None, delimiters=("=",), comment_prefixes=("#",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep the keys' case
    try:
        parser.read_string(text)
    except configparser.Error as exc:
        raise InputError(f"not a valid nvinfer config: {exc}") from None
    if not parser.has_section("property"):
        raise InputError("an nvinfer config needs a [property] group")
    return dict(parser.items("property"))


def check_nvinfer_config(text: str) -> list:
    """Problems with a config: keys nvinfer does not document, required keys missing ([] = none)."""
    props = read_nvinfer_config(text)
    problems = [f"unknown nvinfer key {k!r}" for k in props if k not in NVINFER_PROPERTY_KEYS]
    problems += [f"missing key {k!r}" for k in REQUIRED_KEYS if k not in props]
    int8 = props.get("network-mode") == str(NETWORK_MODE["int8"])
    if int8 and "onnx-file" in props and "int8-calib-file" not in props:
        problems.append("network-mode=1 with an onnx-file but no int8-calib-file: nvinfer would build that "
                        "engine itself in FP16 (\"INT8 calibration file not specified. Trying FP16 mode.\")")
    elif not int8 and "onnx-file" not in props:
        problems.append("missing key 'onnx-file'")
    return problems


def deepstream_onnx(src: Path, out: Path, std: list, entry: dict | None = None,
                    output_name: str = PROBABILITIES, layout: str = "NCHW", output_kind: str = "logits") -> dict:
    """Write ``out``: ``src`` with a ``Mul`` by 1/std per channel at its input and a ``Softmax`` over the
    classes at its output (see the module docstring), ``entry`` embedded as its manifest (its
    ``outputs`` are set here). A fused-I/O ``src`` is unfused first (its ``inputs`` and preprocessing
    record are then set to the unfused ones). Returns the new output's name, dtype and shape."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from aspp_deploy.export.fused_io import is_fused, unfuse_io

    model = onnx.load(str(src))
    fused = is_fused(model)
    if fused:
        model = unfuse_io(model)
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        raise InputError(f"{src.name} is opset {opset}: the DeepStream variant needs opset 13+ (Softmax over one axis)")
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise InputError(f"{src.name} has {len(graph.input)} inputs and {len(graph.output)} outputs; expected one of each")
    inp, outp = graph.input[0], graph.output[0]
    if inp.type.tensor_type.elem_type != TensorProto.FLOAT or outp.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise InputError(f"{src.name} must take and return float32 (logits): DeepStream's segmentation parser "
                         "needs per-class scores, so export without --argmax for DeepStream")
    unfused_input = {"name": inp.name, "dtype": "float32",
                     "shape": [d.dim_value if d.HasField("dim_value") else d.dim_param for d in inp.type.tensor_type.shape.dim]}
    scaled = f"{inp.name}__div_std"
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == inp.name:
                node.input[i] = scaled
    scale = numpy_helper.from_array((1.0 / np.asarray(std, dtype=np.float64)).astype(np.float32).reshape((1, 1, 1, -1) if layout == "NHWC" else (1, -1, 1, 1)),
                                    f"{inp.name}__inv_std")
    graph.initializer.append(scale)
    graph.node.insert(0, helper.make_node("Mul", [inp.name, scale.name], [scaled], name="deepstream/div_std"))
    logits = outp.name
    if output_kind == "probabilities":  # already a softmax: only renamed
        graph.node.append(helper.make_node("Identity", [logits], [output_name], name="deepstream/probabilities"))
    else:
        graph.node.append(helper.make_node("Softmax", [logits], [output_name], name="deepstream/softmax", axis=1))
    dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in outp.type.tensor_type.shape.dim]
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(output_name, TensorProto.FLOAT, dims))
    output = {"name": output_name, "dtype": "float32", "shape": dims}
    if entry is not None:
        from aspp_deploy.export.manifest import embed

        entry["outputs"] = [output]
        if fused:  # the preprocessing record of the network nvinfer runs: not fused (a new dict: entry's is shared)
            entry["inputs"] = [unfused_input]
            entry["preprocess"] = {k: v for k, v in entry["preprocess"].items() if k != "fused_io"}
            entry["outputs_class_ids"], entry["output_kind"] = False, "probabilities"
            entry["unfused_from"] = src.name
        embed(model, entry)
    onnx.checker.check_model(model)

    atomic_write_bytes(out, model.SerializeToString())
    return output
