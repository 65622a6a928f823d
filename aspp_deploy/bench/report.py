"""Compare reports a person wants to read: JSON + CSV of every figure, a Markdown summary,
latency and accuracy plots, and overlays of validation images per row."""

from __future__ import annotations

import csv
import io
import math
import os
import platform
import re
from pathlib import Path

import numpy as np
from PIL import Image

from aspp_deploy.bench.cells import (accuracy_kind, images_text, is_binary, latency_notes, latency_text, reference_label,
                                     result_cells, result_columns, unstable_labels)
from aspp_deploy.bench.html_report import html_report
from aspp_deploy.export.manifest import tool_versions
from aspp_deploy.io import atomic_write_bytes, atomic_write_text, json_text
from aspp_deploy.runtime.images import label_font, overlay

CSV_COLUMNS = ["backend", "precision", "device", "status", "reason", "size_bytes", "labels", "miou", "delta_miou",
               "foreground_iou", "worst_image", "worst_image_name", "pixel_agreement", "boundary_f", "max_abs_logit_diff", "p50_ms", "p99_ms", "throughput",
               "speedup", "speedup_min", "speedup_max", "speedup_paired", "latency_rounds", "latency_unstable",
               "artifact"]
OVERLAY_IMAGES = 3


CPU_FLAGS_OF_INTEREST = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
                         "amx_bf16", "amx_int8", "avx512_fp16")


def cpu_description() -> tuple[str, list[str]]:
    """(CPU model name, the SIMD flags that decide CPU inference speed), from /proc/cpuinfo where it exists."""
    model, flags = platform.processor() or platform.machine() or "unknown CPU", []
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, flags
    if m := re.search(r"^model name\s*:\s*(.+)$", text, re.M):
        model = m.group(1).strip()
    if m := re.search(r"^flags\s*:\s*(.+)$", text, re.M):
        have = set(m.group(1).split())
        flags = [f for f in CPU_FLAGS_OF_INTEREST if f in have]
    return model, flags


def machine_description() -> dict:
    cpu, _ = cpu_description()
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "os": platform.platform(),
            "versions": tool_versions("tensorrt", "cuda-python", "pycuda", "nvidia-modelopt")}


def markdown_summary(rows: list[dict], machine: dict, settings: dict) -> str:
    columns, binary = result_columns(rows, settings), is_binary(rows)
    lines = ["# aspp-deploy compare", "",
             f"Machine: {machine['cpu']} ({machine['cores']} cores), GPU: {machine['gpu'] or 'none'}; "
             f"accuracy on {images_text(settings)} at {settings['input'][0]}x{settings['input'][1]}; "
             f"latency: {latency_text(settings)}; speed-up: per round, the reference's median over the row's, "
             "then the median of those ratios (the slowest and fastest round's in brackets).", "",
             f"Accuracy shown: {accuracy_kind(settings, rows)}.", "",
             "| " + " | ".join(columns) + " |",
             "|---|---|---|" + "---:|" * (len(columns) - 3)]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['backend']} | {r['precision']} | {r['device']} | {r['status']}: {r['reason']} "
                         + "| " * (len(columns) - 4) + "|")
            continue
        lines.append(f"| {r['backend']} | {r['precision']} | {r['device']} | "
                     + " | ".join(result_cells(r, binary)) + " |")
    notes = latency_notes(rows)
    if notes:
        lines += ["", *notes]
    unstable = unstable_labels(rows)
    if unstable:
        lines += ["", f"Unstable latency (high spread of the timed calls or between rounds): {', '.join(unstable)}."]
    reference = reference_label(rows, settings)
    lines += ["", "Deltas, agreement, boundary F-score and the max logit difference (the largest |difference| "
              f"over every measured image) are against the reference, {reference}. Plots: `latency.png`, `miou_vs_latency.png`; overlays in `overlays/`; "
              "all of it in one file to forward: `report.html`.", ""]
    return "\n".join(lines)


