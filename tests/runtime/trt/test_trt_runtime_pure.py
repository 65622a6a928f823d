"""The runner's checks that need no GPU: manifest vs TensorRT/GPU, input shapes, and its import footprint."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from aspp_deploy.errors import InputError, MissingDependencyError
from aspp_deploy.runtime.trt.runtime import (MANIFEST_FORMAT, TrtRunner, Timing, check_engine_manifest, check_input_shape,
                                     import_tensorrt, manifest_path, numpy_dtype, read_engine_manifest,
                                     tensorrt_installed)

ORIN = {"tensorrt_version": "10.3.0.30", "gpu": {"name": "Orin", "compute_capability": [8, 7]}}


def test_manifest_match_is_accepted():
    check_engine_manifest(ORIN, "10.3.0.30", "Orin", (8, 7))
    check_engine_manifest(ORIN, "10.3.0.26", " orin ", [8, 7])  # build number and spacing/case do not matter


@pytest.mark.parametrize("running", ["10.3.1.0", "10.4.0.1", "8.6.2.3", "11.4.1"])
def test_other_tensorrt_version_is_refused(running):
    with pytest.raises(InputError) as err:
        check_engine_manifest(ORIN, running, "Orin", (8, 7))
    text = str(err.value)
    assert "built with TensorRT 10.3.0" in text and f"this is TensorRT {'.'.join(running.split('.')[:3])}" in text
    assert "rebuild it here" in text


@pytest.mark.parametrize("name, cc", [("NVIDIA GeForce RTX 4090", (8, 9)), ("Orin", (8, 6)), ("Xavier", (8, 7))])
def test_other_gpu_is_refused(name, cc):
    with pytest.raises(InputError, match=r"built for Orin \(sm_87\) but this GPU is .* rebuild it on this device"):
        check_engine_manifest(ORIN, "10.3.0.30", name, cc)


def test_version_compatible_engines():
    vc = dict(ORIN, version_compatible=True)
    check_engine_manifest(vc, "10.8.0.43", "Orin", (8, 7))  # later 10.x
    check_engine_manifest(vc, "11.4.1.2", "Orin", (8, 7))  # 10 -> 11 is a supported pair
    for older in ("10.2.0.1", "9.0.0"):
        with pytest.raises(InputError, match="version-compatible"):
            check_engine_manifest(vc, older, "Orin", (8, 7))
    with pytest.raises(InputError, match="version-compatible"):
        check_engine_manifest(dict(vc, tensorrt_version="8.6.1.6"), "11.4.1", "Orin", (8, 7))  # 8 -> 11: no


def test_hardware_compatible_engines():
    hc = {"tensorrt_version": "10.3.0.26", "hardware_compatibility_level": "AMPERE_PLUS",
          "gpu": {"name": "NVIDIA A100", "compute_capability": [8, 0]}}
    check_engine_manifest(hc, "10.3.0.26", "NVIDIA H100 80GB HBM3", (9, 0))
    with pytest.raises(InputError, match="Ampere or newer"):
        check_engine_manifest(hc, "10.3.0.26", "Tesla T4", (7, 5))


def test_manifest_without_version():
    with pytest.raises(InputError, match="no tensorrt_version"):
        check_engine_manifest({"gpu": ORIN["gpu"]}, "10.3.0.30", "Orin", (8, 7))


def test_input_shape_against_profile():
    check_input_shape("input", (4, 3, 512, 512), (1, 3, 512, 512), (8, 3, 512, 512))
    with pytest.raises(InputError, match=r"^batch 16 is outside the engine profile 1\.\.8$"):
        check_input_shape("input", (16, 3, 512, 512), (1, 3, 512, 512), (8, 3, 512, 512))
    with pytest.raises(InputError, match=r"input 'input' dimension 2 = 256 is outside the engine profile 512\.\.512"):
        check_input_shape("input", (1, 3, 256, 512), (1, 3, 512, 512), (8, 3, 512, 512))
    with pytest.raises(InputError, match="takes 4 dimensions"):
        check_input_shape("input", (3, 512, 512), (1, 3, 512, 512), (8, 3, 512, 512))


def test_timing_summary():
    t = Timing(h2d_ms=[1.0, 2.0, 3.0], compute_ms=[4.0, 4.0, 4.0], d2h_ms=[0.5] * 3, e2e_ms=[6.0, 7.0, 20.0])
    s = t.summary()
    assert s["h2d_ms"]["median"] == 2.0 and s["compute_ms"]["mean"] == 4.0 and s["e2e_ms"]["min"] == 6.0
    assert Timing().summary()["e2e_ms"] == {}


def test_dtypes_and_paths():
    assert numpy_dtype("HALF") == np.float16 and numpy_dtype("FLOAT") == np.float32
    with pytest.raises(InputError, match="BF16 has no NumPy equivalent"):
        numpy_dtype("BF16")
    assert manifest_path("out/m.engine").as_posix() == "out/m.engine.json"


@pytest.mark.skipif(tensorrt_installed(), reason="TensorRT is installed here")
def test_tensorrt_missing_is_a_clear_error():
    with pytest.raises(MissingDependencyError, match="pip install tensorrt-cu12 .* JetPack python3-libnvinfer"):
        import_tensorrt()


def test_runner_refuses_missing_or_mismatched_files(tmp_path):
    engine = tmp_path / "m.engine"
    with pytest.raises(InputError, match="engine not found"):
        TrtRunner(engine)
    engine.write_bytes(b"plan")
    with pytest.raises(InputError, match=r"m\.engine\.json is missing"):
        TrtRunner(engine)
    manifest_path(engine).write_text(json.dumps(dict(ORIN, format=MANIFEST_FORMAT, engine_bytes=1234)))
    with pytest.raises(InputError, match="does not match its manifest"):
        TrtRunner(engine)
    manifest_path(engine).write_text(json.dumps(dict(ORIN, engine_bytes=4)))
    with pytest.raises(InputError, match="not an aspp-deploy engine manifest"):
        TrtRunner(engine)
    manifest_path(engine).write_text("{")
    with pytest.raises(InputError, match="not valid JSON"):
        TrtRunner(engine)


def test_read_engine_manifest_wants_preprocessing(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    manifest_path(engine).write_text(json.dumps(dict(ORIN, format=MANIFEST_FORMAT, preprocess=None)))
    with pytest.raises(InputError, match="records no preprocessing"):
        read_engine_manifest(engine)
    assert read_engine_manifest(engine, need_preprocess=False)["tensorrt_version"] == "10.3.0.30"
    pre = {"height": 512, "width": 512, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    manifest_path(engine).write_text(json.dumps(dict(ORIN, format=MANIFEST_FORMAT, preprocess=pre)))
    assert read_engine_manifest(engine)["preprocess"] == pre


BLOCKER = textwrap.dedent("""
    import importlib.abc, sys
    BLOCKED = {"torch", "onnx", "onnxruntime", "tensorrt", "cuda", "pycuda"}
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in this test")
    sys.meta_path.insert(0, Block())
    for name in ("torch", "onnx"):
        try:
            __import__(name)
        except ImportError:
            pass
        else:
            raise SystemExit(f"the blocker failed: {name} imported")
""")


@pytest.mark.parametrize("module", ["aspp_deploy.runtime.trt.runtime", "aspp_deploy.runtime.trt.build", "aspp_deploy.runtime.trt.plan",
                                    "aspp_deploy.runtime.trt.calibrator", "aspp_deploy.runtime.trt.cuda"])
def test_modules_import_without_torch_onnx_tensorrt_or_cuda(module):
    code = BLOCKER + textwrap.dedent(f"""
        import importlib
        importlib.import_module("{module}")
        print(sorted(m for m in sys.modules if m.startswith("aspp_deploy")))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    loaded = set(eval(result.stdout.strip().splitlines()[-1]))
    if module == "aspp_deploy.runtime.trt.runtime":  # what a Jetson application embeds: the portable core and no more
        loaded = {m for m in loaded if m.split(".")[:2] != ["aspp_deploy", "runtime"]}
        assert loaded <= {"aspp_deploy", "aspp_deploy.errors", "aspp_deploy.io", "aspp_deploy.runtime.trt",
                          "aspp_deploy.runtime.trt.cuda", "aspp_deploy.runtime.trt.runtime"}, loaded
