"""Real TensorRT on a real GPU: build tiny ONNX models, run them with TrtRunner, compare with ONNX Runtime.

Skips (with the reason) where TensorRT or a CUDA device is missing. The tiny models themselves are
checked against ONNX Runtime everywhere, so the fixtures stay honest on CPU-only machines.
"""

import json

import numpy as np
import pytest

from aspp_deploy.backends.registry import trt_unavailable_reason
from aspp_deploy.errors import InputError

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

FP32_TOL = 1e-2  # FP32 engines may use TF32 convolutions on Ampere and later
FP16_TOL = 3e-2


SKIP_REASON = trt_unavailable_reason()
requires_trt_gpu = pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")


def conv_relu_onnx(path, *, fp16=False, batch=1):
    """Conv(3->4, 3x3, pad 1) + Relu on a 3x32x32 input; ``fp16`` casts inside (I/O stays float32)."""
    rng = np.random.default_rng(0)
    wtype = np.float16 if fp16 else np.float32
    inits = [numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * 0.2).astype(wtype), "w"),
             numpy_helper.from_array((rng.standard_normal(4) * 0.1).astype(wtype), "b")]
    nodes, x = [], "input"
    if fp16:
        nodes.append(helper.make_node("Cast", ["input"], ["x16"], to=TensorProto.FLOAT16))
        x = "x16"
    nodes.append(helper.make_node("Conv", [x, "w", "b"], ["conv"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("Relu", ["conv"], ["relu16" if fp16 else "output"]))
    if fp16:
        nodes.append(helper.make_node("Cast", ["relu16"], ["output"], to=TensorProto.FLOAT))
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 32, 32])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, 4, 32, 32])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by TensorRT 8.5's parser
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def ort_run(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def sample(n=1, seed=1):
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)


@pytest.mark.parametrize("fp16, batch", [(False, 1), (True, 1), (False, "N")])
def test_tiny_models_are_valid(tmp_path, fp16, batch):
    path = conv_relu_onnx(tmp_path / "m.onnx", fp16=fp16, batch=batch)
    x = sample(2 if batch == "N" else 1)
    out = ort_run(path, x)
    assert out.shape == (x.shape[0], 4, 32, 32) and out.dtype == np.float32 and out.min() >= 0 and out.max() > 0


@pytest.fixture(scope="module")
def trt_version():
    from aspp_deploy.runtime.trt.plan import parse_version
    from aspp_deploy.runtime.trt.runtime import import_tensorrt

    return parse_version(import_tensorrt().__version__)


def build(onnx_path, engine_path, req, **kwargs):
    from aspp_deploy.runtime.trt.build import engine_from_onnx

    return engine_from_onnx(onnx_path, engine_path, req, **kwargs)


@pytest.mark.tensorrt
@requires_trt_gpu
def test_fp32_engine_matches_onnxruntime(tmp_path):
    from aspp_deploy.runtime.trt.plan import BuildRequest
    from aspp_deploy.runtime.trt.runtime import TrtRunner

    from aspp_deploy.runtime.preprocess import Preprocess
    from aspp_deploy.export.manifest import embed
    from aspp_deploy.runtime.trt.runtime import read_engine_manifest

    onnx_path = conv_relu_onnx(tmp_path / "fp32.onnx")
    model = onnx.load(str(onnx_path))
    embed(model, {"preprocess": Preprocess(32, 32).to_dict(), "classes": ["a", "b", "c", "d"]})
    onnx.save(model, str(onnx_path))
    manifest = build(onnx_path, tmp_path / "fp32.engine", BuildRequest(), timing_cache=tmp_path / "timing.cache")
    assert Preprocess.from_dict(read_engine_manifest(tmp_path / "fp32.engine")["preprocess"]) == Preprocess(32, 32)
    assert manifest["classes"] == ["a", "b", "c", "d"]
    assert manifest["precision"] == "fp32" and manifest["plan"]["builder_flags"] == []
    assert manifest["io"][0] == {"name": "input", "mode": "input", "dtype": "float32", "shape": [1, 3, 32, 32],
                                 "profile": {"min": [1, 3, 32, 32], "opt": [1, 3, 32, 32], "max": [1, 3, 32, 32]}}
    assert manifest["layers"]["count"] >= 1 and manifest["trtexec"].startswith("trtexec --onnx=")
    assert json.loads((tmp_path / "fp32.engine.json").read_text())["engine_sha256"] == manifest["engine_sha256"]
    assert (tmp_path / "timing.cache").stat().st_size > 0
    x = sample()
    with TrtRunner(tmp_path / "fp32.engine") as runner:
        out = runner.infer({"input": x})["output"]
    np.testing.assert_allclose(out, ort_run(onnx_path, x), atol=FP32_TOL, rtol=FP32_TOL)


