"""Where a PyTorch segmentation model comes from, and how its output is made a segmentation map.

Sources (``load_source``):

- ``checkpoint``: our own checkpoint format (``--checkpoint``, default: the shipped model);
- ``factory``: any ``nn.Module`` from ``--arch PACKAGE.MODULE:FUNCTION`` (or ``FILE.py:FUNCTION``, or a
  preset name) with ``--arch-args JSON`` and ``--weights STATE_DICT``. Pretrained-weight arguments are
  forced off (nothing is ever downloaded) and the weights file is required;
- ``torchscript``: a ``torch.jit.save`` file; ``torch.export``: a ``torch.export.save`` archive (``.pt2``).
  Both are code (a TorchScript file is a program that runs when loaded; ``torch.export.load`` unpickles
  with ``weights_only=False`` and has no safe mode), recognised by content whatever their name, and
  loaded only with ``trust_code`` (``--trust-code``); without it they are refused before anything is read
  but the zip's list of members.

``SegmentationAdapter`` turns whatever the model returns into one ``N x C x H x W`` tensor at the input
size (logits or probabilities) or ``N x H x W`` class ids: it picks ``out`` from a dict (dropping
``aux``), the first element of a tuple or list, upsamples low-resolution output in the graph
(bilinear, ``align_corners=False``; nearest for class ids) and takes NHWC input when the spec says so.
Every adaptation is recorded as a note.
"""

from __future__ import annotations

import math

import hashlib
import importlib
from contextlib import contextmanager
from contextvars import ContextVar
import importlib.util
import inspect
import json
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from aspp_deploy.errors import CheckpointError, InputError
from aspp_deploy.io import fingerprint, sha256_file
from aspp_deploy.model.checkpoint import load_checkpoint
from aspp_deploy.runtime.preprocess import Preprocess
from aspp_deploy.spec import GraphFacts, read_output_layout, resolve, resolve_input

if TYPE_CHECKING:
    from aspp_deploy.spec import ModelSpec, ResolvedSpec


@dataclass(frozen=True)
class Preset:
    target: str                 # MODULE:FUNCTION
    classes_arg: str            # the factory argument that sets the class count
    head_key: str               # state-dict key whose first dimension is the class count
    package: str                # what to pip install


TV = "torchvision.models.segmentation"
SMP = "segmentation_models_pytorch"
PRESETS: dict[str, Preset] = {
    "deeplabv3_resnet50": Preset(f"{TV}:deeplabv3_resnet50", "num_classes", "classifier.4.weight", "torchvision"),
    "deeplabv3_resnet101": Preset(f"{TV}:deeplabv3_resnet101", "num_classes", "classifier.4.weight", "torchvision"),
    "deeplabv3_mobilenet_v3_large": Preset(f"{TV}:deeplabv3_mobilenet_v3_large", "num_classes",
                                           "classifier.4.weight", "torchvision"),
    "lraspp_mobilenet_v3_large": Preset(f"{TV}:lraspp_mobilenet_v3_large", "num_classes",
                                        "classifier.high_classifier.weight", "torchvision"),
    "fcn_resnet50": Preset(f"{TV}:fcn_resnet50", "num_classes", "classifier.4.weight", "torchvision"),
    "fcn_resnet101": Preset(f"{TV}:fcn_resnet101", "num_classes", "classifier.4.weight", "torchvision"),
    "smp.DeepLabV3": Preset(f"{SMP}:DeepLabV3", "classes", "segmentation_head.0.weight", "segmentation-models-pytorch"),
    "smp.DeepLabV3Plus": Preset(f"{SMP}:DeepLabV3Plus", "classes", "segmentation_head.0.weight",
                                "segmentation-models-pytorch"),
    "smp.Unet": Preset(f"{SMP}:Unet", "classes", "segmentation_head.0.weight", "segmentation-models-pytorch"),
    "smp.FPN": Preset(f"{SMP}:FPN", "classes", "segmentation_head.0.weight", "segmentation-models-pytorch"),
}
# Arguments that would download weights, and the value that turns each off.
PRETRAINED_OFF: dict[str, Any] = {"weights": None, "weights_backbone": None, "pretrained": False,
                                  "pretrained_backbone": False, "encoder_weights": None}
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "weights", "params")


