"""``aspp-deploy bundle``: a self-contained Jetson folder (ONNX, runtime, build step, DeepStream, Triton, README)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, List, Optional

import typer
from rich.table import Table

from aspp_deploy.cli._checks import check_writable
from aspp_deploy.cli._click import Command
from aspp_deploy.cli._console import console, out_console, write_json
from aspp_deploy.cli._errors import handle_errors
from aspp_deploy.cli._images import parity_images
from aspp_deploy.cli._progress import working
from aspp_deploy.cli import _model_opts as M
from aspp_deploy.errors import InputError

TARGETS = ("jetson",)
DEFAULT_CALIB_IMAGES = 64


class QuantBackend(str, Enum):
    auto = "auto"
    modelopt = "modelopt"
    ort = "ort"


def parse_precisions(values: List[str]) -> List[str]:
    """``["fp16,int8"]`` or ``["fp16", "int8"]`` -> ``["fp16", "int8"]`` (order kept, duplicates dropped)."""
    from aspp_deploy.bundle.bundle import PRECISIONS

    found: List[str] = []
    for value in values:
        for p in (v.strip().lower() for v in value.split(",")):
            if p not in PRECISIONS:
                raise InputError(f"--precision {p or '(empty)'} is not supported: use {' and/or '.join(PRECISIONS)}")
            if p not in found:
                found.append(p)
    return found or ["fp16"]


def _fp32_onnx(onnx: Optional[Path], checkpoint: Optional[Path], artifacts: Path, trust_code: bool = False) -> Path:
    """The given ONNX, or ARTIFACTS/model.onnx exported from the checkpoint unless it is up to date."""
    if onnx is not None:
        if not onnx.is_file():
            raise InputError(f"ONNX model not found: {onnx} (make it with `aspp-deploy export`)")
        return onnx
    from aspp_deploy.export.ensure import ensure_fp32
    from aspp_deploy.spec import ModelSpec

    with working(f"checking {artifacts / 'model.onnx'}"):
        made = ensure_fp32(artifacts, ModelSpec(), checkpoint=checkpoint, images=parity_images(None),
                           log=lambda m: console.print(f"  {m}", highlight=False), trust_code=trust_code)
    console.print(f"{made.action} {made.path}", highlight=False)
    return made.path


def _summary(info: dict, out: Path) -> None:
    sizes: dict = {}
    for rel, f in info["files"].items():
        top = rel.split("/")[0] if "/" in rel else rel
        sizes[top] = sizes.get(top, 0) + f["bytes"]
    # headings are plain lines, not table titles: rich centres a title and breaks it mid-word when the
    # folder name is longer than the table is wide
    out_console.print(f"{out}: {sum(sizes.values()) / 1e6:.1f} MB in {len(info['files'])} files",
                      highlight=False, soft_wrap=True)
    table = Table()
    table.add_column("part")
    table.add_column("MB", justify="right")
    for top, size in sorted(sizes.items()):
        table.add_row(top, f"{size / 1e6:.2f}")
    out_console.print(table)
    out_console.print("build path per TensorRT version (chosen on the device by "
                      "`python -m aspp_deploy.runtime build`):", highlight=False, soft_wrap=True)
    paths = Table()
    paths.add_column("TensorRT")
    for p in info["precisions"]:
        paths.add_column(p)
    for version, row in info["build_paths"].items():
        cells = []
        for p in info["precisions"]:
            path = row[p]
            cells.append("not available" if "error" in path else
                         path["onnx"] + (" (calibrate on device)" if path["legacy_int8"] else ""))
        paths.add_row(version, *cells)
    out_console.print(paths)
    out_console.print(f"next, on the Jetson: cd {out.name} && python3 -m aspp_deploy.runtime selftest && ./build.sh "
                      "(see README.md)", highlight=False)


@handle_errors
def bundle(
    target: Annotated[str, typer.Option(help="Deployment target (jetson).")] = "jetson",
    precision: Annotated[List[str], typer.Option(help="fp16 and/or int8: repeat the option or give a comma list.")] = ["fp16"],  # noqa: B006
    checkpoint: Annotated[Optional[Path], typer.Option(help="PyTorch checkpoint (default: the shipped one).")] = None,
    trust_code: M.TrustCode = False,
    onnx: Annotated[Optional[Path], typer.Option("--onnx", "--model", help="An FP32 ONNX from `export` or `import` to bundle instead of exporting the checkpoint.")] = None,
    artifacts: Annotated[Path, typer.Option(help="Where the exported ONNX is reused from or written to.")] = Path("artifacts"),
    calib: Annotated[Optional[Path], typer.Option(help="Calibration images (default: the shipped calibration/).")] = None,
    calib_images: Annotated[int, typer.Option(help="INT8: calibration images shipped for on-device calibration (0: all).")] = DEFAULT_CALIB_IMAGES,
    calib_cache: Annotated[Optional[Path], typer.Option(help="INT8: a TensorRT calibration cache from `aspp-deploy build --legacy-int8` to ship.")] = None,
    data: Annotated[Optional[Path], typer.Option(help="VOC folder whose val split measures the quantized models (default: synthetic).")] = None,
    backend: Annotated[QuantBackend, typer.Option(help="Quantizer (as `aspp-deploy quantize --backend`).")] = QuantBackend.auto,
    name: Annotated[str, typer.Option(help="Model name in DeepStream and Triton.")] = "aspp",
    out: Annotated[Path, typer.Option(help="Bundle folder (replaced atomically if it holds an older bundle).")] = Path("bundle/jetson"),
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write bundle.json's content as JSON.")] = None,
) -> None:
    """Make a self-contained Jetson bundle: ONNX files, torch-free runtime, device build step, DeepStream, Triton."""
    from aspp_deploy.bundle.bundle import BundleRequest, is_replaceable, bundle_from_onnx
    from aspp_deploy.bundle.variants import quantized_variants
    from aspp_deploy.runtime.calibration import calibration_files
    from aspp_deploy.runtime.calibration import SHIPPED_CALIBRATION

    if target.lower() not in TARGETS:
        raise InputError(f"--target {target} is not supported: only jetson (for a desktop GPU, build an engine "
                         "with `aspp-deploy build`)")
    precisions = parse_precisions(precision)
    if not name or not all(c.isalnum() or c in "_-" for c in name):
        raise InputError(f"--name {name!r} must be letters, digits, _ or - (it names Triton models and files)")
    if calib_images < 0:
        raise InputError(f"--calib-images {calib_images} is impossible: use 0 (all) or a positive count")
    if not is_replaceable(out):
        raise InputError(f"{out} exists and is not an aspp-deploy bundle: choose another --out (it is never overwritten)")
    check_writable(out)
    calib_folder = calib or SHIPPED_CALIBRATION
    selftest = calibration_files(calib_folder, 2)
    if calib_cache is not None:  # checked before minutes of quantizing, not after
        if "int8" not in precisions:
            raise InputError("--calib-cache is an INT8 calibration cache: add --precision int8")
        if not calib_cache.is_file():
            raise InputError(f"--calib-cache {calib_cache} not found (write one with `aspp-deploy build "
                             "--legacy-int8`)")
        if not Path(str(calib_cache) + ".json").is_file():
            raise InputError(f"{calib_cache}.json is missing: the calibration cache's record, written beside it "
                             "by `aspp-deploy build --legacy-int8`, is shipped with it")
    fp32 = _fp32_onnx(onnx, checkpoint, artifacts, trust_code)
    from aspp_deploy.bundle.deepstream import static_input
    from aspp_deploy.export.manifest import read_onnx_manifest

    static_input(read_onnx_manifest(fp32).entry)  # a dynamic input is refused before quantizing
    variants = quantized_variants(fp32, precisions, calib, data, backend.value,
                                  log=lambda m: console.print(m, highlight=False), step=working)
    shipped = calibration_files(calib_folder, calib_images) if "int8" in precisions else []
    with working(f"writing {out}"):
        info = bundle_from_onnx(BundleRequest(fp32, variants, out, name, shipped, calib_cache, selftest),
                                log=lambda m: console.print(f"  {m}", highlight=False))
    _summary(info, out)
    write_json(json_out, info)


def register(app: typer.Typer) -> None:
    """Adds this module's commands to ``app``."""
    app.command(cls=Command)(bundle)
