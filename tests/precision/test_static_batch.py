"""A model exported with a static batch above 1 is calibrated and measured at its own batch: the last,
partial batch is padded and the padding's outputs dropped, so the figures are those of the same model
exported with batch 1."""

from __future__ import annotations

import onnx
import pytest

from aspp_deploy.export.onnx_export import ExportOptions, onnx_from_checkpoint
from aspp_deploy.precision.quantize import QuantizeOptions, quantized_onnx_from_fp32

SIZE = 64


@pytest.mark.parametrize("images", [3, 0])  # a partial batch of 4; the tiny split's 4 val images, one whole batch
def test_a_static_batch_of_4_is_quantized_and_measured_at_its_batch(tiny_checkpoint, tiny_data, calib_dir,
                                                                      tmp_path, images):
    figures = {}
    for batch in (1, 4):
        fp32 = onnx_from_checkpoint(tiny_checkpoint, tmp_path / f"b{batch}", ExportOptions(SIZE, SIZE, batch=batch)).onnx_path
        result = quantized_onnx_from_fp32(fp32, QuantizeOptions(
            "int8", "cpu", calib_dir, calib_size=8, data=tiny_data, budget_images=3, eval_images=images,
            method="minmax"))
        dims = [d.dim_value for d in onnx.load(str(result.onnx_path)).graph.input[0].type.tensor_type.shape.dim]
        assert dims[0] == batch
        figures[batch] = result.entry["accuracy"]
    assert figures[4]["num_images"] == figures[1]["num_images"] == (images or 4)
    for key in ("miou_fp32", "miou", "pixel_agreement"):
        assert figures[4][key] == pytest.approx(figures[1][key], abs=1e-3), key
