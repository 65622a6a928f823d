"""report.html: one self-contained, escaped, deterministic file beside summary.md."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from aspp_deploy.bench.html_report import UNSTABLE_MARK, html_report
from aspp_deploy.bench.report import PANEL_WIDTH, write_report
from aspp_deploy.data.synthetic import CLASSES
from aspp_deploy.data.voc import VOCSegmentation, load_mask, voc_palette

HOSTILE_REASON = "<script>alert(1)</script>"
HOSTILE_CLASS = "<img src=x onerror=alert(1)>"
MACHINE = {"cpu": "Test CPU <x86>", "cores": 4, "gpu": None, "os": "test", "versions": {}}
SETTINGS = {"images": 4, "data": "/d", "input": [128, 128], "warmup": 1, "rounds": 3, "iters": 5, "threads": 2,
            "model": "tiny & <small>", "reference": "torch fp32", "checkpoint": None}


def _row(backend, precision, *, status="ok", reason="", miou=None, delta=None, unstable=False, samples=None,
         per_class=None) -> dict:
    """A row shaped like ``Row.to_dict`` (aspp_deploy/bench/compare.py)."""
    ok = status == "ok"
    samples = samples or [10.0, 11.0, 12.5, 10.5, 11.2]
    return {"backend": backend, "precision": precision, "device": "cpu", "artifact": None, "note": "",
            "status": status, "reason": reason, "size_bytes": 2_500_000 if ok else None, "miou": miou,
            "delta_miou": delta, "pixel_agreement": 0.9987 if ok else None, "boundary_f": 0.95 if ok else None,
            "max_abs_logit_diff": 1.2e-4 if ok else None, "p50_ms": float(np.median(samples)) if ok else None,
            "p99_ms": max(samples) if ok else None, "throughput": 90.9 if ok else None,
            "speedup": 1.0 if ok else None, "latency_unstable": unstable if ok else None, "reused": [],
            "per_class_iou": per_class or {},
            "latency": {"samples_ms": samples} if ok else None}


def _rows() -> list[dict]:
    ious = {"background": 0.9, HOSTILE_CLASS: None, "cat": 0.5}
    return [_row("torch", "fp32", miou=0.61234, delta=0.0, per_class=ious),
            dict(_row("onnxruntime", "int8", miou=0.61233, delta=-0.00001, unstable=True,  # rounds to -0.0000
                      samples=[5.0, 30.0, 6.0, 5.5, 40.0], per_class=ious),
                 speedup=1.9, speedup_min=1.8, speedup_max=2.05, speedup_paired=True),
            _row("trt", "int8", status="unavailable", reason=HOSTILE_REASON),
            _row("openvino", "fp32", status="failed", reason="a & b")]


class _Parsed(HTMLParser):
    """Tags, every src/href, the text, and each table's rows (cell texts) by table id."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags, self.links, self.imgs, self.text = [], [], [], []
        self.tables: dict[str, list[list[str]]] = {}
        self._table = self._cell = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        self.links += [v for k, v in attrs if k in ("src", "href")]
        if tag == "img":
            self.imgs.append((a.get("src"), a.get("alt")))
        elif tag == "table":
            self._table = self.tables.setdefault(a.get("id"), [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._table[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def _png(src: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix), src[:40]
    data = base64.b64decode(src[len(prefix):], validate=True)
    im = Image.open(io.BytesIO(data))
    assert im.format == "PNG"
    im.load()
    return im


def _check_self_contained_and_escaped(text: str, rows: list[dict]) -> _Parsed:
    p = _Parsed(text)
    assert all(link.startswith(("data:", "#")) for link in p.links), p.links
    assert "url(" not in text and "@import" not in text
    # hostile strings come out as text, never as tags
    assert "script" not in p.tags and "<script" not in text and "<img src=x" not in text
    joined = "".join(p.text)
    assert HOSTILE_REASON in joined and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "a &amp; b" in text and "tiny &amp; &lt;small&gt;" in text and "Test CPU &lt;x86&gt;" in text
    assert not re.search(r"-0\.?0*(?![0-9.])", joined), "negative zero in the report"
    # the results table: a header and one row per input row, mIoU formatted as in summary.md
    body = p.tables["results"][1:]
    assert len(body) == len(rows)
    for cells, r in zip(body, rows):
        assert cells[:3] == [r["backend"], r["precision"], r["device"]]
        if r["status"] == "ok":
            assert cells[4] == f"{r['miou']:.4f}"
        else:
            assert cells[3] == f"{r['status']}: {r['reason']}"
    # an unstable p50 carries a mark linked to the note under the table, never prose in the cell
    for cells, r in zip(body, rows):
        if r["status"] == "ok":
            assert cells[9] == f"{r['p50_ms']:.1f}" + (UNSTABLE_MARK if r["latency_unstable"] else "")
    assert 'href="#unstable"' in text and 'id="unstable"' in text
    note = joined[joined.index(f"{UNSTABLE_MARK} Unstable latency: "):]
    assert note.startswith(f"{UNSTABLE_MARK} Unstable latency: onnxruntime int8.") and "--rounds" in note
    # the speed-up with the range of its per-round ratios; how latency was timed, in the facts
    assert [cells[12] for cells in body[:2]] == ["1.00x", "1.90x (1.80–2.05)"]
    assert "3 interleaved rounds x 5 timed calls per row after 1 warm-up calls" in joined
    assert body[0][5] == body[1][5] == "+0.0000"
    # per-class IoU: ok rows only, columns in first-seen order, None as an empty cell
    per_class = p.tables["per-class"]
    assert per_class[0] == ["row", "background", HOSTILE_CLASS, "cat"]
    assert per_class[1:] == [["torch fp32 (cpu)", "0.9000", "", "0.5000"],
                             ["onnxruntime int8 (cpu)", "0.9000", "", "0.5000"]]
    return p


def test_html_report_alone_is_escaped_self_contained_and_deterministic():
    rows = _rows()
    png = io.BytesIO()
    Image.new("RGB", (7, 3), "red").save(png, format="PNG")
    pictures = [("plot <1>", png.getvalue())]
    text = html_report(rows, MACHINE, SETTINGS, pictures, [("img_0", png.getvalue())])
    p = _check_self_contained_and_escaped(text, rows)
    assert [_png(src).size for src, _ in p.imgs] == [(7, 3), (7, 3)]
    assert [alt for _, alt in p.imgs] == ["plot <1>", "img_0"]  # the parser unescapes attribute values
    assert "plot &lt;1&gt;" in text
    assert html_report(rows, MACHINE, SETTINGS, pictures, [("img_0", png.getvalue())]) == text


@pytest.fixture(scope="module")
def overlay_inputs(tiny_data):
    samples = VOCSegmentation(tiny_data, "val").samples
    palette = [list(c) for c in voc_palette(len(CLASSES))]
    truth = [load_mask(s.mask, len(CLASSES)) for s in samples]
    other = [np.where(m == 255, 0, m).astype(np.uint8) for m in truth]
    for m in other:
        m[:8, :8] = 1  # a difference from the reference to draw
    return samples, {"torch fp32": truth, "onnxruntime int8": other}, palette


def test_write_report_adds_report_html_with_the_plots_and_overlays_embedded(overlay_inputs, tmp_path):
    samples, preds, palette = overlay_inputs
    rows = _rows()
    reports = []
    for name in ("a", "b"):
        folder = tmp_path / name
        written = write_report(folder, rows, MACHINE, SETTINGS, samples=samples, predictions=preds,
                               palette=palette, classes=list(CLASSES))
        assert folder / "report.html" in written and all(f.is_file() for f in written)
        assert "`report.html`" in (folder / "summary.md").read_text()
        reports.append((folder / "report.html").read_bytes())
    assert reports[0] == reports[1], "equal inputs must give a byte-identical report.html"
    text = reports[0].decode("utf-8")
    p = _check_self_contained_and_escaped(text, rows)
    folder = tmp_path / "a"
    on_disk = ["latency.png", "miou_vs_latency.png", *[f"overlays/{s.name}.png" for s in samples[:3]]]
    assert [alt for _, alt in p.imgs] == ["Latency per row", "mIoU vs latency", *[s.name for s in samples[:3]]]
    assert len(p.imgs) == len(on_disk)
    for (src, _), name in zip(p.imgs, on_disk):
        with Image.open(folder / name) as f:
            assert _png(src).size == f.size
        assert base64.b64decode(src.split(",", 1)[1]) == (folder / name).read_bytes()
    # an overlay panel is the image, the ground truth and one column per prediction; the 128 px images
    # are scaled up to the smallest panel width, so the titles above them fit
    assert _png(p.imgs[2][0]).size[0] == (2 + len(preds)) * PANEL_WIDTH[0]
    # each overlay's caption names its image
    assert all(s.name in "".join(p.text) for s in samples[:3])
