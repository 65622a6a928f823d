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
from importlib import metadata
from pathlib import Path

import onnx

from aspp_deploy.errors import InputError
from aspp_deploy.export.graph import external_data_files, load_onnx
from aspp_deploy.io import atomic_write_bytes, atomic_write_text, folder_lock, json_text, sha256_file, signals_deferred
from aspp_deploy.runtime.manifest import (EXTERNAL_KEY, FORMAT, MANIFEST_NAME, METADATA_KEY, VOLATILE, ArtifactEntry,
                                          Manifest, check_entry, parse_embedded, resolve_entry, sha256_of,
                                          stable_entry)
from aspp_deploy.runtime.preprocess import Preprocess

# The types and the rules of reading are ``aspp_deploy.runtime.manifest``'s (torch-free, onnx-free);
# this module adds what needs the onnx package: the embedded copy, external data, and the writers.
# A model with external data its manifest does not record is refused: integrity covers every byte
# the model is made of, not only the ``.onnx`` file.
__all__ = ["EXTERNAL_KEY", "FORMAT", "MANIFEST_NAME", "METADATA_KEY", "VOLATILE", "ArtifactManifest", "check_entry",
           "embed", "external_data_digests", "manifest_of", "read_embedded", "read_onnx_manifest", "read_sidecar",
           "refuse_external_data", "stable_entry", "tool_versions", "update_sidecar", "verify_external_data",
           "verify_sha256", "write_with_entry"]


def tool_versions(*names: str) -> dict[str, str]:
    found = {"python": platform.python_version()}
    for n in ("aspp-deploy", "torch", "onnx", "onnxruntime", "onnxsim", "numpy", *names):
        try:
            found[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            pass
    return found


class ArtifactManifest:
    """An ONNX artifact's verified manifest: ``typed`` (its ``ArtifactEntry``) and ``entry``, the same
    record as JSON data (what the writers and the reports read)."""

    def __init__(self, typed: ArtifactEntry) -> None:
        self.typed = typed
        self.entry = typed.to_dict()

    @property
    def classes(self) -> list[str]:
        return list(self.typed.classes)

    @property
    def palette(self) -> list[list[int]]:
        return [list(c) for c in self.typed.palette]

    def preprocess(self) -> Preprocess:
        return self.typed.preprocess


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
    return parse_embedded(next((p.value for p in model.metadata_props if p.key == METADATA_KEY), None))


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
    entry = resolve_entry(embedded, sidecar)  # the sidecar's measured facts added back when it describes this file
    if not entry:
        raise InputError(f"{path} has no aspp-deploy manifest (embedded or in {MANIFEST_NAME}); "
                         "adopt it with `aspp-deploy import MODEL.onnx` (an ONNX made elsewhere) or "
                         "make it with `aspp-deploy export`")
    if sidecar:
        verify_sha256(path, sidecar)
    verified = verify_external_data(path, external_data_files(model, path), [e for e in (sidecar, embedded) if e])
    typed = ArtifactEntry.from_dict(entry, path)
    if verified:  # what was verified travels with the entry (a repository copies and re-checks the files)
        typed.external_data = verified
    return ArtifactManifest(typed)


def external_data_digests(path: Path | str) -> dict[str, str]:
    """{location: sha256} of the external data files of the ONNX at ``path`` (what an entry records
    under ``EXTERNAL_KEY``); {} for a self-contained model."""

    path = Path(path)
    files = external_data_files(load_onnx(path, external_data=False), path)
    return {location: sha256_file(file) for location, file in sorted(files.items())}


def verify_external_data(path: Path, files: dict[str, Path], entries: list[dict]) -> dict[str, str]:
    """Refuse ``path`` when one of its external data ``files`` (location -> file) is not recorded by
    any of its manifest ``entries``, or its bytes differ from what one of them recorded; returns the
    verified {location: sha256}."""

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
    recorded = entry.get("onnx_sha256")
    if recorded is None:
        return
    if not isinstance(recorded, str) or sha256_of(path) != recorded:
        raise InputError(f"{path} does not match its entry in {path.parent / MANIFEST_NAME} (sha256 differs): "
                         "the file was replaced or damaged after it was made; make it again "
                         "(`aspp-deploy export`, `import` or `quantize`)")


def read_sidecar(folder: Path) -> dict[str, dict]:
    """The entries of ``folder/manifest.json`` as written ({} when there is none)."""
    return Manifest.read(folder).artifacts


def write_with_entry(path: Path, data: bytes, entry: dict, companions: dict[str, bytes] | None = None) -> Path:
    """Write an artifact's bytes atomically and its sidecar entry (with their sha256) as one step:
    Ctrl-C or SIGTERM is held until both are written, and a kill between them leaves a file that no
    longer matches the old entry, which every reader refuses. ``companions`` (file name -> bytes) are
    written beside it first, each atomically (the TensorRT pre-flight findings). Returns the
    manifest's path."""
    import hashlib


    entry["onnx_sha256"] = hashlib.sha256(data).hexdigest()
    ArtifactEntry.from_dict(entry, path)  # an entry no reader would take is refused before anything is written
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
        manifest = Manifest.read(folder)
        manifest.artifacts[file_name] = ArtifactEntry.from_dict(entry, Path(folder) / file_name).to_dict()
        atomic_write_text(path, json_text(manifest.to_dict(), sort_keys=True))
    return path
