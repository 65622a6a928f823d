"""``aspp-deploy compare``: one table for every backend and precision."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from aspp_deploy.bench.cells import (UNSTABLE_MARK, accuracy_kind, images_text, is_binary, latency_notes, latency_text,
                                     result_cells)
from aspp_deploy.bench.rounds import DEFAULT_ITERS, DEFAULT_ROUNDS, DEFAULT_WARMUP, METHOD, REWARM, SEED
from aspp_deploy.cli import _model_opts as M
from aspp_deploy.cli._click import Command
from aspp_deploy.cli._console import console, out_console, write_json
from aspp_deploy.cli._errors import handle_errors
from aspp_deploy.cli._images import parity_images
from aspp_deploy.cli._progress import progress as progress_display


DEFAULT_LIMIT = 64


# (header, which of result_cells' figures it shows); short headers, units in the header; GLOSSARY says the rest
ACCURACY_COLUMNS = [("MB", "size"), ("mIoU", "miou"), ("ΔmIoU", "delta"), ("fg IoU", "fg"), ("agree", "agree"),
                    ("bnd F", "bndf"), ("Δlogit", "logit")]
LATENCY_COLUMNS = [("p50 ms", "p50"), ("p99 ms", "p99"), ("img/s", "ips"), ("speed-up", "speedup")]
CELL_ORDER = ["size", "miou", "delta", "fg", "agree", "bndf", "logit", "p50", "p99", "ips", "speedup"]
GLOSSARY = ("agree: share of pixels given the reference's class; bnd F: boundary F-score; Δlogit: largest "
            "|logit difference| over every image; speed-up: in each latency round, the reference's median / the "
            "row's median; the median of those ratios, ± how far the farthest round's ratio lies from it")


def _row_label(r: dict, with_device: bool) -> str:
    return f"{r['backend']} {r['precision']}" + (f" ({r['device']})" if with_device else "")


def _results_table(ok: list[dict], columns: list[tuple[str, str]], title: str, binary: bool) -> Table:
    """One table of the ok rows: the row's name (wraps at spaces), then ``columns`` (never wrapped)."""
    devices = {r["device"] for r in ok}
    shown = [(head, key) for head, key in columns if key != "fg" or binary]
    body = []
    for r in ok:
        cells = dict(zip([k for k in CELL_ORDER if k != "fg" or binary], result_cells(r, binary, compact=True)))
        if r.get("latency_unstable"):
            cells["p50"] += UNSTABLE_MARK
        body.append([_row_label(r, len(devices) > 1), *(cells[key] for _, key in shown)])
    # light rules, little padding; every figure column as wide as its widest figure and never wrapped,
    # the row names at least their longest word: when the table does not fit, results_tables splits it
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
              collapse_padding=True)
    words = [w for line in body for w in line[0].split()]
    t.add_column("row", overflow="fold", min_width=max(map(len, words + ["row"])))
    for k, (head, _) in enumerate(shown, start=1):
        t.add_column(head, justify="right", no_wrap=True,
                     min_width=max(len(head), *(len(line[k]) for line in body)) if body else len(head))
    for line in body:
        t.add_row(*line)
    return t


def _narrowest(table: Table) -> int:
    """The width ``table`` takes with its row names wrapped as far as they go (every figure whole),
    from a real render: rich's own measurement does not count the padding and rules the same way."""
    import io

    name = table.columns[0]
    name.max_width = name.min_width
    try:
        probe = Console(width=10_000, file=io.StringIO(), color_system=None)
        with probe.capture() as captured:
            probe.print(table)
        return max(len(line.rstrip()) for line in captured.get().splitlines() if line.strip())
    finally:
        name.max_width = None


def results_tables(rows: list[dict], reference: str, labels: str, console: Console) -> list[Table]:
    """The ok rows as one table when it fits ``console``'s width with every figure whole (the row
    names may wrap), else as two narrower ones (accuracy, latency) so no figure is ever cut."""
    ok = [r for r in rows if r["status"] == "ok"]
    binary = is_binary(rows)
    kind = "mIoU vs labels" if labels == "masks" else "mIoU = agreement with FP32, no labels"
    devices = sorted({r["device"] for r in ok})
    where = f"; all on {devices[0]}" if len(devices) == 1 else ""
    title = f"aspp-deploy compare ({kind}; deltas vs {reference}{where})"
    one = _results_table(ok, ACCURACY_COLUMNS + LATENCY_COLUMNS, title, binary)
    if _narrowest(one) <= console.width:
        return [one]
    return [_results_table(ok, ACCURACY_COLUMNS, f"accuracy ({kind}; deltas vs {reference}{where})", binary),
            _results_table(ok, LATENCY_COLUMNS, "latency, batch 1 (speed-up vs " + reference + ", paired by round)",
                           binary)]


