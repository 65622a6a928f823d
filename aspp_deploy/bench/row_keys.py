"""What a ``compare`` row's figures depend on, as the key its cached figures are stored under
(``aspp_deploy.bench.result_cache``): change any part and the row is measured again."""

from __future__ import annotations

from typing import Callable, Dict, List, Optional

from aspp_deploy.backends.openvino_backend import INFERENCE_PRECISION as OPENVINO_INFERENCE_PRECISION
from aspp_deploy.bench.compare import RowSpec
from aspp_deploy.export.manifest import tool_versions
from aspp_deploy.io import sha256_file
from aspp_deploy.runtime.preprocess import Preprocess


def row_keys(fp32, pre: Preprocess, class_names: List[str], val, threads: int) -> Callable[[RowSpec], Optional[dict]]:
    """What a compare row's figures depend on (see ``aspp_deploy.bench.compare``): the artifact by
    content (sha256; the PyTorch source by its fingerprint: files by content, factory, arguments),
    the images and masks by content, the preprocessing, and the backend/precision settings."""
    versions = tool_versions("openvino", "tensorrt")
    library = {"torch": "torch", "onnxruntime": "onnxruntime", "openvino": "openvino", "trt": "tensorrt"}
    hashed: Dict[tuple, str] = {}

    def sha(path) -> str:
        st = path.stat()
        memo = (str(path.resolve()), st.st_mtime_ns, st.st_size)
        if memo not in hashed:
            hashed[memo] = sha256_file(path)
        return hashed[memo]

    def key(s: RowSpec) -> Optional[dict]:
        if s.backend == "torch":
            if fp32.source is None:
                return None
            artifact = {"torch_source": fp32.source.fingerprint()}
        elif s.artifact is not None and s.artifact.is_file():
            artifact = {"sha256": sha(s.artifact)}
        else:
            return None
        settings = {"backend": s.backend, "precision": s.precision, "device": s.device, "note": s.note,
                    "threads": threads, "library": versions.get(library.get(s.backend, ""))}
        if s.backend == "openvino":
            settings["inference_precision"] = OPENVINO_INFERENCE_PRECISION
        return {"artifact": artifact, "data": val.digest, "labels": val.labels, "preprocess": pre.to_dict(),
                "classes": class_names, "settings": settings}

    return key
