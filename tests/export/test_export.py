import json
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from typer.testing import CliRunner

from aspp_deploy.cli import app
from aspp_deploy.export import passes as P
from aspp_deploy.export.graph import count_flops
from aspp_deploy.export.manifest import read_embedded, read_onnx_manifest, stable_entry
from aspp_deploy.export.onnx_export import ExportOptions, onnx_from_checkpoint
from aspp_deploy.export.trt_check import check_for_trt
from aspp_deploy.io import sha256_file
from aspp_deploy.model.checkpoint import load_checkpoint
from tests.conftest import EXPORT_SIZE, TINY_SIZE

runner = CliRunner()


def run_ort(model_or_path, x: np.ndarray) -> np.ndarray:
    src = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def torch_ref(ckpt_path, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return load_checkpoint(ckpt_path).build()(torch.from_numpy(x)).numpy()


@pytest.fixture(scope="module")
def static_export(tiny_checkpoint, tiny_data, tmp_path_factory):
    from aspp_deploy.data.voc import VOCSegmentation

    out = tmp_path_factory.mktemp("export")
    images = [s.image for s in VOCSegmentation(tiny_data, "val").samples]
    return onnx_from_checkpoint(tiny_checkpoint, out, ExportOptions(), images)


def test_static_export_parity_on_random_and_real_inputs(static_export, tiny_checkpoint):
    parity = static_export.entry["parity"]
    names = [c["name"] for c in parity["cases"]]
    assert any(n.startswith("random") for n in names) and any(n.startswith("images") for n in names)
    assert parity["ok"] and parity["max_rel"] <= parity["max_rel_tol"]
    # independent check, on an input the export never saw
    x = np.random.default_rng(7).standard_normal((1, 3, TINY_SIZE, TINY_SIZE)).astype(np.float32)
    assert np.abs(run_ort(static_export.onnx_path, x) - torch_ref(tiny_checkpoint, x)).max() < 1e-3


def test_manifest_is_complete_and_matches_the_file(static_export):
    path = static_export.onnx_path
    sidecar = json.loads(static_export.manifest_path.read_text())["artifacts"][path.name]
    assert sidecar["onnx_sha256"] == sha256_file(path)
    for key in ("inputs", "outputs", "opset", "preprocess", "classes", "palette", "source",
                "tools", "parity", "export", "trt_check"):
        assert key in sidecar, key
    assert sidecar["inputs"][0] == {"name": "input", "dtype": "float32", "shape": [1, 3, TINY_SIZE, TINY_SIZE]}
    assert sidecar["outputs"][0]["shape"] == [1, 6, TINY_SIZE, TINY_SIZE]
    assert sidecar["opset"] == 17 and len(sidecar["classes"]) == 6
    assert sidecar["source"]["checkpoint_sha256"] == sha256_file(sidecar["source"]["checkpoint"])
    embedded = read_embedded(onnx.load(str(path)))
    # what was measured or timed stays in the sidecar: the ONNX's bytes depend only on its inputs
    assert "parity" not in embedded and "seconds" not in embedded["export"] and "onnx_sha256" not in embedded
    assert embedded == stable_entry(sidecar)
    assert sidecar["parity"]["ok"] and sidecar["export"]["seconds"] >= 0
    entry = read_onnx_manifest(path).entry  # the sidecar's measured facts are added back on reading
    assert entry["parity"] == sidecar["parity"] and entry["export"] == sidecar["export"]
    assert read_onnx_manifest(path).preprocess().height == TINY_SIZE


def test_exporting_the_same_checkpoint_twice_gives_the_same_bytes(tiny_checkpoint, tmp_path):
    options = ExportOptions(EXPORT_SIZE, EXPORT_SIZE)
    first = onnx_from_checkpoint(tiny_checkpoint, tmp_path / "a", options)
    again = onnx_from_checkpoint(tiny_checkpoint, tmp_path / "a", options)  # over the first
    elsewhere = onnx_from_checkpoint(tiny_checkpoint, tmp_path / "b", options)
    digests = {sha256_file(r.onnx_path) for r in (first, again, elsewhere)}
    assert len(digests) == 1, "re-exporting the same checkpoint changed the ONNX's sha256"
    assert {r.entry["onnx_sha256"] for r in (first, again, elsewhere)} == digests
    # and in another process (another run of the CLI): nothing depends on the process's state
    code = ("import sys; from pathlib import Path; from aspp_deploy.export.onnx_export import ExportOptions, "
            "onnx_from_checkpoint; onnx_from_checkpoint(Path(sys.argv[1]), Path(sys.argv[2]), "
            f"ExportOptions({EXPORT_SIZE}, {EXPORT_SIZE}))")
    subprocess.run([sys.executable, "-c", code, str(tiny_checkpoint), str(tmp_path / "c")], check=True)
    assert sha256_file(tmp_path / "c" / "model.onnx") in digests
    # the timings differ between the runs, and are in the sidecar, not in the file
    sidecar = json.loads((tmp_path / "a" / "manifest.json").read_text())["artifacts"]["model.onnx"]
    assert sidecar["onnx_sha256"] in digests and "seconds" in sidecar["export"]


def test_a_sidecar_entry_for_another_file_is_not_merged(static_export, tmp_path):
    """The measured facts come back only from a sidecar entry that describes this very file."""
    folder = tmp_path / "copy"
    folder.mkdir()
    dst = folder / static_export.onnx_path.name
    dst.write_bytes(static_export.onnx_path.read_bytes())
    entry = json.loads(static_export.manifest_path.read_text())["artifacts"][dst.name]
    entry["source"] = dict(entry["source"], fingerprint="another model")
    entry["parity"] = {"ok": False, "note": "belongs to another file"}
    (folder / "manifest.json").write_text(json.dumps({"artifacts": {dst.name: entry}}))
    got = read_onnx_manifest(dst).entry
    assert "parity" not in got and got["source"]["fingerprint"] != "another model"


def test_batchnorm_folded_and_graph_simplified(static_export):
    ops = {n.op_type for n in onnx.load(str(static_export.onnx_path)).graph.node}
    assert "BatchNormalization" not in ops and "Identity" not in ops
    assert static_export.entry["export"]["simplify"] == "simplified with onnxsim"


def test_dynamic_export_is_verified_at_several_sizes(tiny_checkpoint, tmp_path):
    res = onnx_from_checkpoint(tiny_checkpoint, tmp_path,
                               ExportOptions(dynamic=frozenset({"batch", "spatial"})))
    shapes = {tuple(c["shape"]) for c in res.entry["parity"]["cases"]}
    assert len(shapes) >= 3
    # the output's dims are named for what they are, never after the exporter's internal tensors
    assert res.entry["outputs"][0]["shape"] == ["batch", 6, "height", "width"]
    assert res.entry["inputs"][0]["shape"] == ["batch", 3, "height", "width"]
    spatial = onnx_from_checkpoint(tiny_checkpoint, tmp_path / "s", ExportOptions(dynamic=frozenset({"spatial"})))
    assert spatial.entry["outputs"][0]["shape"] == [1, 6, "height", "width"]
    for shape in [(2, 3, 96, 160), (1, 3, 64, 64)]:
        x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
        got = run_ort(res.onnx_path, x)
        assert got.shape == (shape[0], 6, *shape[2:])
        assert np.abs(got - torch_ref(tiny_checkpoint, x)).max() < 1e-3


@pytest.fixture(scope="module")
def plain_graph(tiny_checkpoint, tmp_path_factory):
    """The simplified export without passes (feature map 8x8 at 128x128: rates 12, 18 degenerate)."""
    out = tmp_path_factory.mktemp("plain")
    res = onnx_from_checkpoint(tiny_checkpoint, out, ExportOptions(degenerate_atrous=False, pool_broadcast=False))
    return onnx.load(str(res.onnx_path))


def test_degenerate_atrous_pass_is_exact_and_removes_what_it_claims(plain_graph):
    new, rep = P.degenerate_atrous(plain_graph)
    assert rep.applied and len(rep.details) == 2  # rates 12 and 18 on an 8x8 map; rate 6 stays
    kernels = [list(P.attr(n, "kernel_shape")) for n in new.graph.node if n.op_type == "Conv"
               and list(P.attr(n, "dilations", [1, 1])) == [1, 1]]
    assert kernels.count([1, 1]) > [list(P.attr(n, "kernel_shape")) for n in plain_graph.graph.node
                                    if n.op_type == "Conv"].count([1, 1])
    # each 3x3 -> 1x1 conv (Cin 512, Cout 16) on 8x8 saves 8 of 9 taps
    assert rep.flops_removed == 2 * (2 * 16 * 512 * 8 * 8 * 8)
    assert count_flops(plain_graph) - count_flops(new) == rep.flops_removed
    x = np.random.default_rng(0).standard_normal((1, 3, TINY_SIZE, TINY_SIZE)).astype(np.float32)
    assert np.abs(run_ort(new, x) - run_ort(plain_graph, x)).max() < 1e-5


def test_degenerate_pass_leaves_live_taps_alone(tiny_checkpoint, tmp_path):
    # At 512x512 the feature map is 32x32: no rate of 6/12/18 covers it.
    res = onnx_from_checkpoint(tiny_checkpoint, tmp_path, ExportOptions(height=512, width=512))
    rep = res.entry["export"]["passes"][0]
    assert rep["name"] == "degenerate_atrous" and rep["details"] == [] and rep["flops_removed"] == 0


def test_partially_degenerate_conv_becomes_1x3():
    # a 3x3 rate-4 conv on a 2x16 map: vertical taps fall in padding, horizontal ones do not
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], dilations=[4, 4], pads=[4, 4, 4, 4], kernel_shape=[3, 3])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 2, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 2, 16])],
                          [onnx.numpy_helper.from_array(w, "w")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    new, rep = P.degenerate_atrous(model)
    assert list(P.attr(new.graph.node[0], "kernel_shape")) == [1, 3]
    x = np.random.default_rng(1).standard_normal((1, 3, 2, 16)).astype(np.float32)
    assert np.abs(run_ort(new, x) - run_ort(model, x)).max() < 1e-5


def test_pool_broadcast_pass_is_exact(plain_graph):
    new, rep = P.pool_broadcast(plain_graph)
    before = sum(n.op_type == "Resize" for n in plain_graph.graph.node)
    after = sum(n.op_type == "Resize" for n in new.graph.node)
    assert rep.applied and before - after == 1
    assert sum(n.op_type == "Expand" for n in new.graph.node) == 1
    x = np.random.default_rng(0).standard_normal((1, 3, TINY_SIZE, TINY_SIZE)).astype(np.float32)
    assert np.abs(run_ort(new, x) - run_ort(plain_graph, x)).max() < 1e-5


@pytest.mark.parametrize("dtype,np_dtype", [("int32", np.int32), ("uint8", np.uint8)])
def test_argmax_pass(plain_graph, dtype, np_dtype):
    new, rep = P.append_argmax(plain_graph, dtype)
    x = np.random.default_rng(0).standard_normal((1, 3, TINY_SIZE, TINY_SIZE)).astype(np.float32)
    ids = run_ort(new, x)
    assert ids.dtype == np_dtype and ids.shape == (1, TINY_SIZE, TINY_SIZE)
    assert (ids == run_ort(plain_graph, x).argmax(1)).all()


def make_resize_model(mode: str, coord: str = "half_pixel", opset: int = 17) -> onnx.ModelProto:
    scales = onnx.numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode=mode,
                            coordinate_transformation_mode=coord, name="up")
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])], [scales])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def test_checker_flags_bad_graphs():
    assert check_for_trt(make_resize_model("linear"), "8.5").ok
    rep = check_for_trt(make_resize_model("cubic"), "10.x")
    assert not rep.ok and "mode 'cubic'" in str(rep.findings[0])
    assert not check_for_trt(make_resize_model("linear", "tf_crop_and_resize"), "11")
    rep = check_for_trt(make_resize_model("linear", opset=19), "8.6")
    assert not rep.ok and "opset 19" in rep.findings[0].message
    assert check_for_trt(make_resize_model("linear", opset=19), "10.3").ok


