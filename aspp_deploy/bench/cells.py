"""The figures of a compare report's rows as table cells and the words around them, shared by the
Markdown summary, the HTML report and the console table."""

from __future__ import annotations

from aspp_deploy.bench.stats import signed

UNSTABLE_MARK = "*"  # after an unstable p50 (HTML report, console table), with a note saying what it means


def fmt(v, spec: str = ".4f") -> str:
    """``v`` formatted with ``spec``; empty for a figure that is missing (None)."""
    return "" if v is None else format(v, spec)


def is_binary(rows: list[dict]) -> bool:
    """A binary (2-class) model: its rows carry a foreground IoU, shown in a column of its own."""
    return any(r.get("status") == "ok" and r.get("foreground_iou") is not None for r in rows)


def result_cells(r: dict, foreground: bool = False) -> list[str]:
    """The figures of an ok row after backend/precision/device, formatted as summary.md formats them
    (deltas signed, never -0.0000; no "x" without a speed-up); ``foreground``: with the foreground
    IoU after the mIoU (binary models)."""
    size = fmt(r["size_bytes"] / 1e6 if r["size_bytes"] else None, ".1f")
    delta = "" if r["delta_miou"] is None else signed(r["delta_miou"])
    speedup = "" if r["speedup"] is None else f"{fmt(r['speedup'], '.2f')}x"
    fg = [fmt(r.get("foreground_iou"))] if foreground else []
    return [size, fmt(r["miou"]), delta, *fg, fmt(r["pixel_agreement"]), fmt(r["boundary_f"]),
            fmt(r["max_abs_logit_diff"], ".3g"), fmt(r["p50_ms"], ".1f"), fmt(r["p99_ms"], ".1f"),
            fmt(r["throughput"], ".1f"), speedup]


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
