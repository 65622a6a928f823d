"""The report's pictures stay legible for any number of rows and any image size: the latency plot's row
names never overlap, overlay titles stay inside their own panel."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from aspp_deploy.bench.report import PANEL_WIDTH, latency_figure, overlay_panel, plot_miou_vs_latency

LONG = ["onnxruntime int8 (TensorRT QDQ)", "openvino int8 (cpu QDQ)", "torch fp32", "trt int8 (TensorRT QDQ)"]


def _rows(n: int) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for k in range(n):
        backend, precision = LONG[k % len(LONG)].split(" ", 1)
        samples = list(100 + 20 * rng.random(12) + 10 * k)
        rows.append({"backend": backend, "precision": f"{precision} #{k}", "device": "cpu", "status": "ok",
                     "miou": 0.8 - 0.001 * k, "p50_ms": float(np.median(samples)),
                     "latency_unstable": k % 3 == 0, "latency": {"samples_ms": samples}})
    return rows


def _overlapping(boxes) -> list[tuple[int, int]]:
    return [(i, j) for i in range(len(boxes)) for j in range(i + 1, len(boxes)) if boxes[i].overlaps(boxes[j])]


@pytest.mark.parametrize("n", [1, 5, 12, 30])
def test_latency_plot_row_names_never_overlap(n):
    import matplotlib.pyplot as plt

    fig = latency_figure(_rows(n), {"iters": 12, "warmup": 1})
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        ax = fig.axes[0]
        labels = [t for t in ax.get_yticklabels() if t.get_text()]
        assert [t.get_text() for t in labels][::-1] == [
            f"{r['backend']} {r['precision']}" + (" *" if r["latency_unstable"] else "") for r in _rows(n)]
        boxes = [t.get_window_extent(renderer) for t in labels]
        assert _overlapping(boxes) == []
        assert min(b.height for b in boxes) > 5  # a readable size, not shrunk to fit
        # nor do they run into the title or out of the figure at the bottom
        title = ax.title.get_window_extent(renderer)
        assert all(b.y1 < title.y0 and b.y0 >= 0 for b in boxes)
    finally:
        plt.close(fig)


def test_miou_plot_with_many_rows_is_written(tmp_path):
    png = plot_miou_vs_latency(_rows(12), tmp_path / "m.png", {})
    assert png is not None and Image.open(tmp_path / "m.png").size[1] > 400


def _panel(width: int, height: int, labels: list[str]) -> tuple[Image.Image, int, int]:
    rng = np.random.default_rng(1)
    image = rng.integers(30, 220, (height, width, 3), dtype=np.uint8)  # never white: the band ends at the picture
    truth = np.zeros((height, width), np.uint8)
    truth[height // 4: height // 2, width // 4: width // 2] = 1
    preds = []
    for k, label in enumerate(labels):
        p = truth.copy()
        p[:k + 2, :k + 2] = 2
        preds.append((label, p))
    palette = [[0, 0, 0], [128, 0, 0], [0, 128, 0]]
    panel = overlay_panel(image, truth, preds, preds[0][1], palette, ["background", "cat", "dog"])
    columns = 2 + len(labels)
    assert panel.size[0] % columns == 0
    return panel, columns, panel.size[0] // columns


@pytest.mark.parametrize("width,height", [(120, 90), (128, 128), (2000, 1500)])
def test_overlay_titles_stay_inside_their_panel_whatever_the_image_size(width, height):
    labels = ["torch fp32", "onnxruntime int8 (TensorRT QDQ)", "openvino int8 (cpu QDQ)"]
    panel, columns, w = _panel(width, height, labels)
    assert PANEL_WIDTH[0] <= w <= PANEL_WIDTH[1]
    ink = np.asarray(panel.convert("L")) < 128
    # the title band: the rows above the first picture (the first row whose every pixel is picture)
    pictures = np.flatnonzero(~np.all(np.asarray(panel.convert("L")) == 255, axis=1))
    first_picture_row = next(y for y in pictures if not np.any(np.asarray(panel)[y, :4] == 255))
    band = ink[:first_picture_row]
    assert band.any(), "no title drawn"
    for i in range(1, columns):
        # no title crosses into the next panel: the strip just left of each boundary is blank
        assert not band[:, i * w - 3: i * w + 2].any(), f"a title runs across the boundary before panel {i}"
    # every title is drawn: each panel's band holds ink
    assert all(band[:, i * w: (i + 1) * w].any() for i in range(columns))
    # the few pixels where each row differs from the reference stay visible (red) at the panel's size
    red = np.all(np.asarray(panel) == (230, 0, 0), axis=2)
    assert all(red[:, i * w: (i + 1) * w].sum() >= 4 for i in range(3, columns)), "a difference vanished"
