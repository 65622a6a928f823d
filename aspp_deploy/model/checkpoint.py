"""The checkpoint format: weights plus everything needed to rebuild and feed the model.

A checkpoint is a plain dict saved with ``torch.save`` and read with ``weights_only=True``
(no pickled code): ``format``, ``config`` (``ModelConfig``), ``preprocess``, ``classes``,
``palette``, ``state_dict`` (fp16 or fp32 tensors) and ``meta`` (training provenance).
``load_checkpoint`` accepts only this format; torchvision and other models come in through the
factory option (``--arch MODULE:FUNCTION`` with ``--weights STATE_DICT``).
``checkpoint_from_torchvision`` converts a torchvision DeepLabV3 (ResNet-50) state dict into
this format (see docs/torchvision-mapping.md).
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from aspp_deploy.data.voc import voc_palette
from aspp_deploy.errors import CheckpointError
from aspp_deploy.io import atomic_write_bytes
from aspp_deploy.model.deeplab import DeepLabV3, ModelConfig, build_model
from aspp_deploy.runtime.preprocess import Preprocess

FORMAT = "aspp-deploy/checkpoint/v1"
PACKAGE_DIR = Path(__file__).resolve().parent.parent
DEFAULT_CHECKPOINT = PACKAGE_DIR.parent / "models" / "deeplabv3_resnet18_synth.pt"


@dataclass
class Checkpoint:
    config: ModelConfig
    preprocess: Preprocess
    classes: list[str]
    palette: list[list[int]]
    state_dict: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)
    path: Path | None = None

    def build(self) -> DeepLabV3:
        """The model in eval mode, fp32, with these weights (strict key and shape check)."""
        model = build_model(self.config)
        own = model.state_dict()
        missing = sorted(set(own) - set(self.state_dict))
        unexpected = sorted(set(self.state_dict) - set(own))
        if missing or unexpected:
            raise CheckpointError(
                f"checkpoint {self._name()} does not fit architecture {self.config.backbone}/"
                f"{self.config.head}: {len(missing)} missing keys (e.g. {missing[:2]}), "
                f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})")
        for key, tensor in self.state_dict.items():
            if tuple(tensor.shape) != tuple(own[key].shape):
                raise CheckpointError(
                    f"checkpoint {self._name()} does not fit the model: {key} has shape "
                    f"{tuple(tensor.shape)}, the architecture wants {tuple(own[key].shape)}")
        model.load_state_dict({k: v.float() if v.is_floating_point() else v
                               for k, v in self.state_dict.items()})
        return model.eval()

    def _name(self) -> str:
        return str(self.path) if self.path else "(in memory)"

    def to_dict(self, half: bool = False) -> dict:
        weights = {k: (v.half() if half and v.is_floating_point() else v).contiguous()
                   for k, v in self.state_dict.items()}
        return {"format": FORMAT, "config": self.config.to_dict(),
                "preprocess": self.preprocess.to_dict(), "classes": list(self.classes),
                "palette": [list(c) for c in self.palette], "state_dict": weights, "meta": self.meta}

    def save(self, path: Path | str, half: bool = False) -> None:
        buf = io.BytesIO()
        torch.save(self.to_dict(half), buf)
        atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path | str | None = None, num_classes: int | None = None) -> Checkpoint:
    """Read and validate a checkpoint; every failure is one ``CheckpointError`` line."""
    path = Path(path) if path is not None else DEFAULT_CHECKPOINT
    if not path.is_file():
        hint = " (the shipped checkpoint is missing: is this a full checkout?)" if path == DEFAULT_CHECKPOINT else ""
        raise CheckpointError(f"checkpoint not found: {path}{hint}")
    try:
        # TorchVersion is a str subclass some writers store in metadata: harmless to allow.
        with torch.serialization.safe_globals([torch.torch_version.TorchVersion]):
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {first}") from None
    except Exception as exc:  # pickle errors from a non-checkpoint file take many forms
        raise CheckpointError(f"cannot read checkpoint {path}: not a PyTorch checkpoint "
                              f"({type(exc).__name__})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} is not a checkpoint: it holds a {type(raw).__name__}")
    if raw.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an aspp-deploy checkpoint (format "
                              f"{raw.get('format')!r}); see docs/torchvision-mapping.md to convert one")
    try:
        ckpt = Checkpoint(ModelConfig.from_dict(raw["config"]), Preprocess.from_dict(raw["preprocess"]),
                          list(raw["classes"]), [list(c) for c in raw["palette"]],
                          dict(raw["state_dict"]), dict(raw.get("meta", {})), path)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is malformed: {exc}") from None
    if len(ckpt.classes) != ckpt.config.num_classes:
        raise CheckpointError(f"checkpoint {path} is inconsistent: {len(ckpt.classes)} class names "
                              f"for a {ckpt.config.num_classes}-class model")
    if num_classes is not None and ckpt.config.num_classes != num_classes:
        raise CheckpointError(f"checkpoint {path} predicts {ckpt.config.num_classes} classes, "
                              f"the data has {num_classes}")
    return ckpt


def checkpoint_from_torchvision(state_dict: dict[str, torch.Tensor], classes: list[str],
                                backbone: str = "resnet50", output_stride: int = 8,
                                preprocess: Preprocess | None = None) -> Checkpoint:
    """Wrap a torchvision ``deeplabv3_resnet*`` state dict as our checkpoint.

    Keys are the same (``backbone.*``, ``classifier.0.convs.K.*``, ``classifier.0.project.*``,
    ``classifier.1..4.*``); torchvision's ``aux_classifier.*`` (a training-time auxiliary head)
    is dropped. torchvision's segmentation ResNets use output stride 8 (rates 12/24/36).
    """
    weights = {k: v for k, v in state_dict.items() if not k.startswith("aux_classifier.")}
    if "classifier.4.weight" not in weights:
        raise CheckpointError("not a torchvision DeepLabV3 state dict: no classifier.4.weight")
    num_classes = int(weights["classifier.4.weight"].shape[0])
    if num_classes != len(classes):
        raise CheckpointError(f"the state dict predicts {num_classes} classes, {len(classes)} names given")

    config = ModelConfig(num_classes=num_classes, backbone=backbone, output_stride=output_stride,
                         aspp_depth=int(weights["classifier.0.project.0.weight"].shape[0]))
    ckpt = Checkpoint(config, preprocess or Preprocess(), list(classes),
                      [list(c) for c in voc_palette(num_classes)], weights,
                      {"converted_from": "torchvision deeplabv3"})
    ckpt.build()  # strict key and shape check now, not at first use
    return ckpt