def save_figure(fig, path: Path) -> bytes:
    """Write the figure as PNG; returns the bytes written."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return buf.getvalue()


def _row_label(r: dict) -> str:
    return f"{r['backend']} {r['precision']}" + (" *" if r.get("latency_unstable") else "")


def plot_latency(rows: list[dict], path: Path, settings: dict | None = None) -> bytes:
    import matplotlib.pyplot as plt

    fig = latency_figure(rows, settings)
    png = save_figure(fig, path)
    plt.close(fig)
    return png


def latency_figure(rows: list[dict], settings: dict | None = None):
    """The latency box plot of the ok rows (a matplotlib Figure; the caller closes it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = settings or {}
    ok = [r for r in rows if r["status"] == "ok" and r["latency"]]
    # one horizontal box per row, top to bottom in the table's order: the row names are y labels at a
    # fixed height each, so they never overlap however many rows there are
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.42 * max(1, len(ok))))
    import inspect

    # matplotlib 3.10 replaced vert=False by orientation="horizontal"; the project accepts 3.8 too
    across = ({"orientation": "horizontal"} if "orientation" in inspect.signature(ax.boxplot).parameters
              else {"vert": False})
    ax.boxplot([r["latency"]["samples_ms"] for r in ok][::-1], showfliers=True, widths=0.6, **across)
    ax.set_yticks(range(1, len(ok) + 1), [_row_label(r) for r in ok][::-1], fontsize=8)
    ax.set_xlabel("latency of one batch of 1 image (ms)")
    if settings.get("rounds"):
        runs = f"{settings['rounds']} interleaved rounds x {settings['iters']} timed calls after {settings['warmup']} warm-up"
    else:
        runs = f"{settings['iters']} timed runs after {settings['warmup']} warm-up" if "iters" in settings else "timed runs"
    mark = "; * unstable latency" if any(r.get("latency_unstable") for r in ok) else ""
    ax.set_title(f"Latency per row: box = p25..p75, line = p50, whiskers 1.5 IQR\n({runs}{mark})", fontsize=9)
    ax.set_xlim(left=0)
    ax.grid(axis="x", alpha=0.3)
    return fig


MIOU_AXIS_SPAN = 0.10  # the mIoU axis spans at least 10 points: smaller gaps are not worth a picture


def miou_axis(values: list[float], span: float = MIOU_AXIS_SPAN) -> tuple[float, float]:
    """y limits for mIoU (0..1): the values' range, widened to at least ``span`` around its middle and
    kept inside 0..1, so equal accuracies look equal instead of filling a 0.0004 band."""
    lo, hi = min(values), max(values)
    half = max(span, hi - lo) / 2 + 0.01
    mid = (lo + hi) / 2
    bottom, top = mid - half, mid + half
    if bottom < 0:
        bottom, top = 0.0, min(1.0, top - bottom)
    if top > 1:
        bottom, top = max(0.0, bottom - (top - 1)), 1.0
    return bottom, top


