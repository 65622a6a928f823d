"""A fused-I/O model served by a real Triton Inference Server: the segmentation service feeds the network
uint8 pixels and reads uint8 class ids, in-process on ONNX Runtime and through business-logic scripting
into a network model whose config declares TYPE_UINT8 input and output; its masks are the unfused
model's."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from aspp_deploy.runtime.segmenter import Segmenter
from tests.serve.conftest import run_cli, start_server, write_repo
from tests.serve.test_triton_serve import NETWORK_MODEL_PY, _client, _config, _image_request, _raw_request

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def fused_served(tmp_path_factory, tiny_checkpoint, served_model):
    """The served model's twin with fused I/O (same checkpoint, size and dynamic batch)."""
    root = tmp_path_factory.mktemp("serve-fused")
    result = run_cli("export", "--checkpoint", tiny_checkpoint, "--out", root, "--dynamic", "batch", "--fused-io")
    assert result.exit_code == 0, result.output
    return root / "model.onnx"


def _masks_equal_the_unfused_ones(server, model: str, served_model) -> None:
    grpc, client = _client(server)
    with Segmenter(served_model.onnx) as plain:
        for path in sorted(served_model.images.iterdir()):
            expected = plain.predict(path)
            got = client.infer(model, _image_request(grpc, path.read_bytes())).as_numpy("MASK")
            assert got.dtype == np.uint8 and np.array_equal(got[0], expected), path.name
            rgb = np.asarray(Image.open(path).convert("RGB"))[None]
            assert np.array_equal(client.infer(model, _raw_request(grpc, rgb)).as_numpy("MASK")[0], expected)
    client.close()


@pytest.mark.parametrize("executor", ["onnxruntime", "triton"])
def test_the_service_serves_a_fused_model(tmp_path, fused_served, served_model, triton_env, triton_binary, executor):
    extra = ["--executor", "triton", "--target", "onnx"] if executor == "triton" else []
    repo = write_repo(tmp_path / "repo", SimpleNamespace(onnx=fused_served), triton_env, *extra)
    service = json.loads((repo / "aspp" / "1" / "service.json").read_text())
    assert service["input"] == "pixels" and service["manifest"]["preprocess"]["fused_io"] is True
    if executor == "triton":
        network = (repo / "aspp_onnx" / "config.pbtxt").read_text()
        assert "data_type: TYPE_UINT8\n    dims: [ -1, 128, 128, 3 ]" in network
        assert "data_type: TYPE_UINT8\n    dims: [ -1, 128, 128 ]" in network and "TYPE_FP32" not in network
        # nvidia-pytriton's server has no ONNX Runtime backend: a Python model runs the same file in its place
        # (as in test_triton_serve), so the uint8 tensors really cross Triton between the two models
        config = network.replace('backend: "onnxruntime"', 'backend: "python"').replace(
            'default_model_filename: "model.onnx"\n', "")
        config += f'parameters: {{ key: "EXECUTION_ENV_PATH" value: {{ string_value: "{triton_env}" }} }}\n'
        (repo / "aspp_onnx" / "config.pbtxt").write_text(config)
        (repo / "aspp_onnx" / "1" / "model.py").write_text(NETWORK_MODEL_PY)
    server = start_server(repo, triton_binary)
    try:
        assert server.models_ready == (["aspp", "aspp_onnx"] if executor == "triton" else ["aspp"])
        if executor == "triton":
            loaded = _config(server, "aspp_onnx")  # what Triton itself loaded
            assert [i["data_type"] for i in loaded["input"]] == ["TYPE_UINT8"]
            assert [o["data_type"] for o in loaded["output"]] == ["TYPE_UINT8"]
        _masks_equal_the_unfused_ones(server, "aspp", served_model)
    finally:
        server.stop()
