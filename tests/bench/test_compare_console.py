"""compare's console output as a person reads it in a terminal: the table fits 80, 100 and 120 columns
with every figure whole (the speed-up with its spread over the rounds), unstable latency, latencies
reused from an earlier run and rows that did not run are said in words under it, and the last line
names report.html."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from aspp_deploy.cli.compare_cmd import UNSTABLE_MARK, print_results, report_line

TENSORRT = "TensorRT is not installed: pip install -e '.[tensorrt-cu12]' [tensorrt]"


def _row(backend, precision, device="cpu", *, status="ok", reason="", unstable=False, p50=1707.43,
         fg=None) -> dict:
    """A row shaped like ``Row.to_dict``, with the widest figures a slow CPU gives (4-digit latencies)."""
    ok = status == "ok"
    return {"backend": backend, "precision": precision, "device": device, "status": status, "reason": reason,
            "size_bytes": 94_512_345 if ok else None, "miou": 0.80621 if ok else None,
            "delta_miou": -0.00012 if ok else None, "foreground_iou": fg if ok else None,
            "pixel_agreement": 0.99871 if ok else None, "boundary_f": 0.9512 if ok else None,
            "max_abs_logit_diff": 9.54e-05 if ok else None, "p50_ms": p50 if ok else None,
            "p99_ms": 2210.2 if ok else None, "throughput": 1.4 if ok else None, "speedup": 0.25 if ok else None,
            "speedup_min": 0.241 if ok else None, "speedup_max": 0.262 if ok else None,  # 0.25x ±5%
            "speedup_paired": True if ok else None, "latency_rounds": 6 if ok else None,
            "latency_unstable": unstable if ok else None, "reused": ["accuracy"] if ok else []}


def _rows(unstable: bool = True, fg=None) -> list[dict]:
    return [_row("torch", "fp32", unstable=unstable, fg=fg),
            _row("torch", "fp16", "cuda", status="unavailable", reason="CUDA is not available here"),
            _row("onnxruntime", "fp32", fg=fg), _row("onnxruntime", "fp16", unstable=unstable, fg=fg),
            _row("onnxruntime", "int8 (cpu QDQ)", fg=fg), _row("onnxruntime", "int8 (TensorRT QDQ)", fg=fg),
            _row("trt", "fp16", "cuda", status="unavailable", reason=TENSORRT),
            _row("trt", "int8", "cuda", status="unavailable", reason=TENSORRT),
            _row("openvino", "fp32", status="failed", reason="RuntimeError: [boom]")]


def _render(rows: list[dict], width: int, labels: str = "masks") -> str:
    console = Console(width=width, file=io.StringIO(), record=True, color_system=None)
    settings = {"warmup": 3, "rounds": 6, "iters": 4}
    print_results(rows, "torch fp32", labels, 6, console, settings)
    return console.export_text()


@pytest.mark.parametrize("width", [80, 100, 120])
@pytest.mark.parametrize("binary", [False, True])
def test_the_table_fits_the_terminal_with_every_figure_whole(width, binary):
    rows = _rows(fg=0.9731 if binary else None)
    text = _render(rows, width)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width, text
    assert "…" not in text and "..." not in text, text
    table = text[:text.index("agree: ")]
    tokens = table.split()
    figures = ["94.5", "0.8062", "-0.0001", "0.9987", "0.9512", "9.54e-05", "2210.2", "1.4", "0.25x", "±5%",
               *(["0.9731"] if binary else [])]
    for f in figures:  # each figure whole, once per ok row
        assert tokens.count(f) == 5, (f, text)
    assert tokens.count(f"1707.4{UNSTABLE_MARK}") == 2 and tokens.count("1707.4") == 3, text
    for r in rows:
        if r["status"] == "ok":
            assert all(word in table.split() for word in f"{r['backend']} {r['precision']}".split()), text
    # rows that did not run are not in the table, with a cell saying so in a figure's column
    assert "unavailable" not in table and "failed" not in table, text
    assert all(h in table for h in ("MB", "mIoU", "ΔmIoU", "p50 ms", "p99 ms", "img/s", "speed-up"))


def test_one_table_at_100_columns_and_two_at_80():
    wide, narrow = _render(_rows(), 100), _render(_rows(), 80)
    header = next(line for line in wide.splitlines() if "MB" in line)
    assert "p50 ms" in header and "speed-up" in header  # accuracy and latency side by side
    assert sum("MB" in line for line in narrow.splitlines()) == 1
    assert sum("p50 ms" in line for line in narrow.splitlines()) == 1
    assert not any("MB" in line and "p50 ms" in line for line in narrow.splitlines())
    assert "accuracy (" in narrow and "latency, batch 1" in narrow


def test_unstable_latency_is_marked_and_explained_only_when_a_row_is_unstable():
    text = _render(_rows(unstable=True), 100)
    marked = [line for line in text.splitlines() if f"1707.4{UNSTABLE_MARK}" in line]
    assert [line.split()[0:2] for line in marked] == [["torch", "fp32"], ["onnxruntime", "fp16"]]
    note = " ".join(text.split())
    assert f"{UNSTABLE_MARK} unstable latency (torch fp32, onnxruntime fp16)" in note
    assert "--rounds 20" in note and "quiet machine" in note and "rounds' medians" in note
    everywhere = [dict(r, latency_unstable=r["status"] == "ok") for r in _rows()]
    assert f"{UNSTABLE_MARK} unstable latency (every row)" in " ".join(_render(everywhere, 100).split())
    calm = _render(_rows(unstable=False), 100)
    assert "unstable" not in calm and f"1707.4{UNSTABLE_MARK}" not in calm


def test_how_latency_was_timed_and_which_latencies_were_reused_are_said_under_the_table():
    rows = _rows(unstable=False)
    text = " ".join(_render(rows, 100).split())
    assert "6 interleaved rounds x 4 timed calls per row after 3 warm-up calls" in text
    assert "reused from an earlier run" not in text and "not paired" not in text
    # one row's latency reused from an earlier run than the reference's: its speed-up is the ratio of
    # two p50s, marked, and said so in words
    rows[3].update(reused=["accuracy", "latency"], speedup_paired=False, speedup_min=None, speedup_max=None)
    text = _render(rows, 80)
    assert max(len(line) for line in text.splitlines()) <= 80, text
    assert text.split().count("~0.25x") == 1 and text.split().count("±5%") == 4, text
    flat = " ".join(text.split())
    assert "Latency reused from an earlier run (--reuse-latency), not timed again: onnxruntime fp16." in flat
    assert "~ speed-up not paired by round (onnxruntime fp16)" in flat
    # the reference against itself: no spread to show
    rows[0].update(speedup=1.0, speedup_min=1.0, speedup_max=1.0)
    assert "1.00x" in _render(rows, 100).split() and "±0.0%" not in _render(rows, 100)
    # a row whose latency could not be measured keeps its accuracy; the reason is said under the table
    rows[2].update(p50_ms=None, p99_ms=None, throughput=None, speedup=None, speedup_paired=None,
                   reason="latency not measured: RuntimeError: device lost")
    flat = " ".join(_render(rows, 100).split())
    assert "onnxruntime fp32: latency not measured: RuntimeError: device lost." in flat


def test_rows_that_did_not_run_are_listed_with_their_reason_under_the_table():
    text = _render(_rows(), 180)
    after = text[text.index("not run here:"):]
    flat = " ".join(after.split())
    assert "trt fp16 (cuda), trt int8 (cuda): unavailable: " + TENSORRT in flat  # one line per reason
    assert "torch fp16 (cuda): unavailable: CUDA is not available here" in flat
    assert "openvino fp32 (cpu): failed: RuntimeError: [boom]" in flat  # brackets kept: not markup


def test_a_device_column_only_when_rows_ran_on_more_than_one_device():
    rows = _rows()
    assert "all on cpu" in _render(rows, 120)
    rows[1].update(_row("torch", "fp16", "cuda"))
    text = _render(rows, 120)
    assert "all on cpu" not in text and "torch fp16 (cuda)" in text and "torch fp32 (cpu)" in text


def test_the_last_line_names_report_html():
    folder = Path("reports/compare")
    line = report_line([folder / "results.json", folder / "report.html"], folder)
    assert line.startswith(f"report: open {folder / 'report.html'} ")


def test_with_no_row_that_ran_only_the_reasons_are_printed():
    rows = [r for r in _rows() if r["status"] != "ok"]
    text = _render(rows, 80)
    assert text.startswith("not run here:") and "MB" not in text and "agree:" not in text
