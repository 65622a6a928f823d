"""Artifact manifests: ``manifest.json`` beside the artifacts (one entry per file) and the
same entry embedded in each ONNX file's ``metadata_props`` (key ``aspp_deploy.manifest``),
so an ONNX file carries its preprocessing and classes wherever it is copied.

The embedded copy cannot hold the hash of the file it is embedded in, so it omits
``onnx_sha256``; the sidecar entry has it. It also omits what is measured or timed while the
artifact is made (``VOLATILE``: parity figures, accuracy, seconds, the calibration cache's hit or
miss): those differ from run to run, and an ONNX file's bytes, hence its sha256, must depend only
on its inputs (the same checkpoint and options give the same file, so nothing made from it counts
as stale). They live in the sidecar only; ``manifest_of`` adds them back when the sidecar entry
describes the same file.
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
from aspp_deploy.export.graph import external_data_files, load_onnx
from aspp_deploy.io import atomic_write_text, folder_lock, json_text

METADATA_KEY = "aspp_deploy.manifest"
# An ONNX file whose tensors keep their bytes in other files (``external data``, beside the model):
# the entry records each file's sha256 under this key ({location: sha256}), and every read verifies
# them. A model with external data its manifest does not record is refused: integrity covers every
# byte the model is made of, not only the ``.onnx`` file.
EXTERNAL_KEY = "external_data"
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


# Dotted paths of the entry's measured or timed facts: kept in the sidecar, never in the ONNX.
VOLATILE = ("onnx_sha256", EXTERNAL_KEY, "parity", "accuracy", "seconds", "notes", "export.seconds",
            "quantization.budget", "quantization.calibration.cache")


def stable_entry(entry: dict) -> dict:
    """``entry`` without its ``VOLATILE`` facts: what is embedded in the ONNX (a copy; ``entry`` is
    left as it is)."""
    out = json.loads(json.dumps(entry))
    for path in VOLATILE:
        *parents, last = path.split(".")
        node = out
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return out


def _volatile_part(entry: dict) -> dict:
    """Only the ``VOLATILE`` facts of ``entry`` (without ``onnx_sha256``), nested as in ``entry``."""
    out: dict = {}
    for path in VOLATILE[1:]:
        *parents, last = path.split(".")
        node, target = entry, out
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
            target = target.setdefault(key, {})
        if isinstance(node, dict) and last in node:
            target[last] = node[last]
    return out


def _merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for k, v in extra.items():
        merged[k] = _merge(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


def embed(model: onnx.ModelProto, entry: dict) -> None:
    """Embed ``entry``'s stable facts in ``model`` (deterministically: sorted keys, one metadata key)."""
    embedded = stable_entry(entry)
    keep = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    prop = model.metadata_props.add()
    prop.key, prop.value = METADATA_KEY, json.dumps(embedded, sort_keys=True)


def read_embedded(model: onnx.ModelProto) -> dict | None:
    """The entry embedded in ``model`` (None when there is none); InputError when it is not a JSON object."""
    for p in model.metadata_props:
        if p.key == METADATA_KEY:
            try:
                data = json.loads(p.value)
            except (ValueError, UnicodeDecodeError) as exc:  # bytes that are not UTF-8 decode lazily
                raise InputError(f"the manifest embedded in the ONNX file is not valid JSON ({exc})") from None
            if not isinstance(data, dict):
                raise InputError("the manifest embedded in the ONNX file is not a JSON object")
            return data
    return None


def read_onnx_manifest(path: Path | str) -> ArtifactManifest:
    """The manifest of an ONNX file: its embedded entry, else its ``manifest.json`` entry; the file's
    bytes and those of its external data files are verified against what the manifest recorded."""
    path = Path(path)
    return manifest_of(load_onnx(path, external_data=False), path)


def manifest_of(model: onnx.ModelProto, path: Path) -> ArtifactManifest:
    """The manifest of ``model``, loaded from ``path`` (without its external data, as
    ``read_onnx_manifest`` does): embedded, else in ``manifest.json`` beside it."""
    embedded = read_embedded(model)
    sidecar = read_sidecar(path.parent).get(path.name)
    entry = embedded or sidecar
    if embedded and sidecar and stable_entry(sidecar) == stable_entry(embedded):
        # the sidecar describes this very file: add back what was measured when it was made
        entry = _merge(stable_entry(embedded), _volatile_part(sidecar))
    if not entry:
        raise InputError(f"{path} has no aspp-deploy manifest (embedded or in {MANIFEST_NAME}); "
                         "adopt it with `aspp-deploy import MODEL.onnx` (an ONNX made elsewhere) or "
                         "make it with `aspp-deploy export`")
    if sidecar:
        verify_sha256(path, sidecar)
    verified = verify_external_data(path, external_data_files(model, path), [e for e in (sidecar, embedded) if e])
    check_entry(entry, path)
    if verified:  # what was verified travels with the entry (a repository copies and re-checks the files)
        entry = {**entry, EXTERNAL_KEY: verified}
    return ArtifactManifest(entry)


def external_data_digests(path: Path | str) -> dict[str, str]:
    """{location: sha256} of the external data files of the ONNX at ``path`` (what an entry records
    under ``EXTERNAL_KEY``); {} for a self-contained model."""
    from aspp_deploy.io import sha256_file

    path = Path(path)
    files = external_data_files(load_onnx(path, external_data=False), path)
    return {location: sha256_file(file) for location, file in sorted(files.items())}


