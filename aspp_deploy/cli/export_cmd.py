"""``aspp-deploy export`` and ``aspp-deploy check``."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from aspp_deploy.cli._common import console, handle_errors, out_console, write_json
from aspp_deploy.precision.calibration import SHIPPED_CALIBRATION



class ArgmaxDtype(str, Enum):
    int32 = "int32"
    uint8 = "uint8"


class TrtVersion(str, Enum):
    v8_5 = "8.5"
    v8_6 = "8.6"
    v10_3 = "10.3"
    v10_x = "10.x"
    v11 = "11"


def image_files(folder: Path) -> list[Path]:
    from aspp_deploy.data.voc import IMAGE_EXTENSIONS

    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS) if folder.is_dir() else []


def _parity_images(data: Optional[Path]) -> list[Path]:
    if data is None:
        return image_files(SHIPPED_CALIBRATION)[:4]
    from aspp_deploy.data.voc import VOCSegmentation

    return [s.image for s in VOCSegmentation(data, "val").samples[:4]]


def register(app: typer.Typer) -> None:
    @app.command()
    @handle_errors
    def export(
        checkpoint: Annotated[Optional[Path], typer.Option(help="PyTorch checkpoint (default: the shipped one).")] = None,
        out: Annotated[Path, typer.Option(help="Output folder (MODEL.onnx + manifest.json).")] = Path("artifacts"),
        name: Annotated[str, typer.Option(help="File stem of the ONNX model.")] = "model",
        height: Annotated[int, typer.Option(help="Input height (0: the checkpoint's).")] = 0,
        width: Annotated[int, typer.Option(help="Input width (0: the checkpoint's).")] = 0,
        batch: Annotated[int, typer.Option(help="Batch size (the static or the reference one).")] = 1,
        dynamic: Annotated[str, typer.Option(help="Dynamic axes: '', 'batch', 'spatial' or 'batch,spatial'.")] = "",
        opset: Annotated[int, typer.Option(help="ONNX opset (17 parses on every TensorRT from 8.5).")] = 17,
        simplify: Annotated[bool, typer.Option("--simplify/--no-simplify", help="Simplify with onnxsim.")] = True,
        degenerate_atrous: Annotated[bool, typer.Option("--degenerate-atrous/--no-degenerate-atrous",
                                                        help="Pass 1: atrous convs whose rate covers the feature map -> smaller convs.")] = True,
        pool_broadcast: Annotated[bool, typer.Option("--pool-broadcast/--no-pool-broadcast",
                                                     help="Pass 2: Resize of the 1x1 pooled map -> Expand.")] = True,
        argmax: Annotated[bool, typer.Option("--argmax/--no-argmax", help="Pass 3: output class ids instead of logits.")] = False,
        argmax_dtype: Annotated[ArgmaxDtype, typer.Option(help="Class-id dtype with --argmax.")] = ArgmaxDtype.int32,
        data: Annotated[Optional[Path], typer.Option(help="VOC folder whose val images join the parity check (default: shipped calibration images).")] = None,
        json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the manifest entry as JSON.")] = None,
    ) -> None:
        """Export a checkpoint to a checked, simplified, parity-verified ONNX with a manifest."""
        from aspp_deploy.export.onnx_export import ExportOptions, onnx_from_checkpoint

        dyn = frozenset(d.strip() for d in dynamic.split(",") if d.strip())
        opts = ExportOptions(height or None, width or None, batch, dyn, opset, simplify,
                             degenerate_atrous, pool_broadcast, argmax, argmax_dtype.value, name)
        with console.status("exporting"):
            result = onnx_from_checkpoint(checkpoint, out, opts, _parity_images(data),
                                          log=lambda m: console.print(m, highlight=False))
        entry = result.entry
        for note in result.notes:
            console.print(f"[yellow]note:[/] {note}", highlight=False)
        table = Table(title=f"{result.onnx_path}")
        table.add_column("pass")
        table.add_column("changes", justify="right")
        table.add_column("nodes removed", justify="right")
        table.add_column("MFLOPs removed", justify="right")
        table.add_column("operators")
        for rep in entry["export"]["passes"]:
            ops = ", ".join(f"{op} {d:+d}" for op, d in rep["ops_delta"].items()) or "(weights only)"
            table.add_row(rep["name"], str(len(rep["details"])), str(rep["nodes_removed"]),
                          f"{rep['flops_removed'] / 1e6:.1f}", ops)
        out_console.print(table)
        par = entry["parity"]
        out_console.print(f"parity vs PyTorch: max abs {par['max_abs']:.2e}, mean abs {par['mean_abs']:.2e}, "
                          f"argmax agreement {par['argmax_agreement']:.6f}", highlight=False)
        out_console.print("TensorRT pre-flight: " + ", ".join(
            f"{v} {'ok' if c['ok'] else 'FAIL'}" for v, c in entry["trt_check"].items()), highlight=False)
        out_console.print(f"wrote {result.onnx_path} and {result.manifest_path}", highlight=False)
        write_json(json_out, entry)

    @app.command()
    @handle_errors
    def check(
        model: Annotated[Path, typer.Argument(help="ONNX model to lint.")],
        trt_version: Annotated[Optional[TrtVersion], typer.Option(help="TensorRT version (default: all).")] = None,
        json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the findings as JSON.")] = None,
    ) -> None:
        """Lint an ONNX model against the TensorRT ONNX parser's constraints (no TensorRT needed)."""
        from aspp_deploy.export.graph import load_onnx
        from aspp_deploy.export.trt_check import TRT_VERSIONS, check_for_trt

        graph = load_onnx(model)
        versions = [trt_version.value] if trt_version else list(TRT_VERSIONS)
        reports = [check_for_trt(graph, v) for v in versions]
        for rep in reports:
            status = "[green]ok[/]" if rep.ok else "[red]would fail[/]"
            out_console.print(f"TensorRT {rep.trt_version}: {status}")
            for f in rep.findings:
                out_console.print(f"  {f}", highlight=False)
        write_json(json_out, {"model": str(model), "reports": [r.to_dict() for r in reports]})
        if not all(reports):
            raise typer.Exit(1)
