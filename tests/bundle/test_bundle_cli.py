"""``aspp-deploy bundle``: every part present, hashes that match, bad input refused with one line and
nothing left behind, an older bundle replaced atomically."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from aspp_deploy.bundle import bundle as bundle_mod
from aspp_deploy.io import sha256_file
from tests.bundle.conftest import run_cli

EXPECTED = [
    "README.md", "build.sh", "bundle.json", "requirements.txt",
    "models/manifest.json", "models/model.onnx", "models/model.fp16.onnx", "models/model.int8-trt.onnx",
    "models/model.fp16.deepstream.onnx", "models/model.int8-trt.deepstream.onnx",
    "deepstream/config_infer_primary_aspp_fp16.txt", "deepstream/config_infer_primary_aspp_int8.txt",
    "triton/model_repository/aspp_trt/config.pbtxt", "triton/model_repository/aspp_onnx/config.pbtxt",
    "triton/model_repository/aspp/config.pbtxt", "triton/model_repository/aspp/1/model.py",
    "triton/model_repository/aspp/1/service.json", "triton/model_repository/aspp/1/aspp_deploy/runtime/images.py",
    "calibration/README.md", "selftest/reference.json",
    "aspp_deploy/__init__.py", "aspp_deploy/runtime/preprocess.py", "aspp_deploy/runtime/trt/build.py",
    "aspp_deploy/runtime/trt/runtime.py", "aspp_deploy/runtime/segmenter.py", "aspp_deploy/runtime/__main__.py",
    "aspp_deploy/runtime/manifest.py", "aspp_deploy/runtime/engines/ort_engine.py",
]


def listing(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    return lines[0]


def test_bundle_has_every_part(made_bundle):
    out = made_bundle.out
    for rel in EXPECTED:
        assert (out / rel).is_file(), rel
    assert len(list((out / "calibration" / "images").iterdir())) == 8
    assert (out / "triton/model_repository/aspp_trt/1").is_dir()
    assert os.access(out / "build.sh", os.X_OK)
    subprocess.run(["bash", "-n", str(out / "build.sh")], check=True)  # it parses as a shell script
    assert not any(p.name in ("torch", "onnx") for p in (out / "aspp_deploy").iterdir())
    assert not (out / "aspp_deploy" / "export").exists() and not (out / "aspp_deploy" / "model").exists()


def test_bundle_json_hashes_every_file(made_bundle):
    out = made_bundle.out
    info = json.loads((out / "bundle.json").read_text())
    assert info["format"] == "aspp-deploy/jetson-bundle" and info["precisions"] == ["fp16", "int8"]
    on_disk = {p for p in listing(out) if (out / p).is_file()} - {"bundle.json"}
    assert set(info["files"]) == on_disk
    for rel, f in info["files"].items():
        assert sha256_file(out / rel) == f["sha256"] and (out / rel).stat().st_size == f["bytes"], rel
    assert json.loads(made_bundle.json.read_text()) == info  # --json writes the same description
    manifest = json.loads((out / "models" / "manifest.json").read_text())["artifacts"]
    for name, entry in manifest.items():
        assert entry["onnx_sha256"] == sha256_file(out / "models" / name), name
    assert manifest["model.fp16.onnx"]["source"]["onnx"] == "model.onnx"
    assert manifest["model.int8-trt.deepstream.onnx"]["source"]["onnx"] == "model.int8-trt.onnx"


def test_bundle_records_a_build_path_for_every_jetpack(made_bundle):
    info = json.loads((made_bundle.out / "bundle.json").read_text())
    paths = info["build_paths"]
    assert list(paths) == ["8.5", "8.6", "10.3", "10.13", "11.4"]
    assert paths["8.5"]["fp16"]["onnx"] == "model.onnx" and paths["8.5"]["fp16"]["builder_flags"] == ["FP16"]
    assert paths["10.3"]["fp16"]["onnx"] == "model.fp16.onnx" and paths["10.3"]["fp16"]["strongly_typed"]
    assert all(paths[v]["int8"]["onnx"] == "model.int8-trt.onnx" for v in paths)
    assert "--stronglyTyped" in paths["10.13"]["int8"]["trtexec"] and "--int8" in paths["8.6"]["int8"]["trtexec"]
    readme = (made_bundle.out / "README.md").read_text()
    for jetpack in ("5.1.x", "6.0", "6.1 / 6.2", "7.0 (Thor)"):
        assert f"| {jetpack} |" in readme
    assert paths["8.5"]["fp16"]["trtexec"] in readme


def test_rebundle_reuses_artifacts_and_replaces_the_old_bundle(made_bundle, tmp_path, calib_images):
    import shutil

    out = tmp_path / "b" / "jetson"
    shutil.copytree(made_bundle.out, out)
    (out / "stale.txt").write_text("from an older bundle")
    result = run_cli("bundle", "--onnx", made_bundle.artifacts / "model.onnx", "--calib", calib_images,
                     "--precision", "fp16", "--out", out)
    assert result.exit_code == 0, result.output
    assert "reusing" in result.output and "quantizing" not in result.output
    assert not (out / "stale.txt").exists() and not (out / "models" / "model.int8-trt.onnx").exists()
    assert [p.name for p in out.parent.iterdir()] == ["jetson"]  # no temporary siblings left


def test_a_failure_while_writing_keeps_the_old_bundle(made_bundle, tmp_path, monkeypatch):
    import shutil

    out = tmp_path / "jetson"
    shutil.copytree(made_bundle.out, out)
    before = {p: sha256_file(out / p) for p in listing(out) if (out / p).is_file()}

    def broken(info):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bundle_mod.texts, "readme_md", broken)
    req = bundle_mod.BundleRequest(made_bundle.artifacts / "model.onnx",
                                   {"fp16": made_bundle.artifacts / "model.fp16.onnx"}, out,
                                   selftest_images=sorted((made_bundle.out / "selftest").glob("*.jpg")))
    with pytest.raises(OSError):
        bundle_mod.bundle_from_onnx(req)
    assert {p: sha256_file(out / p) for p in listing(out) if (out / p).is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jetson"]


def test_missing_checkpoint_fails_cleanly(tmp_path):
    out = tmp_path / "bundle" / "jetson"
    line = one_error_line(run_cli("bundle", "--checkpoint", tmp_path / "nope.pt", "--artifacts", tmp_path / "art",
                                  "--out", out))
    assert "checkpoint not found" in line
    assert listing(tmp_path) == []  # not even the parent folder was made


def test_unwritable_out_fails_cleanly(tmp_path, made_bundle):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    line = one_error_line(run_cli("bundle", "--onnx", made_bundle.artifacts / "model.onnx",
                                  "--out", blocker / "jetson"))
    assert "cannot write to" in line
    assert listing(tmp_path) == ["a-file"]


def test_a_foreign_folder_is_never_replaced(tmp_path, made_bundle):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    line = one_error_line(run_cli("bundle", "--onnx", made_bundle.artifacts / "model.onnx", "--out", out))
    assert "is not an aspp-deploy bundle" in line
    assert listing(tmp_path) == ["mine", "mine/notes.txt"]


@pytest.mark.parametrize("args, fragment", [
    (["--target", "xavier-nx"], "--target xavier-nx is not supported: only jetson"),
    (["--precision", "fp16,int4"], "--precision int4 is not supported"),
    (["--name", "my model"], "--name 'my model' must be"),
    (["--onnx", "missing.onnx"], "ONNX model not found: missing.onnx"),
])
def test_bad_options_fail_with_one_line(tmp_path, args, fragment):
    out = tmp_path / "jetson"
    line = one_error_line(run_cli("bundle", *args, "--out", out))
    assert fragment in line
    assert not out.exists()


def test_a_quantized_onnx_is_not_taken_for_the_fp32_one(tmp_path, made_bundle):
    line = one_error_line(run_cli("bundle", "--onnx", made_bundle.artifacts / "model.fp16.onnx",
                                  "--out", tmp_path / "jetson"))
    assert "already reduced precision" in line or "give the FP32 ONNX" in line


def test_bad_calib_cache_and_dynamic_input_are_refused_before_quantizing(tmp_path, tiny_checkpoint, calib_images):
    """Both used to fail only after the FP16/INT8 files were made beside the source."""
    art = tmp_path / "art"
    assert run_cli("export", "--checkpoint", tiny_checkpoint, "--out", art).exit_code == 0
    before = sorted(p.name for p in art.iterdir())
    line = one_error_line(run_cli("bundle", "--onnx", art / "model.onnx", "--precision", "int8", "--calib",
                                  calib_images, "--calib-cache", tmp_path / "none.calib", "--out", tmp_path / "b"))
    assert "none.calib" in line and "not found" in line
    line = one_error_line(run_cli("bundle", "--onnx", art / "model.onnx", "--precision", "fp16", "--calib-cache",
                                  tmp_path / "none.calib", "--out", tmp_path / "b"))
    assert "add --precision int8" in line
    dyn = tmp_path / "dyn"
    assert run_cli("export", "--checkpoint", tiny_checkpoint, "--out", dyn, "--dynamic", "batch").exit_code == 0
    line = one_error_line(run_cli("bundle", "--onnx", dyn / "model.onnx", "--precision", "fp16",
                                  "--out", tmp_path / "b"))
    assert "static input" in line
    assert sorted(p.name for p in art.iterdir()) == before and sorted(p.name for p in dyn.iterdir()) == before
    assert not (tmp_path / "b").exists()
