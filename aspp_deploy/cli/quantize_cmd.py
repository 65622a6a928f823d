"""``aspp-deploy quantize``: FP16 or INT8 ONNX from an exported FP32 ONNX."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from aspp_deploy.bench.stats import signed
from aspp_deploy.cli._click import Command
from aspp_deploy.cli._console import console, out_console, write_json
from aspp_deploy.cli._errors import handle_errors
from aspp_deploy.cli._progress import working
from aspp_deploy.runtime.calibration import DEFAULT_CALIB_SIZE
from aspp_deploy.runtime.vocab import Precision, Target, subset


QuantPrecision = subset("QuantPrecision", Precision, Precision.fp16, Precision.int8)
HighPrecision = subset("HighPrecision", Precision, Precision.fp32, Precision.fp16)


class Method(str, Enum):
    auto = "auto"
    entropy = "entropy"
    minmax = "minmax"
    percentile = "percentile"


class Backend(str, Enum):
    auto = "auto"
    modelopt = "modelopt"
    ort = "ort"


@handle_errors
def quantize(
    onnx: Annotated[Path, typer.Option("--onnx", "--model", help="FP32 ONNX made by `aspp-deploy export` or `import`.")],
    precision: Annotated[QuantPrecision, typer.Option(help="fp16 (mixed precision) or int8 (Q/DQ).")],  # pyright: ignore[reportInvalidTypeForm]
    target: Annotated[Target, typer.Option(help="INT8 for TensorRT (trt) or the ONNX Runtime CPU provider (cpu).")] = Target.trt,
    calib: Annotated[Optional[Path], typer.Option(help="Folder of calibration images (default: the shipped calibration/).")] = None,
    calib_size: Annotated[int, typer.Option(help="Use the first N images of --calib in name order (0: all).")] = DEFAULT_CALIB_SIZE,
    method: Annotated[Optional[Method], typer.Option(help="Calibration method (default: entropy for trt, auto for cpu: minmax, entropy and percentile 99.99/99.999 measured on the budget images, the best kept).")] = None,
    percentile: Annotated[float, typer.Option(help="Percentile for --method percentile.")] = 99.999,
    data: Annotated[Optional[Path], typer.Option(help="Accuracy data: a VOC folder (its val split, against the masks) or a folder of images (agreement with the FP32 model's masks). Default: the synthetic split for the shipped model; for any other model the --calib images after the first --calib-size, held out.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output ONNX (default: MODEL.fp16.onnx / MODEL.int8-TARGET.onnx beside --onnx).")] = None,
    max_miou_drop: Annotated[float, typer.Option("--max-drop", "--max-miou-drop", help="Accuracy budget: points of the task metric (foreground IoU for 2-class models, else mIoU) that may be lost against FP32 on average.")] = 0.5,
    max_worst_drop: Annotated[float, typer.Option(help="Accuracy budget: points of the task metric that may be lost on the worst budget image (0: unchecked).")] = 7.0,
    budget_images: Annotated[int, typer.Option(help="Val images the budget loop measures on (0: no budget loop).")] = 8,
    eval_images: Annotated[int, typer.Option(help="Val images for the manifest's accuracy figures (0: all).")] = 0,
    cache_dir: Annotated[Optional[Path], typer.Option(help="Calibration cache folder (default: calibration-cache/ beside the output).")] = None,
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="Use and fill the calibration cache.")] = True,
    backend: Annotated[Backend, typer.Option(help="auto: ModelOpt when installed (trt, fp16), else ONNX Runtime / onnxconverter-common.")] = Backend.auto,
    high_precision: Annotated[HighPrecision, typer.Option(  # pyright: ignore[reportInvalidTypeForm]
        help="INT8 trt: precision of the unquantized parts (fp16 needs opset 19: TensorRT 10+).")] = HighPrecision.fp32,
    threads: Annotated[int, typer.Option(help="ONNX Runtime threads for evaluation (0: default).")] = 0,
    speed: Annotated[Optional[bool], typer.Option("--speed/--no-speed", help="INT8: time FP32, INT8 and FP16 here (ONNX Runtime, OpenVINO) in interleaved rounds; --target cpu refuses an INT8 that is not faster (default: on for --target cpu with the budget loop).")] = None,
    allow_slower: Annotated[bool, typer.Option("--allow-slower", help="--target cpu: write the INT8 file even when it is not faster than FP32 here.")] = False,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the manifest entry as JSON.")] = None,
) -> None:
    """Make an FP16 or INT8 ONNX, calibrated on images, within an mIoU budget, with a manifest entry."""
    from aspp_deploy.export.preflight import preflight_line
    from aspp_deploy.precision.quantize import QuantizeOptions, quantized_onnx_from_fp32

    opts = QuantizeOptions(precision.value, target.value, calib, calib_size, method.value if method else None,
                           percentile, data, out, max_miou_drop, budget_images, eval_images, cache_dir, cache,
                           backend.value, high_precision.value, threads, max_worst_drop,
                           target.value == "cpu" and budget_images > 0 if speed is None else speed, allow_slower)
    with working(f"quantizing to {precision.value}"):
        result = quantized_onnx_from_fp32(onnx, opts, log=lambda m: console.print(m, highlight=False))
    entry = result.entry
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    q = entry["quantization"]
    _print_survival(q)
    acc = entry["accuracy"]
    labelled = acc.get("labels", "masks") == "masks"
    table = Table(title=f"{result.onnx_path} ({q['tool']}): {acc.get('accuracy_kind') or 'mIoU vs labels'}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    where = "val images" if labelled else \
        ("images held out from calibration" if acc.get("held_out_from_calibration") else "images (no masks)")
    table.add_row(where, str(acc["num_images"]))
    vs = "" if labelled else " vs FP32 masks"
    if acc.get("foreground_iou") is not None:
        if labelled:
            table.add_row("foreground IoU FP32", f"{acc['foreground_iou_fp32']:.4f}")
        table.add_row(f"foreground IoU {precision.value}{vs}", f"{acc['foreground_iou']:.4f}")
    if labelled:
        table.add_row("mIoU FP32", f"{acc['miou_fp32']:.4f}")
    table.add_row(f"mIoU {precision.value}{vs}", f"{acc['miou']:.4f}")
    table.add_row("delta mIoU", f"{signed(acc['delta_miou_points'] / 100)} ({signed(acc['delta_miou_points'], 2)} points)")
    if acc.get("worst_image") is not None:
        table.add_row(f"worst image ({acc.get('metric', 'mIoU')})",
                      f"{acc['worst_image']:.4f} ({acc.get('worst_image_name') or '?'})")
    table.add_row("pixel agreement with FP32", f"{acc['pixel_agreement']:.4f}")
    if acc["max_abs_logit_diff"] is not None:
        table.add_row("max abs logit difference", f"{acc['max_abs_logit_diff']:.4g}")
    out_console.print(table)
    out_console.print(preflight_line(entry, result.onnx_path), highlight=False, soft_wrap=True)
    if len(entry["trt_versions"]) < len(entry["trt_check"]) and target.value == "cpu":
        out_console.print("  a cpu-target file is for ONNX Runtime and OpenVINO (TensorRT takes --target trt)",
                          highlight=False)
    out_console.print(f"wrote {result.onnx_path} and {result.manifest_path}", highlight=False)
    write_json(json_out, entry)


def _points(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _print_survival(q: dict) -> None:
    """The method chosen and why, what the budget kept in higher precision and why, the speed."""
    choice = (q.get("calibration") or {}).get("method_choice")
    if choice and choice.get("tried"):
        table = Table(title=f"calibration method: {choice['chosen']} ({choice['requested']})")
        table.add_column("method")
        table.add_column("metric")
        table.add_column("drop, all quantized", justify="right")
        table.add_column("worst image", justify="right")
        for t in choice["tried"]:
            mark = " *" if t["label"] == choice["chosen"] else ""
            table.add_row(t["label"] + mark, t["metric"] or "-", _points(t["drop_points"]) if not t["error"]
                          else f"failed: {t['error']}", _points(t["worst_drop_points"]))
        out_console.print(table)
    if choice:
        out_console.print(f"method {choice['chosen']}: {choice['why']}", highlight=False, soft_wrap=True)
    budget = q["budget"]
    if budget["kept_in_higher_precision"]:
        metric = budget.get("metric") or "mIoU"
        table = Table(title=f"kept in higher precision (accuracy budget, points of {metric}, by {budget.get('granularity', 'groups')})")
        table.add_column("layer group")
        table.add_column("recovered alone", justify="right")
        table.add_column("drop after", justify="right")
        table.add_column("worst image after", justify="right")
        table.add_column("FLOPs share", justify="right")
        for k in budget["kept_in_higher_precision"]:
            table.add_row(k["group"], signed(k['recovered_alone_points'], 2), f"{k['drop_after_points']:.2f}",
                          _points(k.get("worst_drop_after_points")), f"{100 * k['flops_share']:.1f}%")
        out_console.print(table)
    if budget.get("met") is not None:
        worst = budget.get("max_worst_drop_points")
        tail = f" (max {worst:g})" if worst else " (unchecked)"
        out_console.print(f"budget: {budget.get('metric')} drop {_points(budget['drop_points'])} points "
                          f"(max {budget['max_drop_points']:g}), worst image "
                          f"{_points(budget.get('worst_drop_points'))}{tail}: {'met' if budget['met'] else 'missed'}",
                          highlight=False, soft_wrap=True)
    speed = q.get("speed")
    if speed:
        table = Table(title=f"speed here (median ms, {speed['rounds']} interleaved rounds)")
        table.add_column("runtime")
        for v in ("fp32", "int8", "fp16"):
            table.add_column(v.upper(), justify="right")
        table.add_column("INT8 vs FP32", justify="right")
        for t in speed["runtimes"]:
            if t["unavailable"]:
                table.add_row(t["runtime"], "unavailable", "", "", "")
                continue
            p = t["p50_ms"]
            ratio = p["fp32"] / p["int8"] if p.get("fp32") and p.get("int8") else None
            table.add_row(t["runtime"], *[f"{p[v]:.2f}" if v in p else "-" for v in ("fp32", "int8", "fp16")],
                          f"{ratio:.2f}x" if ratio else "-")
        out_console.print(table)
        best = speed["best"]
        line = ", ".join(f"{v.upper()} {b['p50_ms']:.2f} ms ({b['runtime']})" for v, b in best.items())
        ratios = [f"INT8 {speed['int8_vs_fp32']:.2f}x FP32" if speed.get("int8_vs_fp32") else "",
                  f"FP16 {speed['fp16_vs_fp32']:.2f}x FP32" if speed.get("fp16_vs_fp32") else ""]
        out_console.print(f"best runtime each: {line}; " + ", ".join(r for r in ratios if r), highlight=False,
                          soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Adds this module's commands to ``app``."""
    app.command(cls=Command)(quantize)
