"""The segmentation service on a real Triton Inference Server (loopback only, bounded in time and count)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.serve.conftest import run_cli, start_server, write_repo

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
CLI = [str(Path(sys.executable).parent / "aspp-deploy")]


def _config(server, model: str) -> dict:
    with urllib.request.urlopen(f"http://{server.http_url}/v2/models/{model}/config", timeout=10) as r:
        return json.loads(r.read().decode())


def _client(server):
    import tritonclient.grpc as grpc

    return grpc, grpc.InferenceServerClient(server.grpc_url)


def _image_request(grpc, data: bytes):
    inp = grpc.InferInput("IMAGE", [1, 1], "BYTES")
    inp.set_data_from_numpy(np.array([[data]], dtype=np.object_))
    return [inp]


def _raw_request(grpc, array: np.ndarray, dtype: str = "UINT8"):
    inp = grpc.InferInput("RAW", list(array.shape), dtype)
    inp.set_data_from_numpy(array)
    return [inp]


def test_repository_loads_with_the_options_written(server):
    assert server.models_ready == ["aspp", "aspp_nobatch"]
    batched, plain = _config(server, "aspp"), _config(server, "aspp_nobatch")
    # What Triton itself loaded, not what we wrote: the batcher, its sizes, warm-up, instances, versions.
    assert batched["dynamic_batching"]["preferred_batch_size"] == [2, 4]
    assert int(batched["dynamic_batching"]["max_queue_delay_microseconds"]) == 2000
    assert "dynamic_batching" not in plain
    assert batched["max_batch_size"] == 8
    assert batched["model_warmup"][0]["inputs"]["RAW"]["dims"] == [128, 128, 3]
    assert batched["instance_group"][0]["kind"] == "KIND_CPU"
    assert batched["version_policy"] == {"latest": {"num_versions": 1}}
    assert batched["parameters"]["EXECUTOR"]["string_value"] == "onnxruntime"
    assert [o["data_type"] for o in batched["output"]] == ["TYPE_UINT8"]


def test_masks_equal_predict_for_encoded_and_raw_images(server, served_model, tmp_path):
    """Each image of another size than the model's comes back at its own size, equal to `aspp-deploy predict`."""
    result = run_cli("predict", served_model.images, "--model", served_model.onnx, "--out", tmp_path / "pred")
    assert result.exit_code == 0, result.output
    grpc, client = _client(server)
    files = sorted(served_model.images.iterdir())
    assert len(files) == 7
    for path in files:
        expected = np.asarray(Image.open(tmp_path / "pred" / f"{path.stem}.mask.png"))
        got = client.infer("aspp", _image_request(grpc, path.read_bytes())).as_numpy("MASK")
        assert got.shape == (1, *expected.shape) and got.dtype == np.uint8
        assert np.array_equal(got[0], expected), path.name
        rgb = np.asarray(Image.open(path).convert("RGB"))[None]
        assert np.array_equal(client.infer("aspp_nobatch", _raw_request(grpc, rgb)).as_numpy("MASK")[0], expected)
    client.close()


def test_200_requests_at_concurrency_8_all_correct(server, served_model, tmp_path):
    """The load test CLI, over gRPC and HTTP, checks every answer against the toolkit's own runner."""
    out = tmp_path / "lt.json"
    result = run_cli("loadtest", f"grpc://{server.grpc_url}", f"http://{server.http_url}", "--images",
                     served_model.images, "--concurrency", "8", "--requests", "200", "--duration", "120",
                     "--warmup", "0", "--verify", served_model.onnx, "--report", tmp_path / "report", "--json", out)
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["rows"]
    assert [(r["protocol"], r["concurrency"], r["requests"]) for r in rows] == [("grpc", 8, 200), ("http", 8, 200)]
    assert all(r["errors"] == 0 and r["mismatches"] == 0 and r["ok"] == 200 for r in rows), rows
    assert all(r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] for r in rows)
    assert {p.name for p in (tmp_path / "report").iterdir()} == {"results.json", "results.csv", "summary.md",
                                                                  "throughput_latency.png"}


