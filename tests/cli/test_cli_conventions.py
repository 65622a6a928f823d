"""One CLI convention (issue 14): usage errors as one `error:` line with exit code 1, flags without a
type in --help, --json on every command, progress lines and heartbeats when not on a terminal, one
list of image formats, `check` grouped by finding, an unstable latency figure with its spread."""

import json
import threading

import numpy as np
import onnx
import pytest
import typer
from onnx import TensorProto, helper
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from aspp_deploy.bench.stats import latency_stats
from aspp_deploy.cli import app
from aspp_deploy.cli._click import Command, Group
from aspp_deploy.cli._progress import LineProgress, working
from aspp_deploy.data.voc import IMAGE_FORMATS, VOCSegmentation
from aspp_deploy.export.trt_check import CheckReport, Finding, group_findings

runner = CliRunner()


def usage_error(result, *fragments: str) -> str:
    """The result of a usage mistake: exit 1, one `error:` line, no panel, no traceback."""
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: "), result.output
    assert "╭" not in result.output and "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_unknown_option_is_one_error_line_with_exit_1():
    line = usage_error(runner.invoke(app, ["quantize", "--frobnicate"]), "--frobnicate",
                       "aspp-deploy quantize --help")
    assert "no such option" in line


def test_missing_argument_and_bad_value_are_one_error_line():
    usage_error(runner.invoke(app, ["check"]), "missing argument", "aspp-deploy check --help")
    usage_error(runner.invoke(app, ["predict", "x.jpg", "--batch", "many"]), "--batch", "integer")
    usage_error(runner.invoke(app, ["bench", "--backend", "nonsense"]), "--backend", "nonsense")


def test_unknown_subcommand_of_a_group_is_one_error_line():
    usage_error(runner.invoke(app, ["data", "frobnicate"]), "frobnicate", "aspp-deploy data --help")


def test_flags_show_no_type_in_help():
    for command in (["predict"], ["train"], ["export"], ["data", "synth"]):
        result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        assert "<bool>" not in result.output, (command, result.output)
        assert "--help" in result.output
    assert "<int>" in runner.invoke(app, ["predict", "--help"], env={"COLUMNS": "200"}).output  # values keep theirs


def test_group_class_gives_its_commands_the_convention():
    """A command registered without cls=Command still gets it through a Group (the top-level app)."""
    demo = typer.Typer(cls=Group, add_completion=False)

    @demo.command()
    def run(fast: bool = typer.Option(False, "--fast", help="Go fast."), n: int = 1) -> None:
        print(f"ran {fast} {n}")

    @demo.command()
    def other() -> None:
        pass

    help_text = runner.invoke(demo, ["run", "--help"], env={"COLUMNS": "200"}).output
    assert "--fast" in help_text and "<bool>" not in help_text
    usage_error(runner.invoke(demo, ["run", "--n", "x"]), "--n")
    usage_error(runner.invoke(demo, ["nothing"]), "nothing")
    usage_error(runner.invoke(demo, ["--bogus"]), "--bogus")
    assert runner.invoke(demo, ["run", "--fast", "--n", "3"]).output.strip() == "ran True 3"


def test_command_class_alone():
    demo = typer.Typer(add_completion=False)

    @demo.command(cls=Command)
    def only(flag: bool = typer.Option(False, "--flag"), size: int = 2) -> None:
        print(flag, size)

    usage_error(runner.invoke(demo, ["--size", "big"]), "--size")
    assert "<bool>" not in runner.invoke(demo, ["--help"], env={"COLUMNS": "200"}).output


def test_data_commands_write_json(tmp_path):
    report = tmp_path / "synth.json"
    r = runner.invoke(app, ["data", "synth", "--out", str(tmp_path / "d"), "--train", "2", "--val", "1",
                            "--json", str(report)])
    assert r.exit_code == 0, r.output
    got = json.loads(report.read_text())
    assert got["images"] == {"train": 2, "val": 1} and got["out"] == str(tmp_path / "d")
    assert (tmp_path / "d" / "ImageSets" / "Segmentation" / "val.txt").is_file()
    report = tmp_path / "calib.json"
    r = runner.invoke(app, ["data", "calib", "--out", str(tmp_path / "c"), "--count", "2", "--json", str(report)])
    assert r.exit_code == 0, r.output
    assert json.loads(report.read_text())["images"] == 2
    assert len(list((tmp_path / "c").iterdir())) == 2


