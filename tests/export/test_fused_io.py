"""Fused I/O (``--fused-io``): the graph pass (uint8 NHWC pixels in, uint8 class ids out), its manifest
record, parity against the unfused source on uint8 inputs, dynamic batch, the runtime feeding it,
``unfuse_io``, the nearest resize of a smaller output, the TensorRT pre-flight's UINT8 rules, and the
refusals (dynamic height and width, a contradicting --argmax-dtype)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from typer.testing import CliRunner

from aspp_deploy.cli import app
from aspp_deploy.data.synthetic import SynthConfig, write_calibration_folder
from aspp_deploy.export.fused_io import fuse_io, fused_node_names, is_fused, unfuse_io
from aspp_deploy.export.trt_check import TRT_VERSIONS, check_for_trt
from aspp_deploy.runtime.manifest import Manifest
from aspp_deploy.runtime.preprocess import Preprocess
from aspp_deploy.runtime.segmenter import Segmenter
from tests.hostile.conftest import listing, refused


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def session(model) -> ort.InferenceSession:
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def run(model, x: np.ndarray) -> np.ndarray:
    s = session(model)
    return s.run(None, {s.get_inputs()[0].name: x})[0]


@pytest.fixture(scope="module")
def dynamic_fused(tmp_path_factory, tiny_checkpoint) -> Path:
    """The tiny model exported through the CLI with --fused-io and a dynamic batch."""
    out = tmp_path_factory.mktemp("fused-dynamic")
    r = cli("export", "--checkpoint", tiny_checkpoint, "--height", 64, "--width", 64, "--dynamic", "batch",
            "--fused-io", "--out", out, "--json", out / "entry.json")
    assert r.exit_code == 0, r.output
    assert "fused I/O: pixels uint8 batch x 64 x 64 x 3 (RGB pixels) in, class_ids uint8 batch x 64 x 64" in r.output
    return out / "model.onnx"


def test_fused_graph_takes_uint8_pixels_and_returns_uint8_ids_at_any_batch(dynamic_fused, exported):
    model = onnx.load(str(dynamic_fused))
    (inp,), (out,) = model.graph.input, model.graph.output
    assert (inp.name, inp.type.tensor_type.elem_type) == ("pixels", TensorProto.UINT8)
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["batch", 64, 64, 3]
    assert (out.name, out.type.tensor_type.elem_type) == ("class_ids", TensorProto.UINT8)
    assert [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim] == ["batch", 64, 64]
    entry = Manifest.read(dynamic_fused.parent).entry("model.onnx", dynamic_fused.parent)
    assert entry is not None and entry.fused_io and entry.preprocess.input_shape(2) == (2, 64, 64, 3)
    record = entry.to_dict()
    assert record["outputs_class_ids"] and record["output_kind"] == "class_ids"
    assert record["spec"]["output"] == "logits"  # the model's own output kind stays recorded
    assert record["export"]["passes"][-1]["name"] == "fused_io"
    # parity: the fused graph on uint8 inputs against PyTorch on their normalised floats, every batch tried
    fused_cases = [c for c in record["parity"]["cases"] if c["name"].startswith("fused I/O")]
    assert {c["shape"][0] for c in fused_cases} == {1, 2} and all(c["argmax_agreement"] == 1.0 for c in fused_cases)
    pre = entry.preprocess
    plain = session(exported)
    for batch in (1, 3):
        pixels = pre.random_input(batch, seed=batch)
        ids = run(dynamic_fused, pixels)
        assert ids.dtype == np.uint8 and ids.shape == (batch, 64, 64)
        for k in range(batch):  # the unfused static-batch model, one image at a time
            logits = plain.run(None, {"input": pre.from_pixels(pixels[k:k + 1])})[0]
            assert np.array_equal(ids[k], logits.argmax(1)[0])


def test_segmenter_gives_the_unfused_masks_through_the_pipelines_calls(fused_exported, exported, tmp_path):
    """The calls a stream pipeline makes: ``seg.preprocess(image)``, ``stack_inputs``, ``seg.engine.infer``,
    ``postprocess``; the fused model is fed uint8 pixels and returns uint8 ids, with the masks of the unfused."""
    from aspp_deploy.runtime.images import postprocess, stack_inputs

    images = write_calibration_folder(tmp_path / "images", 3, cfg=SynthConfig(size=96))
    rng = np.random.default_rng(1)
    odd = Image.fromarray(rng.integers(0, 256, (70, 130, 3), dtype=np.uint8))
    photos = [Image.open(p).convert("RGB") for p in sorted(images.iterdir())] + [odd]
    with Segmenter(fused_exported) as fused, Segmenter(exported) as plain:
        assert fused.preprocess.fused_io and fused.engine.input_dtype == "uint8" and fused.outputs_class_ids
        x = stack_inputs([fused.preprocess(im) for im in photos[:1]], 1)
        assert x.dtype == np.uint8 and x.shape == (1, 64, 64, 3)
        out = fused.engine.infer(x)
        assert out.dtype == np.uint8 and out.shape == (1, 64, 64)
        mask = postprocess(out[0], photos[0].size, len(fused.classes), fused.preprocess)
        assert np.array_equal(mask, plain.predict(photos[0]))
        for im in photos:
            assert np.array_equal(fused.predict(im), plain.predict(im))
        assert fused.timing["preprocess"] > 0 and fused.timing["postprocess"] > 0


def test_unfuse_gives_the_plain_graph_back(fused_exported, exported):
    fused = onnx.load(str(fused_exported))
    assert is_fused(fused) and len(fused_node_names(fused)) == 8  # Cast, Mul, Sub, Div, Transpose; ArgMax, 2 Casts
    plain = unfuse_io(fused)
    assert not is_fused(plain) and [i.name for i in plain.graph.input] == ["input"]
    assert [o.name for o in plain.graph.output] == ["logits"]
    onnx.checker.check_model(plain, full_check=True)
    x = Preprocess(64, 64).random_input(1)
    assert np.array_equal(run(plain, x), run(exported, x))


def _shrinking_model(side: tuple[int, int], out_hw: tuple[int, int], classes: int = 4) -> onnx.ModelProto:
    """float NCHW input -> linear Resize to ``out_hw`` -> 1x1 conv: scores smaller than the input."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 1, (classes, 3, 1, 1)).astype(np.float32), "w")
    sizes = numpy_helper.from_array(np.asarray([1, 3, *out_hw], np.int64), "sizes")
    nodes = [helper.make_node("Resize", ["input", "", "", "sizes"], ["small"], mode="linear"),
             helper.make_node("Conv", ["small", "w"], ["scores"])]
    graph = helper.make_graph(nodes, "shrink", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, *side])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, classes, *out_hw])],
                              [w, sizes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return onnx.shape_inference.infer_shapes(model)


def test_a_smaller_output_is_resized_as_restore_resizes_ids():
    """Output 13x17 for a 30x40 input: the fused ids are the host's ``restore`` of the low-resolution argmax."""
    pre = Preprocess(30, 40)
    plain = _shrinking_model((30, 40), (13, 17))
    fused, report = fuse_io(plain, pre, 4)
    assert "nearest resize from 13x17" in report.details[1]
    pixels = pre.fused().random_input(1, seed=3)
    low = run(plain, pre.from_pixels(pixels)).argmax(1)[0].astype(np.uint8)
    ids = run(fused, pixels)
    assert ids.shape == (1, 30, 40) and np.array_equal(ids[0], pre.restore(low, (40, 30)))


def test_bgr_nhwc_models_take_pixels_in_their_own_channel_order():
    """An NHWC model with BGR order: BGR pixels in, no Transpose added, the body gets ``normalize``'s floats."""
    pre = Preprocess(8, 8, layout="NHWC", channel_order="BGR", mean=(0.1, 0.2, 0.3), std=(0.5, 0.6, 0.7))
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["scores"])], "id",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 8, 8, 3])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n", 8, 8, 3])])
    fused, _ = fuse_io(_identity_as_nchw_scores(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])),
                       pre, 3)
    assert "fused_io/in/to_nchw" not in fused_node_names(fused)
    rgb = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    x = pre.normalize(rgb)
    assert np.array_equal(run(_head_only(fused), pre.pixels(rgb)[None])[0], x)
    assert np.array_equal(run(fused, pre.pixels(rgb)[None])[0], x.argmax(-1))