@dataclass
class ModelSource:
    kind: str                    # checkpoint | factory | torchscript | torch.export
    label: str                   # one line for messages and reports
    module: nn.Module            # eval mode, fp32, CPU
    files: list[Path]
    record: dict                 # provenance for the manifest (paths, hashes, arch, args)
    preprocess: Preprocess | None = None      # known from the source (our checkpoints)
    classes: list[str] | None = None
    palette: list[list[int]] | None = None
    config: dict | None = None   # our ModelConfig, for our checkpoints
    output_stride: int = 32      # alignment used for extra parity shapes
    notes: list[str] = field(default_factory=list)

    def fingerprint(self, spec: dict | None = None) -> str:
        """Identifies this model (files by content, factory and arguments) and the spec it was given."""
        return fingerprint(self.record, spec or {})


TRUST_CODE_FLAG = "--trust-code"
# Why each kind of file is code: said when it is refused, and noted when --trust-code runs it.
CODE_FILES = {
    "torchscript": ("a TorchScript program", "loading it runs the code it holds"),
    "torch.export": ("a torch.export archive", "torch.export.load unpickles its sample inputs and constants "
                     "with weights_only=False (it has no safe mode), which can run any code"),
}
# --trust-code for callers that reach ``load_source`` through code that does not pass it (``predict`` and
# ``bench`` open their runner through the backend registry): set with ``code_trusted``, False by default.
_TRUST_CODE: ContextVar[bool] = ContextVar("aspp_deploy_trust_code", default=False)


@contextmanager
def code_trusted(trust: bool = True) -> Iterator[None]:
    """Within the block, ``load_source`` calls that do not say otherwise load TorchScript / torch.export
    files when ``trust`` is True (the user gave ``--trust-code``)."""
    token = _TRUST_CODE.set(bool(trust))
    try:
        yield
    finally:
        _TRUST_CODE.reset(token)


def refuse_code(path: Path, kind: str) -> InputError:
    """The one-line refusal for a --checkpoint that is code, given without --trust-code."""
    what, why = CODE_FILES[kind]
    return InputError(f"{path} is {what}: {why}, so it is not loaded; give {TRUST_CODE_FLAG} if you trust it "
                      "to run as code (our checkpoints and --arch with --weights need no flag)")


def load_source(checkpoint: Path | None = None, arch: str | None = None, arch_args: str | dict | None = None,
                weights: Path | None = None, *, trust_code: bool | None = None) -> ModelSource:
    """The one entry point behind every ``--checkpoint``/``--arch``/``--weights`` option.

    ``trust_code``: load a ``checkpoint`` that is TorchScript or torch.export (``--trust-code``); None: as
    ``code_trusted`` says (False outside it). Without it such a file is refused before it is loaded."""
    if arch is not None:
        if checkpoint is not None:
            raise InputError("give either --checkpoint or --arch with --weights, not both")
        return _factory_source(arch, arch_args, weights)
    if arch_args is not None or weights is not None:
        raise InputError("--arch-args and --weights go with --arch MODULE:FUNCTION (or a preset: "
                         f"{', '.join(PRESETS)})")
    if checkpoint is not None and Path(checkpoint).is_file():
        kind = archive_kind(Path(checkpoint))
        if kind in CODE_FILES:
            if not (_TRUST_CODE.get() if trust_code is None else trust_code):
                raise refuse_code(Path(checkpoint), kind)
            source = _torchscript_source(Path(checkpoint)) if kind == "torchscript" \
                else _exported_source(Path(checkpoint))
            what, why = CODE_FILES[kind]
            source.notes.append(f"{Path(checkpoint).name} is {what} and was run as code ({TRUST_CODE_FLAG}): {why}")
            return source
    return checkpoint_source(checkpoint)


def archive_kind(path: Path) -> str:
    """torchscript / torch.export / checkpoint, from the zip archive's member names."""
    if path.suffix.lower() == ".pt2":
        return "torch.export"
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return "checkpoint"
    if any(n.endswith("serialized_exported_program.json") or "/models/" in n and n.endswith(".json") for n in names):
        return "torch.export"
    if any("/code/" in n or n.endswith("constants.pkl") for n in names):
        return "torchscript"
    return "checkpoint"


