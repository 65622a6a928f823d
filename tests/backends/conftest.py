"""Fixtures for the backend tests: the tiny checkpoint exported at 64x64 and its cpu-target INT8."""

from __future__ import annotations

from pathlib import Path

import pytest

from aspp_deploy.data.synthetic import SynthConfig, write_calibration_folder
from tests.conftest import copy_model

SIZE = 64


@pytest.fixture(scope="session")
def exported_64(tmp_path_factory, tiny_checkpoint) -> Path:
    from aspp_deploy.export.onnx_export import ExportOptions, onnx_from_checkpoint

    out = tmp_path_factory.mktemp("exported64")
    return onnx_from_checkpoint(tiny_checkpoint, out, ExportOptions(SIZE, SIZE)).onnx_path


@pytest.fixture(scope="session")
def int8_cpu_64(tmp_path_factory, exported_64, tiny_data) -> Path:
    """The cpu-target INT8 (Q/DQ) ONNX of ``exported_64``, in a folder of its own."""
    from aspp_deploy.precision.quantize import QuantizeOptions, quantized_onnx_from_fp32

    folder = tmp_path_factory.mktemp("int8cpu64")
    copy_model(exported_64, folder)
    calib = write_calibration_folder(tmp_path_factory.mktemp("calib64"), 4, cfg=SynthConfig(size=96))
    r = quantized_onnx_from_fp32(folder / exported_64.name,
                                 QuantizeOptions("int8", "cpu", calib, data=tiny_data, budget_images=0, eval_images=2))
    return r.onnx_path
