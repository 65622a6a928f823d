"""``aspp-deploy predict``: masks equal a direct run of the same artifact (ONNX Runtime session +
``Preprocess.restore``, and the PyTorch runner ``eval`` uses), at each image's own size, palette PNGs,
areas that add up, overlays with a legend, contained and distinct output names, batching, and one
``error:`` line for bad input."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image
from typer.testing import CliRunner

from aspp_deploy.backends import registry
from aspp_deploy.backends.base import class_ids
from aspp_deploy.cli import app
from aspp_deploy.data.voc import load_image
from aspp_deploy.export.manifest import read_onnx_manifest
from aspp_deploy.export.onnx_export import ExportOptions, onnx_from_checkpoint
from aspp_deploy.predict import contained, output_stems, safe_stem
from aspp_deploy.runtime.images import overlay, palette_array
from aspp_deploy.spec import ModelSpec
from aspp_deploy.runtime.trt.runtime import tensorrt_installed

runner = CliRunner()
SIZES = [(37, 251), (300, 97), (9, 13), (128, 128), (200, 150)]  # (height, width): odd, tall, tiny, model-sized


@pytest.fixture(scope="module")
def tiny_onnx(tiny_checkpoint, tmp_path_factory) -> Path:
    return onnx_from_checkpoint(tiny_checkpoint, tmp_path_factory.mktemp("predict-art"), ExportOptions()).onnx_path


@pytest.fixture(scope="module")
def letterbox_ids_onnx(tiny_checkpoint, tmp_path_factory) -> Path:
    """Dynamic batch, class-id output (ArgMax in the graph), letterbox geometry."""
    return onnx_from_checkpoint(tiny_checkpoint, tmp_path_factory.mktemp("predict-art-lb"),
                                ExportOptions(dynamic=frozenset({"batch"}), argmax=True),
                                spec=ModelSpec(resize="letterbox")).onnx_path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(3)
    for i, (h, w) in enumerate(SIZES):
        y, x = np.mgrid[0:h, 0:w]
        rgb = np.stack([(x * 5 + i * 40) % 256, (y * 3) % 256, ((x + y) * 2) % 256], -1)
        rgb = np.clip(rgb + rng.integers(-20, 20, rgb.shape), 0, 255).astype(np.uint8)
        name = f"img{i}.png" if i % 2 == 0 else f"img{i}.JPG"
        Image.fromarray(rgb).save(folder / name, **({"quality": 95} if name.endswith("JPG") else {}))
    (folder / "notes.txt").write_text("not an image")
    return folder


def _direct_ort(onnx_path: Path, image_path: Path) -> np.ndarray:
    """The artifact run by hand: its manifest's preprocessing, a plain ORT session, argmax, restore."""
    manifest = read_onnx_manifest(onnx_path)
    pre = manifest.preprocess()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    image = load_image(image_path)
    out = session.run(None, {session.get_inputs()[0].name: pre(image)[None]})[0]
    ids = class_ids(out, out.dtype.kind in "iu")[0]
    return pre.restore(ids, image.size)


def _predict(*args: str):
    return runner.invoke(app, ["predict", *[str(a) for a in args]])


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg"))


@pytest.mark.parametrize("model_fixture", ["tiny_onnx", "letterbox_ids_onnx"])
def test_masks_equal_a_direct_onnxruntime_run(request, model_fixture, images, tmp_path):
    onnx_path = request.getfixturevalue(model_fixture)
    out, report = tmp_path / "pred", tmp_path / "pred.json"
    r = _predict(images, "--model", onnx_path, "--out", out, "--json", report)
    assert r.exit_code == 0, r.output
    assert "skipped 1 file(s) that are not images (.txt" in r.output
    summary = json.loads(report.read_text())
    assert summary["backend"] == "onnxruntime" and summary["count"] == len(SIZES) and summary["failed"] == []
    palette = read_onnx_manifest(onnx_path).palette
    for path in _image_files(images):
        mask_file = out / f"{path.stem}.mask.png"
        mask = Image.open(mask_file)
        assert mask.mode == "P" and mask.size == Image.open(path).size
        assert mask.getpalette()[:3 * len(palette)] == palette_array(palette)[:len(palette)].reshape(-1).tolist()
        expected = _direct_ort(onnx_path, path)
        assert np.array_equal(np.asarray(mask), expected), path.name
    assert not (out / "notes.mask.png").exists()


