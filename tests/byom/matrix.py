"""Every model source through the pipeline, one row each: export/import -> parity with its source ->
INT8 CPU quantize -> compare (ONNX Runtime FP32 and INT8 rows); prints a Markdown table.

Random weights, small inputs, nothing downloaded. torchvision and segmentation_models_pytorch rows
need those packages (installed as in .ci/run); they are skipped with a note where absent.

    python -m tests.byom.matrix [--work DIR] [--size 64x96]

It lives beside the tests because its models and data are theirs (tiny_models.py, conftest.write_voc).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from typer.testing import CliRunner  # noqa: E402

from aspp_deploy.cli import app  # noqa: E402
from tests.byom.conftest import MODELS_FILE, write_voc  # noqa: E402

runner = CliRunner()


def cli(*args) -> str:
    r = runner.invoke(app, [str(a) for a in args])
    if r.exit_code != 0:
        raise RuntimeError(r.output.strip().splitlines()[-1] if r.output.strip() else "failed")
    return r.output


def tiny():
    sys.path.insert(0, str(MODELS_FILE.parent))
    import tiny_models  # type: ignore[import-not-found]

    return tiny_models


def sources(work: Path, h: int, w: int) -> list[tuple[str, list[str] | None, str]]:
    """(label, model options or None for an ONNX to import, ONNX path for import)."""
    mods = tiny()
    torch.manual_seed(0)
    net = mods.build(3).eval()
    weights = work / "tiny.pt"
    torch.save({"state_dict": net.state_dict()}, weights)
    wrapped = mods.TensorOut(net).eval()
    x = torch.zeros(1, 3, h, w)
    torch.jit.trace(wrapped, x).save(str(work / "tiny.ts"))
    torch.export.save(torch.export.export(wrapped, (x,)), str(work / "tiny.pt2"))
    foreign = work / "foreign.onnx"
    torch.onnx.export(mods.NHWCLowRes(net).eval(), (torch.zeros(1, h, w, 3),), str(foreign), opset_version=13,
                      dynamo=False, input_names=["image"], output_names=["scores"])
    rows = [("our checkpoint (shipped, 512 -> given size)", [], ""),
            ("factory FILE.py:build + nested state dict", ["--arch", f"{MODELS_FILE}:build", "--arch-args",
                                                           '{"num_classes": 3}', "--weights", weights], ""),
            ("TorchScript (.ts)", ["--checkpoint", work / "tiny.ts", "--trust-code"], ""),
            ("torch.export (.pt2)", ["--checkpoint", work / "tiny.pt2", "--trust-code"], ""),
            ("foreign ONNX, NHWC BGR, 1/8-res logits", None, str(foreign))]
    try:
        from tests.thirdparty import import_smp, import_torchvision

        seg = import_torchvision().models.segmentation
        smp = import_smp()
        for name, ctor, preset, args in [
            ("torchvision deeplabv3_mobilenet_v3_large", lambda: seg.deeplabv3_mobilenet_v3_large(
                weights=None, weights_backbone=None, num_classes=3, aux_loss=True), "deeplabv3_mobilenet_v3_large", None),
            ("torchvision lraspp_mobilenet_v3_large", lambda: seg.lraspp_mobilenet_v3_large(
                weights=None, weights_backbone=None, num_classes=3), "lraspp_mobilenet_v3_large", None),
            ("torchvision deeplabv3_resnet50", lambda: seg.deeplabv3_resnet50(
                weights=None, weights_backbone=None, num_classes=3), "deeplabv3_resnet50", None),
            ("smp DeepLabV3Plus resnet18", lambda: smp.DeepLabV3Plus(encoder_name="resnet18", encoder_weights=None,
                                                                     classes=3), "smp.DeepLabV3Plus",
             {"encoder_name": "resnet18"}),
            ("smp Unet resnet18", lambda: smp.Unet(encoder_name="resnet18", encoder_weights=None, classes=3),
             "smp.Unet", {"encoder_name": "resnet18"}),
        ]:
            torch.manual_seed(0)
            path = work / f"{preset}.pt"
            torch.save(ctor().state_dict(), path)
            opts = ["--arch", preset, "--weights", path] + (["--arch-args", json.dumps(args)] if args else [])
            rows.append((name, opts, ""))
    except BaseException as exc:  # pytest.skip raises a BaseException subclass
        print(f"(torchvision/smp rows skipped: {exc})", file=sys.stderr)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--size", default="64x96")
    a = ap.parse_args()
    h, w = (int(v) for v in a.size.split("x"))
    work = a.work or Path(tempfile.mkdtemp(prefix="byom-"))
    work.mkdir(parents=True, exist_ok=True)
    voc = write_voc(work / "voc")
    calib = work / "calib"
    calib.mkdir(exist_ok=True)
    from PIL import Image
    import numpy as np

    rng = np.random.default_rng(1)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(calib / f"c{i}.jpg")
    size = ["--height", h, "--width", w]
    print("| source | command | adaptations | ASPP found | parity max abs (cases) | INT8 cpu Δlogit | compare rows ok | s |")
    print("|---|---|---|---|---|---|---|---|")
    for i, (label, opts, onnx_path) in enumerate(sources(work, h, w)):
        art = work / f"art{i}"
        t0 = time.perf_counter()
        try:
            if opts is None:
                cli("import", onnx_path, "--channel-order", "BGR", "--out", art)
                model_opts = ["--onnx", onnx_path, "--channel-order", "BGR"]
                command = "import"
            else:
                spec = size + (["--classes", "a,b,c"] if opts else [])
                cli("export", *opts, *spec, "--out", art)
                model_opts = opts + spec
                command = "export"
            entry = json.loads((art / "manifest.json").read_text())["artifacts"]["model.onnx"]
            cli("quantize", "--onnx", art / "model.onnx", "--precision", "int8", "--target", "cpu", "--data", voc,
                "--calib", calib, "--budget-images", "0")
            out = art / "compare.json"
            cli("compare", *model_opts, "--artifacts", art, "--data", voc, "--calib", calib, "--limit", "2",
                "--iters", "1", "--warmup", "0", "--report", art / "report", "--json", out)
            rows = json.loads(out.read_text())["rows"]
            ok = [f"{r['backend']} {r['precision']}" for r in rows if r["status"] == "ok"]
            q = json.loads((art / "manifest.json").read_text())["artifacts"]["model.int8-cpu.onnx"]
            par = entry["parity"]
            aspp = "; ".join(f"r{'/'.join(map(str, x['rates']))}" for x in entry["export"]["aspp"]) or "none"
            adapt = "; ".join(entry["model"]["output_adaptations"]) or "none"
            print(f"| {label} | {command} | {adapt} | {aspp} | {par['max_abs']:.2e} ({len(par['cases'])}) | "
                  f"{q['accuracy']['max_abs_logit_diff']:.3g} | {len(ok)}: {', '.join(ok)} | "
                  f"{time.perf_counter() - t0:.0f} |", flush=True)
        except Exception as exc:  # one failing source must not hide the others
            print(f"| {label} | FAILED: {exc} | | | | | | |", flush=True)


if __name__ == "__main__":
    main()
