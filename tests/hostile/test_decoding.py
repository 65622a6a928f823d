"""One image decoder for every reader (issue 21): a file declaring a huge size is refused before a pixel
is decoded, EXIF orientation is applied (masks at the displayed size and orientation), the Triton
service and ``predict`` decode 16-bit, float, palette, alpha and CMYK images alike; all-ignore masks
and OpenVINO's multi-line errors each give one clear line."""

from __future__ import annotations

import importlib
import io
import resource
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from aspp_deploy.data.voc import load_image
from aspp_deploy.errors import InputError
from tests.hostile.conftest import cli, refused

ORIENTATION = 0x0112


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def test_a_tiny_png_declaring_121_mpx_is_refused_before_decoding(tmp_path, artifacts, monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    bomb = photos / "huge.png"
    Image.new("1", (11000, 11000)).save(bomb)  # 121 Mpx declared, ~15 kB on disk
    assert bomb.stat().st_size < 50_000
    decoded = []
    real_load = ImageFile.ImageFile.load

    def load(self):  # a decoder that touches the pixels of the bomb fails the test at once, cheaply
        if self.size[0] * self.size[1] > 50_000_000:
            decoded.append(self.size)
            raise AssertionError(f"decoded a {self.size} image")
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    before, start = _maxrss_mb(), time.monotonic()
    result = cli("predict", photos, "--model", artifacts / "model.onnx", "--out", tmp_path / "out")
    elapsed, grown = time.monotonic() - start, _maxrss_mb() - before
    refused(result, "1 of 1 image(s) could not be read (huge.png)")
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, result.output
    assert "huge.png" in warnings[0] and "11000x11000 = 121000000 pixels" in warnings[0], warnings[0]
    assert "too large to decode safely" in warnings[0], warnings[0]
    assert decoded == []
    assert elapsed < 30 and grown < 300, (elapsed, grown)  # no 121 Mpx buffer (the bug used 6.7 GB)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.png"))


def test_exif_orientation_6_gives_the_mask_of_the_displayed_image(tmp_path, artifacts):
    photos = tmp_path / "photos"
    photos.mkdir()
    y, x = np.mgrid[0:40, 0:64]
    stored = np.stack([(x * 4) % 256, (y * 6) % 256, np.where(x < 20, 220, 30)], -1).astype(np.uint8)
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # "rotate 90 clockwise to display", as a phone held upright writes it
    Image.fromarray(stored).save(photos / "camera.jpg", quality=95, exif=exif.tobytes())
    with Image.open(photos / "camera.jpg") as im:  # the JPEG's own pixels, turned by hand
        pixels = np.asarray(im.convert("RGB"))
    shown = np.ascontiguousarray(np.rot90(pixels, k=-1))  # 90 degrees clockwise: 64 high, 40 wide
    Image.fromarray(shown).save(photos / "turned.png")
    out = tmp_path / "out"
    result = cli("predict", photos, "--model", artifacts / "model.onnx", "--out", out, "--overlay")
    assert result.exit_code == 0, result.output
    camera = np.asarray(Image.open(out / "camera.mask.png"))
    turned = np.asarray(Image.open(out / "turned.mask.png"))
    assert camera.shape == turned.shape == (64, 40)  # the displayed size, not the stored 40 x 64
    assert np.array_equal(camera, turned)
    assert np.array_equal(np.asarray(Image.open(out / "camera.overlay.png")),
                          np.asarray(Image.open(out / "turned.overlay.png")))


@pytest.fixture
def service_decode(monkeypatch):
    """The Triton model's ``decode``, imported outside Triton (its backend utilities stubbed)."""
    stub = types.ModuleType("triton_python_backend_utils")
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", stub)
    monkeypatch.delitem(sys.modules, "aspp_deploy.serve.triton_model", raising=False)
    module = importlib.import_module("aspp_deploy.serve.triton_model")
    yield module.decode, module.RequestError
    sys.modules.pop("aspp_deploy.serve.triton_model", None)


def _encoded(array_or_image, fmt: str, **save) -> bytes:
    im = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **save)
    return buf.getvalue()