def test_a_changed_model_is_caught_by_verify(server, served_model, tmp_path):
    """--verify must be able to fail: against another model's masks, answers count as wrong."""
    other = tmp_path / "other"
    from tests.conftest import make_checkpoint

    result = run_cli("export", "--checkpoint", make_checkpoint(tmp_path / "seed7.pt", seed=7), "--out", other)
    assert result.exit_code == 0, result.output
    result = run_cli("loadtest", f"grpc://{server.grpc_url}", "--images", served_model.images, "--concurrency", "2",
                     "--requests", "14", "--warmup", "0", "--verify", other / "model.onnx", "--report", tmp_path / "r",
                     "--json", tmp_path / "lt.json")
    assert result.exit_code == 1
    assert "wrong mask" in result.output and "Traceback" not in result.output
    assert json.loads((tmp_path / "lt.json").read_text())["rows"][0]["mismatches"] > 0


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_malformed_requests_get_their_own_error_and_the_server_keeps_serving(server, served_model):
    from tritonclient.utils import InferenceServerException

    grpc, client = _client(server)
    good = sorted(served_model.images.iterdir())[0].read_bytes()
    bad = {
        "wrong dtype": _raw_request(grpc, np.zeros((1, 8, 8, 3), np.float32), "FP32"),
        "wrong shape": _raw_request(grpc, np.zeros((1, 8, 8, 4), np.uint8)),
        "not an image": _image_request(grpc, b"GIF89a but not really" * 10),
        "empty bytes": _image_request(grpc, b""),
        "too large": _image_request(grpc, _png(500, 400)),  # 200000 pixels > --max-image-pixels 160000
    }
    messages = {}
    for name, inputs in bad.items():
        with pytest.raises(InferenceServerException) as caught:
            client.infer("aspp", inputs)
        messages[name] = caught.value.message()
        assert caught.value.status() == "StatusCode.INVALID_ARGUMENT", (name, caught.value)
    assert "FP32" in messages["wrong dtype"] and "UINT8" in messages["wrong dtype"]
    assert "not a readable image" in messages["not an image"]
    assert "160000" in messages["too large"]
    # Good and bad requests at once: the dynamic batcher puts them in one execution; only the bad fail.
    import concurrent.futures as cf

    def one(i: int):
        c = grpc.InferenceServerClient(server.grpc_url)
        try:
            return c.infer("aspp", _image_request(grpc, good if i % 2 else b"junk")).as_numpy("MASK").shape
        except InferenceServerException as exc:
            return exc.message()
        finally:
            c.close()

    with cf.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(32)))
    assert all(a == (1, 96, 96) for a in answers[1::2]), answers
    assert all(isinstance(a, str) and "not a readable image" in a for a in answers[0::2]), answers
    assert client.infer("aspp", _image_request(grpc, good)).as_numpy("MASK").shape == (1, 96, 96)
    client.close()


