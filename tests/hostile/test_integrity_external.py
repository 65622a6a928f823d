"""Integrity covers every byte of a model: an ONNX whose weights live in an external data file
(``w.bin`` beside ``model.onnx``) is read only when its manifest records that file's sha256, and a
changed, missing or out-of-folder external file is one error line naming it. Config files are written
by a serializer: a tensor name or a Python-environment path with quotes and newlines round-trips."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from aspp_deploy.io import sha256_file
from tests.hostile.conftest import cli, listing, refused

EXTERNAL = "w.bin"


def _externalize(model: Path, record: bool) -> Path:
    """Re-save ``model`` with its weights in ``w.bin`` beside it; the sidecar gets the new file's sha256
    and, when ``record``, the external file's too (as a manifest that covers every byte does)."""
    proto = onnx.load(str(model))
    onnx.save_model(proto, str(model), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=EXTERNAL, size_threshold=1024)
    assert (model.parent / EXTERNAL).is_file()
    sidecar = model.parent / "manifest.json"
    data = json.loads(sidecar.read_text())
    entry = data["artifacts"][model.name]
    entry["onnx_sha256"] = sha256_file(model)
    if record:
        entry["external_data"] = {EXTERNAL: sha256_file(model.parent / EXTERNAL)}  # the manifest's record
    sidecar.write_text(json.dumps(data))
    return model


def _swap_weights(external: Path) -> None:
    """Other weights of the same size: every float's bytes changed."""
    data = bytearray(external.read_bytes())
    for k in range(0, len(data) - 3, 4):
        data[k + 3] ^= 0x01  # the sign/exponent byte of each little-endian float32
    external.write_bytes(bytes(data))


def _set_location(model: Path, location: str) -> None:
    proto = onnx.load(str(model), load_external_data=False)
    for tensor in proto.graph.initializer:
        for e in tensor.external_data:
            if e.key == "location":
                e.value = location
    model.write_bytes(proto.SerializeToString())
    sidecar = model.parent / "manifest.json"
    data = json.loads(sidecar.read_text())
    data["artifacts"][model.name]["onnx_sha256"] = sha256_file(model)
    sidecar.write_text(json.dumps(data))


def _predict(model, data, out):
    return cli("predict", "--model", model, "--out", out, data / "JPEGImages")


def test_recorded_external_data_is_verified_on_every_read(artifacts, tiny_data, tmp_path):
    model = _externalize(artifacts / "model.onnx", record=True)
    ok = _predict(model, tiny_data, tmp_path / "before")
    assert ok.exit_code == 0, ok.output
    _swap_weights(artifacts / EXTERNAL)
    for args in (["predict", "--model", model, "--out", tmp_path / "after", tiny_data / "JPEGImages"],
                 ["eval", "--backend", "onnxruntime", "--model", model, "--data", tiny_data, "--limit", 1],
                 ["bench", "--backend", "onnxruntime", "--model", model, "--iters", 1, "--warmup", 0],
                 ["triton", tmp_path / "repo", "--onnx", model]):
        line = refused(cli(*args), EXTERNAL)
        assert "sha256 differs" in line
    assert not (tmp_path / "after").exists() and not (tmp_path / "repo").exists()


def test_unrecorded_external_data_is_refused(artifacts, tiny_data, tmp_path):
    model = _externalize(artifacts / "model.onnx", record=False)
    line = refused(_predict(model, tiny_data, tmp_path / "pred"), EXTERNAL)
    assert "does not record" in line and "aspp-deploy import" in line


def test_a_missing_external_file_is_named(artifacts, tiny_data, tmp_path):
    model = _externalize(artifacts / "model.onnx", record=True)
    (artifacts / EXTERNAL).unlink()
    for args in (["predict", "--model", model, "--out", tmp_path / "pred", tiny_data / "JPEGImages"],
                 ["quantize", "--model", model, "--precision", "fp16", "--target", "cpu", "--data", tiny_data],
                 ["import", model, "--out", tmp_path / "adopted"]):
        line = refused(cli(*args), EXTERNAL)
        assert "missing" in line, line


