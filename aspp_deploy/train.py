"""Training on a VOC-style folder, on CPU or CUDA, resumable.

Random crops (the DeepLab recipe: train on crops, evaluate on whole images) and horizontal
flips; AdamW with linear warm-up and polynomial decay. Every random draw of step ``k`` comes
from seeds derived from (seed, k), so a run resumed from ``last.pt`` continues exactly as an
uninterrupted run would on the same device.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from aspp_deploy.runtime.preprocess import Preprocess
from aspp_deploy.data.voc import IGNORE_INDEX, VOCSegmentation, load_image, load_mask
from aspp_deploy.errors import CheckpointError, DatasetError
from aspp_deploy.io import atomic_write_bytes, atomic_write_text, json_text
from aspp_deploy.model.checkpoint import Checkpoint
from aspp_deploy.model.deeplab import ModelConfig, build_model


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 2400
    batch: int = 8
    crop: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: int = 100
    seed: int = 0
    save_every: int = 100


def _first(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DatasetError("--device cuda asked for, but PyTorch sees no CUDA device")
    try:
        return torch.device(device)
    except RuntimeError:
        raise DatasetError(f"--device {device!r} is not a device: use auto, cpu, cuda or cuda:N") from None


def _load_split(ds: VOCSegmentation, num_classes: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    images, masks = [], []
    for s in ds.samples:
        img = np.asarray(load_image(s.image), dtype=np.uint8)
        mask = load_mask(s.mask, num_classes)
        if img.shape[:2] != mask.shape:
            raise DatasetError(f"{s.image.name} is {img.shape[1]}x{img.shape[0]} but its mask is "
                               f"{mask.shape[1]}x{mask.shape[0]}")
        images.append(img)
        masks.append(mask)
    return images, masks


def _batch(images, masks, pre: Preprocess, settings: TrainSettings, step: int
           ) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng([settings.seed, step])
    xs, ys = [], []
    c = settings.crop
    for i in rng.integers(0, len(images), settings.batch):
        img, mask = images[i], masks[i]
        h, w = mask.shape
        if h < c or w < c:  # pad small images (ignore label in the mask)
            ph, pw = max(0, c - h), max(0, c - w)
            img = np.pad(img, ((0, ph), (0, pw), (0, 0)))
            mask = np.pad(mask, ((0, ph), (0, pw)), constant_values=IGNORE_INDEX)
            h, w = mask.shape
        y0, x0 = int(rng.integers(0, h - c + 1)), int(rng.integers(0, w - c + 1))
        img, mask = img[y0:y0 + c, x0:x0 + c], mask[y0:y0 + c, x0:x0 + c]
        if rng.random() < 0.5:
            img, mask = img[:, ::-1], mask[:, ::-1]
        xs.append(pre.normalize(np.ascontiguousarray(img)))
        ys.append(np.ascontiguousarray(mask))
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys)).long()


def _lr_at(step: int, s: TrainSettings) -> float:
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    return s.lr * (1 - (step - s.warmup) / max(1, s.steps - s.warmup)) ** 0.9


def train(data: Path, out: Path, config: ModelConfig, settings: TrainSettings,
          classes: list[str], palette: list[list[int]], pre: Preprocess, device: str = "auto",
          resume: bool = False, command: str = "", log: Callable[[str], None] = print) -> Path:
    """Train, writing ``out/last.pt`` (resumable state) and ``out/model.pt`` (checkpoint)."""
    dev = resolve_device(device)
    out.mkdir(parents=True, exist_ok=True)
    ds = VOCSegmentation(data, "train")
    images, masks = _load_split(ds, config.num_classes)
    log(f"loaded {len(images)} training images from {data}")
    torch.manual_seed(settings.seed)
    model = build_model(config).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    start, history = 0, []
    state_path = out / "last.pt"
    if resume:
        if not state_path.is_file():
            raise CheckpointError(f"--resume: no training state at {state_path}")
        try:  # weights_only: a state file never runs pickled code
            state = torch.load(state_path, map_location=dev, weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"--resume: {state_path} is not a readable training state "
                                  f"({type(exc).__name__})") from None
        if not isinstance(state, dict) or not all(
                k in state for k in ("config", "settings", "model", "optimizer", "step", "history")) \
                or not isinstance(state["settings"], dict):
            raise CheckpointError(f"--resume: {state_path} is not a training state written by "
                                  "`aspp-deploy train`; start a new --out")
        same = {k: v for k, v in asdict(settings).items() if k != "steps"}
        if state["config"] != config.to_dict() or {k: v for k, v in state["settings"].items()
                                                   if k != "steps"} != same:
            raise CheckpointError(f"--resume: {state_path} was made with other model or training "
                                  "settings (only --steps may change); resume with the same "
                                  "options or start a new --out")
        try:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            start, history = int(state["step"]), list(state["history"])
        except (RuntimeError, ValueError, TypeError, KeyError) as exc:
            raise CheckpointError(f"--resume: {state_path} does not fit this model ({_first(exc)})") from None
        log(f"resuming at step {start}/{settings.steps}")
    model.train()
    t0, seen = time.perf_counter(), 0
    for step in range(start, settings.steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, settings)
        x, y = _batch(images, masks, pre, settings, step)
        torch.manual_seed(settings.seed * 1_000_003 + step)  # dropout draws, resumable
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        loss = F.cross_entropy(model(x), y, ignore_index=IGNORE_INDEX)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += 1
        history.append(float(loss.detach()))
        if (step + 1) % 20 == 0 or step + 1 == settings.steps:
            rate = seen / (time.perf_counter() - t0)
            recent = float(np.mean(history[-20:]))
            eta = (settings.steps - step - 1) / rate
            log(f"step {step + 1}/{settings.steps} loss {recent:.4f} lr {_lr_at(step, settings):.2e} "
                f"{rate:.2f} it/s eta {eta / 60:.1f} min")
        if (step + 1) % settings.save_every == 0 or step + 1 == settings.steps:
            buf = __import__("io").BytesIO()
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step + 1,
                        "history": history, "config": config.to_dict(), "settings": asdict(settings)}, buf)
            atomic_write_bytes(state_path, buf.getvalue())
    model.eval()
    meta = {"train_command": command, "train_settings": asdict(settings), "train_data": str(data),
            "train_images": len(images), "final_loss": float(np.mean(history[-50:])) if history else None,
            "device": str(dev), "torch": str(torch.__version__)}
    ckpt = Checkpoint(config, pre, classes, palette,
                      {k: v.detach().cpu() for k, v in model.state_dict().items()}, meta)
    final = out / "model.pt"
    ckpt.save(final)
    atomic_write_text(out / "loss_history.json", json_text(history, indent=None))
    return final