def test_areas_add_up_to_the_pixel_count(tiny_onnx, images, tmp_path):
    out, report = tmp_path / "pred", tmp_path / "areas.json"
    r = _predict(images, "--model", tiny_onnx, "--out", out, "--json", report)
    assert r.exit_code == 0, r.output
    summary = json.loads(report.read_text())
    classes = read_onnx_manifest(tiny_onnx).classes
    for record in summary["images"]:
        w, h = record["size"]
        mask = np.asarray(Image.open(record["mask"]))
        assert mask.shape == (h, w)
        areas = record["areas"]
        assert list(areas) == classes  # every class, in class-id order
        assert sum(a["pixels"] for a in areas.values()) == w * h
        assert abs(sum(a["fraction"] for a in areas.values()) - 1.0) < 1e-4
        counts = np.bincount(mask.ravel(), minlength=len(classes))
        assert [areas[c]["pixels"] for c in classes] == counts.tolist()
    assert "classes found" in r.output and "ms per image" in r.output


def test_torch_backend_equals_the_eval_runner(tiny_checkpoint, tiny_onnx, images, tmp_path):
    """``--checkpoint`` runs PyTorch like ``aspp-deploy eval --backend torch``, and agrees with its ONNX."""
    from aspp_deploy.cli._model_opts import ModelSourceOptions, ModelSpecOptions
    from aspp_deploy.cli.eval_cmd import EvalBackend, _open_runner

    out = tmp_path / "pred"
    r = _predict(images, "--checkpoint", tiny_checkpoint, "--out", out, "--batch", "2")
    assert r.exit_code == 0, r.output
    assert "torch fp32 on cpu" in r.output and "batch 2" in r.output
    torch_runner, pre, _ = _open_runner(EvalBackend.torch, ModelSourceOptions(tiny_checkpoint),
                                        ModelSpecOptions().build(), None, "cpu", 0)
    agree = []
    for path in _image_files(images):
        image = load_image(path)
        ids = class_ids(torch_runner.infer(pre(image)[None]), torch_runner.info.outputs_class_ids)[0]
        mask = np.asarray(Image.open(out / f"{path.stem}.mask.png"))
        assert np.array_equal(mask, pre.restore(ids, image.size)), path.name
        agree.append(np.mean(mask == _direct_ort(tiny_onnx, path)))
    assert min(agree) > 0.99


def test_batches_of_a_dynamic_model_and_padding_of_a_static_one(letterbox_ids_onnx, tiny_checkpoint, images,
                                                                 tmp_path, monkeypatch):
    from aspp_deploy.backends.onnxruntime_backend import OrtRunner

    seen: list[int] = []
    infer = OrtRunner.infer

    def spy(self, batch):
        seen.append(batch.shape[0])
        return infer(self, batch)

    monkeypatch.setattr(OrtRunner, "infer", spy)
    r = _predict(images, "--model", letterbox_ids_onnx, "--out", tmp_path / "b3", "--batch", "3")
    assert r.exit_code == 0, r.output
    assert seen == [3, 2]
    seen.clear()
    r = _predict(images, "--model", letterbox_ids_onnx, "--out", tmp_path / "b1", "--batch", "1")
    assert r.exit_code == 0 and seen == [1] * len(SIZES)
    for path in _image_files(images):
        a = np.asarray(Image.open(tmp_path / "b3" / f"{path.stem}.mask.png"))
        b = np.asarray(Image.open(tmp_path / "b1" / f"{path.stem}.mask.png"))
        assert np.array_equal(a, b), path.name

    static2 = onnx_from_checkpoint(tiny_checkpoint, tmp_path / "art2", ExportOptions(batch=2)).onnx_path
    seen.clear()
    r = _predict(images, "--model", static2, "--out", tmp_path / "s2")
    assert r.exit_code == 0, r.output
    assert seen == [2, 2, 2]  # 5 images: the last batch is padded to the static batch
    assert len(list((tmp_path / "s2").glob("*.mask.png"))) == len(SIZES)
    r = _predict(images, "--model", static2, "--out", tmp_path / "s3", "--batch", "3")
    assert r.exit_code == 1 and "static batch of 2" in r.output and "Traceback" not in r.output