def _identity_as_nchw_scores(model: onnx.ModelProto) -> onnx.ModelProto:
    """The identity NHWC graph with its output transposed to N x C x H x W scores (what export/import make)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.node[0].output[0] = "nhwc"
    m.graph.node.append(helper.make_node("Transpose", ["nhwc"], ["scores"], perm=[0, 3, 1, 2]))
    del m.graph.output[:]
    m.graph.output.append(helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n", 3, 8, 8]))
    return m


def _head_only(fused: onnx.ModelProto) -> onnx.ModelProto:
    """The fused graph cut after its head: pixels -> the float input the model body gets."""
    m = onnx.ModelProto()
    m.CopyFrom(fused)
    body_input = next(n.output[0] for n in m.graph.node if n.name == "fused_io/in/std")
    del m.graph.output[:]
    m.graph.output.append(helper.make_tensor_value_info(body_input, TensorProto.FLOAT, None))
    return m


def test_the_pre_flight_accepts_the_fused_graph_and_flags_uint8_where_tensorrt_cannot_hold_it(fused_exported):
    fused = onnx.load(str(fused_exported))
    for version in TRT_VERSIONS:
        report = check_for_trt(fused, version)
        assert report.ok and not [f for f in report.findings if "UINT8" in f.message], (version, report.findings)

    def graph(nodes, inp_type, out_type, out_shape):
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", inp_type, [1, 4, 4, 3])],
                              [helper.make_tensor_value_info("y", out_type, out_shape)])
        return onnx.shape_inference.infer_shapes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))

    # a uint8 input read by a Transpose before any Cast: refused on every version (NVIDIA/TensorRT#3985)
    bad_in = graph([helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2], name="early_transpose"),
                    helper.make_node("Cast", ["t"], ["y"], to=TensorProto.FLOAT, name="late_cast")],
                   TensorProto.UINT8, TensorProto.FLOAT, [1, 3, 4, 4])
    for version in TRT_VERSIONS:
        errors = [f for f in check_for_trt(bad_in, version).findings if f.severity == "error"]
        assert [f.node for f in errors] == ["early_transpose"] and "UINT8" in errors[0].message
    # ArgMax (INT64/INT32) cast straight to UINT8: 8.x converts UINT8 only from FP32/FP16; 10.x casts anything
    direct = graph([helper.make_node("ArgMax", ["x"], ["a"], axis=3, keepdims=0, name="argmax"),
                    helper.make_node("Cast", ["a"], ["y"], to=TensorProto.UINT8, name="ids_to_uint8")],
                   TensorProto.FLOAT, TensorProto.UINT8, [1, 4, 4])
    assert not check_for_trt(direct, "8.5").ok and not check_for_trt(direct, "8.6").ok
    assert check_for_trt(direct, "10.3").ok and check_for_trt(direct, "11").ok


def test_dynamic_height_and_width_are_refused_in_one_line(tmp_path, tiny_checkpoint):
    out = tmp_path / "out"
    line = refused(cli("export", "--checkpoint", tiny_checkpoint, "--height", 64, "--width", 64, "--dynamic",
                       "batch,spatial", "--fused-io", "--out", out), "--fused-io needs a fixed input height and width")
    assert "--dynamic batch" in line and listing(out) == []
    # an ONNX whose height and width are dynamic: named, with how to pin them, and nothing written
    w = numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", ["image", "w"], ["scores"])], "dyn",
                          [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, "h", "w"])],
                          [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 2, "h", "w"])], [w])
    src = tmp_path / "dyn.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    line = refused(cli("import", src, "--height", 32, "--width", 32, "--fused-io", "--out", out),
                   "--fused-io needs a fixed input height and width: input image of dyn.onnx")
    assert "--dynamic batch" in line and listing(out) == []
    # pinned, it imports
    r = cli("import", src, "--height", 32, "--width", 32, "--dynamic", "", "--fused-io", "--out", out)
    assert r.exit_code == 0, r.output
    entry = json.loads((out / "manifest.json").read_text())["artifacts"]["model.onnx"]
    assert entry["inputs"][0]["shape"] == [1, 32, 32, 3] and entry["preprocess"]["fused_io"] is True


def test_a_contradicting_argmax_dtype_is_refused(tmp_path, tiny_checkpoint):
    refused(cli("export", "--checkpoint", tiny_checkpoint, "--fused-io", "--argmax-dtype", "int32",
                "--out", tmp_path / "o"), "--fused-io returns uint8 class ids: drop --argmax-dtype int32")
    assert listing(tmp_path / "o") == []


def test_old_preprocessing_records_read_as_not_fused():
    record = Preprocess(64, 64).to_dict()
    assert "fused_io" not in record  # unfused records (and every digest made of them) are as before
    assert Preprocess.from_dict(record).fused_io is False
    fused = Preprocess(64, 64).fused()
    assert fused.to_dict()["fused_io"] is True and Preprocess.from_dict(fused.to_dict()) == fused
    with pytest.raises(ValueError, match="fused_io must be true or false"):
        Preprocess.from_dict({**record, "fused_io": "yes"})


def test_a_fused_artifact_is_not_taken_for_the_plain_export(fused_exported, exported):
    """Same checkpoint and spec, other I/O: the source fingerprints differ, so a command that re-exports on
    demand (compare, bundle with --checkpoint) makes the plain export instead of reusing the fused one."""
    def fingerprint(onnx_path: Path) -> str:
        return json.loads((onnx_path.parent / "manifest.json").read_text())["artifacts"]["model.onnx"]["source"]["fingerprint"]

    assert fingerprint(fused_exported) != fingerprint(exported)