def results_notes(rows: list[dict], rounds: int, settings: dict | None = None) -> list[str]:
    """The lines under the table: what the short headers mean, how latency was measured (rows whose
    latency was reused or not measured), which rows have unstable latency and what to do, and each
    row that did not run with why (rows sharing a reason on one line)."""
    from aspp_deploy.bench.stats import UNSTABLE_CV, UNSTABLE_P99_RATIO, UNSTABLE_ROUNDS

    ok = [r for r in rows if r["status"] == "ok"]
    notes = []
    if ok:
        notes.append(GLOSSARY + ".")
        if settings and settings.get("rounds"):
            notes.append(f"latency: {latency_text(settings)}.")
        notes += latency_notes(rows)
    devices = len({r["device"] for r in ok}) > 1  # named as the table names them
    unstable = [_row_label(r, devices) for r in ok if r.get("latency_unstable")]
    if unstable:
        which = "every row" if len(unstable) == len(ok) > 1 else ", ".join(unstable)
        notes.append(f"{UNSTABLE_MARK} unstable latency ({which}): the timed calls spread widely (std over "
                     f"{100 * UNSTABLE_CV:.0f}% of the mean or p99 over {UNSTABLE_P99_RATIO:g}x p50, over all "
                     f"rounds) or the middle half of its rounds' medians spans over {100 * UNSTABLE_ROUNDS:.0f}% of "
                     f"their median, so the machine was busy; rerun on a quiet machine or with more rounds (--rounds {max(20, 3 * rounds)}) before "
                     "trusting these latencies.")
    reasons: dict[str, list[str]] = {}
    for r in rows:
        if r["status"] != "ok":
            reasons.setdefault(f"{r['status']}: {r['reason']}", []).append(_row_label(r, True))
    if reasons:
        notes.append("not run here:")
        for reason, labels in reasons.items():
            notes += [f"  {', '.join(labels)}:", f"    {reason}"]
    return notes


def print_results(rows: list[dict], reference: str, labels: str, rounds: int, console: Console,
                  settings: dict | None = None) -> None:
    """The results table(s) and their notes, fitted to ``console``'s width (no figure cut); ``rounds``:
    the latency rounds run (for the advice on unstable latency), ``settings``: the run's settings
    (the latency's rounds, said under the table)."""
    if any(r["status"] == "ok" for r in rows):
        for table in results_tables(rows, reference, labels, console):
            console.print(table)
    for note in results_notes(rows, rounds, settings):  # reasons hold [extras]: plain Text, never markup
        indent = len(note) - len(note.lstrip(" "))  # a reason's wrapped lines keep its indent
        console.print(Padding(Text(note.lstrip(" "), overflow="fold"), (0, 0, 0, indent)), highlight=False)


def report_line(written: list[Path], folder: Path) -> str:
    """The last line: the one file to open first, then what else is there."""
    html = folder / "report.html"
    return f"report: open {html} in a browser ({len(written)} files in {folder}: JSON, CSV, Markdown, plots)"


