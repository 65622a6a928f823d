"""``aspp-deploy eval``: mIoU of a checkpoint or artifact on a VOC-style folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import Progress
from rich.table import Table

from aspp_deploy.cli import _model_opts as M
from aspp_deploy.cli._click import Command
from aspp_deploy.cli._console import out_console, write_json
from aspp_deploy.cli._errors import handle_errors
from aspp_deploy.cli._progress import LineProgress, progress
from aspp_deploy.runtime.vocab import Runtime, subset


# the runtimes eval runs (a TensorRT engine's accuracy is measured by `compare`'s trt rows)
EvalBackend = subset("EvalBackend", Runtime, Runtime.torch, Runtime.onnxruntime, Runtime.openvino)


def _progress_callbacks(bar: Progress | LineProgress, label: str):
    gen = bar.add_task("generating the synthetic validation split", total=None, visible=False)
    task = bar.add_task(label, total=None)

    def on_generate(_split: str, i: int, n: int) -> None:
        bar.update(gen, completed=i, total=n, visible=True)

    def on_eval(i: int, n: int) -> None:
        bar.update(task, completed=i, total=n)

    return on_generate, on_eval


@handle_errors
def eval_command(
    backend: Annotated[EvalBackend, typer.Option(help="Which runtime runs the model.")] = EvalBackend.torch,  # pyright: ignore[reportInvalidTypeForm]
    checkpoint: M.Checkpoint = None,
    trust_code: M.TrustCode = False,
    arch: M.Arch = None,
    arch_args: M.ArchArgs = None,
    weights: M.Weights = None,
    spec: M.Spec = None,
    height: M.Height = 0,
    width: M.Width = 0,
    classes: M.Classes = None,
    model: Annotated[Optional[Path], typer.Option("--model", "--onnx", help="ONNX model (onnxruntime, openvino backends).")] = None,
    data: Annotated[Optional[Path], typer.Option(help="VOC-style folder with masks, or a folder of images without masks (accuracy is then agreement with an FP32 reference: see --reference). Default: the synthetic validation split, for the shipped model only.")] = None,
    reference: Annotated[Optional[Path], typer.Option(help="FP32 ONNX whose masks are the reference when --data has no masks (default for a reduced-precision ONNX: the FP32 ONNX its manifest names as source, beside it, checked by sha256).")] = None,
    split: Annotated[str, typer.Option(help="Split list under ImageSets/Segmentation.")] = "val",
    limit: Annotated[int, typer.Option(help="Evaluate only the first N images (0: all).")] = 0,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    threads: Annotated[int, typer.Option(help="CPU threads (0: library default).")] = 0,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the results as JSON.")] = None,
) -> None:
    """Report mIoU, pixel accuracy and per-class IoU on a VOC-style folder, or agreement with an FP32
    reference model on a folder of images without masks."""
    from contextlib import nullcontext

    from aspp_deploy.data.images import LABEL_TEXT, open_data
    from aspp_deploy.eval.evaluate import check_dataset_classes, default_data_for, evaluate

    with progress() as bar:
        on_generate, on_eval = _progress_callbacks(bar, f"evaluating ({backend.value})")
        source = M.ModelSourceOptions(checkpoint, arch, arch_args, weights, trust_code)
        model_spec = M.ModelSpecOptions(spec, height, width, classes=classes).build()
        runner, pre, class_names = _open_runner(backend, source, model_spec, model, device, threads)
        with runner:
            entry = _model_entry(backend, model, runner)
            root = data if data is not None else default_data_for(class_names, entry.get("source"), "eval",
                                                                  on_generate)
            ds = open_data(root, split)
            ref_path = None if ds.labelled else _reference_path(reference, model, entry, root)
            ref_runner = _open_reference(ref_path, class_names, pre, threads) if ref_path else None
            with ref_runner or nullcontext():
                check_dataset_classes(root, class_names)  # refuse a class-count mismatch before any image
                result = evaluate(runner, ds, pre, class_names, split, limit=limit or None, progress=on_eval,
                                  reference=ref_runner)
    kind = LABEL_TEXT[result.labels]
    where = split if ds.labelled else f"vs {ref_path.name if ref_path else 'FP32'}"
    table = Table(title=f"{backend.value} on {root} ({where}, {result.num_images} images): {kind}")
    table.add_column("class")
    table.add_column("IoU" if ds.labelled else "IoU vs FP32 masks", justify="right")
    for name, iou in result.per_class_iou.items():
        table.add_row(name, "n/a" if iou is None else f"{iou:.4f}")
    table.add_row("[bold]mIoU[/]", f"[bold]{result.miou:.4f}[/]")
    table.add_row("pixel accuracy" if ds.labelled else "pixel agreement with FP32", f"{result.pixel_accuracy:.4f}")
    if result.foreground_iou is not None:
        table.add_row(f"[bold]foreground IoU ({class_names[1]})[/]", f"[bold]{result.foreground_iou:.4f}[/]")
    if result.worst_image is not None:
        table.add_row(f"worst image ({result.metric}): {result.worst_image_name}", f"{result.worst_image:.4f}")
    out_console.print(table)
    out_console.print(f"accuracy shown: {kind}", highlight=False)
    write_json(json_out, {"backend": backend.value, "artifact": runner.info.artifact,
                          "data": str(root), "split": split if ds.labelled else None,
                          "reference": str(ref_path) if ref_path else None,
                          "input_size": [pre.height, pre.width], **result.to_dict()})


def _open_runner(backend: Runtime, source: M.ModelSourceOptions, spec, model: Optional[Path],
                 device: str, threads: int):
    if backend == Runtime.torch:
        from aspp_deploy.backends.torch_backend import open_torch_source
        from aspp_deploy.errors import InputError

        if model is not None:  # never ignored: it would evaluate another model than the one named
            raise InputError(f"--model {model} is run by --backend onnxruntime or openvino: add one of them "
                             "(--backend torch evaluates --checkpoint, or --arch with --weights)")
        runner, resolved = open_torch_source(source.options, spec, device, threads, trust_code=source.trust_code)
        return runner, resolved.preprocess, resolved.classes
    from aspp_deploy.backends.registry import check_artifact_kind, open_runner, require_backend
    from aspp_deploy.errors import InputError
    from aspp_deploy.export.manifest import read_onnx_manifest

    if model is None:
        raise InputError(f"--backend {backend.value} needs --model MODEL.onnx (make one with `aspp-deploy export`)")
    check_artifact_kind(backend.value, model)
    require_backend(backend.value)
    manifest = read_onnx_manifest(model)
    runner = open_runner(backend.value, model, device=device, threads=threads)
    return runner, manifest.preprocess(), manifest.classes


def _model_entry(backend: Runtime, model: Optional[Path], runner) -> dict:
    """The manifest entry of the ONNX model (onnx backends), else what is known of the PyTorch source
    (``{"source": its provenance record}``): says whether it is the shipped model, and its FP32 source."""
    if backend == Runtime.torch:
        source = getattr(runner, "source", None)
        return {"source": dict(getattr(source, "record", None) or {})}
    from aspp_deploy.export.manifest import read_onnx_manifest

    assert model is not None
    return read_onnx_manifest(model).entry


def _reference_path(reference: Optional[Path], model: Optional[Path], entry: dict, data: Path) -> Path:
    """The FP32 ONNX whose masks are the reference on images without masks: ``--reference``, else the
    FP32 ONNX a reduced-precision model's manifest names as its source (beside it, same sha256)."""
    from aspp_deploy.errors import InputError
    from aspp_deploy.io import sha256_file

    if reference is not None:
        if not Path(reference).is_file():
            raise InputError(f"--reference {reference} not found")
        return Path(reference)
    source = entry.get("source") or {}
    if model is None or entry.get("precision", "fp32") == "fp32" or not source.get("onnx"):
        raise InputError(f"{data} has images but no masks: accuracy needs labels (a VOC-style folder with masks) "
                         "or --reference FP32.onnx, the FP32 model whose masks this model should agree with")
    path = Path(model).parent / Path(source["onnx"]).name
    if not path.is_file():
        raise InputError(f"{data} has no masks and the FP32 model {model.name} was made from, {path}, is missing: "
                         "give --reference FP32.onnx (or a VOC-style folder with masks)")
    if source.get("onnx_sha256") and sha256_file(path) != source["onnx_sha256"]:
        raise InputError(f"{path} is not the FP32 model {model.name} was made from (its sha256 differs from the "
                         "manifest's): give --reference with that model")
    return path


def _open_reference(path: Path, classes: list[str], pre, threads: int):
    """An ONNX Runtime runner of the FP32 reference, refused when it predicts other classes or is fed
    another preprocessing (its masks would not be comparable)."""
    from aspp_deploy.backends.onnxruntime_backend import OrtRunner
    from aspp_deploy.errors import InputError
    from aspp_deploy.export.manifest import read_onnx_manifest

    manifest = read_onnx_manifest(path)
    if len(manifest.classes) != len(classes):
        raise InputError(f"--reference {path} predicts {len(manifest.classes)} classes, the model {len(classes)}: "
                         "the reference must be the FP32 version of the same model")
    if manifest.preprocess().fused(False).to_dict() != pre.fused(False).to_dict():  # fused I/O or not: each is fed its own
        raise InputError(f"--reference {path} takes another preprocessing than the model: the reference must be "
                         "the FP32 version of the same model")
    return OrtRunner(path, threads=threads)


def register(app: typer.Typer) -> None:
    """Adds this module's commands to ``app``."""
    app.command("eval", cls=Command)(eval_command)
