"""``aspp-deploy quantize``: FP16 or INT8 ONNX from an exported FP32 ONNX."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from aspp_deploy.bench.stats import signed
from aspp_deploy.cli._common import Command, console, handle_errors, out_console, write_json, working
from aspp_deploy.precision.calibration import DEFAULT_CALIB_SIZE


class Precision(str, Enum):
    fp16 = "fp16"
    int8 = "int8"


class Target(str, Enum):
    trt = "trt"
    cpu = "cpu"


class Method(str, Enum):
    entropy = "entropy"
    minmax = "minmax"
    percentile = "percentile"


class Backend(str, Enum):
    auto = "auto"
    modelopt = "modelopt"
    ort = "ort"


class HighPrecision(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"


def register(app: typer.Typer) -> None:
    @app.command(cls=Command)
    @handle_errors
    def quantize(
        onnx: Annotated[Path, typer.Option("--onnx", "--model", help="FP32 ONNX made by `aspp-deploy export` or `import`.")],
        precision: Annotated[Precision, typer.Option(help="fp16 (mixed precision) or int8 (Q/DQ).")],
        target: Annotated[Target, typer.Option(help="INT8 for TensorRT (trt) or the ONNX Runtime CPU provider (cpu).")] = Target.trt,
        calib: Annotated[Optional[Path], typer.Option(help="Folder of calibration images (default: the shipped calibration/).")] = None,
        calib_size: Annotated[int, typer.Option(help="Use the first N images of --calib in name order (0: all).")] = DEFAULT_CALIB_SIZE,
        method: Annotated[Optional[Method], typer.Option(help="Calibration method (default: entropy for trt, minmax for cpu).")] = None,
        percentile: Annotated[float, typer.Option(help="Percentile for --method percentile.")] = 99.999,
        data: Annotated[Optional[Path], typer.Option(help="VOC folder whose val split measures accuracy (default: the synthetic split).")] = None,
        out: Annotated[Optional[Path], typer.Option(help="Output ONNX (default: MODEL.fp16.onnx / MODEL.int8-TARGET.onnx beside --onnx).")] = None,
        max_miou_drop: Annotated[float, typer.Option(help="Accuracy budget: mIoU points that may be lost against FP32.")] = 0.5,
        budget_images: Annotated[int, typer.Option(help="Val images the budget loop measures on (0: no budget loop).")] = 8,
        eval_images: Annotated[int, typer.Option(help="Val images for the manifest's accuracy figures (0: all).")] = 0,
        cache_dir: Annotated[Optional[Path], typer.Option(help="Calibration cache folder (default: calibration-cache/ beside the output).")] = None,
        cache: Annotated[bool, typer.Option("--cache/--no-cache", help="Use and fill the calibration cache.")] = True,
        backend: Annotated[Backend, typer.Option(help="auto: ModelOpt when installed (trt, fp16), else ONNX Runtime / onnxconverter-common.")] = Backend.auto,
        high_precision: Annotated[HighPrecision, typer.Option(help="INT8 trt: precision of the unquantized parts (fp16 needs opset 19: TensorRT 10+).")] = HighPrecision.fp32,
        threads: Annotated[int, typer.Option(help="ONNX Runtime threads for evaluation (0: default).")] = 0,
        json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the manifest entry as JSON.")] = None,
    ) -> None:
        """Make an FP16 or INT8 ONNX, calibrated on images, within an mIoU budget, with a manifest entry."""
        from aspp_deploy.precision.quantize import QuantizeOptions, quantized_onnx_from_fp32

        opts = QuantizeOptions(precision.value, target.value, calib, calib_size, method.value if method else None,
                               percentile, data, out, max_miou_drop, budget_images, eval_images, cache_dir, cache,
                               backend.value, high_precision.value, threads)
        with working(f"quantizing to {precision.value}"):
            result = quantized_onnx_from_fp32(onnx, opts, log=lambda m: console.print(m, highlight=False))
        entry = result.entry
        for note in result.notes:
            console.print(f"[yellow]note:[/] {note}", highlight=False)
        q = entry["quantization"]
        budget = q["budget"]
        if budget["kept_in_higher_precision"]:
            table = Table(title="kept in higher precision (accuracy budget)")
            table.add_column("layer group")
            table.add_column("recovered alone", justify="right")
            table.add_column("drop after", justify="right")
            table.add_column("FLOPs share", justify="right")
            for k in budget["kept_in_higher_precision"]:
                table.add_row(k["group"], signed(k['recovered_alone_points'], 2), f"{k['drop_after_points']:.2f}",
                              f"{100 * k['flops_share']:.1f}%")
            out_console.print(table)
        acc = entry["accuracy"]
        table = Table(title=f"{result.onnx_path} ({q['tool']})")
        table.add_column("measure")
        table.add_column("value", justify="right")
        table.add_row("val images", str(acc["num_images"]))
        table.add_row("mIoU FP32", f"{acc['miou_fp32']:.4f}")
        table.add_row(f"mIoU {precision.value}", f"{acc['miou']:.4f}")
        table.add_row("delta mIoU", f"{signed(acc['delta_miou_points'] / 100)} ({signed(acc['delta_miou_points'], 2)} points)")
        table.add_row("pixel agreement with FP32", f"{acc['pixel_agreement']:.4f}")
        if acc["max_abs_logit_diff"] is not None:
            table.add_row("max abs logit difference", f"{acc['max_abs_logit_diff']:.4g}")
        out_console.print(table)
        why = ""
        if len(entry["trt_versions"]) < len(entry["trt_check"]):
            why = f"`aspp-deploy check {result.onnx_path}` says why"
            if target.value == "cpu":
                why += "; a cpu-target file is for ONNX Runtime and OpenVINO"
            why = f" ({why})"
        out_console.print("parses on TensorRT: " + (", ".join(entry["trt_versions"]) or "none of "
                          + ", ".join(entry["trt_check"])) + why, highlight=False, soft_wrap=True)
        out_console.print(f"wrote {result.onnx_path} and {result.manifest_path}", highlight=False)
        write_json(json_out, entry)
