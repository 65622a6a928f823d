"""Interruption: a killed or interrupted run leaves either the old file or the complete new one,
never a temporary file that a later run could take for input; leftovers of a killed writer are
removed by the next run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from aspp_deploy.io import atomic_path, atomic_write_text, clean_orphans, sha256_file
from aspp_deploy.runtime.calibration import calibration_files
from tests.hostile.conftest import cli, refused

ROOT = Path(__file__).resolve().parents[2]


def _sigint_as_on_a_terminal() -> None:
    """The child gets Ctrl-C as a command run from a terminal does. A test run started in the background
    (`pytest &` in a script) inherits SIGINT ignored, and Python, rightly, keeps an inherited ignore."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _cli_process(*args: str) -> subprocess.Popen:
    code = "import sys; from aspp_deploy.cli import main; sys.argv = ['aspp-deploy', *sys.argv[1:]]; main()"
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_sigint_as_on_a_terminal)


@pytest.fixture
def ctrl_c_raises():
    """Ctrl-C raises KeyboardInterrupt in this process for the test, whatever the test run inherited."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _wait_for_files(folder: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if folder.is_dir() and sum(1 for p in folder.iterdir() if not p.name.startswith(".")) >= n:
            return
        if proc.poll() is not None:
            pytest.fail(f"the writer ended early: {proc.communicate()}")
        time.sleep(0.05)
    pytest.fail("the writer wrote nothing in time")


def test_a_temporary_file_never_carries_an_input_extension(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "calib_00000.jpg")
    final = tmp_path / "calib_00001.jpg"
    with atomic_path(final) as tmp:
        assert tmp.name.startswith(".") and tmp.suffix == ".tmp" and tmp.parent == tmp_path
        Image.new("RGB", (4, 4)).save(tmp, format="JPEG")
        assert [p.name for p in calibration_files(tmp_path)] == ["calib_00000.jpg"]  # mid-write
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib_00000.jpg", "calib_00001.jpg"]


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_an_interrupted_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, error):
    final = tmp_path / "manifest.json"
    final.write_text("old")
    with pytest.raises(error):
        with atomic_path(final) as tmp:
            tmp.write_text("half")
            raise error()
    assert final.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_a_hidden_leftover_is_never_a_calibration_image(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.jpg")
    (tmp_path / ".a.jpg.123.abc.jpg").write_bytes(b"\xff\xd8 half a jpeg")  # an older writer's leftover
    assert [p.name for p in calibration_files(tmp_path)] == ["a.jpg"]


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 130)])
def test_data_calib_stopped_by_a_signal_says_so_and_leaves_only_whole_images(tmp_path, sig, code):
    out = tmp_path / "calib"
    proc = _cli_process("data", "calib", "--out", out, "--count", "5000")
    _wait_for_files(out, 3, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "Traceback (most recent call last)" not in err and "interrupted" in err
    names = [p.name for p in out.iterdir()]
    assert all(not n.startswith(".") for n in names), names  # the temporary file was removed
    for p in out.iterdir():
        with Image.open(p) as im:
            im.load()  # every visible image is whole


def test_a_killed_writer_leaves_only_hidden_tmp_files_and_the_next_run_removes_them(tmp_path):
    out = tmp_path / "calib"
    proc = _cli_process("data", "calib", "--out", out, "--count", "5000")
    _wait_for_files(out, 3, proc)
    proc.kill()
    proc.wait(timeout=60)
    leftovers = [p for p in out.iterdir() if p.name.startswith(".")]
    assert all(p.suffix == ".tmp" for p in leftovers), leftovers
    assert all(p.suffix == ".jpg" for p in calibration_files(out))
    # a leftover of a dead writer (real or planted) is removed by the next write in the folder
    planted = out / f".calib_00000.jpg.{proc.pid}.deadbeef.tmp"
    planted.write_bytes(b"half")
    from aspp_deploy.io import _cleaned

    _cleaned.discard(str(out.resolve()))
    atomic_write_text(out / "notes.txt", "next run")
    assert not any(p.name.startswith(".") for p in out.iterdir())


def test_a_live_writers_temporary_file_is_kept(tmp_path):
    mine = tmp_path / f".x.json.{os.getpid()}.abc.tmp"
    mine.write_text("in progress")
    clean_orphans(tmp_path)
    assert mine.exists()


def test_a_kill_between_the_onnx_and_its_manifest_is_detected(artifacts, tiny_data, tmp_path):
    """Simulate the worst moment: the new ONNX is in place, the process dies before the manifest is
    updated. Every reader refuses the pair instead of describing the new model with the old entry."""
    code = (
        "import os, sys; from pathlib import Path\n"
        "import aspp_deploy.export.manifest as m\n"
        "m.update_sidecar = lambda *a, **k: os._exit(9)\n"
        "from aspp_deploy.export.onnx_export import ExportOptions, onnx_from_checkpoint\n"
        "onnx_from_checkpoint(Path(sys.argv[1]), Path(sys.argv[2]), ExportOptions(32, 32))\n"
    )
    from tests.conftest import make_checkpoint

    ckpt = make_checkpoint(tmp_path / "other.pt", seed=3)
    before = json.loads((artifacts / "manifest.json").read_text())
    proc = subprocess.run([sys.executable, "-c", code, str(ckpt), str(artifacts)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 9, proc.stderr
    assert json.loads((artifacts / "manifest.json").read_text()) == before  # the old entry...
    assert sha256_file(artifacts / "model.onnx") != before["artifacts"]["model.onnx"]["onnx_sha256"]  # ...new file
    refused(cli("eval", "--backend", "onnxruntime", "--model", artifacts / "model.onnx", "--data", tiny_data),
            "does not match its entry")


def test_ctrl_c_while_an_artifact_is_committed_arrives_after_the_manifest(artifacts, monkeypatch, ctrl_c_raises):
    """Ctrl-C between the ONNX rename and the manifest update is held until both are written."""
    import aspp_deploy.export.manifest as manifest

    real = manifest.update_sidecar

    def interrupted_update(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl-C right here
        time.sleep(0.05)
        return real(*args, **kwargs)

    monkeypatch.setattr(manifest, "update_sidecar", interrupted_update)
    path = artifacts / "model.onnx"
    data = path.read_bytes() + b""
    entry = dict(json.loads((artifacts / "manifest.json").read_text())["artifacts"]["model.onnx"])
    entry["note"] = "second"
    with pytest.raises(KeyboardInterrupt):
        manifest.write_with_entry(path, data, entry)
    recorded = json.loads((artifacts / "manifest.json").read_text())["artifacts"]["model.onnx"]
    assert recorded["note"] == "second" and recorded["onnx_sha256"] == sha256_file(path)
