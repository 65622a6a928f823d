"""``aspp-deploy export``, ``import``, ``presets`` and ``check``."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from aspp_deploy.cli import _model_opts as M
from aspp_deploy.cli._click import Command
from aspp_deploy.cli._console import console, out_console, write_json
from aspp_deploy.cli._errors import handle_errors
from aspp_deploy.cli._progress import working
from aspp_deploy.cli._images import parity_images
from aspp_deploy.errors import InputError



class ArgmaxDtype(str, Enum):
    int32 = "int32"
    uint8 = "uint8"


FUSED_HELP = ("Fused I/O: the graph takes uint8 N x H x W x 3 pixels (the spec's channel order), normalises and lays "
              "them out itself, and returns uint8 class ids at the input size (implies --argmax). Needs a fixed height "
              "and width; the host keeps only the resize/letterbox/crop and its inverse.")


def argmax_dtype_for(argmax_dtype: Optional[ArgmaxDtype], fused_io: bool) -> str:
    """The class-id dtype: the one asked for, else int32 (uint8 with --fused-io, which returns nothing else)."""
    if fused_io and argmax_dtype is not None and argmax_dtype != ArgmaxDtype.uint8:
        raise InputError(f"--fused-io returns uint8 class ids: drop --argmax-dtype {argmax_dtype.value}")
    if argmax_dtype is None:
        return "uint8" if fused_io else "int32"
    return argmax_dtype.value


class TrtVersion(str, Enum):
    v8_5 = "8.5"
    v8_6 = "8.6"
    v10_3 = "10.3"
    v10_x = "10.x"
    v11 = "11"


def print_export(result, verb: str = "wrote") -> None:
    """The summary export and import share: notes, ASPP findings, passes, parity, pre-flight."""
    from aspp_deploy.export.preflight import preflight_line

    entry = result.entry
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    for match in entry["export"].get("aspp") or []:
        out_console.print(f"ASPP found: {match['describe']}", highlight=False)
    if not entry["export"].get("aspp"):
        out_console.print("ASPP found: none (the passes still apply to any dilated conv or 1x1-map resize)")
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
    against = "PyTorch"
    if entry["export"].get("exporter") == "import":
        against = "the TFLite file converted to ONNX" if entry["model"].get("source") == "tflite" else "the original ONNX"
    scale = f" ({par['max_rel']:.1e} of the output's scale)" if "max_rel" in par else ""
    out_console.print(f"parity vs {against}: max abs {par['max_abs']:.2e}{scale}, mean abs {par['mean_abs']:.2e}, "
                      f"argmax agreement {par['argmax_agreement']:.6f} over {len(par['cases'])} cases", highlight=False)
    check = entry["model"].get("tflite_runtime_check")
    if check and check.get("checked"):
        out_console.print(f"vs the TFLite runtime ({check['runtime']}): argmax agreement {check['argmax_agreement']:.6f}, "
                          f"max abs {check['max_abs']:.2e} over {len(check['cases'])} cases", highlight=False)
    pre = entry["preprocess"]
    out_console.print(f"spec: {pre['layout']} {pre['channel_order']} {pre['height']}x{pre['width']} "
                      f"{pre['policy']}, {len(entry['classes'])} classes, output {entry['output_kind']}", highlight=False)
    if pre.get("fused_io"):
        inp, outp = entry["inputs"][0], entry["outputs"][0]
        out_console.print(f"fused I/O: {inp['name']} {inp['dtype']} {' x '.join(map(str, inp['shape']))} "
                          f"({pre['channel_order']} pixels) in, {outp['name']} {outp['dtype']} "
                          f"{' x '.join(map(str, outp['shape']))} class ids out; the graph normalises "
                          "(scale, mean, std, layout) and takes the argmax", highlight=False, soft_wrap=True)
    out_console.print(preflight_line(entry, result.onnx_path), highlight=False, soft_wrap=True)
    out_console.print(f"{verb} {result.onnx_path} and {result.manifest_path}", highlight=False)


SHOW_NODES = 3  # node names printed per kind of finding (--json lists them all)


def _versions_text(versions: list[str], checked: list[str]) -> str:
    if len(checked) > 1 and versions == checked:
        return "every version checked"
    return "TensorRT " + ", ".join(versions)


def print_check(model: Path, reports: list, groups: list) -> None:
    """``check``'s output: one verdict line per version on one line, then each kind of finding once,
    with its nodes and the versions it concerns, then a one-line summary."""
    checked = [r.trt_version for r in reports]
    verdicts = ", ".join(f"{r.trt_version} {'[green]ok[/]' if r.ok else '[red]would fail[/]'}" for r in reports)
    out_console.print(f"{model}: TensorRT {verdicts}", highlight=False, soft_wrap=True)
    for g in groups:
        colour = "red" if g.severity == "error" else "yellow"
        nodes = ", ".join(g.nodes[:SHOW_NODES])
        more = f" and {len(g.nodes) - SHOW_NODES} more" if len(g.nodes) > SHOW_NODES else ""
        count = f"{len(g.nodes)} node{'s' if len(g.nodes) != 1 else ''}"
        out_console.print(f"  [{colour}]{g.severity}[/] ({g.op}, {count}; {_versions_text(g.versions, checked)}): "
                          f"{escape(g.message)}", highlight=False, soft_wrap=True)
        out_console.print(f"      {escape(nodes)}{more}", highlight=False, soft_wrap=True)
    failing = [r.trt_version for r in reports if not r.ok]
    errors = [g for g in groups if g.severity == "error"]
    warnings = [g for g in groups if g.severity != "error"]
    verdict = (f"the parser would reject it on TensorRT {', '.join(failing)}" if failing
               else "every version checked would parse it")
    out_console.print(f"summary: {len(errors)} kind(s) of error, {len(warnings)} kind(s) of warning; {verdict}"
                      + (" (--json lists every node per version)" if groups else ""),
                      highlight=False, soft_wrap=True)


@handle_errors
def export(
    checkpoint: M.Checkpoint = None,
    trust_code: M.TrustCode = False,
    arch: M.Arch = None,
    arch_args: M.ArchArgs = None,
    weights: M.Weights = None,
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
    output_layout: M.OutputLayoutOpt = None,
    threshold: M.Threshold = None,
    out: Annotated[Path, typer.Option(help="Output folder (MODEL.onnx + manifest.json).")] = Path("artifacts"),
    name: Annotated[str, typer.Option(help="File stem of the ONNX model (a plain name).")] = "model",
    batch: Annotated[int, typer.Option(help="Batch size (the static or the reference one).")] = 1,
    dynamic: Annotated[Optional[str], typer.Option(help="Dynamic axes: 'batch', 'spatial' or 'batch,spatial' (default: the spec's, else none).")] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset (17 parses on every TensorRT from 8.5).")] = 17,
    simplify: Annotated[bool, typer.Option("--simplify/--no-simplify", help="Simplify with onnxsim.")] = True,
    degenerate_atrous: Annotated[bool, typer.Option("--degenerate-atrous/--no-degenerate-atrous",
                                                    help="Pass 1: atrous convs whose rate covers the feature map -> smaller convs.")] = True,
    pool_broadcast: Annotated[bool, typer.Option("--pool-broadcast/--no-pool-broadcast",
                                                 help="Pass 2: Resize of the 1x1 pooled map -> Expand.")] = True,
    argmax: Annotated[bool, typer.Option("--argmax/--no-argmax", help="Pass 3: output class ids instead of logits.")] = False,
    argmax_dtype: Annotated[Optional[ArgmaxDtype], typer.Option(help="Class-id dtype with --argmax (default int32; uint8 with --fused-io).")] = None,
    fused_io: Annotated[bool, typer.Option("--fused-io/--no-fused-io", help=FUSED_HELP)] = False,
    data: Annotated[Optional[Path], typer.Option(help="VOC folder whose val images join the parity check (default: shipped calibration images).")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the manifest entry as JSON.")] = None,
) -> None:
    """Export a PyTorch model (our checkpoint, a factory + weights, TorchScript, torch.export) to a checked,
    simplified, parity-verified ONNX with a manifest."""
    from aspp_deploy.export.onnx_export import ExportOptions, onnx_from_source

    source = M.ModelSourceOptions(checkpoint, arch, arch_args, weights, trust_code)
    model_spec = M.ModelSpecOptions(spec, height, width, layout, channel_order, scale, mean, std, resize, classes,
                                    output_kind, output_layout=output_layout, threshold=threshold).build()
    dyn = None if dynamic is None else frozenset(d.strip() for d in dynamic.split(",") if d.strip())
    opts = ExportOptions(None, None, batch, dyn, opset, simplify, degenerate_atrous, pool_broadcast, argmax,
                         argmax_dtype_for(argmax_dtype, fused_io), name, fused_io)
    with working("exporting"):
        result = onnx_from_source(source.load(), model_spec, out, opts, parity_images(data),
                                  log=lambda m: console.print(m, highlight=False))
    print_export(result)
    write_json(json_out, result.entry)


@handle_errors
def import_command(
    model: Annotated[Path, typer.Argument(help="A segmentation model made elsewhere: ONNX, or TFLite (.tflite; "
                                                "pip install 'aspp-deploy[tflite]').")],
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
    output_layout: M.OutputLayoutOpt = None,
    threshold: M.Threshold = None,
    out: Annotated[Path, typer.Option(help="Output folder (MODEL.onnx + manifest.json).")] = Path("artifacts"),
    name: Annotated[str, typer.Option(help="File stem of the adopted ONNX (a plain name).")] = "model",
    batch: Annotated[int, typer.Option(help="Batch size: the reference one, or the static one a pinned dynamic batch takes.")] = 1,
    dynamic: Annotated[Optional[str], typer.Option(help="Dynamic axes to keep: 'batch', 'spatial', both, or '' to pin every dynamic axis (default: the graph's).")] = None,
    simplify: Annotated[bool, typer.Option("--simplify/--no-simplify", help="Simplify with onnxsim.")] = True,
    degenerate_atrous: Annotated[bool, typer.Option("--degenerate-atrous/--no-degenerate-atrous",
                                                    help="Pass 1: atrous convs whose rate covers the feature map -> smaller convs.")] = True,
    pool_broadcast: Annotated[bool, typer.Option("--pool-broadcast/--no-pool-broadcast",
                                                 help="Pass 2: Resize of the 1x1 pooled map -> Expand.")] = True,
    argmax: Annotated[bool, typer.Option("--argmax/--no-argmax", help="Pass 3: output class ids instead of logits.")] = False,
    argmax_dtype: Annotated[Optional[ArgmaxDtype], typer.Option(help="Class-id dtype with --argmax (default int32; uint8 with --fused-io).")] = None,
    fused_io: Annotated[bool, typer.Option("--fused-io/--no-fused-io", help=FUSED_HELP)] = False,
    output_name: Annotated[Optional[str], typer.Option(help="The output that is the segmentation map, when the "
                                                         "model has several (default: the first).")] = None,
    data: Annotated[Optional[Path], typer.Option(help="VOC folder whose val images, or folder of images whose first four, join the parity check (default: shipped calibration images).")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the manifest entry as JSON.")] = None,
) -> None:
    """Adopt a foreign ONNX or TFLite model: checker, onnxsim, ASPP passes, parity against the original, TensorRT
    pre-flight and the manifest every later command reads."""
    from aspp_deploy.export.onnx_export import ExportOptions
    from aspp_deploy.export.onnx_import import onnx_from_foreign

    model_spec = M.ModelSpecOptions(spec, height, width, layout, channel_order, scale, mean, std, resize, classes,
                                    output_kind, dynamic, output_layout, threshold).build()
    opts = ExportOptions(None, None, batch, None, 17, simplify, degenerate_atrous, pool_broadcast, argmax,
                         argmax_dtype_for(argmax_dtype, fused_io), name, fused_io)
    with working("importing"):
        result = onnx_from_foreign(model, model_spec, out, opts, parity_images(data),
                                   log=lambda m: console.print(m, highlight=False), output_name=output_name)
    print_export(result, "adopted as")
    write_json(json_out, result.entry)


@handle_errors
def presets(
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the presets as JSON.")] = None,
) -> None:
    """List the --arch presets (torchvision and segmentation_models_pytorch models)."""
    from aspp_deploy.model.sources import PRESETS

    table = Table(title="--arch presets (pretrained downloads forced off; --weights required)")
    for col in ("preset", "factory", "class-count argument", "package"):
        table.add_column(col)
    for name, p in PRESETS.items():
        table.add_row(name, p.target, p.classes_arg, p.package)
    out_console.print(table)
    write_json(json_out, {name: {"factory": p.target, "classes_arg": p.classes_arg, "package": p.package}
                          for name, p in PRESETS.items()})

@handle_errors
def check(
    model: Annotated[Path, typer.Argument(help="ONNX model to lint.")],
    trt_version: Annotated[Optional[TrtVersion], typer.Option(help="TensorRT version (default: all).")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the findings as JSON.")] = None,
) -> None:
    """Lint an ONNX model against the TensorRT ONNX parser's constraints (no TensorRT needed)."""
    from aspp_deploy.export.graph import load_onnx
    from aspp_deploy.export.trt_check import TRT_VERSIONS, check_for_trt, group_findings

    graph = load_onnx(model)
    versions = [trt_version.value] if trt_version else list(TRT_VERSIONS)
    reports = [check_for_trt(graph, v) for v in versions]
    groups = group_findings(reports)
    print_check(model, reports, groups)
    write_json(json_out, {"model": str(model), "reports": [r.to_dict() for r in reports],
                          "grouped": [g.to_dict() for g in groups]})
    if not all(reports):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Adds this module's commands to ``app``."""
    app.command(cls=Command)(export)
    app.command("import", cls=Command)(import_command)
    app.command(cls=Command)(presets)
    app.command(cls=Command)(check)
