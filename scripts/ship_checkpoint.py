"""Turn a finished training run into the shipped checkpoint and its model card.

    python scripts/ship_checkpoint.py --run runs/ref --out models

Stores the weights as fp16 (the file stays under 40 MB), evaluates that very file at its
input size on the synthetic validation split, and writes models/<name>.json and models/README.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from aspp_deploy.backends.torch_backend import TorchRunner
from aspp_deploy.eval.evaluate import default_data_dir, ensure_default_data, evaluate
from aspp_deploy.io import atomic_write_text, sha256_file
from aspp_deploy.model.checkpoint import load_checkpoint

NAME = "deeplabv3_resnet18_synth"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, default=Path("runs/ref"))
    ap.add_argument("--out", type=Path, default=Path("models"))
    args = ap.parse_args()
    ckpt = load_checkpoint(args.run / "model.pt")
    shipped = args.out / f"{NAME}.pt"
    ckpt.save(shipped, half=True)
    data = ensure_default_data()
    with TorchRunner(shipped) as runner:
        result = evaluate(runner, data, runner.ckpt.preprocess, runner.ckpt.classes)
    cfg = ckpt.config.to_dict()
    card = {
        "name": NAME, "file": shipped.name, "sha256": sha256_file(shipped),
        "size_bytes": shipped.stat().st_size, "weights_dtype": "float16 (loaded as float32)",
        "architecture": {"family": "DeepLabV3", **cfg,
                         "parameters": sum(v.numel() for v in ckpt.state_dict.values()
                                           if v.is_floating_point() and v.dim() > 0)},
        "classes": ckpt.classes, "palette": ckpt.palette,
        "input": {"height": ckpt.preprocess.height, "width": ckpt.preprocess.width},
        "preprocess": ckpt.preprocess.to_dict(),
        "training": {"seed": ckpt.meta.get("train_settings", {}).get("seed"),
                     "command": ckpt.meta.get("train_command"),
                     "data": "aspp-deploy data synth --out data/synth --train 2000 --val 200",
                     **{k: ckpt.meta.get(k) for k in ("train_settings", "train_images", "final_loss",
                                                       "device", "torch")}},
        "validation": {"data": f"synthetic val split, seed 0, {result.num_images} images "
                               f"(regenerated into {default_data_dir().name} when absent)",
                       "input_size": [ckpt.preprocess.height, ckpt.preprocess.width],
                       "miou": result.miou, "pixel_accuracy": result.pixel_accuracy,
                       "per_class_iou": result.per_class_iou,
                       "command": f"aspp-deploy eval --checkpoint models/{shipped.name}"},
    }
    command = card["training"]["command"] or ""
    if "--resume" in command:
        card["training"]["note"] = ("training was interrupted and continued with --resume; batches, crops and "
                                    "dropout are seeded per step, so the continuation follows the same schedule "
                                    "as an uninterrupted run (the command without --resume)")
    atomic_write_text(args.out / f"{NAME}.json", json.dumps(card, indent=2) + "\n")
    rows = "\n".join(f"| {c} | {v:.4f} |" for c, v in result.per_class_iou.items() if v is not None)
    t = card["training"]
    md = f"""# Model card: {NAME}

DeepLabV3 with a ResNet-18 backbone (output stride {cfg['output_stride']}, dilated `layer4`) and the
v3 ASPP head: a 1x1 branch, 3x3 atrous branches at rates {', '.join(map(str, cfg['atrous_rates']))}, an
image pooling branch, each {cfg['aspp_depth']} channels with BN and ReLU, concatenated and projected
(1x1 conv, BN, ReLU, dropout {cfg['dropout']}), then a 3x3 conv-BN-ReLU and a 1x1 classifier, upsampled
bilinearly to the input. {card['architecture']['parameters'] / 1e6:.1f} M parameters, stored as fp16
({card['size_bytes'] / 1e6:.1f} MB; loaded as fp32). Trained from scratch (no pretrained weights).

- Classes: {', '.join(ckpt.classes)} (VOC palette)
- Input: {ckpt.preprocess.height}x{ckpt.preprocess.width} RGB, resized {ckpt.preprocess.resize}, scaled to [0, 1],
  mean {list(ckpt.preprocess.mean)}, std {list(ckpt.preprocess.std)}, NCHW float32
- Seed: {t['seed']}; data: `{t['data']}`
- Training command: `{t['command']}` ({t['device']}, torch {t['torch']}, final loss {t['final_loss']:.4f})
{('- ' + t['note'] + chr(10)) if t.get('note') else ''}
## Validation ({result.num_images} synthetic validation images at {ckpt.preprocess.height}x{ckpt.preprocess.width})

mIoU **{result.miou:.4f}**, pixel accuracy {result.pixel_accuracy:.4f}
(`{card['validation']['command']}`).

| class | IoU |
|---|---:|
{rows}

The machine-readable card is `{NAME}.json`.
"""
    atomic_write_text(args.out / "README.md", md)
    print(f"wrote {shipped} ({card['size_bytes'] / 1e6:.1f} MB), mIoU {result.miou:.4f}")


if __name__ == "__main__":
    main()