def checkpoint_source(path: Path | None) -> ModelSource:
    ckpt = load_checkpoint(path)
    assert ckpt.path is not None
    cfg = ckpt.config
    return ModelSource("checkpoint", f"{ckpt.path.name} ({cfg.backbone}/ASPP-{cfg.head})", ckpt.build(),
                       [ckpt.path], {"kind": "checkpoint", "checkpoint": str(ckpt.path),
                                     "checkpoint_sha256": sha256_file(ckpt.path)},
                       ckpt.preprocess, list(ckpt.classes), [list(c) for c in ckpt.palette], cfg.to_dict(),
                       cfg.output_stride)


def _torchscript_source(path: Path) -> ModelSource:
    """Runs the program in ``path``: only for a file the user named with --trust-code."""
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # TorchScript raises RuntimeError and friends for foreign archives
        raise CheckpointError(f"cannot load TorchScript file {path}: {_first_line(exc)}") from None
    return ModelSource("torchscript", f"TorchScript {path.name}", module.float().eval(), [path],
                       {"kind": "torchscript", "file": str(path), "file_sha256": sha256_file(path)})


def _exported_source(path: Path) -> ModelSource:
    """Unpickles ``path`` (``torch.export.load``): only for a file the user named with --trust-code."""
    try:
        program = torch.export.load(str(path))
        module = program.module()
    except Exception as exc:  # torch.export.load raises many kinds for foreign or broken archives
        raise CheckpointError(f"cannot load torch.export archive {path}: {_first_line(exc)}") from None
    return ModelSource("torch.export", f"torch.export {path.name}", _ExportedModule(module).eval(), [path],
                       {"kind": "torch.export", "file": str(path), "file_sha256": sha256_file(path)},
                       notes=["a torch.export program is traced at its exported shapes: other input sizes "
                              "may not be supported"])


class _ExportedModule(nn.Module):
    """A torch.export program's module behind a plain ``nn.Module``: the program's module refuses
    ``train()``/``eval()`` (which the ONNX exporter calls), so it is held outside the module tree, with
    its weights frozen (they become the ONNX file's initializers)."""

    def __init__(self, program_module: nn.Module) -> None:
        super().__init__()
        for p in program_module.parameters():
            p.requires_grad_(False)
        self._program = (program_module,)

    def forward(self, x: torch.Tensor):
        return self._program[0].forward(x)


def resolve_arch(arch: str) -> tuple[str, Preset | None]:
    if arch in PRESETS:
        return PRESETS[arch].target, PRESETS[arch]
    if ":" not in arch:
        raise InputError(f"--arch {arch!r} is neither MODULE:FUNCTION, FILE.py:FUNCTION nor a preset "
                         f"({', '.join(PRESETS)})")
    for preset in PRESETS.values():
        if preset.target == arch:
            return arch, preset
    where, _, name = arch.rpartition(":")
    if where.endswith(".py") and Path(where).is_file():
        return f"{Path(where).resolve()}:{name}", None  # the same file from any working folder
    return arch, None


