"""Quantize an aspp-deploy FP32 ONNX to INT8 with NNCF (post-training, its ONNX backend), for a
measurement against our own cpu-target Q/DQ model: ``bench_openvino.py --also nncf=FILE``.

NNCF is not a dependency of aspp-deploy: ``pip install nncf`` in the environment that runs this
(it brings no second ONNX Runtime and no torch; it collects statistics with the installed ONNX
Runtime). Calibration uses the same images and preprocessing as ``aspp-deploy quantize``: the
shipped calibration folder (or ``--calib``), the manifest's ``Preprocess``, ``--calib-size`` images.

    python benchmarks/nncf_quantize.py --onnx artifacts/model.onnx [--out artifacts/model.int8-nncf.onnx]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--onnx", type=Path, default=Path("artifacts/model.onnx"))
    ap.add_argument("--out", type=Path, help="default: MODEL.int8-nncf.onnx beside --onnx")
    ap.add_argument("--calib", type=Path, help="calibration images (default: the shipped calibration folder)")
    ap.add_argument("--calib-size", type=int, default=128)
    ap.add_argument("--preset", choices=("performance", "mixed"), default="performance",
                    help="NNCF preset: symmetric (performance) or asymmetric activations (mixed)")
    args = ap.parse_args()
    try:
        import nncf
    except ImportError:
        print("error: NNCF is not installed: pip install nncf (a measurement tool, not an aspp-deploy dependency)",
              file=sys.stderr)
        return 1
    import onnx

    from aspp_deploy.data.voc import load_image
    from aspp_deploy.export.manifest import read_onnx_manifest
    from aspp_deploy.io import atomic_path
    from aspp_deploy.runtime.calibration import SHIPPED_CALIBRATION, calibration_files

    manifest = read_onnx_manifest(args.onnx)
    pre = manifest.preprocess()
    files = calibration_files(args.calib or SHIPPED_CALIBRATION, args.calib_size)
    model = onnx.load(str(args.onnx))
    input_name = model.graph.input[0].name

    def transform(path: Path) -> dict:
        return {input_name: pre(load_image(path))[None]}

    preset = nncf.QuantizationPreset.PERFORMANCE if args.preset == "performance" else nncf.QuantizationPreset.MIXED
    start = time.perf_counter()
    quantized = nncf.quantize(model, nncf.Dataset(files, transform), preset=preset, subset_size=len(files))
    out = args.out or args.onnx.with_name(args.onnx.stem + ".int8-nncf.onnx")
    with atomic_path(out) as tmp:
        onnx.save(quantized, str(tmp))
    print(f"wrote {out}: NNCF {nncf.__version__}, preset {args.preset}, {len(files)} calibration image(s), "
          f"{time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