def test_sigkill_mid_load_fails_the_loadtest_and_a_restart_serves_again(repo, triton_binary, served_model, tmp_path):
    server = start_server(repo, triton_binary)
    try:
        out = tmp_path / "lt.json"
        load = subprocess.Popen([*CLI, "loadtest", f"grpc://{server.grpc_url}", "--images", str(served_model.images),
                                 "--concurrency", "4", "--requests", "100000", "--duration", "20", "--timeout", "5",
                                 "--warmup", "0", "--report", str(tmp_path / "r"), "--json", str(out)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(4)
        server.kill()
        output, _ = load.communicate(timeout=90)
        assert load.returncode == 1, output
        assert "Traceback" not in output and "requests failed" in output
        row = json.loads(out.read_text())["rows"][0]
        assert row["ok"] > 0 and row["errors"] > 0, row
    finally:
        server.stop()
    again = start_server(repo, triton_binary)
    try:
        result = run_cli("loadtest", f"http://{again.http_url}", "--images", served_model.images, "--concurrency",
                         "2", "--requests", "10", "--warmup", "0", "--report", tmp_path / "r2")
        assert result.exit_code == 0, result.output
    finally:
        again.stop()


def test_serve_cli_prints_endpoints_and_stops_on_ctrl_c(repo):
    from aspp_deploy.serve.server import free_port

    ports = [str(free_port()) for _ in range(3)]
    proc = subprocess.Popen([*CLI, "serve", str(repo), "--http-port", ports[0], "--grpc-port", ports[1],
                             "--metrics-port", ports[2]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        deadline = time.monotonic() + 120
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("Ctrl-C stops it"):
                break
        text = "".join(lines)
        assert "ready: aspp, aspp_nobatch" in text, text
        assert f"http://127.0.0.1:{ports[0]}" in text and f"127.0.0.1:{ports[1]}" in text
        with urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/v2/health/ready", timeout=5) as r:
            assert r.status == 200
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, text + rest
    assert "stopped" in rest and "Traceback" not in rest


def test_serve_names_the_model_that_fails_to_load(tmp_path, served_model, triton_env):
    repo = write_repo(tmp_path / "broken", served_model, triton_env, "--name", "seg")
    (repo / "seg" / "1" / "service.json").write_text("{ not json")
    from aspp_deploy.serve.server import free_port

    done = subprocess.run([*CLI, "serve", str(repo), "--http-port", str(free_port()), "--grpc-port",
                           str(free_port()), "--metrics-port", str(free_port())], capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert "could not load model seg (version 1)" in errors[0] and "JSON" in errors[0]
    assert "Traceback" not in done.stderr + done.stdout


def test_the_python_env_must_have_numpy_1_for_pytriton(tmp_path, served_model, triton_binary):
    """This environment has NumPy 2: nvidia-pytriton's backend stub would read its tensors wrong, so serve refuses."""
    if triton_binary.origin != "nvidia-pytriton" or int(np.__version__.split(".")[0]) < 2:
        pytest.skip("the check is about nvidia-pytriton's NumPy 1 stub and an environment with NumPy 2")
    repo = write_repo(tmp_path / "repo", served_model, Path(sys.prefix))
    from aspp_deploy.errors import InputError
    from aspp_deploy.serve.server import check_repository

    with pytest.raises(InputError, match="NumPy 2.x"):
        check_repository(repo, triton_binary)
    assert os.path.isdir(repo)


# The ONNX Runtime backend is not part of nvidia-pytriton's server: in this test a Python-backend model
# running the same ONNX file on ONNX Runtime takes the place of `aspp_onnx`, so the service's other
# executor (business-logic scripting into another model of the repository) runs for real in Triton.
NETWORK_MODEL_PY = '''
import os

import onnxruntime
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        here = os.path.join(args["model_repository"], args["model_version"])
        self.session = onnxruntime.InferenceSession(os.path.join(here, "model.onnx"),
                                                    providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.output = self.session.get_outputs()[0].name

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, self.input).as_numpy()
            y = self.session.run([self.output], {self.input: x})[0]
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(self.output, y)]))
        return responses
'''


def test_triton_executor_runs_the_network_model_through_bls(tmp_path, served_model, triton_env, triton_binary):
    repo = write_repo(tmp_path / "bls", served_model, triton_env, "--executor", "triton", "--target", "onnx")
    info = json.loads((repo / "repository.json").read_text())
    assert info["models"] == ["aspp", "aspp_onnx"]
    assert not (repo / "aspp" / "1" / "model.onnx").exists()
    config = (repo / "aspp_onnx" / "config.pbtxt").read_text()
    assert 'backend: "onnxruntime"' in config and "dims: [ -1, 3, 128, 128 ]" in config  # dynamic batch kept
    config = config.replace('backend: "onnxruntime"', 'backend: "python"').replace(
        'default_model_filename: "model.onnx"\n', "")
    config += f'parameters: {{ key: "EXECUTION_ENV_PATH" value: {{ string_value: "{triton_env}" }} }}\n'
    (repo / "aspp_onnx" / "config.pbtxt").write_text(config)
    (repo / "aspp_onnx" / "1" / "model.py").write_text(NETWORK_MODEL_PY)
    result = run_cli("predict", served_model.images, "--model", served_model.onnx, "--out", tmp_path / "pred")
    assert result.exit_code == 0, result.output
    server = start_server(repo, triton_binary)
    try:
        assert server.models_ready == ["aspp", "aspp_onnx"]
        grpc, client = _client(server)
        for path in sorted(served_model.images.iterdir()):
            expected = np.asarray(Image.open(tmp_path / "pred" / f"{path.stem}.mask.png"))
            got = client.infer("aspp", _image_request(grpc, path.read_bytes())).as_numpy("MASK")
            assert np.array_equal(got[0], expected), path.name
        client.close()
    finally:
        server.stop()
