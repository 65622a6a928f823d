"""Compare reports a person wants to read: JSON + CSV of every figure, a Markdown summary,
latency and accuracy plots, and overlays of validation images per row."""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import re
from pathlib import Path

import numpy as np
from PIL import Image

from aspp_deploy.io import atomic_save_image, atomic_write_bytes, atomic_write_text

CSV_COLUMNS = ["backend", "precision", "device", "status", "reason", "size_bytes", "miou", "delta_miou",
               "pixel_agreement", "boundary_f", "max_abs_logit_diff", "p50_ms", "p99_ms", "throughput",
               "speedup", "latency_unstable", "artifact"]
OVERLAY_IMAGES = 3


CPU_FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16",
                         "amx_int8", "avx512_fp16")


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
    from aspp_deploy.export.manifest import tool_versions

    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "os": platform.platform(),
            "versions": tool_versions("tensorrt", "cuda-python", "pycuda", "nvidia-modelopt")}


def _fmt(v, spec: str = ".4f") -> str:
    return "" if v is None else format(v, spec)


def markdown_summary(rows: list[dict], machine: dict, settings: dict) -> str:
    lines = ["# aspp-deploy compare", "",
             f"Machine: {machine['cpu']} ({machine['cores']} cores), GPU: {machine['gpu'] or 'none'}; "
             f"{settings['images']} validation images at {settings['input'][0]}x{settings['input'][1]}; "
             f"latency: batch 1, {settings['warmup']} warm-up + {settings['iters']} timed runs.", "",
             "| backend | precision | device | size (MB) | mIoU | delta mIoU | pixel agr. | boundary F | "
             "max logit diff | p50 ms | p99 ms | img/s | speed-up |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['backend']} | {r['precision']} | {r['device']} | {r['status']}: {r['reason']} "
                         "| | | | | | | | | |")
            continue
        size = _fmt(r["size_bytes"] / 1e6 if r["size_bytes"] else None, ".1f")
        lines.append(
            f"| {r['backend']} | {r['precision']} | {r['device']} | {size} | {_fmt(r['miou'])} | "
            f"{_fmt(r['delta_miou'], '+.4f')} | {_fmt(r['pixel_agreement'])} | {_fmt(r['boundary_f'])} | "
            f"{_fmt(r['max_abs_logit_diff'], '.3g')} | {_fmt(r['p50_ms'], '.1f')} | {_fmt(r['p99_ms'], '.1f')} | "
            f"{_fmt(r['throughput'], '.1f')} | {_fmt(r['speedup'], '.2f')}x |")
    unstable = [f"{r['backend']} {r['precision']}" for r in rows if r.get("latency_unstable")]
    if unstable:
        lines += ["", f"Unstable latency (high run-to-run spread): {', '.join(unstable)}."]
    lines += ["", "Deltas, agreement, boundary F-score and logit differences are against the first "
              "row (PyTorch FP32). Plots: `latency.png`, `miou_vs_latency.png`; overlays in `overlays/`.", ""]
    return "\n".join(lines)


def _save_figure(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def plot_latency(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok" and r["latency"]]
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(ok)), 4))
    ax.boxplot([r["latency"]["samples_ms"] for r in ok], showfliers=True)
    ax.set_xticks(range(1, len(ok) + 1), [f"{r['backend']}\n{r['precision']}" for r in ok], fontsize=8)
    ax.set_ylabel("latency per batch (ms)")
    ax.set_title("Latency distribution (batch 1)")
    ax.grid(axis="y", alpha=0.3)
    _save_figure(fig, path)
    plt.close(fig)


def plot_miou_vs_latency(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in ok:
        ax.scatter(r["p50_ms"], r["miou"], s=40)
        ax.annotate(f"{r['backend']} {r['precision']}", (r["p50_ms"], r["miou"]), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("p50 latency (ms)")
    ax.set_ylabel("mIoU")
    ax.set_title("Accuracy vs latency")
    ax.grid(alpha=0.3)
    _save_figure(fig, path)
    plt.close(fig)


def colourise(ids: np.ndarray, palette: list[list[int]]) -> np.ndarray:
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(palette)] = np.asarray(palette, np.uint8)
    lut[255] = (255, 255, 255)
    return lut[ids.astype(np.uint8)]


def overlay_panel(image: np.ndarray, truth: np.ndarray, preds: list[tuple[str, np.ndarray]],
                  reference: np.ndarray, palette: list[list[int]]) -> Image.Image:
    """A strip per image: image, ground truth, then per row its mask and (below) where it
    disagrees with PyTorch FP32 (red)."""
    from PIL import ImageDraw

    h, w = truth.shape
    tiles = [("image", image), ("ground truth", colourise(truth, palette))]
    for label, p in preds:
        tiles.append((label, colourise(p, palette)))
    diff_tiles = []
    for label, p in preds:
        d = (image.astype(np.float32) * 0.35).astype(np.uint8)
        d[p != reference] = (255, 0, 0)
        diff_tiles.append((f"{label}: differs", d))
    cols = len(tiles)
    canvas = Image.new("RGB", (cols * w, 2 * h + 28), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (label, arr) in enumerate(tiles):
        canvas.paste(Image.fromarray(arr), (i * w, 14))
        draw.text((i * w + 3, 1), label, fill="black")
    for i, (label, arr) in enumerate(diff_tiles):
        x = (i + 2) * w
        canvas.paste(Image.fromarray(arr), (x, h + 28))
        draw.text((x + 3, h + 15), label, fill="black")
    return canvas


def write_report(folder: Path, rows: list[dict], machine: dict, settings: dict, *, samples=None,
                 predictions: dict[str, list[np.ndarray]] | None = None, palette=None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    payload = {"machine": machine, "settings": settings, "rows": rows}
    atomic_write_text(folder / "results.json", json.dumps(payload, indent=2, default=str) + "\n")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow(r)
    atomic_write_text(folder / "results.csv", buf.getvalue())
    atomic_write_text(folder / "summary.md", markdown_summary(rows, machine, settings))
    written += [folder / "results.json", folder / "results.csv", folder / "summary.md"]
    if any(r["status"] == "ok" for r in rows):
        plot_latency(rows, folder / "latency.png")
        plot_miou_vs_latency(rows, folder / "miou_vs_latency.png")
        written += [folder / "latency.png", folder / "miou_vs_latency.png"]
    if samples and predictions and palette:
        from aspp_deploy.data.voc import load_image, load_mask

        labels = list(predictions)
        reference = predictions[labels[0]]
        for i, s in enumerate(samples[:OVERLAY_IMAGES]):
            truth = load_mask(s.mask, len(palette))
            image = np.asarray(load_image(s.image).resize((truth.shape[1], truth.shape[0])))
            panel = overlay_panel(image, truth, [(k, predictions[k][i]) for k in labels], reference[i], palette)
            path = folder / "overlays" / f"{s.name}.png"
            atomic_save_image(panel, path)
            written.append(path)
    return written
