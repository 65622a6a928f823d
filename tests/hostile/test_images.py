"""Hostile images and masks: decompression bombs, truncated files, 16-bit PNGs, masks of another
size than their images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from aspp_deploy.data.voc import load_image
from tests.hostile.conftest import cli, listing, refused


def _first_val(data):
    return (data / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[0]


def test_a_16bit_greyscale_image_is_scaled_not_clipped(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (8, 1))
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    rgb = np.asarray(load_image(tmp_path / "deep.png"))
    assert rgb.shape == (8, 256, 3)
    grey = rgb[0, :, 0].astype(int)
    assert grey[0] == 0 and grey[-1] == 255
    assert np.all(np.diff(grey) >= 0) and len(np.unique(grey)) > 200  # a ramp, not 99% white
    assert (grey == 255).mean() < 0.01


def test_a_decompression_bomb_is_one_line(tmp_path, artifacts, tiny_data):
    calib = tmp_path / "calib"
    calib.mkdir()
    Image.new("1", (20000, 20000)).save(calib / "bomb.png")  # 400 Mpixels, 50 kB on disk
    before = listing(artifacts)
    refused(cli("quantize", "--model", artifacts / "model.onnx", "--precision", "int8", "--target", "cpu",
                "--calib", calib, "--data", tiny_data), "too large to decode safely")
    assert listing(artifacts) == before


@pytest.mark.parametrize("damage", ["mask of another size", "16-bit mask", "truncated image", "mask not a PNG"])
@pytest.mark.parametrize("command", ["eval", "compare"])
def test_damaged_validation_pairs_are_refused(command, damage, data_copy, tiny_checkpoint, tmp_path):
    name = _first_val(data_copy)
    mask = data_copy / "SegmentationClass" / f"{name}.png"
    image = data_copy / "JPEGImages" / f"{name}.jpg"
    if damage == "mask of another size":
        Image.fromarray(np.zeros((10, 12), np.uint8)).save(mask)
        fragment = "masks must have their image's size"
    elif damage == "16-bit mask":
        Image.fromarray(np.asarray(Image.open(mask)).astype(np.uint16) * 300).save(mask)
        fragment = "mode I;16"
    elif damage == "truncated image":
        image.write_bytes(image.read_bytes()[:300])
        fragment = "cannot read image"
    else:
        mask.write_bytes(b"not a png")
        fragment = "cannot read mask"
    args = {"eval": ["eval", "--checkpoint", tiny_checkpoint, "--data", data_copy],
            "compare": ["compare", "--checkpoint", tiny_checkpoint, "--data", data_copy, "--artifacts",
                        tmp_path / "a", "--report", tmp_path / "r", "--iters", 1, "--warmup", 0,
                        "--height", 64, "--width", 64]}[command]
    refused(cli(*args), fragment)
    assert not (tmp_path / "r").exists()
