"""Links and special files: a write never follows a link it did not create and replaces only regular
files; a dataset's images and masks are read only from inside the dataset folder; temporary folders
of a killed run are removed by the next one; a split list that is not text is one error line."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.hostile.conftest import cli, listing, refused

ROOT = Path(__file__).resolve().parents[2]
PRECIOUS = b"precious: must survive every run\n"


def _first_val(data: Path) -> str:
    return (data / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[0]


def _victim(tmp_path: Path) -> Path:
    """A file outside every output folder that no command may touch."""
    victim = tmp_path / "elsewhere" / "victim.txt"
    victim.parent.mkdir(exist_ok=True)
    victim.write_bytes(PRECIOUS)
    return victim


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --- the writability probe --------------------------------------------------------------------------

@pytest.mark.parametrize("command", ["data synth", "export", "predict"])
@pytest.mark.parametrize("target", ["an existing file", "a missing file"])
def test_a_planted_probe_link_is_left_alone(command, target, tmp_path, tiny_checkpoint, tiny_data):
    out = tmp_path / "out"
    out.mkdir()
    victim = _victim(tmp_path) if target == "an existing file" else tmp_path / "elsewhere" / "created.txt"
    (out / ".aspp-deploy-write-test").symlink_to(victim)
    args = {"data synth": ["data", "synth", "--out", out, "--train", 1, "--val", 0],
            "export": ["export", "--checkpoint", tiny_checkpoint, "--out", out, "--height", 64, "--width", 64],
            "predict": ["predict", "--checkpoint", tiny_checkpoint, "--out", out,
                        tiny_data / "JPEGImages" / f"{_first_val(tiny_data)}.jpg"]}[command]
    r = cli(*args)
    assert r.exit_code == 0, r.output
    link = out / ".aspp-deploy-write-test"
    assert link.is_symlink() and os.readlink(link) == str(victim)  # the planted link is untouched
    if target == "an existing file":
        assert victim.read_bytes() == PRECIOUS  # not truncated
    else:
        assert not os.path.lexists(victim)  # not created through the link
    assert not any(p.name.startswith(".aspp-deploy-write-test.") for p in out.iterdir())  # our probe is gone


# --- writes through links inside the output folder ---------------------------------------------------

@pytest.mark.parametrize("linked", ["JPEGImages", "SegmentationClass", "ImageSets"])
def test_data_synth_never_writes_through_a_linked_subfolder(linked, tmp_path):
    out = tmp_path / "synth"
    out.mkdir()
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "Segmentation").mkdir(parents=True)  # ImageSets/Segmentation resolves there
    (out / linked).symlink_to(elsewhere, target_is_directory=True)
    refused(cli("data", "synth", "--out", out, "--train", 1, "--val", 1), linked)
    assert listing(elsewhere) == ["Segmentation"]  # nothing written through the link
    assert (out / linked).is_symlink() and os.readlink(out / linked) == str(elsewhere)
    assert not any(p.name.endswith(".jpg") or p.name.endswith(".png") or p.name.endswith(".txt")
                   for p in out.rglob("*"))
    if linked == "JPEGImages":  # a link the user names as --out is their choice: it is followed
        (tmp_path / "by_link").symlink_to(elsewhere, target_is_directory=True)
        r = cli("data", "synth", "--out", tmp_path / "by_link", "--train", 1, "--val", 0)
        assert r.exit_code == 0, r.output
        assert (elsewhere / "JPEGImages" / "train_00000.jpg").is_file()


def test_a_planted_link_at_an_output_name_is_refused_and_kept(tmp_path):
    from aspp_deploy.errors import InputError
    from aspp_deploy.io import atomic_write_text, ensure_writable

    out = tmp_path / "out"
    ensure_writable(out)
    victim = _victim(tmp_path)
    (out / "manifest.json").symlink_to(victim)
    with pytest.raises(InputError, match="symbolic link"):
        atomic_write_text(out / "manifest.json", "{}")
    assert (out / "manifest.json").is_symlink() and victim.read_bytes() == PRECIOUS
    # a linked folder inside the output folder is never passed through
    (out / "sub").symlink_to(victim.parent, target_is_directory=True)
    with pytest.raises(InputError, match="symbolic link inside the output folder"):
        atomic_write_text(out / "sub" / "notes.txt", "x")
    assert sorted(p.name for p in victim.parent.iterdir()) == ["victim.txt"]
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "sub"]  # no temporary left


# --- --json at a FIFO or a link ----------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["a FIFO", "a link"])
@pytest.mark.parametrize("command", ["presets", "data calib"])
def test_json_at_a_fifo_or_a_link_is_refused_and_untouched(kind, command, tmp_path):
    target = tmp_path / "report.json"
    victim = _victim(tmp_path)
    if kind == "a FIFO":
        os.mkfifo(target)
    else:
        target.symlink_to(victim)
    args = {"presets": ["presets"],
            "data calib": ["data", "calib", "--out", tmp_path / "calib", "--count", 1]}[command]
    refused(cli(*args, "--json", target), "--json")
    if kind == "a FIFO":
        assert stat.S_ISFIFO(os.lstat(target).st_mode)
    else:
        assert target.is_symlink() and os.readlink(target) == str(victim)
    assert victim.read_bytes() == PRECIOUS
    assert not (tmp_path / "calib").exists()  # refused before the work


def test_the_write_path_replaces_only_regular_files(tmp_path):
    """Also when the destination became special after the arguments were checked."""
    from aspp_deploy.errors import InputError
    from aspp_deploy.io import atomic_write_text

    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "folder").mkdir()
    for name, what in [("fifo", "FIFO"), ("folder", "folder")]:
        with pytest.raises(InputError, match=what):
            atomic_write_text(tmp_path / name, "{}")
    assert stat.S_ISFIFO(os.lstat(tmp_path / "fifo").st_mode) and (tmp_path / "folder").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "folder"]


# --- reads stay inside the dataset -------------------------------------------------------------------

def _outside_image(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    secret = outside / "secret.jpg"
    Image.fromarray(np.full((128, 128, 3), 200, np.uint8)).save(secret)
    return secret


@pytest.mark.parametrize("what", ["image", "mask"])
@pytest.mark.parametrize("command", ["eval", "compare"])
def test_a_dataset_link_to_a_file_outside_is_refused(command, what, data_copy, tiny_checkpoint, tmp_path):
    from aspp_deploy.data.images import open_data

    name = _first_val(data_copy)
    # a link that stays inside the dataset is read, and the dataset folder itself may be a link
    other = (data_copy / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[1]
    moved = data_copy / "store" / f"{other}.jpg"
    moved.parent.mkdir()
    (data_copy / "JPEGImages" / moved.name).rename(moved)
    (data_copy / "JPEGImages" / moved.name).symlink_to(Path("..") / "store" / moved.name)
    (tmp_path / "by_link").symlink_to(data_copy, target_is_directory=True)
    assert len(open_data(data_copy)) == len(open_data(tmp_path / "by_link")) == 4
    if what == "image":
        secret = _outside_image(tmp_path)
        planted = data_copy / "JPEGImages" / f"{name}.jpg"
    else:
        secret = tmp_path / "outside" / "secret.png"
        secret.parent.mkdir()
        shutil.copy(data_copy / "SegmentationClass" / f"{name}.png", secret)
        planted = data_copy / "SegmentationClass" / f"{name}.png"
    planted.unlink()
    planted.symlink_to(secret)
    args = {"eval": ["eval", "--checkpoint", tiny_checkpoint, "--data", data_copy],
            "compare": ["compare", "--checkpoint", tiny_checkpoint, "--data", data_copy, "--artifacts",
                        tmp_path / "a", "--report", tmp_path / "r", "--iters", 1, "--warmup", 0,
                        "--height", 64, "--width", 64]}[command]
    line = refused(cli(*args), "outside the dataset folder")
    assert planted.name in line
    assert not (tmp_path / "r").exists()


def test_an_image_folder_link_to_a_file_outside_is_refused(artifacts, tiny_data, tmp_path):
    from aspp_deploy.data.images import open_data

    images = tmp_path / "images"
    images.mkdir()
    for p in sorted((tiny_data / "JPEGImages").iterdir())[:2]:
        shutil.copy(p, images / p.name)
    (images / "store").mkdir()
    shutil.copy(images / p.name, images / "store" / "inside.jpg")
    (images / "inside.jpg").symlink_to(Path("store") / "inside.jpg")  # stays inside: read
    assert len(open_data(images)) == 3
    (images / "zz.jpg").symlink_to(_outside_image(tmp_path))
    model = artifacts / "model.onnx"
    line = refused(cli("eval", "--backend", "onnxruntime", "--model", model, "--data", images, "--reference", model),
                   "outside the dataset folder")
    assert "zz.jpg" in line


def test_a_split_list_that_is_not_text_is_one_line(data_copy, tiny_checkpoint):
    lst = data_copy / "ImageSets" / "Segmentation" / "val.txt"
    lst.write_bytes(b"\xff\xfe\x00v\x00a\x00l\x00\n" + lst.read_bytes())
    line = refused(cli("eval", "--checkpoint", tiny_checkpoint, "--data", data_copy), "val.txt")
    assert "UTF-8" in line


# --- temporary folders of a killed run -----------------------------------------------------------------

@pytest.fixture
def private_tmp(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "systmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


_HOLD_WORK_DIR = (
    "import sys, time\n"
    "from pathlib import Path\n"
    "import tempfile; tempfile.tempdir = sys.argv[1]\n"
    "from aspp_deploy.precision.int8_ort import work_dir\n"
    "d = work_dir()\n"
    "(Path(d.name) / 'model.onnx').write_bytes(b'x' * 100000)\n"
    "print(d.name, flush=True)\n"
    "time.sleep(300)\n"
)

_HOLD_REPLACE_FOLDER = (
    "import sys, time\n"
    "from pathlib import Path\n"
    "from aspp_deploy.bundle.bundle import replace_folder\n"
    "def assemble(root):\n"
    "    (root / 'model.onnx').write_bytes(b'x' * 100000)\n"
    "    print(root, flush=True)\n"
    "    time.sleep(300)\n"
    "replace_folder(Path(sys.argv[1]), assemble)\n"
)


def _holder(code: str, arg: Path) -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen([sys.executable, "-c", code, str(arg)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    assert line, proc.communicate(timeout=60)
    return proc, Path(line)


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


def test_a_killed_runs_work_folder_is_removed_by_the_next_and_a_live_one_kept(private_tmp):
    from aspp_deploy.precision.int8_ort import work_dir

    dead_proc, dead_folder = _holder(_HOLD_WORK_DIR, private_tmp)
    live_proc, live_folder = _holder(_HOLD_WORK_DIR, private_tmp)
    try:
        _kill(dead_proc)
        assert dead_folder.is_dir() and dead_folder.parent == private_tmp  # kill -9 leaves it
        assert str(dead_proc.pid) in dead_folder.name
        planted = private_tmp / f"aspp-quantize-{_dead_pid()}-abcd1234"  # also one from a pid long gone
        planted.mkdir()
        victim_dir = private_tmp.parent / "keep"
        victim_dir.mkdir()
        (victim_dir / "data.bin").write_bytes(PRECIOUS)
        link = private_tmp / f"aspp-quantize-{_dead_pid()}-linkname"  # a link is never followed nor removed
        link.symlink_to(victim_dir, target_is_directory=True)
        other = private_tmp / f"someone-else-{_dead_pid()}-abcd1234"  # not our prefix
        other.mkdir()
        with work_dir() as tmp:
            assert Path(tmp).is_dir() and str(os.getpid()) in Path(tmp).name
        assert not dead_folder.exists() and not planted.exists()
        assert live_folder.is_dir()  # its writer is alive
        assert link.is_symlink() and (victim_dir / "data.bin").read_bytes() == PRECIOUS
        assert other.is_dir()
    finally:
        _kill(live_proc)
        if dead_proc.poll() is None:
            _kill(dead_proc)


def test_a_killed_bundles_half_built_folder_is_removed_by_the_next_build(tmp_path):
    from aspp_deploy.bundle.bundle import replace_folder

    out = tmp_path / "bundle"
    proc, building = _holder(_HOLD_REPLACE_FOLDER, out)
    _kill(proc)
    assert building.is_dir() and building.name.startswith(".bundle.") and building.name.endswith(".tmp")
    live, live_building = _holder(_HOLD_REPLACE_FOLDER, out)
    try:
        def assemble(root: Path) -> str:
            (root / "bundle.json").write_text("{}")
            return "done"

        assert replace_folder(out, assemble) == "done"
        assert not building.exists()  # the killed run's half-built folder
        assert live_building.is_dir()  # the live writer's is kept
        assert (out / "bundle.json").is_file()
    finally:
        _kill(live)


def test_calibration_image_linked_from_outside_is_refused(tmp_path, exported):
    """A calibration folder holding a link to an image elsewhere: quantize refuses it, naming the file."""
    import shutil

    from PIL import Image

    calib = tmp_path / "calib"
    calib.mkdir()
    for k in range(8):
        Image.new("RGB", (64, 64), (k * 30, 40, 90)).save(calib / f"c{k}.png")
    outside = tmp_path / "elsewhere.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(outside)
    (calib / "c0.png").unlink()
    (calib / "c0.png").symlink_to(outside)
    art = tmp_path / "art"
    shutil.copytree(exported.parent, art)
    r = cli("quantize", "--model", art / "model.onnx", "--precision", "int8", "--target", "cpu", "--calib", calib,
            "--budget-images", "0")
    refused(r, "c0.png")
    assert not (art / "model.int8-cpu.onnx").exists()