def test_overlay_has_a_legend_of_the_classes_present(tiny_onnx, images, tmp_path):
    out = tmp_path / "pred"
    r = _predict(images, "--model", tiny_onnx, "--out", out, "--overlay", "--alpha", "0.6")
    assert r.exit_code == 0, r.output
    manifest = read_onnx_manifest(tiny_onnx)
    table = palette_array(manifest.palette)
    for path in _image_files(images):
        original = load_image(path)
        mask = np.asarray(Image.open(out / f"{path.stem}.mask.png"))
        ov = Image.open(out / f"{path.stem}.overlay.png").convert("RGB")
        assert ov.width > original.width and ov.height >= original.height
        pixels = np.asarray(ov)
        # the image part is exactly the blended overlay
        expected = np.asarray(overlay(original, mask, manifest.palette, 0.6))
        assert np.array_equal(pixels[:original.height, :original.width], expected)
        # the legend holds a swatch of each tinted class present, and no colour of an absent class
        legend = pixels[:, original.width:].reshape(-1, 3)
        colours = {tuple(c) for c in np.unique(legend, axis=0).tolist()}
        present = set(np.unique(mask).tolist())
        for cid in range(1, len(manifest.classes)):
            assert (tuple(table[cid].tolist()) in colours) == (cid in present), (path.name, cid)


def test_output_names_stay_inside_out_and_never_collide(tiny_onnx, images, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    src = next(p for p in _image_files(images) if p.suffix == ".png")
    for folder in (a, b):
        (folder / "same.png").write_bytes(src.read_bytes())
    Image.open(src).save(a / "same.bmp")  # same stem, another extension
    (a / "..png").write_bytes(src.read_bytes())       # stem "." would name the folder itself
    (a / "..hidden.png").write_bytes(src.read_bytes())
    (a / "x\\..\\..\\escape.png").write_bytes(src.read_bytes())  # backslashes are plain characters here
    out, report = tmp_path / "out", tmp_path / "r.json"
    # hidden files (macOS ._* debris) are passed over in a folder, but kept when named
    r = _predict(a, b / "same.png", a / "..png", a / "..hidden.png", "--model", tiny_onnx, "--out", out,
                 "--json", report)
    assert r.exit_code == 0, r.output
    summary = json.loads(report.read_text())
    masks = [Path(rec["mask"]) for rec in summary["images"]]
    assert len(masks) == len(set(masks)) == 6
    for mask in masks:
        assert mask.parent == out and mask.is_file() and not mask.name.startswith(".")
    assert {m.name for m in masks} == {"same.mask.png", "same-2.mask.png", "same-3.mask.png", "image.mask.png",
                                       "hidden.mask.png", "x_.._.._escape.mask.png"}
    assert not list(tmp_path.glob("escape*")) and sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "out", "r.json"]


def test_name_helpers():
    assert output_stems([Path("../../etc/passwd.png")]) == ["passwd"]
    assert output_stems([Path("/abs/..png")]) == ["image"]
    assert safe_stem(Path("a\x00b:c.jpg").stem) == "a_b_c"
    assert output_stems([Path("x/A.png"), Path("y/a.png"), Path("a-2.png")]) == ["A", "a-2", "a-2-2"]
    out = Path("/tmp/somewhere")
    assert contained(out, "ok.mask.png") == out / "ok.mask.png"
    for bad in ("../x.png", "/etc/x.png", "a/b.png"):
        with pytest.raises(Exception, match="would leave"):
            contained(out, bad)


