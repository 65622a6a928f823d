"""The bundle's runtime without TensorRT: ``segment`` falls back to ONNX Runtime on the CPU (``OrtSegmenter``),
says so, and writes the same masks as the toolkit's own ONNX Runtime run; in clean virtual environments
(NumPy, Pillow, ONNX Runtime only: no torch, no onnx), on the toolkit's Python and on Python 3.8."""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import onnxruntime as ort
import PIL
import pytest
from PIL import Image

from aspp_deploy.backends.base import class_ids
from aspp_deploy.backends.onnxruntime_backend import OrtRunner
from aspp_deploy.data.voc import load_image
from aspp_deploy.errors import InputError
from aspp_deploy.io import sha256_file
from aspp_deploy.export.manifest import read_onnx_manifest
from aspp_deploy.runtime.__main__ import main as runtime_main
from aspp_deploy.runtime.ort_segmenter import OrtSegmenter
from aspp_deploy.runtime.ov_segmenter import OpenVinoSegmenter, openvino_installed
from aspp_deploy.runtime.trt.runtime import tensorrt_installed
from tests.bundle.conftest import _base_python, _make_venv, _python38

no_tensorrt = pytest.mark.skipif(tensorrt_installed(), reason="checks the fallback taken where TensorRT is absent")


def _toolkit_masks(onnx_path: Path, files: list[Path]) -> dict[str, np.ndarray]:
    """What the toolkit predicts for each file: manifest preprocessing, OrtRunner, argmax, restore."""
    manifest = read_onnx_manifest(onnx_path)
    pre = manifest.preprocess()
    masks = {}
    with OrtRunner(onnx_path) as runner:
        for path in files:
            image = load_image(path)
            ids = class_ids(runner.infer(pre(image)[None]), runner.info.outputs_class_ids)[0]
            masks[path.name] = pre.restore(ids, image.size)
    return masks


def _selftest_images(bundle: Path) -> list[Path]:
    return sorted(p for p in (bundle / "selftest").iterdir() if p.suffix in (".png", ".jpg"))


def test_ort_segmenter_predicts_what_the_toolkit_predicts(made_bundle):
    onnx_path = made_bundle.out / "models" / "model.onnx"
    files = _selftest_images(made_bundle.out)
    expected = _toolkit_masks(onnx_path, files)
    entry = json.loads((made_bundle.out / "models" / "manifest.json").read_text())["artifacts"]["model.onnx"]
    with OrtSegmenter(onnx_path) as seg:
        assert seg.classes == entry["classes"] and seg.palette == entry["palette"]
        assert (seg.min_batch, seg.max_batch) == (1, 1)  # the bundle's ONNX has a static batch of 1
        assert "ONNX Runtime" in seg.description and "model.onnx" in seg.description
        batch = seg.predict_batch(files)
        for path, mask in zip(files, batch):
            assert mask.dtype == np.uint8 and mask.shape == (load_image(path).height, load_image(path).width)
            assert np.array_equal(mask, expected[path.name]), path.name
            assert np.array_equal(seg.predict(path), mask)


def test_ort_segmenter_reads_the_sidecar_manifest_and_refuses_an_onnx_without_one(made_bundle, tmp_path):
    import onnx

    model = onnx.load(str(made_bundle.out / "models" / "model.onnx"))
    del model.metadata_props[:]
    with_sidecar = tmp_path / "with"
    with_sidecar.mkdir()
    onnx.save(model, str(with_sidecar / "model.onnx"))
    shutil.copyfile(made_bundle.out / "models" / "manifest.json", with_sidecar / "manifest.json")
    with pytest.raises(InputError, match="does not match its entry .*sha256 differs"):  # the bytes are verified
        OrtSegmenter(with_sidecar / "model.onnx")
    sidecar = json.loads((with_sidecar / "manifest.json").read_text())
    sidecar["artifacts"]["model.onnx"]["onnx_sha256"] = sha256_file(with_sidecar / "model.onnx")
    (with_sidecar / "manifest.json").write_text(json.dumps(sidecar))
    image = _selftest_images(made_bundle.out)[0]
    with OrtSegmenter(with_sidecar / "model.onnx") as seg, OrtSegmenter(made_bundle.out / "models" / "model.onnx") as ref:
        assert seg.preprocess == ref.preprocess and seg.classes == ref.classes
        assert np.array_equal(seg.predict(image), ref.predict(image))
    bare = tmp_path / "bare"
    bare.mkdir()
    onnx.save(model, str(bare / "model.onnx"))
    with pytest.raises(InputError, match="no aspp-deploy manifest"):
        OrtSegmenter(bare / "model.onnx")
    with pytest.raises(InputError, match="ONNX model not found"):
        OrtSegmenter(bare / "missing.onnx")