def _cases() -> dict:
    rng = np.random.default_rng(5)
    ramp = np.tile(np.linspace(0, 65535, 300).astype(np.uint16), (7, 1))
    ramp[3] = rng.integers(0, 65536, 300, dtype=np.uint16)
    rgba = rng.integers(0, 256, (9, 11, 4), dtype=np.uint8)
    palette = Image.fromarray(rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)).convert("P")
    exif = Image.Exif()
    exif[ORIENTATION] = 8
    return {
        "16-bit grey PNG": (_encoded(ramp, "PNG"), (ramp >> 8).astype(np.uint8)),
        "16-bit grey TIFF": (_encoded(ramp, "TIFF"), (ramp >> 8).astype(np.uint8)),
        "palette PNG with transparency": (_encoded(palette, "PNG", transparency=0), None),
        "LA PNG": (_encoded(Image.fromarray(rgba[..., :2].copy(), "LA"), "PNG"), None),
        "RGBA PNG": (_encoded(rgba, "PNG"), None),
        "CMYK JPEG": (_encoded(Image.fromarray(rgba, "CMYK"), "JPEG", quality=95), None),
        "1-bit PNG": (_encoded(Image.fromarray(rgba[..., 0] > 127), "PNG"), None),
        "JPEG with EXIF orientation 8": (_encoded(rgba[..., :3].copy(), "JPEG", exif=exif.tobytes()), None),
    }


def test_the_service_and_predict_decode_every_kind_of_image_alike(tmp_path, service_decode):
    decode, _ = service_decode
    for name, (data, grey) in _cases().items():
        path = tmp_path / (name.replace(" ", "_") + "." + ("tif" if "TIFF" in name else "img"))
        path.write_bytes(data)
        served = np.asarray(decode(data, 10**7))
        predicted = np.asarray(load_image(path))
        assert served.dtype == predicted.dtype == np.uint8 and served.ndim == 3 and served.shape[2] == 3, name
        assert np.array_equal(served, predicted), f"{name}: {(served != predicted).mean():.1%} of values differ"
        if grey is not None:  # 16-bit: the high byte, v >> 8, on every channel
            assert np.array_equal(predicted, np.repeat(grey[..., None], 3, axis=2)), name
    turned = np.asarray(load_image(tmp_path / "JPEG_with_EXIF_orientation_8.img"))
    assert turned.shape == (11, 9, 3)  # orientation 8 is a quarter turn: displayed 9 wide, 11 high


def test_a_float_tiff_is_refused_by_the_service_and_predict_alike(tmp_path, service_decode):
    decode, request_error = service_decode
    data = _encoded(np.linspace(0, 1, 60, dtype=np.float32).reshape(6, 10), "TIFF")
    path = tmp_path / "float.tif"
    path.write_bytes(data)
    with pytest.raises(InputError) as by_predict:
        load_image(path)
    with pytest.raises(request_error) as by_service:
        decode(data, 10**7)
    line = str(by_predict.value)
    assert line.startswith(f"cannot read image {path}: ") and "floating-point" in line and "\n" not in line
    reason = line[len(f"cannot read image {path}: "):]
    assert str(by_service.value).endswith(reason), (str(by_service.value), reason)


def test_masks_that_ignore_every_pixel_are_an_error_not_a_nan(data_copy, tiny_checkpoint):
    for mask in (data_copy / "SegmentationClass").glob("*.png"):
        with Image.open(mask) as im:
            size, mode, pal = im.size, im.mode, im.getpalette()
        blank = Image.new(mode, size, 255)
        if pal is not None:
            blank.putpalette(pal)
        blank.save(mask)
    result = cli("eval", "--checkpoint", tiny_checkpoint, "--data", data_copy)
    line = refused(result, "no labelled pixel was measured")
    assert "255 (ignore)" in line and "nan" not in result.output.lower(), result.output


def _unconvertible_onnx(path: Path) -> Path:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 8, 8])
    graph = helper.make_graph([helper.make_node("FooBar", ["image"], ["logits"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize("which", ["backend", "runtime"])
def test_openvino_errors_say_what_is_wrong_not_where_in_openvino(which, tmp_path):
    pytest.importorskip("openvino")
    model = _unconvertible_onnx(tmp_path / "foobar.onnx")
    with pytest.raises(InputError) as caught:
        if which == "backend":
            from aspp_deploy.backends.openvino_backend import OpenVinoRunner

            OpenVinoRunner(model, cache_dir=tmp_path / "cache")
        else:
            from aspp_deploy.runtime.ov_segmenter import OpenVinoSegmenter

            OpenVinoSegmenter(model)
    message = str(caught.value)
    assert "\n" not in message and ".cpp:" not in message, message
    assert str(model) in message and "FooBar" in message, message
