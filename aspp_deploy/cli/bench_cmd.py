"""``aspp-deploy bench``: latency of one artifact on one backend."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer
from rich.table import Table

from aspp_deploy.cli._click import Command
from aspp_deploy.cli._console import console, out_console, write_json
from aspp_deploy.cli._errors import handle_errors
from aspp_deploy.cli._progress import working
from aspp_deploy.cli import _model_opts as M
from aspp_deploy.cli._images import image_files
from aspp_deploy.runtime.calibration import SHIPPED_CALIBRATION
from aspp_deploy.errors import InputError
from aspp_deploy.runtime.vocab import Runtime


def real_batch(pre, batch: int) -> tuple[np.ndarray, list[Path]]:
    images = image_files(SHIPPED_CALIBRATION)
    if not images:
        return pre.random_input(batch), []
    from aspp_deploy.data.voc import load_image

    arr = np.stack([pre(load_image(images[i % len(images)])) for i in range(batch)])
    return arr, images


def stats_row(table: Table, label: str, s) -> None:
    table.add_row(label, *(f"{getattr(s, k):.2f}" for k in ("mean", "p50", "p90", "p99", "min", "max", "std")),
                  f"{s.throughput:.1f}")


@handle_errors
def bench(
    backend: Annotated[Runtime, typer.Option(help="Runtime to time.")] = Runtime.torch,
    model: Annotated[Optional[Path], typer.Option("--model", "--onnx", "--checkpoint",
                                                  help="Artifact: checkpoint (torch), ONNX (onnxruntime, openvino), engine (trt). Default for torch: the shipped checkpoint.")] = None,
    trust_code: M.TrustCode = False,
    precision: Annotated[Optional[str], typer.Option(help="torch: fp32 or fp16 (CUDA). Other backends: read from the artifact's manifest.")] = None,
    batch: Annotated[int, typer.Option(help="Batch size.")] = 1,
    height: Annotated[int, typer.Option(help="Input height (0: the model's).")] = 0,
    width: Annotated[int, typer.Option(help="Input width (0: the model's).")] = 0,
    warmup: Annotated[int, typer.Option(help="Untimed warm-up iterations.")] = 10,
    iters: Annotated[int, typer.Option(help="Timed iterations.")] = 50,
    threads: Annotated[int, typer.Option(help="CPU threads (0: library default).")] = 0,
    device: Annotated[str, typer.Option(help="cpu or cuda (torch, onnxruntime); openvino: cpu.")] = "cpu",
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the figures as JSON.")] = None,
) -> None:
    """Time one artifact: latency statistics, throughput, pre/post-processing, GPU phases."""
    from aspp_deploy.backends.registry import check_artifact_kind, open_runner, require_backend
    from aspp_deploy.bench.inputs import artifact_precision, input_geometry
    from aspp_deploy.bench.timing import bench_runner
    from aspp_deploy.model.sources import code_trusted

    if batch < 1 or iters < 1 or warmup < 0:
        raise InputError("--batch and --iters must be >= 1, --warmup >= 0")
    if model is not None:
        check_artifact_kind(backend.value, model)
        if not model.exists():  # named before a missing runtime
            raise InputError(f"model not found: {model}")
    require_backend(backend.value)
    pre, n = input_geometry(backend.value, model, batch, height, width, trust_code)
    precision = precision or artifact_precision(backend.value, model)
    x, images = real_batch(pre, n)
    with working(f"timing {backend.value} ({warmup} warm-up + {iters} iterations)"):
        with code_trusted(trust_code), open_runner(backend.value, model, precision, device, threads) as runner:
            result = bench_runner(runner, x, warmup, iters, images, pre)
            info = runner.info
    table = Table(title=f"{info.backend} {info.precision} on {info.device}: batch {n}, "
                        f"{pre.height}x{pre.width} (ms)")
    for col in ("", "mean", "p50", "p90", "p99", "min", "max", "std", "img/s"):
        table.add_column(col, justify="right" if col else "left")
    stats_row(table, "model (end to end)", result.end_to_end)
    for name, s in result.phases.items():
        stats_row(table, f"  {name}", s)
    if result.preprocess:
        stats_row(table, "preprocess / image", result.preprocess)
    if result.postprocess:
        stats_row(table, "postprocess / image", result.postprocess)
    out_console.print(table)
    if result.end_to_end.unstable:
        console.print(f"[yellow]warning:[/] {result.end_to_end.unstable_warning()}", highlight=False,
                      soft_wrap=True)
    write_json(json_out, {"backend": info.backend, "precision": info.precision, "device": info.device,
                          "artifact": info.artifact, "batch": n, "input": [pre.height, pre.width],
                          "warmup": warmup, "iters": iters, **result.to_dict()})


def register(app: typer.Typer) -> None:
    """Adds this module's commands to ``app``."""
    app.command(cls=Command)(bench)
