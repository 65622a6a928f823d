"""``aspp-deploy compare``: one table for every backend and precision."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import Progress
from rich.table import Table

from aspp_deploy.cli._common import console, handle_errors, out_console, write_json


def _table(rows: list[dict]) -> tuple[Table, list[str]]:
    """The table, and the footnotes that say why a row did not run (one per distinct reason)."""
    notes: list[str] = []
    t = Table(title="aspp-deploy compare (deltas vs PyTorch FP32)")
    for col in ("backend", "precision", "device", "MB", "mIoU", "ΔmIoU", "pix agr", "bndry F",
                "max Δlogit", "p50 ms", "p99 ms", "img/s", "speed-up"):
        t.add_column(col, justify="left" if col in ("backend", "precision", "device") else "right")
    for r in rows:
        if r["status"] != "ok":
            if r["reason"] not in notes:
                notes.append(r["reason"])
            t.add_row(r["backend"], r["precision"], r["device"],
                      f"[dim]{r['status']} [{notes.index(r['reason']) + 1}][/]")
            continue

        def f(v, spec=".4f"):
            return "" if v is None else format(v, spec)

        t.add_row(r["backend"], r["precision"], r["device"],
                  f(r["size_bytes"] / 1e6 if r["size_bytes"] else None, ".1f"), f(r["miou"]),
                  f(r["delta_miou"], "+.4f"), f(r["pixel_agreement"]), f(r["boundary_f"]),
                  f(r["max_abs_logit_diff"], ".3g"), f(r["p50_ms"], ".1f"), f(r["p99_ms"], ".1f"),
                  f(r["throughput"], ".1f"), f(r["speedup"], ".2f") + "x")
    return t, [f"[{i + 1}] {reason}" for i, reason in enumerate(notes)]


def register(app: typer.Typer) -> None:
    @app.command()
    @handle_errors
    def compare(
        checkpoint: Annotated[Optional[Path], typer.Option(help="PyTorch checkpoint (default: the shipped one).")] = None,
        artifacts: Annotated[Path, typer.Option(help="Folder of artifacts: reused when up to date, made when missing.")] = Path("artifacts"),
        data: Annotated[Optional[Path], typer.Option(help="VOC-style folder (default: the synthetic validation split).")] = None,
        limit: Annotated[int, typer.Option(help="Use only the first N validation images (0: all).")] = 0,
        warmup: Annotated[int, typer.Option(help="Latency warm-up runs per row.")] = 5,
        iters: Annotated[int, typer.Option(help="Timed latency runs per row.")] = 30,
        threads: Annotated[int, typer.Option(help="CPU threads for every CPU backend (0: library default).")] = 0,
        report: Annotated[Optional[Path], typer.Option(help="Report folder (JSON, CSV, Markdown, plots, overlays).")] = Path("reports/compare"),
        json_out: Annotated[Optional[Path], typer.Option("--json", help="Write every figure as JSON.")] = None,
    ) -> None:
        """Run every backend x precision that can run here; one table of accuracy and latency."""
        import torch

        from aspp_deploy.backends.registry import open_runner
        from aspp_deploy.bench.compare import ValidationSet, run_compare
        from aspp_deploy.bench.report import machine_description, write_report
        from aspp_deploy.bench.rows import default_row_specs, onnx_is_stale
        from aspp_deploy.eval.evaluate import ensure_default_data
        from aspp_deploy.export.onnx_export import ExportOptions, onnx_from_checkpoint
        from aspp_deploy.model.checkpoint import load_checkpoint

        if threads:
            torch.set_num_threads(threads)
        ckpt = load_checkpoint(checkpoint)
        assert ckpt.path is not None
        fp32 = artifacts / "model.onnx"

        def export_fn() -> Path:
            return onnx_from_checkpoint(ckpt.path, artifacts, ExportOptions(),
                                        log=lambda m: console.print(m, highlight=False)).onnx_path

        if fp32.is_file() and onnx_is_stale(fp32, ckpt.path):
            console.print(f"{fp32} was exported from another checkpoint: exporting again", highlight=False)
            export_fn()
        specs = default_row_specs(ckpt.path, artifacts, export_fn, _quantize)
        with Progress(console=console, transient=True) as progress:
            gen = progress.add_task("generating the synthetic validation split", total=None, visible=False)
            root = data if data is not None else ensure_default_data(
                lambda s, i, n: progress.update(gen, completed=i, total=n, visible=True))
            progress.update(gen, visible=False)
            load = progress.add_task("loading validation images", total=None)
            val = ValidationSet(root, ckpt.preprocess, len(ckpt.classes), limit or None)
            progress.update(load, visible=False)

            def progress_factory(label: str):
                task = progress.add_task(f"{label}: accuracy", total=len(val.inputs))
                return lambda i, n: progress.update(task, completed=i)

            rows = run_compare(specs, val, ckpt.classes,
                               lambda s: open_runner(s.backend, s.artifact, s.precision, s.device, threads),
                               warmup, iters, log=lambda m: console.print(m, highlight=False),
                               progress_factory=progress_factory)
        dicts = [r.to_dict() for r in rows]
        table, notes = _table(dicts)
        out_console.print(table)
        for note in notes:
            out_console.print(note, highlight=False)
        machine = machine_description()
        settings = {"images": len(val.inputs), "data": str(root), "input": [ckpt.preprocess.height, ckpt.preprocess.width],
                    "warmup": warmup, "iters": iters, "threads": threads or torch.get_num_threads(),
                    "checkpoint": str(ckpt.path)}
        if report is not None:
            preds = {f"{r.spec.backend} {r.spec.precision}": r.predictions for r in rows if r.status == "ok"}
            written = write_report(report, dicts, machine, settings, samples=val.samples,
                                   predictions=preds, palette=ckpt.palette)
            console.print(f"report: {len(written)} files in {report}", highlight=False)
        write_json(json_out, {"machine": machine, "settings": settings, "rows": dicts})


def _quantize(fp32: Path, out: Path, **kwargs) -> Path:
    """Makes an FP16 / INT8 ONNX row's artifact with ``aspp-deploy quantize``'s defaults."""
    from aspp_deploy.precision.api import quantize_for_compare

    return quantize_for_compare(fp32, out, log=lambda m: console.print(f"  {m}", highlight=False), **kwargs)