def qdq_model(zero_point: int, per_channel_activation: bool) -> onnx.ModelProto:
    n = 3 if per_channel_activation else 1
    inits = [onnx.numpy_helper.from_array(np.full(n, 0.1, np.float32) if n > 1 else np.array(0.1, np.float32), "s"),
             onnx.numpy_helper.from_array(np.full(n, zero_point, np.int8) if n > 1 else np.array(zero_point, np.int8), "z")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=1, name="q"),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=1, name="dq")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_checker_qdq_rules():
    assert check_for_trt(qdq_model(0, False), "8.5").ok
    rep = check_for_trt(qdq_model(3, False), "8.5")
    assert not rep.ok and any("zero point must be 0" in f.message for f in rep.findings)
    rep = check_for_trt(qdq_model(0, True), "10.x")
    assert not rep.ok and any("per-channel scales are only allowed for weights" in f.message for f in rep.findings)


def test_check_cli_exit_codes(tmp_path, static_export):
    assert runner.invoke(app, ["check", str(static_export.onnx_path)]).exit_code == 0
    bad = tmp_path / "bad.onnx"
    onnx.save(make_resize_model("cubic"), str(bad))
    r = runner.invoke(app, ["check", str(bad), "--trt-version", "8.5"])
    assert r.exit_code == 1 and "would fail" in r.output and "cubic" in r.output
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not onnx at all")
    r = runner.invoke(app, ["check", str(garbage)])
    assert r.exit_code == 1 and "not a readable ONNX file" in r.output


