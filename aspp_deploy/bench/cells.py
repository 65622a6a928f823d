"""The figures of a compare report's rows as table cells and the words around them, shared by the
Markdown summary, the HTML report and the console table."""

from __future__ import annotations

import math

from aspp_deploy.bench.stats import signed

UNSTABLE_MARK = "*"  # after an unstable p50 (HTML report, console table), with a note saying what it means
UNPAIRED_MARK = "~"  # before a speed-up that is not paired by round (latencies from different runs)


def fmt(v, spec: str = ".4f") -> str:
    """``v`` formatted with ``spec``; empty for a figure that is missing (None)."""
    return "" if v is None else format(v, spec)


def is_binary(rows: list[dict]) -> bool:
    """A binary (2-class) model: its rows carry a foreground IoU, shown in a column of its own."""
    return any(r.get("status") == "ok" and r.get("foreground_iou") is not None for r in rows)


def speedup_text(r: dict, compact: bool = False) -> str:
    """The speed-up cell: the median of the per-round ratios with how far the rounds spread, as
    ``1.52x (1.48–1.57)`` (the slowest and fastest round's ratio), or ``compact`` as ``1.52x ±4%``
    (the farthest round from the median, in whole percent rounded up); ``~1.52x`` when it is not paired by round (a latency reused
    from another run: the ratio of the two p50s); empty without a speed-up."""
    if r.get("speedup") is None:
        return ""
    text = f"{r['speedup']:.2f}x"
    if r.get("speedup_paired") is False:
        return UNPAIRED_MARK + text
    lo, hi, mid = r.get("speedup_min"), r.get("speedup_max"), r["speedup"]
    if lo is None or hi is None or lo == hi == mid:  # no rounds, or the reference against itself
        return text
    if not compact:
        return f"{text} ({lo:.2f}–{hi:.2f})"
    if mid <= 0:
        return text
    # rounded up, so that "every round lies within ±N%" stays true (1.2% -> ±2%)
    return f"{text} ±{math.ceil(100 * max(mid - lo, hi - mid) / mid - 1e-9)}%"


def result_cells(r: dict, foreground: bool = False, compact: bool = False) -> list[str]:
    """The figures of an ok row after backend/precision/device, formatted as summary.md formats them
    (deltas signed, never -0.0000; no "x" without a speed-up); ``foreground``: with the foreground
    IoU after the mIoU (binary models); ``compact``: the speed-up's spread as ``±`` (``speedup_text``)."""
    size = fmt(r["size_bytes"] / 1e6 if r["size_bytes"] else None, ".1f")
    delta = "" if r["delta_miou"] is None else signed(r["delta_miou"])
    fg = [fmt(r.get("foreground_iou"))] if foreground else []
    return [size, fmt(r["miou"]), delta, *fg, fmt(r["pixel_agreement"]), fmt(r["boundary_f"]),
            fmt(r["max_abs_logit_diff"], ".3g"), fmt(r["p50_ms"], ".1f"), fmt(r["p99_ms"], ".1f"),
            fmt(r["throughput"], ".1f"), speedup_text(r, compact)]


def _label(r: dict) -> str:
    return f"{r['backend']} {r['precision']}"


def latency_text(settings: dict) -> str:
    """How the latency was timed: ``batch 1, 6 interleaved rounds x 4 timed calls per row after 3
    warm-up calls``; the single block of older reports (no rounds) as ``5 warm-up + 30 timed runs``."""
    if settings.get("rounds"):
        rewarm = settings.get("rewarm", 0)
        opening = f"; each row's block opens with {rewarm} untimed call{'s' * (rewarm != 1)}" if rewarm else ""
        return (f"batch 1, {settings['rounds']} interleaved rounds x {settings['iters']} timed calls per row "
                f"after {settings.get('warmup', 0)} warm-up calls (every row once per round, in a new order each "
                f"round{opening})")
    return f"batch 1, {settings.get('warmup', 0)} warm-up + {settings.get('iters', 0)} timed runs"


def latency_notes(rows: list[dict]) -> list[str]:
    """Sentences for under a table: which rows' latency was reused from an earlier run (and which
    speed-ups are therefore not paired by round), and which rows' latency could not be measured."""
    ok = [r for r in rows if r.get("status") == "ok"]
    notes = []
    reused = [_label(r) for r in ok if "latency" in (r.get("reused") or [])]
    if reused:
        notes.append(f"Latency reused from an earlier run (--reuse-latency), not timed again: {', '.join(reused)}.")
    unpaired = [_label(r) for r in ok if r.get("speedup_paired") is False]
    if unpaired:
        notes.append(f"{UNPAIRED_MARK} speed-up not paired by round ({', '.join(unpaired)}): its latency and the "
                     "reference's come from different runs, so it is the ratio of their p50s; rerun without "
                     "--reuse-latency to pair them.")
    missing = [f"{_label(r)}: {r['reason']}" for r in ok if r.get("p50_ms") is None and r.get("reason")]
    if missing:
        notes.append("; ".join(missing) + ".")
    return notes


RESULT_COLUMNS = ["backend", "precision", "device", "size (MB)", "mIoU", "delta mIoU", "pixel agr.", "boundary F",
                  "max logit diff", "p50 ms", "p99 ms", "img/s", "speed-up"]  # summary.md and report.html
LABEL_TEXT = {"masks": "mIoU vs labels", "fp32": "agreement with FP32 (no labels)"}


def result_columns(rows: list[dict], settings: dict | None = None) -> list[str]:
    """RESULT_COLUMNS, with "mIoU vs FP32" for images without masks and a foreground IoU column for
    binary models (the columns ``result_cells(r, is_binary(rows))`` fills)."""
    cols = list(RESULT_COLUMNS)
    if (settings or {}).get("labels") == "fp32":
        cols[cols.index("mIoU")] = "mIoU vs FP32"
    if is_binary(rows):
        cols.insert(cols.index("delta mIoU") + 1, "fg IoU")
    return cols


def accuracy_kind(settings: dict, rows: list[dict] | None = None) -> str:
    """"mIoU vs labels" or "agreement with FP32 (no labels)", with the foreground IoU named for a
    binary model: what the accuracy figures of a compare report are."""
    text = LABEL_TEXT.get(settings.get("labels", "masks"), "mIoU vs labels")
    if rows is not None and is_binary(rows):
        text += "; binary model: foreground IoU"
        if settings.get("labels") == "fp32":
            text += " against the reference's foreground"
    if settings.get("labels") == "fp32":
        text += f" (the reference row's masks, {settings.get('reference') or 'FP32'}, are the truth)"
    return text


def unstable_labels(rows: list[dict]) -> list[str]:
    """The rows whose latency spread is high (see ``LatencyStats.unstable``)."""
    return [f"{r['backend']} {r['precision']}" for r in rows if r.get("latency_unstable")]


def reference_label(rows: list[dict], settings: dict) -> str:
    """What the deltas are against: the settings' reference, else the first row that ran."""
    return settings.get("reference") or next(
        (f"{r['backend']} {r['precision']}" for r in rows if r["status"] == "ok"), "nothing")


def images_text(settings: dict) -> str:
    """"64 of 200 validation images" (the first N of the split), or "200 validation images"; "images"
    without "validation" for a folder of images without masks."""
    n, total = settings["images"], settings.get("split_images")
    what = "images without masks" if settings.get("labels") == "fp32" else "validation images"
    return f"the first {n} of {total} {what}" if total and total > n else f"{n} {what}"
