"""The dynamic batcher really batches, and a repository moves and keeps versions (real tritonserver).

One repository, written in a project folder with its Python environment given by a relative path and
two versions (two different networks) under ``--version-policy all``, then moved to another folder
before the server starts: it loads, both versions answer with their own network's masks, and N
requests the batcher gathers run as ONE network run of N images (the service's counters and Triton's
own on the metrics port)."""

from __future__ import annotations

import concurrent.futures as cf
import os
import re
import shutil
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.serve.conftest import run_cli, start_server

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
GATHER = 5  # requests sent at once; the batcher waits (up to 2 s) for exactly this many


@pytest.fixture(scope="module")
def moved(tmp_path_factory, served_model, triton_env, triton_binary):
    from tests.conftest import make_checkpoint

    project = tmp_path_factory.mktemp("project")
    other = project / "other"
    result = run_cli("export", "--checkpoint", make_checkpoint(project / "seed7.pt", seed=7), "--out", other,
                     "--dynamic", "batch")
    assert result.exit_code == 0, result.output
    (project / "env").symlink_to(triton_env)  # the environment beside the repository, as a deployment has it
    cwd = os.getcwd()
    os.chdir(project)
    try:
        for version, onnx in ((1, served_model.onnx), (2, other / "model.onnx")):
            result = run_cli("triton", "repo", "--onnx", onnx, "--python-env", "env", "--version", version,
                             "--version-policy", "all", "--threads", "1", "--preferred-batch", GATHER,
                             "--queue-delay-us", 2_000_000, "--raw-twin")
            assert result.exit_code == 0, result.output
    finally:
        os.chdir(cwd)
    target = tmp_path_factory.mktemp("elsewhere") / "deployed"
    shutil.move(str(project), str(target))
    server = start_server(target / "repo", triton_binary)
    yield server, {1: served_model.onnx, 2: target / "other" / "model.onnx"}
    server.stop()


def _metrics(server) -> str:
    with urllib.request.urlopen(f"http://{server.metrics_url.split('://')[-1]}", timeout=10) as r:
        return r.read().decode()


def _value(text: str, name: str, version: int) -> float:
    m = re.search(rf'^{name}{{model="aspp",version="{version}"}} (\S+)$', text, re.M)
    assert m, f"{name} for version {version} not on the metrics port"
    return float(m.group(1))


def _infer(server, image: bytes, version: int):
    import tritonclient.grpc as grpc

    client = grpc.InferenceServerClient(server.grpc_url)
    try:
        inp = grpc.InferInput("IMAGE", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[image]], dtype=np.object_))
        return client.infer("aspp", [inp], model_version=str(version)).as_numpy("MASK")
    finally:
        client.close()


def test_a_moved_repository_loads_and_serves_both_versions_under_all(moved, served_model):
    from aspp_deploy.runtime.ort_segmenter import OrtSegmenter

    server, onnx = moved
    assert server.models_ready == ["aspp", "aspp_raw"]
    assert "$$TRITON_MODEL_DIRECTORY/../../env" in (Path(server.repo) / "aspp" / "config.pbtxt").read_text()
    files = sorted(served_model.images.iterdir())
    expected = {}
    for version in (1, 2):
        with OrtSegmenter(onnx[version]) as seg:
            expected[version] = [seg.predict(path) for path in files]
        with cf.ThreadPoolExecutor(len(files)) as pool:  # at once: the batcher does not wait for more
            got = list(pool.map(lambda path: _infer(server, path.read_bytes(), version)[0], files))
        assert all(np.array_equal(g, e) for g, e in zip(got, expected[version])), version
    # the two versions are two networks, each answered by its own
    assert any(not np.array_equal(a, b) for a, b in zip(expected[1], expected[2]))


def test_gathered_requests_run_as_one_network_run(moved, served_model):
    server, _ = moved
    image = sorted(served_model.images.iterdir())[0].read_bytes()
    before = _metrics(server)
    with cf.ThreadPoolExecutor(GATHER) as pool:
        shapes = list(pool.map(lambda _: _infer(server, image, 1).shape, range(GATHER)))
    assert shapes == [(1, 96, 96)] * GATHER
    names = ("aspp_network_runs", "aspp_network_images", "nv_inference_exec_count", "nv_inference_count")
    deadline = time.monotonic() + 15
    while True:  # Triton's own counters can reach the metrics port a moment after the answers
        after = _metrics(server)
        delta = {name: _value(after, name, 1) - _value(before, name, 1) for name in names}
        if delta["nv_inference_count"] >= GATHER or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    # Triton gathered the requests into one execution, and the service ran them as one network batch.
    assert delta == {"aspp_network_runs": 1, "aspp_network_images": GATHER, "nv_inference_exec_count": 1,
                     "nv_inference_count": GATHER}, delta


def test_the_raw_twin_takes_what_a_load_generator_makes_from_the_metadata_alone(moved):
    """What perf_analyzer does without an input file: read the model's metadata, send random data of
    each input's type and shape. Every input of NAME_raw is required and fixed, so that is a request."""
    import tritonclient.grpc as grpc

    server, _ = moved
    client = grpc.InferenceServerClient(server.grpc_url)
    try:
        meta = client.get_model_metadata("aspp_raw", as_json=True)
        rng = np.random.default_rng(0)
        inputs = []
        for tensor in meta["inputs"]:
            shape = [1 if int(d) == -1 else int(d) for d in tensor["shape"]]  # -1: the batch dimension
            assert tensor["datatype"] == "UINT8" and shape[1:] == [128, 128, 3], tensor
            inp = grpc.InferInput(tensor["name"], shape, tensor["datatype"])
            inp.set_data_from_numpy(rng.integers(0, 256, shape, dtype=np.uint8))
            inputs.append(inp)
        assert client.infer("aspp_raw", inputs).as_numpy("MASK").shape == (1, 128, 128)
        assert {t["name"] for t in client.get_model_metadata("aspp", as_json=True)["inputs"]} == {"IMAGE", "RAW"}
    finally:
        client.close()
