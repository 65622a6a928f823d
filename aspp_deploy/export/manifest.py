"""Artifact manifests: ``manifest.json`` beside the artifacts (one entry per file) and the
same entry embedded in each ONNX file's ``metadata_props`` (key ``aspp_deploy.manifest``),
so an ONNX file carries its preprocessing and classes wherever it is copied.

The embedded copy cannot hold the hash of the file it is embedded in, so it omits
``onnx_sha256``; the sidecar entry has it.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import onnx

from aspp_deploy.data.preprocess import Preprocess
from aspp_deploy.errors import InputError
from aspp_deploy.export.graph import load_onnx
from aspp_deploy.io import atomic_write_text

METADATA_KEY = "aspp_deploy.manifest"
MANIFEST_NAME = "manifest.json"
FORMAT = "aspp-deploy/manifest/v1"


def tool_versions(*names: str) -> dict[str, str]:
    found = {"python": platform.python_version()}
    for n in ("aspp-deploy", "torch", "onnx", "onnxruntime", "onnxsim", "numpy", *names):
        try:
            found[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            pass
    return found


@dataclass
class ArtifactManifest:
    entry: dict

    @property
    def classes(self) -> list[str]:
        return list(self.entry["classes"])

    @property
    def palette(self) -> list[list[int]]:
        return [list(c) for c in self.entry["palette"]]

    def preprocess(self) -> Preprocess:
        try:
            return Preprocess.from_dict(self.entry["preprocess"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"the manifest's preprocessing record is malformed: {exc}") from None


def embed(model: onnx.ModelProto, entry: dict) -> None:
    embedded = {k: v for k, v in entry.items() if k != "onnx_sha256"}
    keep = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    prop = model.metadata_props.add()
    prop.key, prop.value = METADATA_KEY, json.dumps(embedded, sort_keys=True)


def read_embedded(model: onnx.ModelProto) -> dict | None:
    for p in model.metadata_props:
        if p.key == METADATA_KEY:
            return json.loads(p.value)
    return None


def read_onnx_manifest(path: Path | str) -> ArtifactManifest:
    """The manifest of an ONNX file: its embedded entry, else its ``manifest.json`` entry."""
    path = Path(path)
    return manifest_of(load_onnx(path, external_data=False), path)


def manifest_of(model: onnx.ModelProto, path: Path) -> ArtifactManifest:
    """The manifest of ``model``, loaded from ``path``: embedded, else in ``manifest.json`` beside it."""
    entry = read_embedded(model) or read_sidecar(path.parent).get(path.name)
    if not entry:
        raise InputError(f"{path} has no aspp-deploy manifest (embedded or in {MANIFEST_NAME}); "
                         "adopt it with `aspp-deploy import MODEL.onnx` (an ONNX made elsewhere) or "
                         "make it with `aspp-deploy export`")
    return ArtifactManifest(entry)


def read_sidecar(folder: Path) -> dict[str, dict]:
    f = Path(folder) / MANIFEST_NAME
    if not f.is_file():
        return {}
    try:
        data = json.loads(f.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{f} is not valid JSON: {exc}") from None
    return dict(data.get("artifacts", {}))


def update_sidecar(folder: Path, file_name: str, entry: dict) -> Path:
    """Add or replace one artifact's entry in ``folder/manifest.json`` (atomically)."""
    artifacts = read_sidecar(folder)
    artifacts[file_name] = entry
    path = Path(folder) / MANIFEST_NAME
    atomic_write_text(path, json.dumps({"format": FORMAT, "artifacts": artifacts}, indent=2,
                                       sort_keys=True) + "\n")
    return path
