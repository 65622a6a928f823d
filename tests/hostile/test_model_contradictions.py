"""A model that contradicts its manifest, or is not a segmentation model: one clear error, not ONNX
Runtime's InvalidArgument or an IndexError deep in post-processing."""

from __future__ import annotations

import numpy as np
import pytest

from aspp_deploy.backends.base import class_ids
from aspp_deploy.backends.onnxruntime_backend import OrtRunner
from aspp_deploy.errors import InputError


def _classifier(path):
    """x (1x3x8x8) -> global average pool -> flatten: a (1, 3) output, like an image classifier."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Flatten", ["p"], ["y"])], "cls",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_an_input_the_graph_does_not_take_is_one_clear_error(tmp_path):
    runner = OrtRunner(_classifier(tmp_path / "m.onnx"))
    assert runner.infer(np.zeros((1, 3, 8, 8), np.float32)).shape == (1, 3)
    with pytest.raises(InputError, match=r"takes input \[1, 3, 8, 8\], was given \[1, 3, 16, 16\]"):
        runner.infer(np.zeros((1, 3, 16, 16), np.float32))


@pytest.mark.parametrize("shape, ids", [((1, 3), False), ((1, 3, 4), False), ((1, 5), True), ((2,), True)])
def test_an_output_that_is_not_a_segmentation_map_is_refused(shape, ids):
    with pytest.raises(InputError, match="segmentation model outputs"):
        class_ids(np.zeros(shape, np.float32), ids)


def test_segmentation_outputs_still_pass():
    assert class_ids(np.zeros((2, 4, 5, 6), np.float32), False).shape == (2, 5, 6)
    assert class_ids(np.zeros((2, 5, 6), np.int64), True).shape == (2, 5, 6)
    assert class_ids(np.zeros((2, 1, 5, 6), np.int64), True).shape == (2, 5, 6)
