"""The model options every command that starts from a PyTorch model or a spec shares.

Declared once here as ``Annotated`` types, so ``export``, ``import``, ``compare``, ``eval`` and ``bench``
spell and document them identically.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

PANEL_MODEL = "Model source"
PANEL_SPEC = "Model spec (see docs/model-spec.md; flags override --spec)"


class Layout(str, Enum):
    NCHW = "NCHW"
    NHWC = "NHWC"


class ChannelOrder(str, Enum):
    RGB = "RGB"
    BGR = "BGR"


class ResizePolicy(str, Enum):
    stretch = "stretch"
    letterbox = "letterbox"
    center_crop = "center_crop"


class OutputKind(str, Enum):
    logits = "logits"
    probabilities = "probabilities"
    class_ids = "class_ids"


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


def build_spec(spec: Optional[Path], height: int = 0, width: int = 0, layout: Optional[Layout] = None,
               channel_order: Optional[ChannelOrder] = None, scale: Optional[float] = None,
               mean: Optional[str] = None, std: Optional[str] = None, resize: Optional[ResizePolicy] = None,
               classes: Optional[str] = None, output_kind: Optional[OutputKind] = None, dynamic: Optional[str] = None,
               output_layout: Optional[Layout] = None, threshold: Optional[float] = None):
    from aspp_deploy.spec import spec_from_flags

    return spec_from_flags(spec, height=height, width=width, dynamic=dynamic,
                           layout=layout.value if layout else None,
                           channel_order=channel_order.value if channel_order else None, scale=scale,
                           mean=mean, std=std, resize=resize.value if resize else None, classes=classes,
                           output=output_kind.value if output_kind else None,
                           output_layout=output_layout.value if output_layout else None, threshold=threshold)