def test_train_writes_json(tmp_path, tiny_data):
    report = tmp_path / "train.json"
    r = runner.invoke(app, ["train", "--data", str(tiny_data), "--out", str(tmp_path / "run"), "--batch", "2",
                            "--crop", "64", "--aspp-depth", "16", "--size", "128", "--device", "cpu",
                            "--steps", "2", "--json", str(report)])
    assert r.exit_code == 0, r.output
    got = json.loads(report.read_text())
    assert got["checkpoint"] == str(tmp_path / "run" / "model.pt") and got["steps"] == 2
    assert got["device"] == "cpu" and got["final_loss"] > 0 and got["settings"]["batch"] == 2
    assert got["model"]["aspp_depth"] == 16


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_line_progress_logs_plain_lines_every_interval():
    out = Console(record=True, width=200, force_terminal=False)
    bar = LineProgress(out, every=10)
    clock = FakeClock()
    bar._clock = clock
    task = bar.add_task("evaluating", total=100)
    bar.update(task, completed=1)
    clock.now = 5
    bar.update(task, completed=40)
    assert out.export_text() == ""  # not yet 10 s
    clock.now = 11
    bar.update(task, completed=50)
    clock.now = 12
    bar.update(task, completed=100)
    lines = out.export_text().splitlines()
    assert lines == ["evaluating: 50/100", "evaluating: 100/100 (done)"]
    hidden = bar.add_task("hidden", total=3, visible=False)
    clock.now = 100
    bar.update(hidden, completed=1)
    assert "hidden" not in out.export_text()


def test_working_prints_heartbeats_when_not_a_terminal():
    out = Console(record=True, width=200, force_terminal=False)
    done = threading.Event()
    with working("quantizing to int8", out=out, every=0.05):
        done.wait(0.3)
    text = out.export_text()
    assert text.splitlines()[0] == "quantizing to int8: still working (0 s)"
    quick = Console(record=True, width=200, force_terminal=False)
    with working("checking", out=quick, every=30):
        pass
    assert quick.export_text() == ""  # a quick step adds no line


def test_unstable_latency_warning_names_the_figure_and_its_spread():
    samples = [100.0] * 40 + [400.0] * 10
    stats = latency_stats(samples)
    assert stats.unstable
    text = stats.unstable_warning()
    assert f"p50 {stats.p50:.2f} ms" in text and "% of the mean" in text and "--iters 200" in text
    assert not latency_stats([100.0, 101.0, 99.0, 100.5]).unstable


def _write_voc(root, name: str, ext: str, fmt: str) -> None:
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "SegmentationClass").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(root / "JPEGImages" / f"{name}{ext}", format=fmt)
    Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(root / "SegmentationClass" / f"{name}.png")


def test_voc_finds_images_in_any_case_and_tiff(tmp_path):
    _write_voc(tmp_path, "upper", ".JPG", "JPEG")
    _write_voc(tmp_path, "scan", ".tiff", "TIFF")
    _write_voc(tmp_path, "mixed", ".Png", "PNG")
    (tmp_path / "ImageSets" / "Segmentation" / "val.txt").write_text("upper\nscan\nmixed\n")
    ds = VOCSegmentation(tmp_path, "val")
    assert [s.image.name for s in ds] == ["upper.JPG", "scan.tiff", "mixed.Png"]
    (tmp_path / "ImageSets" / "Segmentation" / "val.txt").write_text("absent\n")
    Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(tmp_path / "SegmentationClass" / "absent.png")
    with pytest.raises(Exception, match=r"\.tiff"):
        VOCSegmentation(tmp_path, "val")


def test_calibration_and_predict_read_the_same_formats(tmp_path):
    from aspp_deploy.runtime.calibration import calibration_files
    from aspp_deploy.predict import find_images

    for name, fmt in (("a.JPG", "JPEG"), ("b.tif", "TIFF"), ("c.BMP", "BMP")):
        Image.fromarray(np.full((8, 8, 3), 50, np.uint8)).save(tmp_path / name, format=fmt)
    (tmp_path / "notes.txt").write_text("x")
    names = {"a.JPG", "b.tif", "c.BMP"}
    assert {p.name for p in calibration_files(tmp_path, 0)} == names
    files, notes = find_images([tmp_path])
    assert {p.name for p in files} == names
    assert IMAGE_FORMATS in notes[0] and ".txt" in notes[0]


