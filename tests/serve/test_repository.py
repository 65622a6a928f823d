"""The repository writer and the load test's parsing, without a server: options, refusals, Triton's schema."""

from __future__ import annotations

import json

import pytest

from aspp_deploy.errors import InputError
from aspp_deploy.serve.loadtest import Endpoint
from aspp_deploy.serve.repository import TritonOptions, version_policy_pbtxt, write_repository
from tests.serve.conftest import run_cli


@pytest.mark.parametrize("policy, text", [
    ("latest:2", "version_policy: { latest { num_versions: 2 } }"),
    ("all", "version_policy: { all { } }"),
    ("specific:1,3", "version_policy: { specific { versions: [ 1, 3 ] } }"),
])
def test_version_policies(policy, text):
    assert version_policy_pbtxt(policy) == text


@pytest.mark.parametrize("policy", ["latest:0", "latest:x", "specific:", "specific:0", "all:1", "newest"])
def test_bad_version_policies_are_refused(policy):
    with pytest.raises(InputError, match="version policy"):
        version_policy_pbtxt(policy)


@pytest.mark.parametrize("field, value, message", [
    ("name", "../x", "model name"), ("executor", "tensorflow", "executor"), ("target", "tflite", "target"),
    ("kind", "tpu", "instance kind"), ("max_batch", 0, "max batch"), ("preferred_batch", [16], "preferred"),
    ("instances", 0, "instances"), ("threads", -1, "threads"), ("version", 0, "version"),
    ("max_image_pixels", 0, "pixels"), ("queue_delay_us", -5, "queue delay"),
])
def test_bad_options_are_refused(field, value, message):
    opts = TritonOptions(**{field: value})
    with pytest.raises(InputError, match=message):
        opts.check()


def _schema():
    pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] ships Triton's model_config.proto")
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format, model_config_pb2


def test_both_executors_write_configs_tritons_schema_accepts(tmp_path, served_model):
    text_format, pb = _schema()
    repo = write_repository(served_model.onnx, tmp_path / "a", TritonOptions(threads=2, instances=2))
    config = text_format.Parse((tmp_path / "a" / "aspp" / "config.pbtxt").read_text(), pb.ModelConfig())
    assert config.instance_group[0].count == 2 and config.parameters["THREADS"].string_value == "2"
    assert (tmp_path / "a" / "aspp" / "1" / "model.onnx").is_file() and repo["models"] == ["aspp"]
    info = write_repository(served_model.onnx, tmp_path / "b", TritonOptions(executor="triton", target="trt",
                                                                             version=3, warmup=False))
    assert info["models"] == ["aspp", "aspp_trt"] and "plan_missing" in info
    service = text_format.Parse((tmp_path / "b" / "aspp" / "config.pbtxt").read_text(), pb.ModelConfig())
    plan = text_format.Parse((tmp_path / "b" / "aspp_trt" / "config.pbtxt").read_text(), pb.ModelConfig())
    assert service.parameters["TARGET_MODEL"].string_value == "aspp_trt" and not service.model_warmup
    assert plan.platform == "tensorrt_plan" and list(plan.input[0].dims) == [-1, 3, 128, 128]
    assert (tmp_path / "b" / "aspp" / "3" / "model.py").is_file()
    files = json.loads((tmp_path / "b" / "repository.json").read_text())["files"]
    assert "aspp/3/aspp_deploy/data/preprocess.py" in files and "aspp/3/model.onnx" not in files


def test_a_foreign_folder_is_never_overwritten_and_our_own_is_replaced(tmp_path, served_model):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep")
    result = run_cli("triton", foreign, "--onnx", served_model.onnx)
    assert result.exit_code == 1 and "never overwritten" in result.output
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    ours = tmp_path / "repo"
    assert run_cli("triton", ours, "--onnx", served_model.onnx).exit_code == 0
    assert run_cli("triton", ours, "--onnx", served_model.onnx, "--name", "seg").exit_code == 0
    assert sorted(p.name for p in ours.iterdir()) == ["repository.json", "seg"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_plan_only_goes_with_the_trt_target(tmp_path, served_model):
    result = run_cli("triton", tmp_path / "r", "--onnx", served_model.onnx, "--plan", served_model.onnx)
    assert result.exit_code == 1 and "--plan goes with" in result.output
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("url, parsed", [("grpc://127.0.0.1:8001", ("grpc", "127.0.0.1:8001")),
                                         ("http://localhost:8000/", ("http", "localhost:8000"))])
def test_endpoints(url, parsed):
    e = Endpoint.parse(url)
    assert (e.protocol, e.address) == parsed


@pytest.mark.parametrize("url", ["127.0.0.1:8000", "ftp://h:1", "http://h", "grpc://h:0", "grpc://:80"])
def test_bad_endpoints(url):
    with pytest.raises(InputError):
        Endpoint.parse(url)
