"""Real trained models and real photos, from registry packages (nothing from a model hub).

Models: MediaPipe's TFLite files inside the mediapipe 0.10.14 wheel (Apache-2.0; the 1.x wheels no
longer ship them), read from the wheel with zipfile -- mediapipe itself is never installed. The wheel
is ``$ASPP_MEDIAPIPE_WHEEL`` (CI downloads it: ``pip download --no-deps mediapipe==0.10.14 -d .whl``),
else ``.whl/`` or ``/tmp/wheels/``; without it these tests skip and say how to get it.
Photos: ``aspp-deploy data photos`` (matplotlib's and scikit-image's public-domain and CC0 photos).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODELS = {
    "selfie": "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite",
    "landscape": "mediapipe/modules/selfie_segmentation/selfie_segmentation_landscape.tflite",
    "pose": "mediapipe/modules/pose_landmark/pose_landmark_full.tflite",
}
HOW = "pip download --no-deps mediapipe==0.10.14 -d .whl (or set ASPP_MEDIAPIPE_WHEEL)"


def mediapipe_wheel() -> Path | None:
    given = os.environ.get("ASPP_MEDIAPIPE_WHEEL")
    if given:
        if not Path(given).is_file():
            pytest.fail(f"ASPP_MEDIAPIPE_WHEEL={given} is not a file")
        return Path(given)
    for folder in (ROOT / ".whl", Path("/tmp/wheels")):
        found = sorted(folder.glob("mediapipe-0.10.14-*.whl"))
        if found:
            return found[0]
    return None


@pytest.fixture(scope="session")
def real_tflite(tmp_path_factory):
    """name -> path of that MediaPipe .tflite, extracted once."""
    pytest.importorskip("tflite", reason="the TFLite converter needs pip install 'aspp-deploy[tflite]'")
    wheel = mediapipe_wheel()
    if wheel is None:
        pytest.skip(f"needs the mediapipe 0.10.14 wheel's TFLite models: {HOW}")
    folder = tmp_path_factory.mktemp("mediapipe")

    def get(name: str) -> Path:
        path = folder / Path(MODELS[name]).name
        if not path.exists():
            with zipfile.ZipFile(wheel) as z:
                path.write_bytes(z.read(MODELS[name]))
        return path
    return get


@pytest.fixture(scope="session")
def real_photos(tmp_path_factory) -> Path:
    from aspp_deploy.data.photos import write_photos

    folder = tmp_path_factory.mktemp("photos")
    write_photos(folder, max_side=384)
    return folder
