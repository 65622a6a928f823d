"""Integrity: nothing is trusted that was not verified. A malformed manifest, an ONNX file that is
not the one its manifest describes, an empty or corrupt model: one line, never a traceback."""

from __future__ import annotations

import json

import onnx
import pytest

from aspp_deploy.export.manifest import METADATA_KEY
from tests.hostile.conftest import cli, listing, refused


def _strip_embedded(path):
    """Drop the manifest embedded in the ONNX (the sidecar becomes the only one) and re-record the
    file's sha256, so that only the sidecar's own content is on trial."""
    from aspp_deploy.io import sha256_file

    model = onnx.load(str(path))
    keep = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    onnx.save(model, str(path))
    sidecar = path.parent / "manifest.json"
    data = json.loads(sidecar.read_text())
    data["artifacts"][path.name]["onnx_sha256"] = sha256_file(path)
    sidecar.write_text(json.dumps(data))


def _readers(model, data, tmp_path):
    """Every command that reads an ONNX artifact's manifest."""
    return {
        "eval": ["eval", "--backend", "onnxruntime", "--model", model, "--data", data, "--limit", 1],
        "bench": ["bench", "--backend", "onnxruntime", "--model", model, "--iters", 1, "--warmup", 0],
        "predict": ["predict", "--model", model, "--out", tmp_path / "pred", data / "JPEGImages"],
        "quantize": ["quantize", "--model", model, "--precision", "fp16", "--target", "cpu", "--data", data],
    }


MANIFESTS = {
    "not JSON": (lambda entry: "{nope", "not valid JSON"),
    "a JSON list": (lambda entry: "[1, 2]", "not an aspp-deploy manifest"),
    "artifacts is a list": (lambda entry: json.dumps({"artifacts": [entry]}), "not an aspp-deploy manifest"),
    "entry is a string": (lambda entry: json.dumps({"artifacts": {"model.onnx": "model"}}), "is not an object"),
    "classes missing": (lambda entry: json.dumps({"artifacts": {"model.onnx": {k: v for k, v in entry.items() if k != "classes"}}}), "'classes'"),
    "classes is a number": (lambda entry: json.dumps({"artifacts": {"model.onnx": {**entry, "classes": 5}}}), "'classes'"),
    "palette short": (lambda entry: json.dumps({"artifacts": {"model.onnx": {**entry, "palette": [[0, 0, 0]]}}}), "'palette'"),
    "preprocess a string": (lambda entry: json.dumps({"artifacts": {"model.onnx": {**entry, "preprocess": "stretch"}}}), "'preprocess'"),
    "inputs not a list": (lambda entry: json.dumps({"artifacts": {"model.onnx": {**entry, "inputs": {"name": "x"}}}}), "'inputs'"),
    "preprocess values wrong": (lambda entry: json.dumps({"artifacts": {"model.onnx": {**entry, "preprocess": {"height": "tall"}}}}), "preprocessing record"),
}


@pytest.mark.parametrize("reader", ["eval", "bench", "predict", "quantize"])
@pytest.mark.parametrize("case", sorted(MANIFESTS))
def test_a_malformed_sidecar_manifest_is_one_line(case, reader, artifacts, tiny_data, tmp_path):
    model = artifacts / "model.onnx"
    _strip_embedded(model)
    entry = json.loads((artifacts / "manifest.json").read_text())["artifacts"]["model.onnx"]
    make, fragment = MANIFESTS[case]
    (artifacts / "manifest.json").write_text(make(entry))
    before = listing(artifacts)
    refused(cli(*_readers(model, tiny_data, tmp_path)[reader]), fragment)
    assert listing(artifacts) == before


@pytest.mark.parametrize("value", ["{not json", "[1, 2, 3]", "\"a string\""])
def test_a_malformed_embedded_manifest_is_one_line(value, artifacts, tiny_data, tmp_path):
    model = artifacts / "model.onnx"
    proto = onnx.load(str(model))
    for p in proto.metadata_props:
        if p.key == METADATA_KEY:
            p.value = value
    onnx.save(proto, str(model))
    (artifacts / "manifest.json").unlink()
    for reader, args in _readers(model, tiny_data, tmp_path).items():
        refused(cli(*args), "manifest embedded in the ONNX file")


@pytest.mark.parametrize("how", ["bit flip in the weights", "a different model", "bytes appended"])
def test_an_onnx_that_is_not_the_one_its_manifest_describes_is_refused(how, artifacts, tiny_data, tmp_path,
                                                                       tiny_checkpoint):
    model = artifacts / "model.onnx"
    if how == "bit flip in the weights":
        proto = onnx.load(str(model))
        weight = max(proto.graph.initializer, key=lambda t: len(t.raw_data))
        raw = bytearray(weight.raw_data)
        raw[len(raw) // 2] ^= 0x10
        weight.raw_data = bytes(raw)
        onnx.save(proto, str(model))
    elif how == "a different model":  # another export (other size) copied over, its own embedded manifest intact
        other = tmp_path / "other"
        from aspp_deploy.export.onnx_export import ExportOptions, onnx_from_checkpoint

        made = onnx_from_checkpoint(tiny_checkpoint, other, ExportOptions(32, 32)).onnx_path
        model.write_bytes(made.read_bytes())
    else:  # a truncated copy: unreadable, or else not the recorded bytes
        model.write_bytes(model.read_bytes()[:-64])
    for reader, args in _readers(model, tiny_data, tmp_path).items():
        line = refused(cli(*args))
        assert "does not match its entry" in line or "not a readable ONNX file" in line, line
    assert not (tmp_path / "pred").exists()


@pytest.mark.parametrize("content", [b"", b"\x00garbage" * 8, b"ir_version: 8"])
def test_an_empty_or_corrupt_onnx_file_is_one_line(content, tiny_data, tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(content)
    commands = {**_readers(model, tiny_data, tmp_path),
                "check": ["check", model], "import": ["import", model, "--out", tmp_path / "imported"],
                "bundle": ["bundle", "--onnx", model, "--out", tmp_path / "bundle"]}
    for name, args in commands.items():
        line = refused(cli(*args))
        assert "ONNX" in line or "onnx" in line, (name, line)
    assert listing(tmp_path) == ["model.onnx"]


def test_compare_remakes_a_swapped_artifact_instead_of_trusting_it(tmp_path, tiny_checkpoint, tiny_data,
                                                                   compared_artifacts):
    """A model.onnx that no longer matches its manifest is not reused: compare exports it again."""
    from aspp_deploy.io import sha256_file

    arts = compared_artifacts(tmp_path / "artifacts")
    first = cli("compare", "--checkpoint", tiny_checkpoint, "--data", tiny_data, "--artifacts", arts,
                "--report", tmp_path / "r1", "--limit", 1, "--warmup", 0, "--iters", 1)
    assert first.exit_code == 0, first.output
    good = sha256_file(arts / "model.onnx")
    raw = bytearray((arts / "model.onnx").read_bytes())
    raw[len(raw) // 2] ^= 0x01
    (arts / "model.onnx").write_bytes(bytes(raw))
    second = cli("compare", "--checkpoint", tiny_checkpoint, "--data", tiny_data, "--artifacts", arts,
                 "--report", tmp_path / "r2", "--limit", 1, "--warmup", 0, "--iters", 1)
    assert second.exit_code == 0, second.output
    assert sha256_file(arts / "model.onnx") == good  # made again, bit for bit