def test_simplifier_failure_keeps_checked_graph(tiny_checkpoint, tmp_path, monkeypatch):
    import onnxsim

    def broken(*a, **k):
        raise RuntimeError("simulated onnxsim crash")

    monkeypatch.setattr(onnxsim, "simplify", broken)
    res = onnx_from_checkpoint(tiny_checkpoint, tmp_path, ExportOptions())
    assert "kept the checked graph" in res.entry["export"]["simplify"] and res.entry["parity"]["ok"]


def export_cli(*args: str):
    return runner.invoke(app, ["export", *args])


@pytest.mark.parametrize("case", ["missing", "corrupt", "tiny-size", "zero-batch", "bad-dynamic"])
def test_export_bad_input_gives_one_line_and_no_files(case, tmp_path, tiny_checkpoint):
    out = tmp_path / "out"
    ckpt = str(tiny_checkpoint)
    if case == "missing":
        args, msg = ["--checkpoint", str(tmp_path / "none.pt")], "checkpoint not found"
    elif case == "corrupt":
        bad = tmp_path / "bad.pt"
        bad.write_bytes(tiny_checkpoint.read_bytes()[:5000])
        args, msg = ["--checkpoint", str(bad)], "cannot read checkpoint"
    elif case == "tiny-size":
        args, msg = ["--checkpoint", ckpt, "--height", "8"], "--height 8 is impossible"
    elif case == "zero-batch":
        args, msg = ["--checkpoint", ckpt, "--batch", "0"], "--batch 0 is impossible"
    else:
        args, msg = ["--checkpoint", ckpt, "--dynamic", "channels"], "--dynamic takes batch and/or spatial"
    r = export_cli(*args, "--out", str(out))
    assert r.exit_code == 1 and msg in r.output and "Traceback" not in r.output, r.output
    assert not out.exists() or not any(out.iterdir())


def test_export_to_unwritable_place(tmp_path, tiny_checkpoint):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = export_cli("--checkpoint", str(tiny_checkpoint), "--out", str(blocker / "sub"))
    assert r.exit_code == 1 and "cannot write to" in r.output and "Traceback" not in r.output


def test_failed_parity_writes_nothing(tiny_checkpoint, tmp_path, monkeypatch):
    from aspp_deploy.export import onnx_export

    real = onnx_export.compare_outputs
    # simulate an ONNX graph whose logits are off by 0.01 everywhere
    monkeypatch.setattr(onnx_export, "compare_outputs", lambda n, ref, got, *a: real(n, ref, got + 0.01, *a))
    r = export_cli("--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "o"))
    assert r.exit_code == 1 and "disagrees with PyTorch" in r.output
    assert not any((tmp_path / "o").iterdir())
