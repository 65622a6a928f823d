"""``aspp-deploy build`` on a machine without TensorRT, and its plain-Python helpers."""

from __future__ import annotations

import onnx
import pytest
from typer.testing import CliRunner

from aspp_deploy.cli import app
from aspp_deploy.cli.build_cmd import lint_version, parse_shape
from aspp_deploy.export.onnx_kind import onnx_kind
from aspp_deploy.errors import InputError
from aspp_deploy.export.graph import load_onnx
from aspp_deploy.export.trt_check import TRT_VERSIONS
from aspp_deploy.runtime.trt.runtime import tensorrt_installed

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_onnx(tiny_checkpoint, tmp_path_factory):
    from aspp_deploy.export.onnx_export import ExportOptions, onnx_from_checkpoint

    return onnx_from_checkpoint(tiny_checkpoint, tmp_path_factory.mktemp("art"), ExportOptions(64, 64)).onnx_path


@pytest.mark.skipif(tensorrt_installed(), reason="TensorRT is installed here")
def test_build_without_tensorrt_is_one_line_naming_what_to_install(tiny_onnx, tmp_path):
    engine = tmp_path / "m.engine"
    r = runner.invoke(app, ["build", "--onnx", str(tiny_onnx), "--precision", "fp16", "--out", str(engine)])
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 1 and len(lines) == 1, r.output
    assert "TensorRT is not installed" in lines[0] and "pip install" in lines[0]
    assert not engine.exists() and list(tmp_path.iterdir()) == []


def test_build_missing_onnx(tmp_path):
    r = runner.invoke(app, ["build", "--onnx", str(tmp_path / "nope.onnx")])
    assert r.exit_code == 1 and "ONNX model not found" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("installed, profile", [((8, 5), "8.5"), ((8, 6), "8.6"), ((10, 3), "10.3"),
                                                ((10, 13), "10.x"), ((10, 0), "10.3"), ((11, 2), "11")])
def test_lint_profile_for_the_installed_version(installed, profile):
    assert lint_version(installed) == profile and profile in TRT_VERSIONS


def test_onnx_kind(tiny_onnx, tmp_path):
    assert onnx_kind(load_onnx(tiny_onnx)) == "fp32"
    from onnxconverter_common import float16

    half = float16.convert_float_to_float16(onnx.load(str(tiny_onnx)), keep_io_types=True)
    onnx.save(half, str(tmp_path / "h.onnx"))
    assert onnx_kind(load_onnx(tmp_path / "h.onnx")) == "fp16"
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all \x00\xff")
    with pytest.raises(InputError, match="not a readable ONNX"):
        onnx_kind(load_onnx(bad))


def test_parse_shape():
    assert parse_shape("1x3x512x512") == [1, 3, 512, 512]
    for bad in ("1x3x512", "1x3xAx512", "0x3x512x512"):
        with pytest.raises(InputError):
            parse_shape(bad)