def verify_external_data(path: Path, files: dict[str, Path], entries: list[dict]) -> dict[str, str]:
    """Refuse ``path`` when one of its external data ``files`` (location -> file) is not recorded by
    any of its manifest ``entries``, or its bytes differ from what one of them recorded; returns the
    verified {location: sha256}."""
    from aspp_deploy.io import sha256_file

    verified: dict[str, str] = {}
    if not files:
        return verified
    recorded: list[dict] = []
    for entry in entries:
        value = entry.get(EXTERNAL_KEY)
        if value is None:
            continue
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            raise InputError(f"the manifest of {path} is malformed: '{EXTERNAL_KEY}' must map each external data "
                             "file to its sha256")
        recorded.append(value)
    for location, file in sorted(files.items()):
        digests = {r[location] for r in recorded if location in r}
        if not digests:
            raise InputError(f"{path} keeps weights in the external data file {location}, whose sha256 its manifest "
                             "does not record: those bytes cannot be verified; make one self-contained file with "
                             f"`aspp-deploy import {path}`")
        actual = sha256_file(file)
        if digests != {actual}:
            raise InputError(f"{file} (external data of {path.name}) does not match its manifest (sha256 differs): "
                             "the file was replaced or damaged after the manifest was written; put the original "
                             "back or make the model again")
        verified[location] = actual
    return verified


def refuse_external_data(path: Path | str, what: str) -> None:
    """One InputError when the ONNX at ``path`` keeps weights in external data files: ``what`` (a
    command) handles self-contained models only."""
    path = Path(path)
    files = external_data_files(load_onnx(path, external_data=False), path)
    if files:
        raise InputError(f"{path} keeps its weights in external data file(s) {', '.join(sorted(files))}: {what} "
                         f"takes one self-contained ONNX file; make one with `aspp-deploy import {path}`")


def verify_sha256(path: Path, entry: dict) -> None:
    """Refuse ``path`` when its bytes are not those its manifest entry recorded (swapped, damaged,
    or written by a run that was stopped before it could update the manifest)."""
    from aspp_deploy.io import sha256_file

    recorded = entry.get("onnx_sha256")
    if recorded is None:
        return
    if not isinstance(recorded, str) or sha256_file(path) != recorded:
        raise InputError(f"{path} does not match its entry in {path.parent / MANIFEST_NAME} (sha256 differs): "
                         "the file was replaced or damaged after it was made; make it again "
                         "(`aspp-deploy export`, `import` or `quantize`)")


def check_entry(entry: object, path: Path) -> None:
    """One InputError when the entry lacks what every consumer reads, or has it in the wrong shape."""
    def bad(what: str) -> InputError:
        return InputError(f"the manifest of {path} is malformed: {what}")

    if not isinstance(entry, dict):
        raise bad("the entry is not a JSON object")
    classes = entry.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise bad("'classes' must be a non-empty list of names")
    palette = entry.get("palette")
    if not isinstance(palette, list) or len(palette) < len(classes) or not all(
            isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
            for c in palette):
        raise bad("'palette' must give an RGB triple of 0..255 for every class")
    if not isinstance(entry.get("preprocess"), dict):
        raise bad("'preprocess' must be an object")
    try:  # every reader builds it: it must build
        Preprocess.from_dict(entry["preprocess"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise bad(f"the preprocessing record is malformed ({exc})") from None
    for key in ("inputs", "outputs"):
        tensors = entry.get(key)
        if tensors is None:
            continue
        if not isinstance(tensors, list) or not tensors or not all(
                isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("shape", []), list)
                for t in tensors):
            raise bad(f"'{key}' must be a non-empty list of {{name, shape}} objects")
    for key in ("source", "spec", "export", "quantization"):
        if entry.get(key) is not None and not isinstance(entry[key], dict):
            raise bad(f"'{key}' must be an object")


def read_sidecar(folder: Path) -> dict[str, dict]:
    f = Path(folder) / MANIFEST_NAME
    if not f.is_file():
        return {}
    try:
        data = json.loads(f.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{f} is not valid JSON: {exc}") from None
    artifacts = data.get("artifacts", {}) if isinstance(data, dict) else None
    if not isinstance(artifacts, dict):
        raise InputError(f"{f} is not an aspp-deploy manifest: expected an object with an 'artifacts' object")
    for name, entry in artifacts.items():
        if not isinstance(entry, dict):
            raise InputError(f"{f} is malformed: the entry for {name!r} is not an object")
    return dict(artifacts)


def write_with_entry(path: Path, data: bytes, entry: dict, companions: dict[str, bytes] | None = None) -> Path:
    """Write an artifact's bytes atomically and its sidecar entry (with their sha256) as one step:
    Ctrl-C or SIGTERM is held until both are written, and a kill between them leaves a file that no
    longer matches the old entry, which every reader refuses. ``companions`` (file name -> bytes) are
    written beside it first, each atomically (the TensorRT pre-flight findings). Returns the
    manifest's path."""
    import hashlib

    from aspp_deploy.io import atomic_write_bytes, signals_deferred

    entry["onnx_sha256"] = hashlib.sha256(data).hexdigest()
    with signals_deferred():
        for name, content in (companions or {}).items():
            atomic_write_bytes(path.parent / Path(name).name, content)
        atomic_write_bytes(path, data)
        return update_sidecar(path.parent, path.name, entry)


def update_sidecar(folder: Path, file_name: str, entry: dict) -> Path:
    """Add or replace one artifact's entry in ``folder/manifest.json`` (atomically, and under a lock
    on the folder, so concurrent writers of one manifest lose no entry)."""
    path = Path(folder) / MANIFEST_NAME
    with folder_lock(folder):
        artifacts = read_sidecar(folder)
        artifacts[file_name] = entry
        atomic_write_text(path, json_text({"format": FORMAT, "artifacts": artifacts}, sort_keys=True))
    return path
