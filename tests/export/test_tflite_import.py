"""TFLite -> ONNX (``aspp_deploy.export.tflite_import``) on real trained models: MediaPipe's.

The models come from the ``mediapipe==0.10.14`` wheel, read with zipfile (mediapipe itself is never
installed): ``$ASPP_MEDIAPIPE_WHEEL``, else ``/tmp/wheels/mediapipe-0.10.14-*.whl``; get it with
``pip download --no-deps mediapipe==0.10.14 -d /tmp/wheels``. Conversion needs the ``tflite`` package
(the ``tflite`` extra); parity needs ai-edge-litert (the TFLite runtime). Each is skipped when absent.

Measured (CPU, ONNX Runtime vs LiteRT with its default XNNPACK delegate, photos resized to the input):
the selfie segmenters differ by <= 6.2e-5 in mask probability with 100% mask agreement; BlazePose's
mask logits are large (|z| up to ~1800) and every pair of runtimes -- LiteRT's own XNNPACK, optimized
and reference kernels included -- differs by ~1e-3 in its mask probability, so does the ONNX graph.
"""

from __future__ import annotations

import glob
import os
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest

from aspp_deploy.errors import InputError
from aspp_deploy.export import tflite_import
from aspp_deploy.export.tflite_import import tflite_reference, tflite_to_onnx

WHEEL_GLOB = "/tmp/wheels/mediapipe-0.10.14-*.whl"
SELFIE = "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite"
# file in the wheel -> (mask output, mask is logits, max |mask probability difference|)
MODELS = {
    "selfie_segmentation": (SELFIE, "activation_10", False, 2e-4),
    "selfie_segmentation_landscape": (
        "mediapipe/modules/selfie_segmentation/selfie_segmentation_landscape.tflite", "segment_back", False, 2e-4),
    "pose_landmark_full": ("mediapipe/modules/pose_landmark/pose_landmark_full.tflite", "Identity_2", True, 5e-3),
}
# Other architectures, for the operators the segmenters do not use (PRELU, FULLY_CONNECTED).
OTHERS = {
    "face_landmark": "mediapipe/modules/face_landmark/face_landmark.tflite",
    "hand_landmark_lite": "mediapipe/modules/hand_landmark/hand_landmark_lite.tflite",
}
POSE_OUTPUTS = ["Identity", "Identity_1", "Identity_2", "Identity_3", "Identity_4"]


@pytest.fixture(scope="session")
def mediapipe_wheel() -> Path:
    given = os.environ.get("ASPP_MEDIAPIPE_WHEEL")
    if given:
        if not Path(given).is_file():
            pytest.fail(f"ASPP_MEDIAPIPE_WHEEL={given} is not a file")
        return Path(given)
    found = sorted(glob.glob(WHEEL_GLOB))
    if not found:
        pytest.skip("needs the mediapipe 0.10.14 wheel (its TFLite models): "
                    "pip download --no-deps mediapipe==0.10.14 -d /tmp/wheels, or set ASPP_MEDIAPIPE_WHEEL")
    return Path(found[-1])


@pytest.fixture(scope="session")
def tflite_models(mediapipe_wheel: Path, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mediapipe")
    out = {}
    with zipfile.ZipFile(mediapipe_wheel) as wheel:
        members = {key: member for key, (member, *_) in MODELS.items()} | OTHERS
        for key, member in members.items():
            out[key] = root / f"{key}.tflite"
            out[key].write_bytes(wheel.read(member))
    return out


@pytest.fixture(scope="session")
def converted(tflite_models: dict[str, Path]) -> dict[str, onnx.ModelProto]:
    pytest.importorskip("tflite", reason="the converter needs the tflite package: pip install 'aspp-deploy[tflite]'")
    return {key: tflite_to_onnx(path) for key, path in tflite_models.items() if key in MODELS}


def _photos() -> dict[str, np.ndarray]:
    from matplotlib import cbook
    from PIL import Image

    photos = {"grace_hopper": np.asarray(Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
                                         .convert("RGB"))}
    try:
        from skimage import data
        photos["astronaut"] = data.astronaut()
    except ImportError:
        pass
    return photos


def _session(model: onnx.ModelProto):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z.astype(np.float64), -80, 80)))


def test_not_a_tflite_file_is_one_clear_input_error(tmp_path: Path):
    bogus = tmp_path / "model.tflite"
    bogus.write_bytes(b"\x00" * 4 + b"ONNX" + b"\x00" * 64)
    with pytest.raises(InputError, match=r"model\.tflite is not a TFLite model") as info:
        tflite_to_onnx(bogus)
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="model.tflite"):
        tflite_reference(bogus)


