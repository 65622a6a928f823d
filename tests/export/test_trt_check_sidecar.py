"""The TensorRT pre-flight record: a summary per version in the manifest entry and the ONNX metadata,
every finding in ``<stem>.trt_check.json`` beside the ONNX (checked by sha256), and entries written
before summaries (every finding inline) still read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest

from aspp_deploy.export.preflight import preflight_line
from aspp_deploy.errors import InputError
from aspp_deploy.export.manifest import embed, read_embedded, read_onnx_manifest, write_with_entry
from aspp_deploy.export.trt_check import (SIDECAR_KEY, TRT_VERSIONS, CheckReport, Finding, check_for_trt,
                                          read_findings, version_summaries)
from aspp_deploy.io import sha256_file


@pytest.fixture
def folder(tmp_path, exported) -> Path:
    out = tmp_path / "model"
    shutil.copytree(exported.parent, out)
    return out


def test_export_writes_the_summary_and_the_findings_beside_the_model(exported):
    entry = json.loads((exported.parent / "manifest.json").read_text())["artifacts"][exported.name]
    record = entry[SIDECAR_KEY]
    sidecar = exported.parent / record["file"]
    assert record["file"] == "model.trt_check.json" and record["sha256"] == sha256_file(sidecar)
    model = onnx.load(str(exported))
    expected = [check_for_trt(model, v) for v in TRT_VERSIONS]
    assert json.loads(sidecar.read_text())["reports"] == [r.to_dict() for r in expected]
    assert entry["trt_check"] == {r.trt_version: r.summary() for r in expected}
    assert all("findings" not in s for s in entry["trt_check"].values())
    assert read_embedded(model)["trt_check"] == entry["trt_check"]  # the ONNX carries the same summary
    assert read_findings(exported, read_onnx_manifest(exported).entry) == expected


def test_summary_counts_per_severity_and_operator():
    report = CheckReport("8.5", [Finding("error", "r1", "Resize", "m"), Finding("error", "r2", "Resize", "m"),
                                 Finding("warning", "q", "QuantizeLinear", "w")])
    assert report.summary() == {"trt_version": "8.5", "ok": False, "errors": 2, "warnings": 1,
                                "counts": {"error": {"Resize": 2}, "warning": {"QuantizeLinear": 1}}}
    assert CheckReport.from_dict(report.to_dict()) == report


def test_an_entry_with_every_finding_inline_still_reads(folder):
    """Manifests written before the summaries held each version's full findings list."""
    path = folder / "model.onnx"
    model = onnx.load(str(path))
    entry = dict(read_onnx_manifest(path).entry)
    fake = Finding("error", "/up/Resize", "Resize", "mode 'cubic' is not supported (only nearest, linear)")
    old = {v: CheckReport(v, [fake] if v == "8.5" else []).to_dict() for v in TRT_VERSIONS}
    entry["trt_check"] = old
    entry.pop(SIDECAR_KEY)
    (folder / "model.trt_check.json").unlink()
    embed(model, entry)
    write_with_entry(path, model.SerializeToString(), entry)
    read = read_onnx_manifest(path).entry
    summaries = version_summaries(read)
    assert summaries["8.5"]["ok"] is False and summaries["8.5"]["counts"] == {"error": {"Resize": 1}}
    assert summaries["11"] == {"trt_version": "11", "ok": True, "errors": 0, "warnings": 0, "counts": {}}
    assert read_findings(path, read)[0].findings == [fake]
    assert preflight_line(read, path).startswith("TensorRT pre-flight: 8.5 FAIL (1 error), 8.6 ok")


def test_a_changed_findings_file_is_named_and_a_missing_one_is_not_an_error(folder):
    path = folder / "model.onnx"
    entry = read_onnx_manifest(path).entry
    sidecar = folder / "model.trt_check.json"
    sidecar.write_text(sidecar.read_text().replace('"ok": true', '"ok": false', 1))
    with pytest.raises(InputError, match="model.trt_check.json"):
        read_findings(path, entry)
    sidecar.unlink()  # a model copied without it still reads; `check` recomputes the findings
    assert read_findings(path, entry) is None
    assert read_onnx_manifest(path).entry["trt_check"] == entry["trt_check"]