def _import_factory(target: str):
    where, _, name = target.rpartition(":")
    if not where or not name:
        raise InputError(f"--arch {target!r} must look like MODULE:FUNCTION or FILE.py:FUNCTION")
    if where.endswith(".py"):
        file = Path(where)
        if not file.is_file():
            raise InputError(f"--arch: file not found: {file}")
        mod_name = f"_aspp_deploy_user_{hashlib.sha256(str(file.resolve()).encode()).hexdigest()[:12]}"
        spec = importlib.util.spec_from_file_location(mod_name, file)
        if spec is None or spec.loader is None:
            raise InputError(f"--arch: cannot import {file}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # the user's own code: any error is theirs, said in one line
            raise InputError(f"--arch: importing {file} raised {type(exc).__name__}: {_first_line(exc)}") from None
    else:
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as exc:
            raise InputError(f"--arch: cannot import {where}: {exc} (is the package installed?)") from None
        except Exception as exc:  # a package that fails on import (e.g. a torch/torchvision mismatch)
            raise InputError(f"--arch: importing {where} raised {type(exc).__name__}: {_first_line(exc)}"
                             " (see docs/byom-install.md)") from None
    factory = getattr(module, name, None)
    if factory is None or not callable(factory):
        raise InputError(f"--arch: {where} has no callable {name!r}")
    return factory


MAX_ARGS_DEPTH = 32  # --arch-args nesting: json.loads recurses once per level (RecursionError near 1000)


def _json_depth(text: str) -> int:
    """How deeply ``[``/``{`` nest in JSON text (outside strings); stops counting past MAX_ARGS_DEPTH."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_ARGS_DEPTH:
                    break
        elif ch in "]}":
            depth -= 1
    return deepest


def _parse_args(arch_args: str | dict | None) -> dict:
    if arch_args is None or arch_args == "":
        return {}
    if isinstance(arch_args, dict):
        return dict(arch_args)
    text = str(arch_args)
    if Path(text).suffix.lower() == ".json" and Path(text).is_file():
        text = Path(text).read_text()
    depth = _json_depth(text)
    if depth > MAX_ARGS_DEPTH:
        raise InputError(f"--arch-args nests arrays/objects more than {MAX_ARGS_DEPTH} levels deep: factory "
                         "arguments are a JSON object of plain values, lists and small objects")
    try:
        args = json.loads(text)
    except RecursionError:  # the depth check above keeps json well within Python's limit; a safety net
        raise InputError(f"--arch-args nests arrays/objects too deeply (at most {MAX_ARGS_DEPTH} levels)") from None
    except ValueError as exc:
        raise InputError(f"--arch-args is not valid JSON: {exc}") from None
    if not isinstance(args, dict):
        raise InputError("--arch-args must be a JSON object of keyword arguments, e.g. '{\"num_classes\": 21}'")
    return args


def load_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A state dict from ``path`` (plain, or nested under state_dict/model/...; ``module.`` prefixes
    stripped), read without executing any pickled code. Tensors keep their precision."""
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors for non-weights files
        raise CheckpointError(f"cannot read weights {path}: {_first_line(exc)} (a state dict saved with "
                              "torch.save is expected; no pickled code is ever loaded)") from None
    notes: list[str] = []
    sd = raw
    for _ in range(3):
        if isinstance(sd, dict) and sd and all(isinstance(v, torch.Tensor) for v in sd.values()):
            break
        if not isinstance(sd, dict):
            break
        key = next((k for k in STATE_DICT_KEYS if isinstance(sd.get(k), dict)), None)
        if key is None:
            break
        notes.append(f"weights read from the '{key}' entry of {path.name}")
        sd = sd[key]
    if not (isinstance(sd, dict) and sd and all(isinstance(v, torch.Tensor) for v in sd.values())):
        what = type(raw).__name__ if not isinstance(raw, dict) else f"a dict with keys {sorted(map(str, raw))[:6]}"
        raise CheckpointError(f"{path} holds no state dict ({what}); expected name -> tensor, possibly "
                              f"under one of {', '.join(STATE_DICT_KEYS)}")
    if all(str(k).startswith("module.") for k in sd):
        sd = {str(k)[len("module."):]: v for k, v in sd.items()}
        notes.append("'module.' prefix stripped (DataParallel)")
    return {str(k): v for k, v in sd.items()}, notes


def _factory_source(arch: str, arch_args: str | dict | None, weights: Path | None) -> ModelSource:
    target, preset = resolve_arch(arch)
    args = _parse_args(arch_args)
    if weights is None:
        raise InputError("--arch needs --weights STATE_DICT: nothing is downloaded, so the model's trained "
                         "weights must come from a file")
    factory = _import_factory(target)  # before reading weights: a missing package is the first error
    sd, notes = load_state_dict(Path(weights))
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    for name, off in PRETRAINED_OFF.items():
        if name in args and args[name] not in (None, False):
            raise InputError(f"--arch-args sets {name}={args[name]!r}: pretrained weights would be downloaded; "
                             "nothing is ever downloaded, give the trained weights with --weights")
        if name in params and name not in args:
            args[name] = off
    forced = {k: v for k, v in args.items() if k in PRETRAINED_OFF}
    if preset and preset.classes_arg not in args and preset.head_key in sd and sd[preset.head_key].dim() >= 1:
        args[preset.classes_arg] = int(sd[preset.head_key].shape[0])
        notes.append(f"{preset.classes_arg}={args[preset.classes_arg]} read from the weights ({preset.head_key})")
    call = ", ".join(f"{k}={v!r}" for k, v in args.items())
    try:
        model = factory(**args)
    except Exception as exc:  # the factory is user code
        raise InputError(f"--arch: {target}({call}) raised {type(exc).__name__}: {_first_line(exc)}") from None
    if not isinstance(model, nn.Module):
        raise InputError(f"--arch: {target} returned a {type(model).__name__}, not a torch.nn.Module")
    _load_strict(model, sd, Path(weights), notes)
    record = {"kind": "factory", "arch": target, "preset": arch if arch in PRESETS else None,
              "arch_args": {k: v for k, v in args.items() if k not in PRETRAINED_OFF},
              "pretrained_forced_off": sorted(forced), "weights": str(weights), "weights_sha256": sha256_file(weights)}
    label = f"{arch}({', '.join(f'{k}={v!r}' for k, v in record['arch_args'].items())})"
    return ModelSource("factory", label, model.float().eval(), [Path(weights)], record, notes=notes)


def _load_strict(model: nn.Module, sd: dict[str, torch.Tensor], path: Path, notes: list[str]) -> None:
    own = model.state_dict()
    aux = [k for k in sd if k.startswith("aux_classifier.") and k not in own]
    if aux:
        sd = {k: v for k, v in sd.items() if k not in aux}
        notes.append(f"dropped {len(aux)} aux_classifier.* tensors (a training-only auxiliary head)")
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first: {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first: {', '.join(unexpected[:3])})")
        raise CheckpointError(f"weights {path} do not fit the model: {'; '.join(parts)}")
    for key, value in sd.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise CheckpointError(f"weights {path} do not fit the model: {key} has shape {tuple(value.shape)}, "
                                  f"the model wants {tuple(own[key].shape)}")
    half = sum(1 for v in sd.values() if v.is_floating_point() and v.dtype != torch.float32)
    if half:
        notes.append(f"{half} tensors stored below FP32 in the weights file; the model runs in FP32")
    model.load_state_dict(sd, strict=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


# -- output adaptation ------------------------------------------------------------------------------


@dataclass
class OutputPlan:
    pick: str | int | None = None      # dict key or sequence index, None: the tensor itself
    squeeze_channel: bool = False      # N x 1 x H x W class ids -> N x H x W
    resize: bool = False               # output size differs from the input: resize in the graph
    kind: str = "logits"               # logits | probabilities | class_ids
    num_classes: int | None = None
    nhwc_out: bool = False             # N x H x W x C scores: transposed to NCHW
    binary: bool = False               # one score channel: made [background, foreground]
    background: float = 0.0            # probabilities: 2 * threshold; logits: logit(threshold)
    output_layout: str = "NCHW"
    notes: list[str] = field(default_factory=list)


def finish_output(y: torch.Tensor, x: torch.Tensor, resize: bool, squeeze: bool, ids: bool,
                  nhwc_out: bool = False, binary: bool = False, probabilities: bool = False,
                  background: float = 0.0) -> torch.Tensor:
    """Squeeze a class-id channel, move an NHWC score map's channels first, make one score channel
    [background, foreground] (argmax = probability > threshold: ``[2t - p, p]`` for probabilities,
    ``[logit(t), z]`` for logits), and resize the map to the (NCHW) input's size: bilinear with
    ``align_corners=False`` for scores, nearest for class ids. TorchScript-compatible."""
    if squeeze:
        y = y[:, 0]
    if nhwc_out:
        y = y.permute(0, 3, 1, 2)
    if binary:
        bg = background - y if probabilities else torch.full_like(y, background)
        y = torch.cat([bg, y], dim=1)
    if resize:
        size = [x.shape[-2], x.shape[-1]]
        if ids:
            y = F.interpolate(y[:, None].float(), size=size, mode="nearest")[:, 0].to(y.dtype)
        else:
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
    return y


class SegmentationAdapter(nn.Module):
    """The user's model with its output made one segmentation map at the input size."""

    def __init__(self, model: nn.Module, plan: OutputPlan, nhwc: bool) -> None:
        super().__init__()
        self.model = model
        self.plan = plan
        self.nhwc = nhwc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.nhwc:
            x = x.permute(0, 3, 1, 2)
        y = self.model(x)
        if self.plan.pick is not None:
            y = y[self.plan.pick]
        plan = self.plan
        return finish_output(y, x, plan.resize, plan.squeeze_channel, plan.kind == "class_ids", plan.nhwc_out,
                             plan.binary, plan.kind == "probabilities", plan.background)


class ScriptedAdapter(nn.Module):
    """The adapter for TorchScript models, themselves compiled with ``torch.jit.script``: the ONNX
    exporter cannot trace into a loaded TorchScript module from a Python wrapper, but it exports a
    scripted wrapper. TorchScript models must return a tensor (logits or class ids) to be adapted."""

    def __init__(self, model: nn.Module, nhwc: bool, plan: OutputPlan) -> None:
        super().__init__()
        self.model = model
        self.nhwc = nhwc
        self.resize = plan.resize
        self.squeeze = plan.squeeze_channel
        self.ids = plan.kind == "class_ids"
        self.nhwc_out = plan.nhwc_out
        self.binary = plan.binary
        self.probabilities = plan.kind == "probabilities"
        self.background = float(plan.background)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.nhwc:
            x = x.permute(0, 3, 1, 2)
        return finish_output(self.model(x), x, self.resize, self.squeeze, self.ids, self.nhwc_out, self.binary,
                             self.probabilities, self.background)


def plan_output(model: nn.Module, x: torch.Tensor, spec: "ModelSpec | None" = None) -> OutputPlan:
    """Run ``model`` once on ``x`` (N x 3 x H x W) and decide how to read a segmentation map from it
    (the spec settles what the shape cannot: output layout, probabilities or logits, threshold)."""
    try:
        with torch.inference_mode():
            y = model(x)
    except Exception as exc:  # the user's model refuses the input
        raise InputError(f"the model fails on a {tuple(x.shape)} input: {type(exc).__name__}: "
                         f"{_first_line(exc)}") from None
    plan = OutputPlan()
    if isinstance(y, dict):
        keys = list(y)
        if "out" in y:
            plan.pick = "out"
        elif len(keys) == 1:
            plan.pick = keys[0]
        else:
            raise InputError(f"the model returns a dict with keys {keys}: which one is the segmentation map? "
                             "(expected 'out' or a single key)")
        dropped = [str(k) for k in keys if k != plan.pick]
        plan.notes.append(f"output: dict, '{plan.pick}' used" + (f", {', '.join(dropped)} dropped" if dropped else ""))
        y = y[plan.pick]
    elif isinstance(y, (tuple, list)):
        if not y:
            raise InputError("the model returns an empty tuple")
        plan.pick = 0
        plan.notes.append(f"output: {type(y).__name__} of {len(y)}, element 0 used")
        y = y[0]
    if not isinstance(y, torch.Tensor):
        raise InputError(f"the model returns a {type(y).__name__}, not a tensor: not a segmentation model")
    n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    shape = tuple(y.shape)
    if not y.is_floating_point():
        plan.kind = "class_ids"
        if y.dim() == 4 and y.shape[1] == 1:
            plan.squeeze_channel = True
            y = y[:, 0]
        if y.dim() != 3 or y.shape[0] != n:
            raise InputError(f"the model returns integers of shape {shape}: class ids must be N x H x W")
    else:
        if y.dim() != 4 or y.shape[0] != n:
            raise InputError(f"the model returns {shape} for a {tuple(x.shape)} input: not a segmentation map "
                             "(a classifier?); expected N x C x H x W")
        if y.shape[-2:] == (1, 1) or y.shape[1:3] == (1, 1) or y.shape[1] < 1:
            raise InputError(f"the model returns {shape}: one value per class for the whole image is a "
                             "classifier's output, not a segmentation map")
        plan.output_layout = read_output_layout(tuple(y.shape), (h, w), spec.output_layout if spec else None)
        if plan.output_layout == "NHWC":
            plan.nhwc_out = True
            plan.notes.append("output is NHWC: transposed to NCHW in the graph")
            y = y.permute(0, 3, 1, 2)
        plan.num_classes = int(y.shape[1])
        v = y.float()
        sums = v.sum(1)
        said = spec.output if spec else None
        if plan.num_classes == 1:
            plan.binary, plan.num_classes = True, 2
            if said == "class_ids":
                raise InputError("the spec contradicts the model: output class_ids given, the model returns float scores")
            if said:
                plan.kind = said
            elif float(v.min()) < 0 or float(v.max()) > 1:
                plan.kind = "logits"
            else:
                raise InputError("the model has one score channel whose values all lie in 0..1: give --output-kind "
                                 "probabilities (a sigmoid output) or logits")
            t = float(spec.threshold) if spec is not None and spec.threshold is not None else 0.5
            plan.background = 2 * t if plan.kind == "probabilities" else math.log(t / (1 - t))
            plan.notes.append(f"one {'probability' if plan.kind == 'probabilities' else 'logit'} channel: a binary "
                              f"model; the graph returns background and foreground scores whose argmax is "
                              f"probability > {t:g}")
        elif float(v.min()) >= 0 and float(v.max()) <= 1 and torch.allclose(sums, torch.ones_like(sums), atol=1e-3):
            plan.kind = "probabilities"
    if tuple(y.shape[-2:]) != (h, w):
        fy, fx = h / y.shape[-2], w / y.shape[-1]
        plan.resize = True
        how = "nearest" if plan.kind == "class_ids" else "bilinear, align_corners=False"
        plan.notes.append(f"output is {y.shape[-2]}x{y.shape[-1]} for a {h}x{w} input (1/{fy:g} x 1/{fx:g}): "
                          f"upsampled to the input size in the graph ({how})")
    return plan


def adapt(source: ModelSource, pre: Preprocess, batch: int = 1,
          spec: "ModelSpec | None" = None) -> tuple[nn.Module, OutputPlan]:
    """The module to export and to run as the PyTorch reference: takes the spec's layout, returns one
    segmentation map at the input size. Our own checkpoints need no wrapper (node names stay ours)."""
    x = torch.zeros(batch, 3, pre.height, pre.width)
    plan = plan_output(source.module, x, spec)
    nhwc = pre.layout == "NHWC"
    trivial = plan.pick is None and not plan.squeeze_channel and not plan.resize and not nhwc \
        and not plan.nhwc_out and not plan.binary
    if nhwc:
        plan.notes.append("input NHWC: transposed to NCHW inside the graph")
    if trivial:
        return source.module, plan
    if source.kind == "torchscript":
        if plan.pick is not None:
            raise InputError(f"the TorchScript model returns a {'dict' if isinstance(plan.pick, str) else 'tuple'}: "
                             "save it returning the segmentation tensor to adapt it (or export to ONNX and import)")
        scripted = ScriptedAdapter(source.module, nhwc, plan)
        return torch.jit.script(scripted.eval()), plan
    return SegmentationAdapter(source.module, plan, nhwc).eval(), plan


def resolve_for_source(source: ModelSource, spec: "ModelSpec", batch: int = 1) -> tuple["ResolvedSpec", nn.Module, OutputPlan]:
    """The full spec for a PyTorch source (probing the model once for its class count and output kind),
    and the adapted module to export or run."""
    pre0 = resolve_input(spec, GraphFacts(), source.preprocess)[0]
    module, plan = adapt(source, pre0, batch, spec)
    resolved = resolve(spec, GraphFacts(num_classes=plan.num_classes, output_kind=plan.kind,
                                        output_layout=plan.output_layout, binary=plan.binary),
                       source.preprocess, source.classes, source.palette)
    return resolved, module, plan