def test_unsupported_operator_is_one_clear_input_error(tflite_models: dict[str, Path], monkeypatch):
    pytest.importorskip("tflite", reason="the converter needs the tflite package: pip install 'aspp-deploy[tflite]'")
    monkeypatch.delitem(tflite_import._CONVERTERS, "HARD_SWISH")
    with pytest.raises(InputError, match=r"selfie_segmentation\.tflite: TFLite operator HARD_SWISH is not "
                                         r"supported by the converter \(supported: ADD, ") as info:
        tflite_to_onnx(tflite_models["selfie_segmentation"])
    assert "\n" not in str(info.value)


def test_operators_and_boundary(tflite_models: dict[str, Path], converted: dict[str, onnx.ModelProto]):
    ops = tflite_import.tflite_operators(tflite_models["selfie_segmentation"])
    assert ops["Convolution2DTransposeBias"] == 1 and ops["HARD_SWISH"] == 11 and ops["DEQUANTIZE"] > 100
    for key, model in converted.items():
        assert model.opset_import[0].version == 17
        assert not any(n.op_type in ("DequantizeLinear", "Cast") for n in model.graph.node)
        assert all(t.data_type == onnx.TensorProto.FLOAT for t in model.graph.initializer
                   if t.name.startswith(("w__", "b__")))
        (inp,) = model.graph.input
        assert [d.dim_value for d in inp.type.tensor_type.shape.dim][3] == 3  # NHWC kept at the boundary
    pose = converted["pose_landmark_full"]
    assert [o.name for o in pose.graph.output] == POSE_OUTPUTS
    assert [d.dim_value for d in pose.graph.output[2].type.tensor_type.shape.dim] == [1, 256, 256, 1]
    assert [o.name for o in converted["selfie_segmentation"].graph.output] == ["activation_10"]
    assert any(n.op_type == "ConvTranspose" for n in converted["selfie_segmentation"].graph.node)


@pytest.mark.parametrize("key", list(MODELS))
def test_parity_with_the_tflite_runtime(key: str, tflite_models: dict[str, Path],
                                        converted: dict[str, onnx.ModelProto]):
    pytest.importorskip("ai_edge_litert", reason="parity needs the TFLite runtime: pip install ai-edge-litert")
    from PIL import Image

    _, mask_name, logits, prob_tol = MODELS[key]
    model = converted[key]
    session, reference = _session(model), tflite_reference(tflite_models[key])
    _, h, w, _ = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    names = [o.name for o in model.graph.output]
    k = names.index(mask_name)
    rng = np.random.default_rng(0)
    inputs: dict[str, np.ndarray] = {
        name: (np.asarray(Image.fromarray(img).resize((w, h), Image.Resampling.BILINEAR), np.float32) / 255)[None]
        for name, img in _photos().items()}
    inputs.update({f"random{i}": rng.random((1, h, w, 3), dtype=np.float32) for i in range(2)})
    for name, x in inputs.items():
        got = [np.asarray(y) for y in session.run(None, {model.graph.input[0].name: x})]
        want = reference(x)
        assert len(got) == len(want)
        photo = not name.startswith("random")
        for out, a, b in zip(names, got, want):
            assert a.shape == b.shape, (name, out)
            if out != mask_name:  # landmarks, flags: relative to the output's magnitude
                scale = max(1.0, float(np.abs(b).max()))
                assert float(np.abs(a - b).max()) <= (1e-4 if photo else 2e-3) * scale, (name, out)
        pa, pb = (_sigmoid(got[k]), _sigmoid(want[k])) if logits else (got[k], want[k])
        assert float(np.abs(pa - pb).max()) <= prob_tol, name
        if photo:
            assert 0.1 < float((pb > 0.5).mean()) < 0.9, f"{name}: the reference mask should show a person"
            assert float(((pa > 0.5) == (pb > 0.5)).mean()) >= 0.995, name


@pytest.mark.parametrize("key", list(OTHERS))
def test_other_architectures_match_the_tflite_runtime(key: str, tflite_models: dict[str, Path]):
    pytest.importorskip("tflite", reason="the converter needs the tflite package: pip install 'aspp-deploy[tflite]'")
    pytest.importorskip("ai_edge_litert", reason="parity needs the TFLite runtime: pip install ai-edge-litert")
    model = tflite_to_onnx(tflite_models[key])
    ops = tflite_import.tflite_operators(tflite_models[key])
    assert "PRELU" in ops or "FULLY_CONNECTED" in ops
    x = np.random.default_rng(0).random([d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim],
                                        dtype=np.float32)
    got = _session(model).run(None, {model.graph.input[0].name: x})
    for out, a, b in zip(model.graph.output, got, tflite_reference(tflite_models[key])(x)):
        assert np.asarray(a).shape == b.shape, out.name
        assert float(np.abs(np.asarray(a) - b).max()) <= 1e-4 * max(1.0, float(np.abs(b).max())), out.name