def plot_miou_vs_latency(rows: list[dict], path: Path, settings: dict | None = None) -> bytes | None:
    """One marker per row, named in a legend beside the axes (labels never collide), mIoU on a fixed
    minimum span, latency from 0; the PNG's bytes, None (nothing written) without a row to place."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = settings or {}
    ok = [r for r in rows if r["status"] == "ok" and r.get("miou") is not None and r.get("p50_ms") is not None]
    if not ok:
        return None
    fig, ax = plt.subplots(figsize=(8, max(4.2, 1.0 + 0.22 * len(ok))))  # the legend's rows fit beside the axes
    markers = "osD^vP*Xh<>p"
    for k, r in enumerate(ok):
        ax.scatter(r["p50_ms"], r["miou"], s=55, marker=markers[k % len(markers)], alpha=0.85, zorder=3,
                   label=f"{_row_label(r)}: {r['p50_ms']:.1f} ms, mIoU {r['miou']:.4f}")
    ax.set_ylim(*miou_axis([r["miou"] for r in ok]))
    ax.set_xlim(0, max(r["p50_ms"] for r in ok) * 1.1)
    ax.set_xlabel("p50 latency, batch 1 (ms; lower is better)")
    images = f" on {images_text(settings)}" if "images" in settings else ""
    ax.set_ylabel(f"{'mIoU vs FP32' if settings.get('labels') == 'fp32' else 'mIoU'}{images} (0..1)")
    mark = "; * unstable latency" if any(r.get("latency_unstable") for r in ok) else ""
    ax.set_title(f"Accuracy vs latency (axis spans at least 0.10 mIoU{mark})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
    png = save_figure(fig, path)
    plt.close(fig)
    return png


PANEL_WIDTH = (256, 384)  # each picture of an overlay is scaled into this width: titles stay legible


def _panel_size(image: np.ndarray, truth: np.ndarray, reference: np.ndarray, preds: list[tuple[str, np.ndarray]]):
    """The image and masks scaled (aspect kept; masks nearest) so their width lies in PANEL_WIDTH."""
    h, w = truth.shape
    new_w = min(max(w, PANEL_WIDTH[0]), PANEL_WIDTH[1])
    if new_w == w:
        return image, truth, reference, preds
    size = (new_w, max(1, round(h * new_w / w)))

    def mask(m: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(m.astype(np.uint8)).resize(size, Image.Resampling.NEAREST))

    picture = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
    return picture, mask(truth), mask(reference), [(label, mask(p)) for label, p in preds]


def _wrap(text: str, width_of, limit: float) -> list[str]:
    """``text`` in lines no wider than ``limit`` (as ``width_of`` measures), broken at spaces only; a
    single word wider than the limit stays whole on its own line."""
    lines: list[str] = []
    for word in text.split():
        if lines and width_of(f"{lines[-1]} {word}") <= limit:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return lines or [""]


def overlay_panel(image: np.ndarray, truth: np.ndarray, preds: list[tuple[str, np.ndarray]],
                  reference: np.ndarray, palette: list[list[int]], classes: list[str] | None = None,
                  truth_label: str = "ground truth") -> Image.Image:
    """One picture per validation image, readable when scaled down.

    Top row: the image, then the ground truth and each row's mask blended over the image (the
    background class untinted), each with a title. Bottom row: under every row but the reference
    (the first), where its classes differ from the reference's, filled in red over a dimmed image and
    thickened so single-pixel differences survive scaling down, with the share of pixels that
    differ; under the image, the ground truth and the reference, a legend of the classes present.
    """
    from PIL import ImageDraw, ImageFilter

    # the differences at the image's own size: their share, and where they are, thickened enough to
    # survive scaling to the panel's width and then down in a browser
    h0, w0 = truth.shape
    shares = [100 * float((p != reference).mean()) for _, p in preds[1:]]
    k = 4 * math.ceil(w0 / min(max(w0, PANEL_WIDTH[0]), PANEL_WIDTH[1])) - 1  # 3 px at the panel's size
    grown = [Image.fromarray((p != reference).astype(np.uint8) * 255).filter(ImageFilter.MaxFilter(max(3, k)))
             for _, p in preds[1:]]
    image, truth, reference, preds = _panel_size(image, truth, reference, preds)
    h, w = truth.shape
    grown = [np.asarray(g.resize((w, h), Image.Resampling.NEAREST)) > 0 for g in grown]
    size = max(14, w // 22)
    font, pad = label_font(size), size // 2
    ref_label = preds[0][0] if preds else "the reference"
    top = [("image", image), (truth_label, np.asarray(overlay(image, truth, palette, 0.55)))]
    top += [(label, np.asarray(overlay(image, p, palette, 0.55))) for label, p in preds]
    # titles wrapped at spaces to their panel's width, every band as tall as its longest title
    draw0 = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    wrap = lambda text: _wrap(text, lambda t: draw0.textlength(t, font=font), w - 8)  # noqa: E731
    top_titles = [wrap(label) for label, _ in top]
    bottom_titles = [wrap(f"vs {ref_label}: {share:.2f}% differ") for share in shares]
    line_h = size + 4
    band = 8 + line_h * max(map(len, top_titles))
    band2 = 8 + line_h * max(map(len, bottom_titles), default=1)
    bottom = []
    for (label, _), where in zip(preds[1:], grown):
        d = (0.25 * image.astype(np.float32) + 0.75 * image.mean(axis=2, keepdims=True) * 0.6).astype(np.uint8)
        d[where] = (230, 0, 0)
        bottom.append((label, d))
    present = sorted({int(v) for m in [truth, *(p for _, p in preds)] for v in np.unique(m) if int(v) != 255})
    names = list(classes or [])
    legend = [((names[c] if c < len(names) else f"class {c}") + (" (untinted)" if c == 0 else ""),
               tuple(palette[c]) if c < len(palette) else (0, 0, 0)) for c in present]
    row = size + size // 2
    per_col = max(1, (h - 2 * pad) // row) if bottom else max(1, len(legend))
    legend_h = 2 * pad + min(len(legend), per_col) * row + (row if bottom else 0)
    bottom_h = h + band2 if bottom else legend_h + row
    cols = len(top)
    canvas = Image.new("RGB", (cols * w, h + band + bottom_h), "white")
    draw = ImageDraw.Draw(canvas)
    for i, ((_, arr), lines) in enumerate(zip(top, top_titles)):
        for k, text in enumerate(lines):
            draw.text((i * w + 4, 4 + k * line_h), text, fill="black", font=font)
        canvas.paste(Image.fromarray(arr), (i * w, band))
    for i, ((_, arr), lines) in enumerate(zip(bottom, bottom_titles)):
        x = (i + 3) * w
        for k, text in enumerate(lines):
            draw.text((x + 4, h + band + 4 + k * line_h), text, fill="black", font=font)
        canvas.paste(Image.fromarray(arr), (x, h + band + band2))
    x0, y0 = pad, h + band + pad
    note = f"red: a class other than {ref_label}'s" if bottom else "classes present"
    draw.text((x0, y0), note, fill="black", font=font)
    col_w = max(1, (min(cols, 3) * w - pad) // max(1, -(-len(legend) // per_col)))
    for k, (name, colour) in enumerate(legend):
        x = x0 + (k // per_col) * col_w
        y = y0 + row + (k % per_col) * row
        draw.rectangle([x, y, x + size, y + size], fill=colour, outline="black")
        draw.text((x + size + pad, y), name, fill="black", font=font)
    return canvas


def write_report(folder: Path, rows: list[dict], machine: dict, settings: dict, *, samples=None,
                 predictions: dict[str, list[np.ndarray]] | None = None, palette=None,
                 classes: list[str] | None = None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    payload = {"machine": machine, "settings": settings, "rows": rows}
    atomic_write_text(folder / "results.json", json_text(payload, default=str))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow(r)
    atomic_write_text(folder / "results.csv", buf.getvalue())
    atomic_write_text(folder / "summary.md", markdown_summary(rows, machine, settings))
    written += [folder / "results.json", folder / "results.csv", folder / "summary.md"]
    plots: list[tuple[str, bytes]] = []  # (caption, PNG bytes) for report.html
    overlays: list[tuple[str, bytes]] = []
    if any(r["status"] == "ok" for r in rows):
        for plot, name, caption in ((plot_latency, "latency.png", "Latency per row"),
                                    (plot_miou_vs_latency, "miou_vs_latency.png", "mIoU vs latency")):
            (folder / name).unlink(missing_ok=True)  # a plot with nothing to show is not written: no stale one
            png = plot(rows, folder / name, settings)
            if png is not None:
                plots.append((caption, png))
                written.append(folder / name)
    if samples and predictions and palette:
        from aspp_deploy.data.voc import load_image, load_mask

        labels = list(predictions)
        reference = predictions[labels[0]]
        for i, s in enumerate(samples[:OVERLAY_IMAGES]):
            # no mask (a folder of images): the reference's masks are what the rows are scored against
            truth = reference[i] if s.mask is None else load_mask(s.mask, len(palette))
            image = np.asarray(load_image(s.image).resize((truth.shape[1], truth.shape[0])))
            panel = overlay_panel(image, truth, [(k, predictions[k][i]) for k in labels], reference[i], palette,
                                  classes, "ground truth" if s.mask is not None else f"no mask: {labels[0]}")
            path = folder / "overlays" / f"{s.name}.png"
            buf = io.BytesIO()
            panel.save(buf, format="PNG")
            atomic_write_bytes(path, buf.getvalue())
            overlays.append((s.name, buf.getvalue()))
            written.append(path)

    atomic_write_text(folder / "report.html", html_report(rows, machine, settings, plots, overlays))
    return written + [folder / "report.html"]
