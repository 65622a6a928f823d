"""``report.html``: the whole compare report in one file a person can forward (machine and settings, the
results table, the plots, per-class IoU, the overlays), with every picture embedded as a ``data:`` URI
and nothing fetched from anywhere. Standard library only; deterministic for equal inputs (no date)."""

from __future__ import annotations

import base64
from html import escape

from aspp_deploy.bench.cells import (UNSTABLE_MARK, accuracy_kind, fmt, images_text, is_binary, latency_notes,
                                     latency_text, reference_label, result_cells, result_columns, unstable_labels)
from aspp_deploy.bench.stats import UNSTABLE_CV, UNSTABLE_P99_RATIO, UNSTABLE_ROUNDS


STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.not-ok td { color: #777; }
.unstable { color: #b00; }
a.mark { color: #b00; text-decoration: none; font-weight: bold; }
td { white-space: nowrap; }
td.reason { white-space: normal; }
.scroll { overflow-x: auto; }
figure.overlay img { max-width: none; }
figure { margin: 0 0 1.5em; }
img { max-width: 100%; height: auto; border: 1px solid #ddd; }
footer { color: #555; font-size: 0.85em; border-top: 1px solid #ccc; padding-top: 0.5em; }
"""


def _text(value) -> str:
    """Any value from the data, escaped for HTML text and attribute values."""
    return escape("" if value is None else str(value), quote=True)


def _row_name(r: dict) -> str:
    return f"{r['backend']} {r['precision']} ({r['device']})"


def _results_table(rows: list[dict], settings: dict | None = None) -> list[str]:
    columns, binary = result_columns(rows, settings), is_binary(rows)
    out = ['<table id="results">', "<thead><tr>" + "".join(f"<th>{escape(c)}</th>" for c in columns)
           + "</tr></thead>", "<tbody>"]
    for r in rows:
        head = "".join(f"<td>{_text(r[k])}</td>" for k in ("backend", "precision", "device"))
        if r["status"] != "ok":
            out.append(f'<tr class="not-ok">{head}<td class="reason" colspan="{len(columns) - 3}">'
                       f"{_text(r['status'])}: {_text(r['reason'])}</td></tr>")
            continue
        cells = [_text(c) for c in result_cells(r, binary)]
        if r.get("latency_unstable"):
            cells[columns.index("p50 ms") - 3] += (f'<a class="mark" href="#unstable" title="unstable latency: '
                                                    f'see the note under the table">{UNSTABLE_MARK}</a>')
        out.append(f"<tr>{head}" + "".join(f'<td class="num">{c}</td>' for c in cells) + "</tr>")
    return out + ["</tbody>", "</table>"]


def _per_class_table(rows: list[dict], settings: dict | None = None) -> list[str]:
    ok = [r for r in rows if r["status"] == "ok" and r.get("per_class_iou")]
    names = list(dict.fromkeys(name for r in ok for name in r["per_class_iou"]))
    if not names:
        return []
    title = "Per-class IoU" + (" vs the reference's masks (no labels)" if (settings or {}).get("labels") == "fp32"
                               else "")
    out = [f"<h2>{escape(title)}</h2>", '<div class="scroll">', '<table id="per-class">',
           "<thead><tr><th>row</th>" + "".join(f"<th>{_text(n)}</th>" for n in names) + "</tr></thead>", "<tbody>"]
    for r in ok:
        ious = r["per_class_iou"]
        out.append(f"<tr><td>{_text(_row_name(r))}</td>"
                   + "".join(f'<td class="num">{_text(fmt(ious.get(n)))}</td>' for n in names) + "</tr>")
    return out + ["</tbody>", "</table>", "</div>"]


def _figures(pictures: list[tuple[str, bytes]], natural: bool = False) -> list[str]:
    """``natural``: shown at their own size, scrolling sideways when wider than the page (overlays:
    their titles are drawn at a size meant to be read unscaled)."""
    out = []
    for caption, png in pictures:
        uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        kind = ' class="overlay"' if natural else ""
        figure = (f'<figure{kind}><img src="{uri}" alt="{_text(caption)}">'
                  f"<figcaption>{_text(caption)}</figcaption></figure>")
        out.append(f'<div class="scroll">{figure}</div>' if natural else figure)
    return out


def html_report(rows: list[dict], machine: dict, settings: dict, plots: list[tuple[str, bytes]],
                overlays: list[tuple[str, bytes]]) -> str:
    """The report as one HTML document. ``plots`` and ``overlays`` are (caption, PNG bytes) pairs."""
    height, width = settings["input"]
    reference = reference_label(rows, settings)
    facts = [f"accuracy on {images_text(settings)} at {height}x{width}",
             f"accuracy shown: {accuracy_kind(settings, rows)}",
             f"latency: {latency_text(settings)}",
             "speed-up: per round, the reference's median over the row's, then the median of those ratios "
             "(the slowest and fastest round's in brackets)"]
    if settings.get("threads"):
        facts.append(f"{settings['threads']} threads")
    if settings.get("model"):
        facts.append(f"model: {settings['model']}")
    facts.append(f"reference: {reference}")
    unstable = unstable_labels(rows)
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             "<title>aspp-deploy compare</title>", f"<style>{STYLE}</style>", "</head>", "<body>",
             "<h1>aspp-deploy compare</h1>",
             f"<p>Machine: {_text(machine['cpu'])} ({_text(machine['cores'])} cores), "
             f"GPU: {_text(machine['gpu'] or 'none')}</p>",
             f"<p>{'; '.join(_text(f) for f in facts)}.</p>",
             "<h2>Results</h2>", *_results_table(rows, settings)]
    parts += [f"<p>{_text(note)}</p>" for note in latency_notes(rows)]
    if unstable:
        parts.append(f'<p id="unstable" class="unstable">{UNSTABLE_MARK} Unstable latency: '
                     f"{_text(', '.join(unstable))}. The timed calls spread widely (std over "
                     f"{100 * UNSTABLE_CV:.0f}% of the mean or p99 over {UNSTABLE_P99_RATIO:g}x p50) or the middle "
                     f"half of its rounds' medians spans over {100 * UNSTABLE_ROUNDS:.0f}% of their median: the machine "
                     f"was busy. Rerun on a quiet machine or with more rounds (--rounds) before trusting these "
                     f"latencies.</p>")
    if plots:
        parts += ["<h2>Plots</h2>", *_figures(plots)]
    parts += _per_class_table(rows, settings)
    if overlays:
        parts += ["<h2>Overlays</h2>", *_figures(overlays, natural=True)]
    parts += [f"<footer><p>Deltas, agreement, boundary F-score and the max logit difference (the largest "
              f"|difference| over every measured image) are against the first ok row, the reference "
              f"({_text(reference)}).</p></footer>", "</body>", "</html>", ""]
    return "\n".join(parts)
