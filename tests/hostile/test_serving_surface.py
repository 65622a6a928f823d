"""A server we start exposes inference and health (and the metadata clients need), nothing else unless
asked: Triton's shared-memory, model-repository, statistics, trace and logging APIs are refused on
HTTP and gRPC, on the real tritonserver (one start)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import pytest

from tests.hostile.conftest import cli, refused
from tests.serve.conftest import served_model, start_server, triton_binary, triton_env, write_repo  # noqa: F401


def _http(server, path: str, body: dict | None = None) -> tuple[int, str]:
    request = urllib.request.Request(f"http://{server.http_url}{path}",
                                     data=None if body is None else json.dumps(body).encode(),
                                     method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return int(r.status), r.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode(errors="replace")


def test_only_inference_and_health_are_open(tmp_path, served_model, triton_env, triton_binary):  # noqa: F811
    import tritonclient.grpc as grpc
    from tritonclient.utils import InferenceServerException

    repo = write_repo(tmp_path / "repo", served_model, triton_env)
    server = start_server(repo, triton_binary)
    try:
        assert server.models_ready == ["aspp"]
        # shared memory: a region the client names (here a /dev/shm object that does not exist: an open
        # API answers 400 "unable to open"), the status list, unregistering everything
        region = {"key": "/aspp_hostile_probe", "offset": 0, "byte_size": 64}
        for path, body in (("/v2/systemsharedmemory/region/probe/register", region),
                           ("/v2/systemsharedmemory/status", None),
                           ("/v2/systemsharedmemory/unregister", {}),
                           ("/v2/cudasharedmemory/status", None),
                           ("/v2/repository/index", {}),
                           ("/v2/repository/models/aspp/unload", {}),
                           ("/v2/models/aspp/stats", None),
                           ("/v2/trace/setting", None),
                           ("/v2/logging", None)):
            code, text = _http(server, path, body)
            assert code == 403 and "restricted" in text, (path, code, text)
        client = grpc.InferenceServerClient(server.grpc_url)
        for call in (lambda: client.register_system_shared_memory("probe", "/aspp_hostile_probe", 64),
                     client.get_system_shared_memory_status,
                     lambda: client.unload_model("aspp"),
                     client.get_inference_statistics):
            with pytest.raises(InferenceServerException, match="restricted"):
                call()
        # what clients need still answers: health, metadata, config, inference
        assert _http(server, "/v2/health/ready")[0] == 200
        assert _http(server, "/v2/models/aspp")[0] == 200
        assert _http(server, "/v2/models/aspp/config")[0] == 200
        assert client.is_model_ready("aspp")
        raw = np.random.default_rng(0).integers(0, 256, (1, 40, 50, 3), dtype=np.uint8)
        inp = grpc.InferInput("RAW", list(raw.shape), "UINT8")
        inp.set_data_from_numpy(raw)
        mask = client.infer("aspp", [inp]).as_numpy("MASK")
        assert mask.shape == (1, 40, 50)
        client.close()
    finally:
        server.stop()


def test_allow_api_opens_what_is_asked_and_refuses_unknown_names(triton_binary):  # noqa: F811
    from aspp_deploy.serve.server import TritonServer

    flags = [f for f in TritonServer(triton_binary.path.parent, triton_binary).command(None)
             if "restricted" in f]
    assert len(flags) == 2 and all("shared-memory" in f and "model-repository" in f for f in flags)
    opened = TritonServer(triton_binary.path.parent, triton_binary, allow_api=["shared-memory"]).command(None)
    assert not any("shared-memory" in f for f in opened) and any("model-repository" in f for f in opened)
    everything = ["shared-memory", "model-repository", "statistics", "trace", "logging"]
    assert not any("restricted" in f for f in TritonServer(triton_binary.path.parent, triton_binary,
                                                           allow_api=everything).command(None))
    refused(cli("serve", "/nonexistent-repo", "--allow-api", "shared-memory,everything"), "--allow-api everything")