@pytest.mark.tensorrt
@requires_trt_gpu
def test_fp16_engines_match_onnxruntime(tmp_path, trt_version):
    from aspp_deploy.runtime.trt.plan import BuildRequest, PlanError
    from aspp_deploy.runtime.trt.runtime import TrtRunner

    x = sample()
    fp16_onnx = conv_relu_onnx(tmp_path / "fp16.onnx", fp16=True)
    build(fp16_onnx, tmp_path / "fp16.engine", BuildRequest(precision="fp16", onnx_kind="fp16"))
    with TrtRunner(tmp_path / "fp16.engine") as runner:
        out = runner.infer({"input": x})["output"]
    np.testing.assert_allclose(out, ort_run(fp16_onnx, x), atol=FP16_TOL, rtol=FP16_TOL)

    fp32_onnx = conv_relu_onnx(tmp_path / "fp32.onnx")
    if trt_version >= (11, 0):
        with pytest.raises(PlanError, match="quantize --precision fp16"):
            build(fp32_onnx, tmp_path / "weak.engine", BuildRequest(precision="fp16"))
        return
    manifest = build(fp32_onnx, tmp_path / "weak.engine", BuildRequest(precision="fp16"))
    assert manifest["plan"]["builder_flags"] == ["FP16"]
    assert "FP16" in manifest["layers"]["precisions"]
    with TrtRunner(tmp_path / "weak.engine") as runner:
        out = runner.infer({"input": x})["output"]
    np.testing.assert_allclose(out, ort_run(fp32_onnx, x), atol=FP16_TOL, rtol=FP16_TOL)


@pytest.mark.tensorrt
@requires_trt_gpu
def test_dynamic_batch_profile_graphs_and_timing(tmp_path):
    from aspp_deploy.runtime.trt.plan import BuildRequest
    from aspp_deploy.runtime.trt.runtime import TrtRunner

    onnx_path = conv_relu_onnx(tmp_path / "dyn.onnx", batch="N")
    manifest = build(onnx_path, tmp_path / "dyn.engine", BuildRequest(), min_shapes={"input": (1, 3, 32, 32)},
                     opt_shapes={"input": (2, 3, 32, 32)}, max_shapes={"input": (4, 3, 32, 32)})
    assert manifest["io"][0]["profile"]["max"] == [4, 3, 32, 32]
    with TrtRunner(tmp_path / "dyn.engine", use_cuda_graph=True) as runner:
        for n in (1, 3, 4, 3):
            x = sample(n, seed=n)
            np.testing.assert_allclose(runner.infer({"input": x})["output"], ort_run(onnx_path, x),
                                       atol=FP32_TOL, rtol=FP32_TOL)
        assert runner.use_cuda_graph or runner.graph_note
        with pytest.raises(InputError, match=r"^batch 8 is outside the engine profile 1\.\.4$"):
            runner.infer({"input": np.zeros((8, 3, 32, 32), np.float32)})
        with pytest.raises(InputError, match="feed has inputs"):
            runner.infer({"image": sample()})
        timing = runner.time({"input": sample(2)}, warmup=3, iters=7)
    assert [len(timing.h2d_ms), len(timing.compute_ms), len(timing.d2h_ms), len(timing.e2e_ms)] == [7] * 4
    assert min(timing.compute_ms) > 0 and min(timing.e2e_ms) >= min(timing.compute_ms)


@pytest.mark.tensorrt
@requires_trt_gpu
def test_engine_for_another_tensorrt_or_gpu_is_refused(tmp_path):
    from aspp_deploy.runtime.trt.plan import BuildRequest
    from aspp_deploy.runtime.trt.runtime import TrtRunner, manifest_path

    engine = tmp_path / "m.engine"
    manifest = build(conv_relu_onnx(tmp_path / "m.onnx"), engine, BuildRequest())
    manifest_path(engine).write_text(json.dumps(dict(manifest, tensorrt_version="8.5.2.2")))
    with pytest.raises(InputError, match="built with TensorRT 8.5.2"):
        TrtRunner(engine)
    other_gpu = dict(manifest, gpu={"name": "Some Other GPU", "compute_capability": [5, 0]})
    manifest_path(engine).write_text(json.dumps(other_gpu))
    with pytest.raises(InputError, match="rebuild it on this device"):
        TrtRunner(engine)


@pytest.mark.tensorrt
@requires_trt_gpu
def test_legacy_int8_calibrates_then_reuses_its_cache(tmp_path, trt_version):
    from aspp_deploy.runtime.trt.calibrator import data_key_from_batches
    from aspp_deploy.runtime.trt.plan import BuildRequest
    from aspp_deploy.runtime.trt.runtime import TrtRunner

    if trt_version >= (11, 0):
        pytest.skip("TensorRT 11 has no INT8 calibrators")
    onnx_path = conv_relu_onnx(tmp_path / "m.onnx")
    batches = [{"input": sample(seed=s)} for s in range(4)]
    req = BuildRequest(precision="int8", legacy_int8=True)
    build(onnx_path, tmp_path / "a.engine", req, calib_batches=batches, calib_cache=tmp_path / "m.calib")
    assert (tmp_path / "m.calib").stat().st_size > 0 and (tmp_path / "m.calib.json").is_file()
    x = sample(seed=9)
    ref = ort_run(onnx_path, x)
    with TrtRunner(tmp_path / "a.engine") as runner:
        out = runner.infer({"input": x})["output"]
    assert np.abs(out - ref).max() <= 0.1 * np.abs(ref).max()
    # no data this time: the cache whose key matches is all TensorRT needs
    build(onnx_path, tmp_path / "b.engine", req, calib_cache=tmp_path / "m.calib",
          calib_data_key=data_key_from_batches(batches))
    with pytest.raises(InputError, match="no reusable cache"):
        build(onnx_path, tmp_path / "c.engine", req, calib_cache=tmp_path / "m.calib", calib_data_key="other data")
