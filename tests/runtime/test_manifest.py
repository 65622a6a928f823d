"""The typed manifest: every record reads back exactly as written (unknown keys, nulls and older
records included), and every read verifies the format, the entry and the artifact's bytes."""

from __future__ import annotations

import json

import pytest

from aspp_deploy.errors import InputError
from aspp_deploy.runtime.manifest import (ENGINE_FORMAT, FORMAT, MANIFEST_NAME, ArtifactEntry, EngineManifest, Manifest,
                                          engine_manifest_path, read_artifact_entry, sha256_bytes)
from aspp_deploy.runtime.preprocess import Preprocess
from aspp_deploy.runtime.vocab import Precision, Target

# An entry as an older version wrote it: no precision, a preprocessing record with fewer keys, a null
# object, the "any" target of an FP16 ONNX, and keys this version does not type.
OLD_ENTRY = {"classes": ["background", "cat"], "palette": [[0, 0, 0], [128, 0, 0]],
             "preprocess": {"height": 8, "width": 12, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
             "inputs": [{"name": "x", "shape": ["batch", 3, 8, 12], "dtype": "float32"}],
             "outputs": [{"name": "y", "shape": [1, 2, 8, 12], "profile": {"kept": True}}],
             "target": "any", "source": None, "trt_check": {"10.3": "ok"}, "future_key": [1, {"a": None}]}


def test_an_older_entry_reads_with_the_defaults_it_meant_and_writes_back_unchanged():
    entry = ArtifactEntry.from_dict(json.loads(json.dumps(OLD_ENTRY)), "m.onnx")
    assert entry.precision == Precision.fp32 and entry.target is None
    assert entry.preprocess == Preprocess(8, 12, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert entry.input is not None and entry.input.name == "x" and entry.static_batch is None
    assert entry.extra == {"trt_check": {"10.3": "ok"}, "future_key": [1, {"a": None}]}
    assert entry.to_dict() == OLD_ENTRY


def test_a_changed_field_is_written_anew_and_the_rest_as_read():
    entry = ArtifactEntry.from_dict(OLD_ENTRY, "m.onnx")
    entry.precision, entry.target = Precision.int8, Target.trt
    entry.preprocess = entry.preprocess.with_size(16, 16)
    out = entry.to_dict()
    assert out["precision"] == "int8" and out["target"] == "trt"
    assert Preprocess.from_dict(out["preprocess"]).height == 16 and out["preprocess"]["policy"] == "stretch"
    assert {k: v for k, v in out.items() if k not in ("precision", "target", "preprocess")} == {
        k: v for k, v in OLD_ENTRY.items() if k not in ("target", "preprocess")}


@pytest.mark.parametrize("change, fragment", [
    ({"classes": []}, "'classes'"),
    ({"palette": [[0, 0, 300], [0, 0, 0]]}, "'palette'"),
    ({"preprocess": {"height": "tall"}}, "preprocessing record"),
    ({"precision": "fp8"}, "'precision' is 'fp8'"),
    ({"inputs": []}, "'inputs'"),
    ({"external_data": {"w.bin": 5}}, "'external_data'"),
])
def test_a_malformed_entry_is_one_error_naming_the_file(change, fragment):
    with pytest.raises(InputError, match=fragment) as err:
        ArtifactEntry.from_dict({**OLD_ENTRY, **change}, "models/m.onnx")
    assert "models/m.onnx" in str(err.value) and "\n" not in str(err.value)


def test_manifest_json_round_trips_and_refuses_a_foreign_format(tmp_path):
    data = {"format": FORMAT, "artifacts": {"m.onnx": OLD_ENTRY}, "note": "kept"}
    assert Manifest.from_dict(data, "x").to_dict() == data
    old = Manifest.from_dict({"artifacts": {"m.onnx": OLD_ENTRY}}, "x")  # written before the format was recorded
    assert old.entry("m.onnx", tmp_path) is not None and old.entry("other.onnx", tmp_path) is None
    with pytest.raises(InputError, match="format is 'aspp-deploy/manifest/v9'"):
        Manifest.from_dict({"format": "aspp-deploy/manifest/v9", "artifacts": {}}, tmp_path / MANIFEST_NAME)


def test_reading_an_artifact_verifies_its_bytes_against_the_sidecar(tmp_path):
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"model bytes")
    entry = dict(OLD_ENTRY, onnx_sha256=sha256_bytes(b"model bytes"))
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"artifacts": {"m.onnx": entry}}))
    assert read_artifact_entry(onnx, None).classes == ["background", "cat"]
    assert read_artifact_entry(onnx, json.dumps(OLD_ENTRY)).to_dict()["trt_check"] == {"10.3": "ok"}
    onnx.write_bytes(b"other bytes")
    with pytest.raises(InputError, match="m.onnx does not match its entry .*sha256 differs"):
        read_artifact_entry(onnx, json.dumps(OLD_ENTRY))
    (tmp_path / MANIFEST_NAME).unlink()
    with pytest.raises(InputError, match="not valid JSON"):
        read_artifact_entry(onnx, "{nope")
    with pytest.raises(InputError, match="has no aspp-deploy manifest"):
        read_artifact_entry(onnx, None)


def test_the_engine_manifest_round_trips_and_verifies_the_engine(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    record = {"format": ENGINE_FORMAT, "schema": 1, "engine_bytes": 4, "engine_sha256": sha256_bytes(b"plan"),
              "tensorrt_version": "10.3.0.30", "precision": "fp16", "gpu": {"name": "Orin"}, "dla_core": None,
              "preprocess": OLD_ENTRY["preprocess"], "classes": OLD_ENTRY["classes"], "palette": OLD_ENTRY["palette"]}
    engine_manifest_path(engine).write_text(json.dumps(record))
    manifest = EngineManifest.read(engine)
    assert manifest.to_dict() == record and manifest.precision == Precision.fp16
    manifest.verify_bytes(b"plan", engine)
    with pytest.raises(InputError, match="m.engine does not match its manifest"):
        manifest.verify_bytes(b"PLAN", engine)
    engine_manifest_path(engine).write_text(json.dumps(dict(record, precision="best")))
    with pytest.raises(InputError, match="m.engine.json is malformed: 'precision'"):
        EngineManifest.read(engine)
