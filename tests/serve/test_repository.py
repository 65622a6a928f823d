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
    assert "aspp/3/aspp_deploy/runtime/preprocess.py" in files and "aspp/3/model.onnx" not in files


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


def test_a_static_batch_of_one_and_a_gpu_kind_the_executor_cannot_honour_are_said(tmp_path, exported, served_model):
    """The batcher cannot batch a static-batch-1 network, and the in-process executor runs on the CPU:
    `triton` says both, and writes KIND_CPU; a dynamic-batch export or --no-dynamic-batching is quiet."""
    result = run_cli("triton", tmp_path / "s", "--onnx", exported, "--kind", "gpu")
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if line.startswith("note:")]
    assert any("static batch of 1" in n and "--dynamic batch" in n for n in notes), notes
    assert any("--kind gpu" in n and "KIND_CPU" in n for n in notes), notes
    assert "kind: KIND_CPU" in (tmp_path / "s" / "aspp" / "config.pbtxt").read_text()
    assert len(json.loads((tmp_path / "s" / "repository.json").read_text())["notes"]) == 2
    for onnx, extra in ((exported, ["--no-dynamic-batching"]), (served_model.onnx, [])):
        result = run_cli("triton", tmp_path / "q", "--onnx", onnx, *extra)
        assert result.exit_code == 0 and "static batch" not in result.output, result.output


def test_queue_policy_defaults_and_options_reach_the_config(tmp_path, served_model):
    text_format, pb = _schema()
    write_repository(served_model.onnx, tmp_path / "a", TritonOptions(max_batch=4, instances=2))
    config = text_format.Parse((tmp_path / "a" / "aspp" / "config.pbtxt").read_text(), pb.ModelConfig())
    policy = config.dynamic_batching.default_queue_policy
    assert policy.max_queue_size == 4 * 4 * 2 and policy.default_timeout_microseconds == 10_000_000
    assert policy.timeout_action == pb.ModelQueuePolicy.REJECT and policy.allow_timeout_override
    assert config.parameters["THREADS"].string_value == "0"  # the model divides the cores among instances
    result = run_cli("triton", tmp_path / "b", "--onnx", served_model.onnx, "--max-queue-size", "0",
                     "--queue-timeout-us", "500")
    assert result.exit_code == 0, result.output
    config = text_format.Parse((tmp_path / "b" / "aspp" / "config.pbtxt").read_text(), pb.ModelConfig())
    assert config.dynamic_batching.default_queue_policy.max_queue_size == 0
    assert config.dynamic_batching.default_queue_policy.default_timeout_microseconds == 500
    result = run_cli("triton", tmp_path / "c", "--onnx", served_model.onnx, "--max-queue-size", "-1")
    assert result.exit_code == 1 and "--max-queue-size" in result.output and not (tmp_path / "c").exists()


def test_a_relative_python_env_is_written_relative_to_the_model_folder(tmp_path, served_model, monkeypatch):
    (tmp_path / "envs" / "py" / "bin").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert run_cli("triton", "deploy/repo", "--onnx", served_model.onnx, "--python-env", "envs/py").exit_code == 0
    text = (tmp_path / "deploy" / "repo" / "aspp" / "config.pbtxt").read_text()
    assert 'string_value: "$$TRITON_MODEL_DIRECTORY/../../../envs/py"' in text
    assert str(tmp_path) not in text  # nothing absolute: the folder can move with its environment
    absolute = tmp_path / "envs" / "py"
    assert run_cli("triton", "deploy/abs", "--onnx", served_model.onnx, "--python-env", absolute).exit_code == 0
    assert f'string_value: "{absolute}"' in (tmp_path / "deploy" / "abs" / "aspp" / "config.pbtxt").read_text()


def test_writing_another_version_adds_it_and_keeps_the_others(tmp_path, served_model):
    repo = tmp_path / "repo"
    for version in (1, 2, 2):  # 2 twice: the same version is replaced, 1 stays
        result = run_cli("triton", repo, "--onnx", served_model.onnx, "--version", version, "--version-policy", "all")
        assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (repo / "aspp").iterdir()) == ["1", "2", "config.pbtxt"]
    info = json.loads((repo / "repository.json").read_text())
    assert sorted(info["versions"]) == ["1", "2"]
    assert "aspp/1/model.onnx" in info["files"] and "aspp/2/model.onnx" in info["files"]
    before = sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*"))
    # Another executor cannot share version 1's config: refused, the repository untouched.
    result = run_cli("triton", repo, "--onnx", served_model.onnx, "--version", "3", "--executor", "triton")
    assert result.exit_code == 1 and "differs from version 3 in executor" in result.output, result.output
    assert sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*")) == before