def test_a_corrupt_or_missing_image_is_skipped_and_the_exit_code_says_so(tiny_onnx, images, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = _image_files(images)[:2]
    for p in good:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    out, report = tmp_path / "out", tmp_path / "r.json"
    r = _predict(folder, tmp_path / "missing.png", "--model", tiny_onnx, "--out", out, "--json", report)
    assert r.exit_code == 1 and "Traceback" not in r.output
    warnings = [line for line in r.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2 and any("broken.jpg" in w for w in warnings) and any("missing.png" in w for w in warnings)
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "2 of 4 image(s) could not be read" in errors[0]
    summary = json.loads(report.read_text())
    assert summary["count"] == 2 and {Path(f["input"]).name for f in summary["failed"]} == {"broken.jpg", "missing.png"}
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{p.stem}.mask.png" for p in good)


def test_a_backend_added_to_the_registry_is_usable(tiny_onnx, images, tmp_path, monkeypatch):
    """Backends are data in the registry: a new record (here ONNX Runtime under another name) works unchanged."""
    base = registry.REGISTRY["onnxruntime"]
    opened = []

    def open_newrt(model, precision, device, threads, pipelined):
        opened.append(model)
        return base.open(model, precision, device, threads, pipelined)

    monkeypatch.setitem(registry.REGISTRY, "newrt", dataclasses.replace(base, name="newrt", open=open_newrt))
    monkeypatch.setattr(registry, "BACKENDS", tuple(registry.REGISTRY))
    monkeypatch.setitem(registry.SUFFIXES, "newrt", base.suffixes)
    out = tmp_path / "new"
    r = _predict(images, "--model", tiny_onnx, "--backend", "newrt", "--out", out)
    assert r.exit_code == 0, r.output
    assert opened == [tiny_onnx] and len(list(out.glob("*.mask.png"))) == len(SIZES)


@pytest.mark.skipif(tensorrt_installed(), reason="checks the message given where TensorRT is not installed")
def test_trt_without_tensorrt_says_so(images, tmp_path):
    (tmp_path / "m.engine").write_bytes(b"an engine")  # a missing file is named first (test_missing_files)
    r = _predict(images, "--backend", "trt", "--model", tmp_path / "m.engine", "--out", tmp_path / "out")
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "error: TensorRT is not installed" in r.output


@pytest.mark.parametrize("args,message", [
    (["IMAGES"], "give --model ARTIFACT"),
    (["IMAGES", "--backend", "onnxruntime"], "--backend onnxruntime needs --model"),
    (["IMAGES", "--backend", "onnxruntime", "--model", "model.pt"], "is not a onnxruntime model"),
    (["IMAGES", "--model", "model.xyz"], "cannot tell which backend runs model.xyz"),
    (["IMAGES", "--backend", "tflite", "--model", "m.onnx"], "unknown backend 'tflite'"),
    (["IMAGES", "--model", "ONNX", "--checkpoint", "c.pt"], "use --backend torch"),
    (["IMAGES", "--model", "missing.onnx"], "missing.onnx"),
    (["--model", "ONNX"], "no images given"),
    (["EMPTY", "--model", "ONNX"], "has no images"),
    (["IMAGES", "--model", "ONNX", "--alpha", "2"], "--alpha must be in [0, 1]"),
    (["IMAGES", "--model", "ONNX", "--classes", "a,b"], "manifest already records its spec"),
])
def test_bad_input_is_one_error_line(args, message, tiny_onnx, images, tmp_path):
    (tmp_path / "empty").mkdir()
    subst = {"IMAGES": str(images), "ONNX": str(tiny_onnx), "EMPTY": str(tmp_path / "empty")}
    r = _predict(*[subst.get(a, a) for a in args], "--out", tmp_path / "out")
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in r.output, r.output