def _bad_qdq_model(path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])
    inits = [helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]),
             helper.make_tensor("z", TensorProto.UINT8, [], [128])]
    nodes, prev = [], "x"
    for i in range(5):
        nodes += [helper.make_node("QuantizeLinear", [prev, "s", "z"], [f"q{i}"], name=f"q{i}"),
                  helper.make_node("DequantizeLinear", [f"q{i}", "s", "z"], [f"d{i}"], name=f"d{i}")]
        prev = f"d{i}"
    nodes.append(helper.make_node("Identity", [prev], ["y"], name="out"))
    graph = helper.make_graph(nodes, "g", [x], [y], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_group_findings_merges_versions_and_nodes():
    same = Finding("error", "n1", "QuantizeLinear", "zero point must be 0")
    reports = [CheckReport("8.5", [same, Finding("warning", "w", "Cast", "INT64")]),
               CheckReport("10.3", [same, Finding("error", "n2", "QuantizeLinear", "zero point must be 0")])]
    groups = group_findings(reports)
    assert [(g.severity, g.nodes, g.versions) for g in groups] == [
        ("error", ["n1", "n2"], ["8.5", "10.3"]), ("warning", ["w"], ["8.5"])]


def test_check_prints_each_kind_of_finding_once(tmp_path):
    model = tmp_path / "qdq.onnx"
    _bad_qdq_model(model)
    report = tmp_path / "check.json"
    r = runner.invoke(app, ["check", str(model), "--json", str(report)], env={"COLUMNS": "200"})
    assert r.exit_code == 1
    lines = r.stdout.splitlines()
    assert sum("zero point must be 0" in line for line in lines) == 2  # Quantize and Dequantize kinds
    assert sum("quantized type uint8" in line for line in lines) == 2  # its uint8 zero point: two more kinds
    assert len(lines) < 12, r.stdout  # 4 kinds x 2 lines + header + summary; was 20 findings x 5 versions
    assert "every version checked" in r.stdout and "and 2 more" in r.stdout
    assert lines[-1].startswith("summary: ")
    got = json.loads(report.read_text())
    assert len(got["reports"]) == 5 and got["grouped"][0]["versions"] == ["8.5", "8.6", "10.3", "10.x", "11"]


def test_third_party_warnings_and_logs_become_one_note(monkeypatch):
    import logging
    import warnings

    from aspp_deploy.cli._noise import third_party_noise

    monkeypatch.delenv("ASPP_DEPLOY_DEBUG", raising=False)
    out = Console(record=True, width=400, force_terminal=False)
    own = logging.getLogger("noisy_library_with_a_handler")
    handler = logging.StreamHandler()
    own.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # what was shown before is restored after
            with third_party_noise(out):
                for value in (70000.5, 81234.0, 1e9):
                    warnings.warn(f"the float32 number {value} will be truncated to 65504.0")
                logging.getLogger("onnxruntime.quantization").warning("Please consider pre-processing")
                own.warning("from a library that prints through its own handler")
            with pytest.raises(UserWarning):
                warnings.warn("restored")
        assert own.handlers == [handler]
    finally:
        own.removeHandler(handler)
    lines = out.export_text().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("note: 5 message(s) from other libraries hidden")
    assert '3x "the float32 number 70000.5 will be truncated to 65504.0"' in lines[0]
    assert "onnxruntime.quantization 1x" in lines[0] and "ASPP_DEPLOY_DEBUG=1" in lines[0]


def test_third_party_noise_passes_through_in_debug_mode(monkeypatch):
    import warnings

    from aspp_deploy.cli._noise import third_party_noise

    monkeypatch.setenv("ASPP_DEPLOY_DEBUG", "1")
    out = Console(record=True, width=200, force_terminal=False)
    with pytest.warns(UserWarning, match="shown"):
        with third_party_noise(out):
            warnings.warn("shown")
    assert out.export_text() == ""


def test_miou_axis_spans_a_meaningful_range():
    from aspp_deploy.bench.report import miou_axis

    lo, hi = miou_axis([0.7852, 0.7851, 0.7848])
    assert hi - lo >= 0.10 and lo < 0.7848 and hi > 0.7852  # not a 0.0004 band
    assert miou_axis([0.99, 0.995])[1] == 1.0 and miou_axis([0.01])[0] == 0.0
    lo, hi = miou_axis([0.2, 0.8])
    assert lo <= 0.2 and hi >= 0.8


def test_overlay_panel_has_no_self_difference_and_a_filled_difference():
    from aspp_deploy.bench.report import overlay_panel

    palette = [[0, 0, 0], [200, 0, 0], [0, 200, 0]]
    image = np.full((64, 64, 3), 120, np.uint8)
    truth = np.zeros((64, 64), np.uint8)
    truth[10:30, 10:30] = 1
    other = truth.copy()
    other[40, 40] = 2  # one pixel differs
    panel = overlay_panel(image, truth, [("torch fp32", truth), ("onnxruntime int8", other)], truth, palette,
                          ["background", "disc", "square"])
    from aspp_deploy.bench.report import PANEL_WIDTH

    w = PANEL_WIDTH[0]  # a 64 px image is scaled up to the smallest legible panel width
    assert panel.width == 4 * w  # image, truth, two rows: no extra column
    arr = np.asarray(panel)
    red = (arr[..., 0] > 200) & (arr[..., 1] < 30) & (arr[..., 2] < 30)
    diff_tile = red[panel.height - w:, 3 * w:]
    assert diff_tile.sum() >= 9  # the single pixel is drawn thick enough to be seen
    assert not red[panel.height - w:, 2 * w:3 * w].any()  # no "reference differs from itself" tile
    only_reference = overlay_panel(image, truth, [("torch fp32", truth)], truth, palette)
    assert only_reference.height < panel.height  # no empty row of difference tiles