@no_tensorrt
@pytest.mark.parametrize("runtime, engine", [("auto", "OpenVINO" if openvino_installed() else "ONNX Runtime"),
                                             ("onnxruntime", "ONNX Runtime")])
def test_segment_falls_back_to_the_cpu_and_says_so(made_bundle, tmp_path, monkeypatch, capsys, runtime, engine):
    monkeypatch.chdir(made_bundle.out)
    out = tmp_path / "overlays"
    # an engine named but TensorRT absent: the fallback runs the bundle's FP32 ONNX (auto: OpenVINO when
    # it is installed, the faster CPU engine; else ONNX Runtime)
    assert runtime_main(["segment", "--engine", "engines/model.fp16.engine", "--input", "selftest",
                         "--out", str(out), "--runtime", runtime]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(f"segmenting with {engine}") and "models/model.onnx" in lines[0]
    assert f"on {engine} on the CPU" in lines[-1]
    if runtime == "auto":
        assert "TensorRT is not installed" in lines[0]
    files = _selftest_images(made_bundle.out)
    expected = _toolkit_masks(made_bundle.out / "models" / "model.onnx", files)
    palette = json.loads((made_bundle.out / "models" / "manifest.json").read_text())["artifacts"]["model.onnx"]["palette"]
    for path in files:
        mask = Image.open(out / f"{path.stem}.mask.png")
        assert mask.mode == "P" and mask.getpalette()[3:6] == palette[1]
        if engine == "ONNX Runtime":  # the toolkit's own engine: bit-identical
            assert np.array_equal(np.asarray(mask), expected[path.name]), path.name
        else:  # another engine's float rounding may flip a near-tie pixel
            assert np.mean(np.asarray(mask) == expected[path.name]) > 0.995, path.name
        overlay = Image.open(out / f"{path.stem}.overlay.png")
        assert overlay.width > mask.width and overlay.height >= mask.height  # the legend beside the image


@no_tensorrt
def test_segment_runtime_choice(made_bundle, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(made_bundle.out)
    assert runtime_main(["segment", "--runtime", "onnxruntime", "--onnx", "models/model.fp16.onnx",
                         "--input", "selftest/geometry-smaller.png", "--out", str(tmp_path / "o")]) == 0
    assert "models/model.fp16.onnx" in capsys.readouterr().out
    assert runtime_main(["segment", "--runtime", "tensorrt", "--engine", "engines/model.fp16.engine",
                         "--input", "selftest", "--out", str(tmp_path / "t")]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error: TensorRT is not installed")
    assert runtime_main(["segment", "--onnx", "models/nothing.onnx", "--input", "selftest",
                         "--out", str(tmp_path / "n")]) == 1
    assert "error: ONNX model not found: models/nothing.onnx" in capsys.readouterr().err


# Runs inside the clean venv, from the bundle folder: argv = output folder.
SCRIPT = textwrap.dedent('''
    import json, os, sys
    sys.path.insert(0, os.getcwd())
    from aspp_deploy.runtime.__main__ import main
    rc = main(["segment", "--input", "selftest", "--out", sys.argv[1]])
    heavy = [m for m in ("torch", "onnx", "tensorrt", "typer", "rich") if m in sys.modules]
    print(json.dumps({"rc": rc, "heavy_loaded": heavy, "python": sys.version.split()[0]}))
''')


@pytest.fixture(scope="module")
def ort_venv(tmp_path_factory) -> Path:
    return _make_venv(tmp_path_factory.mktemp("venv-ort") / "venv", _base_python(),
                      [f"numpy=={np.__version__}", f"pillow=={PIL.__version__}", f"onnxruntime=={ort.__version__}"])


@pytest.fixture(scope="module")
def ort_venv38(tmp_path_factory) -> Path:
    base = _python38()
    if base is None:
        pytest.skip("no Python 3.8 on this machine (JetPack 5's Python): the 3.8 check needs one")
    # PyAV for the stream test (12.x, the last for Python 3.8); still images never import it
    return _make_venv(tmp_path_factory.mktemp("venv-ort38") / "venv", base, ["numpy", "pillow", "onnxruntime", "av"])


@pytest.mark.slow
@pytest.mark.parametrize("venv", ["ort_venv", "ort_venv38"])
def test_segment_on_onnxruntime_in_a_clean_venv(request, venv, made_bundle, tmp_path):
    """NumPy, Pillow and ONNX Runtime only: segment runs, imports neither torch nor onnx, and its masks are
    the toolkit's (bit-identical with the toolkit's releases; Python 3.8's older Pillow may resample an
    input pixel one level differently, so there nearly all pixels agree)."""
    python = request.getfixturevalue(venv)
    script = tmp_path / "segment.py"
    script.write_text(SCRIPT)
    out = tmp_path / "overlays"
    proc = subprocess.run([str(python), str(script), str(out)], cwd=made_bundle.out, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    report = json.loads(lines[-1])
    assert report["rc"] == 0 and report["heavy_loaded"] == []
    assert lines[0].startswith("segmenting with ONNX Runtime") and "TensorRT is not installed" in lines[0]
    files = _selftest_images(made_bundle.out)
    expected = _toolkit_masks(made_bundle.out / "models" / "model.onnx", files)
    for path in files:
        mask = np.asarray(Image.open(out / f"{path.stem}.mask.png"))
        if venv == "ort_venv":
            assert np.array_equal(mask, expected[path.name]), path.name
        else:
            assert np.mean(mask == expected[path.name]) > 0.98, (path.name, report["python"])



STREAM_SCRIPT = textwrap.dedent('''
    import json, os, sys
    sys.path.insert(0, os.getcwd())
    import av
    from aspp_deploy.runtime.__main__ import main
    rc = main(["segment", "--input", sys.argv[1], "--out", sys.argv[2], "--runtime", "onnxruntime"])
    print(json.dumps({"rc": rc, "av": av.__version__, "python": sys.version.split()[0]}))
''')


@pytest.mark.slow
def test_segment_streams_a_video_on_python38_with_its_pyav(ort_venv38, made_bundle, tmp_path):
    """JetPack 5's Python 3.8 gets PyAV 12 at most, whose frames lack some colour tags that PyAV 17 has:
    the bundle's segment streams a video there, every frame into the mask and overlay videos (blended on
    the decoded YUV frames), and the masks are those segment gives with this session's Python."""
    av = pytest.importorskip("av", reason="making the test video needs PyAV")
    from aspp_deploy.runtime.video import read_mask_video

    video = tmp_path / "clip.mp4"
    rng = np.random.default_rng(0)
    with av.open(str(video), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 96, 72, "yuv420p"
        base = np.asarray(Image.open(_selftest_images(made_bundle.out)[0]).convert("RGB").resize((96, 72)))
        for i in range(6):
            rgb = np.roll(base, 4 * i, axis=1) // 2 + rng.integers(0, 40, base.shape, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    script = tmp_path / "stream.py"
    script.write_text(STREAM_SCRIPT)
    proc = subprocess.run([str(ort_venv38), str(script), str(video), str(tmp_path / "py38")], cwd=made_bundle.out,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["rc"] == 0 and report["python"].startswith("3.8"), report
    assert "6 frame(s)" in proc.stdout and "overlay" in proc.stdout
    with av.open(str(tmp_path / "py38" / "clip.overlay.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 6
    here = tmp_path / "here"
    assert runtime_main(["segment", "--input", str(video), "--out", str(here), "--runtime", "onnxruntime",
                         "--onnx", str(made_bundle.out / "models" / "model.onnx")]) == 0
    theirs = [ids for _, ids in read_mask_video(tmp_path / "py38" / "clip.mask.mov")]
    ours = [ids for _, ids in read_mask_video(here / "clip.mask.mov")]
    assert len(theirs) == len(ours) == 6
    # Python 3.8's older Pillow may resample an input pixel one level differently (see the still images)
    assert np.mean([np.mean(a == b) for a, b in zip(theirs, ours)]) > 0.98


@pytest.mark.skipif(not openvino_installed(), reason="OpenVINO (the openvino extra) is not installed")
def test_openvino_segmenter_reads_the_embedded_manifest_and_agrees_with_onnxruntime(made_bundle, tmp_path):
    onnx_path = made_bundle.out / "models" / "model.onnx"
    files = _selftest_images(made_bundle.out)
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copyfile(onnx_path, bare / "model.onnx")  # no manifest.json beside it: the embedded one is read
    with OpenVinoSegmenter(bare / "model.onnx", threads=1, cache_dir=tmp_path / "cache") as ov, \
            OrtSegmenter(onnx_path) as ref:
        assert ov.classes == ref.classes and ov.palette == ref.palette and ov.preprocess == ref.preprocess
        assert (ov.min_batch, ov.max_batch) == (1, 1) and "f32" in ov.description
        for got, want in zip(ov.predict_batch(files), ref.predict_batch(files)):
            assert got.shape == want.shape and got.dtype == want.dtype
            assert np.mean(got == want) > 0.995
    assert any((tmp_path / "cache").iterdir())  # the compiled model was cached
    with pytest.raises(InputError, match="not found"):
        OpenVinoSegmenter(bare / "missing.onnx")
