"""Host-side pre- and post-processing of fused-I/O models against the same models unfused, on ONNX Runtime.

For each pair (unfused ONNX, fused ONNX of the same model), one ``Segmenter`` per file runs every
image of a folder one at a time (batch 1), the two interleaved image by image in rounds, and
``Segmenter.timing`` (seconds in preprocessing, inference and post-processing) gives milliseconds per
image (the median round; the best round too, which other work on a shared machine disturbs least). Images are decoded once, before timing: what is timed is the toolkit's own work, the geometry
(resize, letterbox, centre crop) and the normalisation on the way in, the argmax and the inverse
geometry on the way out. The masks of the two are compared on every image. Per image it also
reports the bytes each model takes and returns (float32 input and scores unfused; uint8 pixels and
class ids fused). Goal (issue 22): fused I/O removes at least half of the host-side pre+post time.

    python benchmarks/bench_fused_io.py [--pair PLAIN.onnx FUSED.onnx ...] [--images DIR] [--rounds 3] [--json F]

Without --pair: the shipped checkpoint is exported twice (``aspp-deploy export`` defaults, then with
``--fused-io``) under ``artifacts/fused-io-bench/``, and when the mediapipe 0.10.14 wheel is found
($ASPP_MEDIAPIPE_WHEEL, or .whl/) MediaPipe's selfie segmenter is imported twice as well. Without
--images: the real photos of ``aspp-deploy data photos`` (written to ``artifacts/fused-io-bench/photos``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import zipfile
from pathlib import Path

import numpy as np

from aspp_deploy.runtime.images import IMAGE_EXTENSIONS, decode_image
from aspp_deploy.runtime.segmenter import Segmenter

WORK = Path("artifacts/fused-io-bench")
SELFIE = "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite"
STEPS = ("preprocess", "inference", "postprocess")


def default_pairs() -> list[tuple[str, Path, Path]]:
    from aspp_deploy.export.onnx_export import ExportOptions, onnx_from_checkpoint
    from aspp_deploy.export.onnx_import import onnx_from_foreign
    from aspp_deploy.spec import ModelSpec

    pairs = []
    made = {}
    for fused in (False, True):
        out = WORK / ("shipped-fused" if fused else "shipped")
        made[fused] = out / "model.onnx"
        if not made[fused].is_file():
            onnx_from_checkpoint(None, out, ExportOptions(fused_io=fused))
    pairs.append(("shipped model (aspp-deploy export)", made[False], made[True]))
    wheel = os.environ.get("ASPP_MEDIAPIPE_WHEEL") or next(iter(sorted(Path(".whl").glob("mediapipe-0.10.14-*.whl"))), None)
    if wheel:
        tflite = WORK / "selfie_segmentation.tflite"
        if not tflite.is_file():
            tflite.parent.mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(wheel) as z:
                tflite.write_bytes(z.read(SELFIE))
        spec = ModelSpec(mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0])  # MediaPipe feeds RGB in 0..1
        for fused in (False, True):
            out = WORK / ("selfie-fused" if fused else "selfie")
            made[fused] = out / "model.onnx"
            if not made[fused].is_file():
                onnx_from_foreign(tflite, spec, out, ExportOptions(fused_io=fused))
        pairs.append(("MediaPipe selfie (aspp-deploy import)", made[False], made[True]))
    else:
        print("note: no mediapipe 0.10.14 wheel (set ASPP_MEDIAPIPE_WHEEL): the selfie model is left out")
    return pairs


def default_images() -> Path:
    from aspp_deploy.data.photos import write_photos

    folder = WORK / "photos"
    if not folder.is_dir() or not any(folder.iterdir()):
        folder.mkdir(parents=True, exist_ok=True)
        write_photos(folder)
    return folder


def io_bytes(seg: Segmenter) -> tuple[int, int]:
    """Bytes one image's input and output take in memory (from the manifest's tensors)."""
    entry = seg.manifest
    sizes = []
    for key in ("inputs", "outputs"):
        t = entry[key][0]
        count = int(np.prod([d if isinstance(d, int) else 1 for d in t["shape"]]))
        sizes.append(count * np.dtype(t["dtype"]).itemsize)
    return sizes[0], sizes[1]


def measure(plain: Path, fused: Path, images: list, rounds: int, threads: int) -> dict:
    from aspp_deploy.runtime.engines.ort_engine import OrtEngine

    segs = {"unfused": Segmenter(OrtEngine(plain, threads=threads), batch=1),
            "fused": Segmenter(OrtEngine(fused, threads=threads), batch=1)}
    per_round: dict[str, dict[str, list[float]]] = {k: {s: [] for s in STEPS} for k in segs}
    agree = []
    for image in images[:2]:  # warm-up: sessions, allocators, Pillow's resampling tables
        for seg in segs.values():
            seg.segment([image])
    for r in range(rounds):
        for seg in segs.values():
            seg.timing = {s: 0.0 for s in STEPS}
        for image in images:
            masks = {k: seg.segment([image])[0] for k, seg in segs.items()}
            if r == 0:
                agree.append(float((masks["unfused"] == masks["fused"]).mean()))
        for k, seg in segs.items():
            for s in STEPS:
                per_round[k][s].append(1000.0 * seg.timing[s] / len(images))
    out: dict = {"images": len(images), "rounds": rounds, "mask_agreement_min": min(agree),
                 "mask_agreement_mean": statistics.fmean(agree)}
    for k, seg in segs.items():
        host = [a + b for a, b in zip(per_round[k]["preprocess"], per_round[k]["postprocess"])]
        ms = {s: statistics.median(per_round[k][s]) for s in STEPS}
        ms["host"], ms["host_best_round"] = statistics.median(host), min(host)
        bytes_in, bytes_out = io_bytes(seg)
        out[k] = {"file": str(seg.onnx_path), "ms_per_image": ms, "ms_per_image_rounds": per_round[k],
                  "bytes_in": bytes_in, "bytes_out": bytes_out}
        seg.close()
    for key, which in (("host_time_removed", "host"), ("host_time_removed_best_round", "host_best_round")):
        out[key] = 1.0 - out["fused"]["ms_per_image"][which] / out["unfused"]["ms_per_image"][which]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pair", nargs=2, type=Path, action="append", metavar=("PLAIN", "FUSED"))
    ap.add_argument("--images", type=Path)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    pairs = [(f"{p.name} vs {f.name}", p, f) for p, f in args.pair] if args.pair else default_pairs()
    folder = args.images or default_images()
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    images = [decode_image(p) for p in files]
    print(f"{len(images)} images from {folder} (sizes {min(im.size for im in images)} .. {max(im.size for im in images)}), "
          f"{args.rounds} rounds, batch 1, ONNX Runtime CPU")
    results = {}
    for label, plain, fused in pairs:
        r = results[label] = measure(plain, fused, images, args.rounds, args.threads)
        print(f"\n{label}: masks agree on {100 * r['mask_agreement_mean']:.4f}% of pixels (worst image "
              f"{100 * r['mask_agreement_min']:.4f}%)")
        for k in ("unfused", "fused"):
            ms = r[k]["ms_per_image"]
            print(f"  {k:8s} preprocess {ms['preprocess']:7.2f} ms  postprocess {ms['postprocess']:7.2f} ms  "
                  f"host {ms['host']:7.2f} ms  inference {ms['inference']:7.2f} ms  "
                  f"in {r[k]['bytes_in'] / 1024:8.1f} KiB  out {r[k]['bytes_out'] / 1024:8.1f} KiB")
        print(f"  host-side pre+post time removed by fused I/O: {100 * r['host_time_removed']:.1f}% (median round), "
              f"{100 * r['host_time_removed_best_round']:.1f}% (best round) (goal: >= 50%)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
