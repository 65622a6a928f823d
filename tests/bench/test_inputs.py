"""What ``bench`` feeds an artifact (``aspp_deploy.bench.inputs``): the size and batch it takes, read
from its manifest, sizes a static model cannot take refused, and its precision as the manifest says."""

from __future__ import annotations

import pytest

from aspp_deploy.bench.inputs import artifact_precision, input_geometry
from aspp_deploy.errors import InputError
from aspp_deploy.export.manifest import read_onnx_manifest
from tests.conftest import EXPORT_SIZE


def test_the_model_size_unless_another_is_asked_for(exported):
    pre, batch = input_geometry("onnxruntime", exported, 1, 0, 0)
    assert (pre.height, pre.width, batch) == (EXPORT_SIZE, EXPORT_SIZE, 1)
    assert pre.to_dict() == read_onnx_manifest(exported).preprocess().to_dict()


@pytest.mark.parametrize("batch,height,width,message", [
    (2, 0, 0, "static batch of 1; 2 asked for"),
    (1, EXPORT_SIZE // 2, 0, f"static height of {EXPORT_SIZE}; {EXPORT_SIZE // 2} asked for"),
    (1, 0, EXPORT_SIZE * 2, f"static width of {EXPORT_SIZE}; {EXPORT_SIZE * 2} asked for"),
])
def test_sizes_a_static_model_cannot_take_are_refused(exported, batch, height, width, message):
    with pytest.raises(InputError, match=message):
        input_geometry("onnxruntime", exported, batch, height, width)


def test_an_artifact_backend_needs_a_model():
    with pytest.raises(InputError, match="--backend openvino needs --model"):
        input_geometry("openvino", None, 1, 0, 0)


def test_precision_from_the_manifest(exported):
    assert artifact_precision("onnxruntime", exported) == read_onnx_manifest(exported).entry["precision"] == "fp32"
    assert artifact_precision("torch", None) == "fp32"