@handle_errors
def compare(
    checkpoint: M.Checkpoint = None,
    trust_code: M.TrustCode = False,
    arch: M.Arch = None,
    arch_args: M.ArchArgs = None,
    weights: M.Weights = None,
    onnx: Annotated[Optional[Path], typer.Option(help="A foreign ONNX to adopt (as `aspp-deploy import` does) instead of a PyTorch model.",
                                                 rich_help_panel=M.PANEL_MODEL)] = None,
    spec: M.Spec = None,
    height: M.Height = 0,
    width: M.Width = 0,
    layout: M.LayoutOpt = None,
    channel_order: M.ChannelOrderOpt = None,
    scale: M.Scale = None,
    mean: M.Mean = None,
    std: M.Std = None,
    resize: M.Resize = None,
    classes: M.Classes = None,
    output_kind: M.OutputKindOpt = None,
    artifacts: Annotated[Path, typer.Option(help="Folder of artifacts: reused when up to date, made when missing.")] = Path("artifacts"),
    data: Annotated[Optional[Path], typer.Option(help="VOC-style folder with masks, or a folder of images without masks (every row is then scored against the reference row's masks: agreement with FP32). Default: the synthetic validation split, for the shipped model only.")] = None,
    calib: Annotated[Optional[Path], typer.Option(help="Calibration image folder for the INT8 rows (default: the shipped calibration/ images; use your own for your model).")] = None,
    limit: Annotated[int, typer.Option(help="Measure accuracy on the first N validation images (0: the whole split). "
                                       "64 keeps a cold compare of the shipped model within 3 minutes on 2 CPU cores; "
                                       "use 0 for final figures.")] = DEFAULT_LIMIT,
    warmup: Annotated[int, typer.Option(help="Untimed latency calls per row before the rounds (each row's block in a round "
                                        "also opens with one untimed call).")] = DEFAULT_WARMUP,
    rounds: Annotated[int, typer.Option(help="Latency rounds, after every row's accuracy: each round runs every row, in a new "
                                        "order (fixed seed); a speed-up is the median of the per-round ratios to the "
                                        "reference, shown with their spread. More rounds for a busy machine.")] = DEFAULT_ROUNDS,
    iters: Annotated[int, typer.Option(help="Timed latency calls per row in each round (a row's latency: rounds x iters "
                                       "calls).")] = DEFAULT_ITERS,
    threads: Annotated[int, typer.Option(help="CPU threads for every CPU backend (0: library default).")] = 0,
    reuse: Annotated[bool, typer.Option("--reuse/--remeasure", help="Reuse accuracy figures measured before on the same artifact (sha256), images, preprocessing and settings (ARTIFACTS/result-cache/); --remeasure measures every row again and stores the new figures.")] = True,
    reuse_latency: Annotated[bool, typer.Option("--reuse-latency/--measure-latency", help="Reuse latencies measured before on this machine with the same settings (rounds included) too: those rows are not timed again, and their speed-ups pair by round only with a reference from the same earlier run (default: measured every run, and stored for a later --reuse-latency).")] = False,
    report: Annotated[Optional[Path], typer.Option(help="Report folder (JSON, CSV, Markdown, plots, overlays).")] = Path("reports/compare"),
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write every figure as JSON.")] = None,
) -> None:
    """Run every backend x precision that can run here; one table of accuracy and latency.

    The model: --checkpoint, --arch with --weights, or --onnx; with none of them, what ARTIFACTS/model.onnx
    already holds, else the shipped checkpoint."""
    import torch

    from aspp_deploy.bench.compare import ValidationSet, latency_orders, run_compare
    from aspp_deploy.bench.report import machine_description, write_report
    from aspp_deploy.bench.row_keys import row_keys
    from aspp_deploy.bench.rows import default_row_specs, row_opener
    from aspp_deploy.errors import InputError
    from aspp_deploy.eval.evaluate import default_data_for
    from aspp_deploy.export.ensure import ensure_fp32

    if limit < 0 or iters < 1 or rounds < 1 or warmup < 0 or threads < 0:
        raise InputError("--limit, --warmup and --threads must be >= 0, and --rounds and --iters >= 1")
    if threads:
        torch.set_num_threads(threads)
    source = M.ModelSourceOptions(checkpoint, arch, arch_args, weights, trust_code)
    model_spec = M.ModelSpecOptions(spec, height, width, layout, channel_order, scale, mean, std, resize, classes,
                                    output_kind).build()
    log = lambda m: console.print(escape(m), highlight=False)  # noqa: E731  (paths may hold [brackets])
    if data is not None:  # real images join the parity check, as in `export` (masks or not)
        from aspp_deploy.data.images import open_data

        images = [s.image for s in open_data(data).samples[:4]]
    else:
        images = parity_images(None)
    fp32 = ensure_fp32(artifacts, model_spec, onnx=onnx, images=images, log=log, **source.keywords())
    entry = fp32.typed
    pre = entry.preprocess
    class_names = list(entry.classes)

    def export_fn() -> Path:
        return ensure_fp32(artifacts, model_spec, onnx=onnx, images=images, log=log, **source.keywords()).path

    torch_model = fp32.source.files[0] if fp32.source and fp32.source.files else None

    with progress_display() as progress:  # a bar on a terminal, plain lines in a log
        gen = progress.add_task("generating the synthetic validation split", total=None, visible=False)
        root = data if data is not None else default_data_for(
            class_names, entry.source, "compare",
            lambda s, i, n: progress.update(gen, completed=i, total=n, visible=True))
        progress.update(gen, visible=False)
        specs = default_row_specs(torch_model, artifacts, export_fn, _quantizer(root, calib, threads),
                                  no_torch=fp32.no_torch)
        load = progress.add_task("loading validation images", total=None)
        val = ValidationSet(root, pre, len(class_names), limit or None)
        progress.update(load, visible=False)

        def progress_factory(label: str):
            task = progress.add_task(f"{label}: accuracy", total=len(val.inputs))
            return lambda i, n: progress.update(task, completed=i)

        from aspp_deploy.bench.result_cache import FOLDER, ResultCache

        cache = ResultCache(artifacts / FOLDER, read=reuse)
        machine = machine_description()
        latency_key = {"method": METHOD, "seed": SEED, "rewarm": REWARM, "warmup": warmup, "rounds": rounds,
                       "iters": iters, "threads": threads, "input": list(pre.input_shape(1)), "machine": machine}
        timing = progress.add_task("latency rounds", total=rounds, visible=False)
        rows = run_compare(specs, val, class_names, row_opener(fp32.source, pre, threads), warmup, iters,
                           log=log, progress_factory=progress_factory, cache=cache,
                           row_key=row_keys(fp32, pre, class_names, val, threads), latency_key=latency_key,
                           reuse_latency=reuse_latency, rounds=rounds,
                           rounds_progress=lambda i, n: progress.update(timing, completed=i, visible=True))
    dicts = [r.to_dict() for r in rows]
    reference = next((r for r in rows if r.status == "ok"), None)
    ref_label = f"{reference.spec.backend} {reference.spec.precision}" if reference else "nothing"
    settings = {"images": len(val.inputs), "split_images": val.split_size, "data": str(root),
                "labels": val.labels,
                "input": [pre.height, pre.width], "warmup": warmup, "rounds": rounds, "iters": iters,
                "rewarm": REWARM, "latency_method": METHOD, "latency_seed": SEED,
                "latency_order": latency_orders(rows),
                "threads": threads or torch.get_num_threads(),
                "model": (entry.extra.get("model") or {}).get("label"), "reference": ref_label,
                "checkpoint": str(torch_model) if torch_model else None}
    settings["accuracy"] = accuracy_kind(settings, dicts)
    print_results(dicts, ref_label, val.labels, rounds, out_console, settings)
    out_console.print(f"accuracy on {images_text(settings)}"
                      + (" (--limit 0 measures them all)" if val.split_size > len(val.inputs) else ""),
                      highlight=False)
    out_console.print(f"accuracy shown: {settings['accuracy']}", highlight=False, soft_wrap=True)
    if report is not None:
        preds = {f"{r.spec.backend} {r.spec.precision}": r.predictions for r in rows if r.status == "ok"}
        written = write_report(report, dicts, machine, settings, samples=val.samples,
                               predictions=preds, palette=entry.palette, classes=class_names)
        console.print(escape(report_line(written, report)), highlight=False, soft_wrap=True)
    write_json(json_out, {"machine": machine, "settings": settings, "rows": dicts})
    if not any(r.status == "ok" for r in rows):
        raise InputError("no row could run: see the reasons under \"not run here\"")


def _quantizer(data: Path, calib: Optional[Path], threads: int):
    """Makes an FP16 / INT8 ONNX row's artifact as ``aspp-deploy quantize`` does, on compare's data."""
    from aspp_deploy.precision.api import quantize_for_compare

    def make(fp32: Path, out: Path, **kwargs) -> Path:
        return quantize_for_compare(fp32, out, log=lambda m: console.print(f"  {escape(m)}", highlight=False),
                                    data=data, calib=calib, threads=threads, **kwargs)

    return make


def register(app: typer.Typer) -> None:
    """Adds this module's commands to ``app``."""
    app.command(cls=Command)(compare)