@pytest.mark.parametrize("location", ["../../etc/passwd", "/etc/passwd", "sub/../../w.bin"])
def test_external_data_outside_the_folder_is_refused(location, artifacts, tiny_data, tmp_path):
    model = _externalize(artifacts / "model.onnx", record=True)
    _set_location(model, location)
    line = refused(_predict(model, tiny_data, tmp_path / "pred"), "outside the model's folder")
    assert location in line


def test_an_external_file_linked_out_of_the_folder_is_refused(artifacts, tiny_data, tmp_path):
    model = _externalize(artifacts / "model.onnx", record=True)
    elsewhere = tmp_path / "elsewhere.bin"
    (artifacts / EXTERNAL).rename(elsewhere)
    (artifacts / EXTERNAL).symlink_to(elsewhere)
    refused(_predict(model, tiny_data, tmp_path / "pred"), "link out of the model's folder")


def test_the_triton_repository_carries_the_external_data(artifacts, tmp_path):
    model = _externalize(artifacts / "model.onnx", record=True)
    result = cli("triton", tmp_path / "repo", "--onnx", model)
    assert result.exit_code == 0, result.output
    version = tmp_path / "repo" / "aspp" / "1"
    assert (version / EXTERNAL).read_bytes() == (artifacts / EXTERNAL).read_bytes()
    info = json.loads((tmp_path / "repo" / "repository.json").read_text())
    assert info["files"][f"aspp/1/{EXTERNAL}"] == sha256_file(artifacts / EXTERNAL)
    # the copy in the repository is a complete model: ONNX Runtime runs it from there
    import onnxruntime as ort

    ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])


def test_quantize_and_bundle_refuse_external_data_with_one_line(artifacts, tiny_data, tmp_path):
    model = _externalize(artifacts / "model.onnx", record=True)
    before = listing(artifacts)
    line = refused(cli("quantize", "--model", model, "--precision", "fp16", "--target", "cpu", "--data", tiny_data),
                   "self-contained")
    assert EXTERNAL in line
    assert listing(artifacts) == before
    line = refused(cli("bundle", "--onnx", model, "--out", tmp_path / "bundle", "--precision", "fp16",
                       "--data", tiny_data), "self-contained")
    assert not (tmp_path / "bundle").exists()


def test_config_strings_round_trip(artifacts, tmp_path):
    """A tensor name and a --python-env path with quotes, backslashes and newlines are written as
    escaped strings: the config parses with Triton's schema and gives them back exactly."""
    pytest.importorskip("tritonclient.grpc", reason="tritonclient[grpc] ships Triton's model_config.proto")
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from aspp_deploy.export.manifest import METADATA_KEY

    name = 'in"put\n} parameters { key: "X" value { string_value: "y" } }\\'
    model = artifacts / "model.onnx"
    proto = onnx.load(str(model))
    old = proto.graph.input[0].name
    proto.graph.input[0].name = name
    for node in proto.graph.node:
        for k, value in enumerate(node.input):
            if value == old:
                node.input[k] = name
    for p in proto.metadata_props:
        if p.key == METADATA_KEY:
            entry = json.loads(p.value)
            entry["inputs"][0]["name"] = name
            p.value = json.dumps(entry, sort_keys=True)
    onnx.save(proto, str(model))
    (artifacts / "manifest.json").unlink()  # the embedded manifest is the one
    env = tmp_path / 'env "quoted"\nline2\\x'
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "activate").write_text("")
    result = cli("triton", tmp_path / "repo", "--onnx", model, "--python-env", env, "--executor", "triton",
                 "--target", "onnx")
    assert result.exit_code == 0, result.output
    service = text_format.Parse((tmp_path / "repo" / "aspp" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert service.parameters["EXECUTION_ENV_PATH"].string_value == str(env)
    assert set(service.parameters) == {"EXECUTOR", "MAX_IMAGE_PIXELS", "THREADS", "TARGET_MODEL", "EXECUTION_ENV_PATH"}
    network = text_format.Parse((tmp_path / "repo" / "aspp_onnx" / "config.pbtxt").read_text(),
                                model_config_pb2.ModelConfig())
    assert [t.name for t in network.input] == [name]
    assert not network.parameters
    from aspp_deploy.serve.server import python_envs

    assert python_envs(tmp_path / "repo")["aspp"] == str(env)
