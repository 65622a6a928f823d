"""The model options every command that starts from a PyTorch model or a spec shares.

Declared once here as ``Annotated`` types, so ``export``, ``import``, ``compare``, ``eval``, ``predict`` and
``bench`` spell and document them identically; a command gathers what it was given into one
``ModelSourceOptions`` and one ``ModelSpecOptions``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Dict, Optional, Tuple

import typer

from aspp_deploy.runtime.vocab import ChannelOrder, Layout, OutputKind, ResizePolicy
from aspp_deploy.spec import spec_from_flags

if TYPE_CHECKING:
    from aspp_deploy.model.sources import ModelSource
    from aspp_deploy.spec import ModelSpec

PANEL_MODEL = "Model source"
PANEL_SPEC = "Model spec (see docs/model-spec.md; flags override --spec)"


Checkpoint = Annotated[Optional[Path], typer.Option(
    help="Our checkpoint, a TorchScript file or a torch.export .pt2 archive (default: the shipped model). "
         "TorchScript and torch.export files are code: they load only with --trust-code.",
    rich_help_panel=PANEL_MODEL)]
TrustCode = Annotated[bool, typer.Option(
    "--trust-code",
    help="Load a --checkpoint that is TorchScript or torch.export (recognised by content, whatever its name): "
         "such a file is code that runs when it is loaded (as --trust-remote-code elsewhere). Without this flag "
         "it is refused; our checkpoints and --arch with --weights never need it.",
    rich_help_panel=PANEL_MODEL)]
Arch = Annotated[Optional[str], typer.Option(
    help="Model factory: PACKAGE.MODULE:FUNCTION, FILE.py:FUNCTION or a preset "
         "(deeplabv3_resnet50, deeplabv3_mobilenet_v3_large, lraspp_mobilenet_v3_large, fcn_resnet50, "
         "smp.DeepLabV3Plus, smp.Unet, ...; `aspp-deploy presets`). Needs --weights.",
    rich_help_panel=PANEL_MODEL)]
ArchArgs = Annotated[Optional[str], typer.Option(
    help="Factory keyword arguments as JSON (or a .json file), e.g. '{\"num_classes\": 21}'. "
         "Pretrained-weight arguments are forced off.", rich_help_panel=PANEL_MODEL)]
Weights = Annotated[Optional[Path], typer.Option(
    help="State dict for --arch (plain, or under state_dict/model/...); read without running pickled code.",
    rich_help_panel=PANEL_MODEL)]
Spec = Annotated[Optional[Path], typer.Option(
    help="Model spec file (YAML or JSON): input size, layout, channel order, scale, mean/std, resize policy, "
         "classes, palette, output kind.", rich_help_panel=PANEL_SPEC)]
Height = Annotated[int, typer.Option(help="Input height (0: the spec's, the model's, else 512).",
                                     rich_help_panel=PANEL_SPEC)]
Width = Annotated[int, typer.Option(help="Input width (0: the spec's, the model's, else 512).",
                                    rich_help_panel=PANEL_SPEC)]
LayoutOpt = Annotated[Optional[Layout], typer.Option("--layout", help="Input layout.", rich_help_panel=PANEL_SPEC)]
ChannelOrderOpt = Annotated[Optional[ChannelOrder], typer.Option("--channel-order", help="Channel order the model expects.",
                                                                 rich_help_panel=PANEL_SPEC)]
Scale = Annotated[Optional[float], typer.Option(help="Pixel scale before mean/std (1/255 by default; 1 for 0..255 means).",
                                                rich_help_panel=PANEL_SPEC)]
Mean = Annotated[Optional[str], typer.Option(help="Per-channel mean, 'a,b,c', in the model's channel order.",
                                             rich_help_panel=PANEL_SPEC)]
Std = Annotated[Optional[str], typer.Option(help="Per-channel std, 'a,b,c'.", rich_help_panel=PANEL_SPEC)]
Resize = Annotated[Optional[ResizePolicy], typer.Option("--resize", help="Resize policy: stretch, letterbox (keep aspect, pad) "
                                                        "or center_crop (short side, then crop).", rich_help_panel=PANEL_SPEC)]
Classes = Annotated[Optional[str], typer.Option(help="Class names, 'a,b,c', or a .txt file with one name per line.",
                                                rich_help_panel=PANEL_SPEC)]
OutputKindOpt = Annotated[Optional[OutputKind], typer.Option("--output-kind", help="What the model outputs "
                                                             "(inferred when not given).", rich_help_panel=PANEL_SPEC)]

OutputLayoutOpt = Annotated[Optional[Layout], typer.Option("--output-layout", help="Where the class axis of the output "
                                                           "is: NCHW (N x C x H x W) or NHWC (read from the graph "
                                                           "when its shape allows only one).", rich_help_panel=PANEL_SPEC)]
Threshold = Annotated[Optional[float], typer.Option(help="One-channel (binary) models: foreground where the "
                                                    "probability exceeds this (default 0.5).", rich_help_panel=PANEL_SPEC)]


@dataclass(frozen=True)
class ModelSourceOptions:
    """--checkpoint, --arch, --arch-args, --weights and --trust-code as given: the PyTorch model a
    command starts from (all None: the shipped checkpoint). Built once per command."""

    checkpoint: Optional[Path] = None
    arch: Optional[str] = None
    arch_args: Optional[str] = None
    weights: Optional[Path] = None
    trust_code: bool = False

    @property
    def options(self) -> Tuple[Optional[Path], Optional[str], Optional[str], Optional[Path]]:
        """``(checkpoint, arch, arch_args, weights)``, as ``open_model`` and ``open_torch_source`` take them."""
        return self.checkpoint, self.arch, self.arch_args, self.weights

    def load(self) -> "ModelSource":
        """The loaded model (``aspp_deploy.model.sources.load_source``)."""
        from aspp_deploy.model.sources import load_source  # torch: imported when a model is loaded

        return load_source(*self.options, trust_code=self.trust_code)

    def keywords(self) -> Dict[str, Any]:
        """As keyword arguments (``ensure_fp32``'s)."""
        return {"checkpoint": self.checkpoint, "arch": self.arch, "arch_args": self.arch_args,
                "weights": self.weights, "trust_code": self.trust_code}


@dataclass(frozen=True)
class ModelSpecOptions:
    """The model-spec flags as given (None or 0: not given; a command without a flag leaves it so).
    Built once per command; ``build`` merges them over --spec into the ``ModelSpec``."""

    spec: Optional[Path] = None
    height: int = 0
    width: int = 0
    layout: Optional[Layout] = None
    channel_order: Optional[ChannelOrder] = None
    scale: Optional[float] = None
    mean: Optional[str] = None
    std: Optional[str] = None
    resize: Optional[ResizePolicy] = None
    classes: Optional[str] = None
    output_kind: Optional[OutputKind] = None
    dynamic: Optional[str] = None
    output_layout: Optional[Layout] = None
    threshold: Optional[float] = None

    @property
    def given(self) -> bool:
        """Whether any of them was given (else the model's own spec applies unchanged)."""
        return self.spec is not None or any(getattr(self, f.name) for f in fields(self) if f.name != "spec")

    def build(self) -> "ModelSpec":
        return spec_from_flags(self.spec, height=self.height, width=self.width, dynamic=self.dynamic,
                               layout=_value(self.layout), channel_order=_value(self.channel_order),
                               scale=self.scale, mean=self.mean, std=self.std, resize=_value(self.resize),
                               classes=self.classes, output=_value(self.output_kind),
                               output_layout=_value(self.output_layout), threshold=self.threshold)


def _value(member: Optional[Enum]) -> Optional[str]:
    return member.value if member is not None else None
