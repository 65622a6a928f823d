"""The bundle's runtime in clean virtual environments (only NumPy and Pillow: no torch, no onnx, no
TensorRT): every shipped module imports, the CPU side works, and preprocessing is bit-identical to the
toolkit's. Run with the toolkit's Python and, where the machine has one, Python 3.8 (JetPack 5)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aspp_deploy.runtime.preprocess import Preprocess
from aspp_deploy.data.voc import load_image

pytestmark = pytest.mark.slow

# Runs inside the clean venv, from the bundle folder: argv = images folder, output folder.
SCRIPT = textwrap.dedent('''
    import importlib, importlib.util, json, os, sys
    from pathlib import Path
    sys.path.insert(0, os.getcwd())
    images, out = Path(sys.argv[1]), Path(sys.argv[2])
    modules = sorted(".".join(p.with_suffix("").parts).replace(".__init__", "")
                     for p in Path("aspp_deploy").rglob("*.py") if p.name != "__main__.py")
    for name in modules:
        importlib.import_module(name)
    import numpy as np
    from aspp_deploy.runtime.preprocess import Preprocess
    from aspp_deploy.runtime import class_map, colorize, load_rgb, overlay, postprocess, preprocess_image
    entry = json.loads(Path("models/manifest.json").read_text())["artifacts"]["model.onnx"]
    pre = Preprocess.from_dict(entry["preprocess"])
    n = len(entry["classes"])
    for path in sorted(images.iterdir()):
        np.save(out / (path.name + ".npy"), preprocess_image(path, pre))
    image = load_rgb(sorted(images.iterdir())[0])
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((1, n, pre.height, pre.width)).astype(np.float32)
    mask = postprocess(logits, image.size)
    assert mask.shape == (image.height, image.width) and mask.dtype == np.uint8, (mask.shape, mask.dtype)
    assert np.array_equal(class_map(logits), logits[0].argmax(0))
    ids = rng.integers(0, n, (1, pre.height, pre.width)).astype(np.int32)
    assert np.array_equal(postprocess(ids, (pre.width, pre.height), n), ids[0])
    rgb = colorize(mask, entry["palette"])
    assert rgb.shape == mask.shape + (3,) and rgb.dtype == np.uint8
    overlay(image, mask, entry["palette"]).save(out / "overlay.png")
    heavy = [m for m in ("torch", "onnx", "onnxruntime", "tensorrt", "typer", "rich") if m in sys.modules]
    missing = [m for m in ("torch", "onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    print(json.dumps({"modules": modules, "heavy_loaded": heavy, "not_installed": missing,
                      "python": sys.version.split()[0]}))
''')


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory, made_bundle) -> Path:
    """Images that exercise the resize and colour conversion: shipped JPEGs, grey, RGBA, odd sizes."""
    folder = tmp_path_factory.mktemp("odd-images")
    for p in sorted((made_bundle.out / "selftest").glob("*.jpg")):
        (folder / p.name).write_bytes(p.read_bytes())
    rng = np.random.default_rng(7)
    Image.fromarray(rng.integers(0, 256, (37, 251), dtype=np.uint8), "L").save(folder / "grey.png")
    Image.fromarray(rng.integers(0, 256, (300, 97, 4), dtype=np.uint8), "RGBA").save(folder / "rgba.png")
    Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(folder / "big.jpg", quality=90)
    Image.fromarray(rng.integers(0, 256, (9, 13, 3), dtype=np.uint8)).save(folder / "tiny.bmp")
    return folder


def _run(python: Path, cwd: Path, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(params=["clean_python", "python38"])
def venv_python(request) -> Path:
    return request.getfixturevalue(request.param)


ONE_LEVEL = 1.0 / (255 * 0.224) + 1e-6  # one 8-bit step after normalisation (the smallest std of the fixture)


def test_runtime_runs_torch_free_and_preprocesses_bit_identically(request, venv_python, made_bundle, odd_images,
                                                                  tmp_path):
    """Bit-identical with the toolkit's NumPy and Pillow releases; with Python 3.8's (older) Pillow, at
    most one 8-bit level apart (Pillow's resampling changed between 10.4 and 13)."""
    script = tmp_path / "check.py"
    script.write_text(SCRIPT)
    proc = _run(venv_python, made_bundle.out, str(script), str(odd_images), str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["heavy_loaded"] == [] and report["not_installed"] == ["torch", "onnx", "onnxruntime"]
    assert {"aspp_deploy.runtime.segmenter", "aspp_deploy.runtime.trt.build", "aspp_deploy.runtime.trt.runtime",
            "aspp_deploy.runtime.calibration"} <= set(report["modules"])
    assert Image.open(tmp_path / "overlay.png").size == load_image(sorted(odd_images.iterdir())[0]).size

    # the toolkit's own preprocessing, in this process, on the same files
    entry = json.loads((made_bundle.out / "models" / "manifest.json").read_text())["artifacts"]["model.onnx"]
    pre = Preprocess.from_dict(entry["preprocess"])
    files = sorted(odd_images.iterdir())
    assert len(files) == 6
    for path in files:
        theirs = np.load(tmp_path / (path.name + ".npy"))
        ours = pre(load_image(path))
        assert theirs.dtype == ours.dtype == np.float32 and theirs.shape == ours.shape
        if "clean_python" in request.fixturenames:
            assert np.array_equal(theirs, ours), f"{path.name}: max diff {np.abs(theirs - ours).max()}"
        else:
            assert np.abs(theirs - ours).max() <= ONE_LEVEL, f"{path.name} ({report['python']})"


def test_selftest_passes_in_the_clean_venv(clean_python, made_bundle):
    proc = _run(clean_python, made_bundle.out, "-m", "aspp_deploy.runtime", "selftest")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "files: ok" in proc.stdout and "preprocessing: 6/6 image(s) bit-identical" in proc.stdout


def test_selftest_on_python38_reports_what_it_finds(python38, made_bundle):
    """JetPack 5's Python: the verdict per image is whatever that Pillow gives, but it must be reported
    (exit 1 with the image named when an input differs) and never be more than a rounding step."""
    proc = _run(python38, made_bundle.out, "-m", "aspp_deploy.runtime", "selftest", "--json")
    report = json.loads(proc.stdout)
    assert report["files"] == [] and len(report["preprocessing"]) == 6
    different = [i["file"] for i in report["preprocessing"] if not i["identical"]]
    assert proc.returncode == (1 if different else 0)
    assert all(i["max_channel_mean_drift"] < 0.01 for i in report["preprocessing"])
    for name in different:
        assert f"preprocessing of {name} differs" in proc.stderr


def test_selftest_notices_a_changed_file(clean_python, made_bundle, tmp_path):
    import shutil

    copy = tmp_path / "jetson"
    shutil.copytree(made_bundle.out, copy)
    (copy / "selftest" / "reference.json").write_text((copy / "selftest" / "reference.json").read_text() + " ")
    proc = _run(clean_python, copy, "-m", "aspp_deploy.runtime", "selftest")
    assert proc.returncode == 1 and "error: selftest/reference.json differs from the bundle" in proc.stderr


@pytest.mark.parametrize("command", [
    ["build", "--precision", "fp16"],
    ["segment", "--engine", "engines/model.fp16.engine", "--input", "selftest"],
])
def test_without_tensorrt_the_device_commands_say_what_is_missing(clean_python, made_bundle, command):
    proc = _run(clean_python, made_bundle.out, "-m", "aspp_deploy.runtime", *command)
    assert proc.returncode == 1 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: TensorRT is not installed") and "python3-libnvinfer" in lines[0]


def test_build_sh_without_tensorrt_stops_with_one_line(clean_python, made_bundle):
    proc = subprocess.run(["bash", str(made_bundle.out / "build.sh")], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": str(clean_python)}, timeout=60)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().count("\n") == 0 and "python3-libnvinfer" in proc.stderr
    assert not (made_bundle.out / "engines").exists()


def test_plan_needs_no_tensorrt(clean_python, made_bundle):
    proc = _run(clean_python, made_bundle.out, "-m", "aspp_deploy.runtime", "plan", "--precision", "int8",
                "--trt-version", "8.5", "--json")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    info = json.loads((made_bundle.out / "bundle.json").read_text())
    assert plan["onnx"] == info["build_paths"]["8.5"]["int8"]["onnx"]
    assert plan["trtexec"] == info["build_paths"]["8.5"]["int8"]["trtexec"]


def test_main_venv_also_reports_missing_tensorrt(made_bundle):
    """Here only tensorrt-stubs are installed: the message must still name TensorRT and how to get it."""
    proc = _run(Path(sys.executable), made_bundle.out, "-m", "aspp_deploy.runtime", "build")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and "TensorRT is not installed" in lines[0]
