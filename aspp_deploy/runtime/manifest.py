"""The manifest, typed: the one contract between export, quantize, build, the bundle and the runtime.

Two files carry it:

* ``manifest.json`` beside ONNX artifacts (``Manifest``: ``{"format", "artifacts": {file: entry}}``),
  one ``ArtifactEntry`` per file, the same entry also embedded in each ONNX file's metadata under
  ``METADATA_KEY`` (without the facts that vary from run to run, ``VOLATILE``);
* ``<engine>.json`` beside a TensorRT engine (``EngineManifest``, written by ``aspp-deploy build``).

Every read goes through ``from_dict``, which verifies what every consumer relies on (the format, the
entry's classes, palette, preprocessing and tensors) and raises one ``InputError`` naming the file;
reading an artifact's bytes verifies them against the sha256 its manifest recorded. ``to_dict``
gives back exactly what was read, keys this version does not know included (``extra``), so
rewriting a manifest loses nothing written by another version; older manifests (no ``format``, no
``precision``, preprocessing records with fewer keys) read with the defaults they meant.

Portable: standard library, NumPy and Pillow (through ``Preprocess``); no torch, no onnx; Python 3.8.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

from aspp_deploy.errors import InputError
from aspp_deploy.runtime.preprocess import Preprocess
from aspp_deploy.runtime.vocab import OutputKind, Precision, Target

MANIFEST_NAME = "manifest.json"
FORMAT = "aspp-deploy/manifest/v1"
METADATA_KEY = "aspp_deploy.manifest"  # the ONNX metadata key the entry is embedded under
# An ONNX file whose tensors keep their bytes in other files (external data): the entry records each
# file's sha256 under this key ({location: sha256}).
EXTERNAL_KEY = "external_data"
ENGINE_FORMAT = "aspp-deploy/tensorrt-engine"
# An entry's ``target`` beside the Target words: a reduced-precision ONNX made for every runtime (FP16).
ANY_TARGET = "any"
# Dotted paths of an entry's measured or timed facts: kept in the sidecar, never embedded in the ONNX.
VOLATILE = ("onnx_sha256", EXTERNAL_KEY, "parity", "accuracy", "seconds", "notes", "export.seconds",
            "quantization.budget", "quantization.calibration.cache")

PathLike = Union[str, Path]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_of(path: PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        block = f.read(chunk)
        while block:
            h.update(block)
            block = f.read(chunk)
    return h.hexdigest()


def _jsonable_copy(value: Any) -> Any:
    return copy.deepcopy(value)


# -- tensors ------------------------------------------------------------------------------------------


@dataclass
class TensorInfo:
    """One model input or output as an entry records it: name, shape (ints and symbolic names), dtype."""

    name: str
    shape: Optional[List[Union[int, str]]] = None
    dtype: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TensorInfo":
        known = ("name", "shape", "dtype")
        return cls(str(data["name"]), list(data["shape"]) if isinstance(data.get("shape"), list) else None,
                   data.get("dtype") if isinstance(data.get("dtype"), str) else None,
                   {k: _jsonable_copy(v) for k, v in data.items() if k not in known})

    def to_dict(self) -> Dict[str, Any]:
        out = {"name": self.name}  # type: Dict[str, Any]
        if self.dtype is not None:
            out["dtype"] = self.dtype
        if self.shape is not None:
            out["shape"] = list(self.shape)
        out.update(_jsonable_copy(self.extra))
        return out

    @property
    def static_batch(self) -> Optional[int]:
        """The first dimension when it is a fixed positive number, else None (dynamic)."""
        first = (self.shape or [None])[0]
        return first if isinstance(first, int) and not isinstance(first, bool) and first > 0 else None


# -- one ONNX artifact's entry ------------------------------------------------------------------------


def check_entry(entry: object, path: PathLike) -> None:
    """One InputError when ``entry`` lacks what every consumer reads, or has it in the wrong shape."""
    def bad(what: str) -> InputError:
        return InputError("the manifest of {} is malformed: {}".format(path, what))

    if not isinstance(entry, dict):
        raise bad("the entry is not a JSON object")
    classes = entry.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise bad("'classes' must be a non-empty list of names")
    palette = entry.get("palette")
    if not isinstance(palette, list) or len(palette) < len(classes) or not all(
            isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) and not isinstance(v, bool)
                                                        and 0 <= v <= 255 for v in c)
            for c in palette):
        raise bad("'palette' must give an RGB triple of 0..255 for every class")
    if not isinstance(entry.get("preprocess"), dict):
        raise bad("'preprocess' must be an object")
    try:  # every reader builds it: it must build
        Preprocess.from_dict(entry["preprocess"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise bad("the preprocessing record is malformed ({})".format(exc)) from None
    for key in ("inputs", "outputs"):
        tensors = entry.get(key)
        if tensors is None:
            continue
        if not isinstance(tensors, list) or not tensors or not all(
                isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("shape", []), list)
                for t in tensors):
            raise bad("'{}' must be a non-empty list of {{name, shape}} objects".format(key))
    for key in ("source", "spec", "export", "quantization"):
        if entry.get(key) is not None and not isinstance(entry[key], dict):
            raise bad("'{}' must be an object".format(key))
    for key, words in (("precision", [m.value for m in Precision]), ("target", [m.value for m in Target] + [ANY_TARGET]),
                       ("output_kind", [m.value for m in OutputKind])):
        value = entry.get(key)
        if value is not None and value not in words:
            raise bad("'{}' is {!r}, not one of {}".format(key, value, ", ".join(words)))
    for key in ("onnx_sha256",):
        if entry.get(key) is not None and not isinstance(entry[key], str):
            raise bad("'{}' must be a hex digest".format(key))
    external = entry.get(EXTERNAL_KEY)
    if external is not None and (not isinstance(external, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in external.items())):
        raise bad("'{}' must map each external data file to its sha256".format(EXTERNAL_KEY))


# The keys ``ArtifactEntry`` types; every other key of an entry travels in ``extra`` unchanged.
_ENTRY_OBJECTS = ("source", "spec", "export", "quantization")


@dataclass
class ArtifactEntry:
    """What one ONNX artifact is: its classes, palette, preprocessing, tensors, precision and where it
    came from. Build it with ``from_dict`` (which verifies); ``to_dict`` gives the record back."""

    classes: List[str]
    palette: List[List[int]]
    preprocess: Preprocess
    precision: Precision = Precision.fp32
    target: Optional[Target] = None  # None: not recorded, or ANY_TARGET (made for every runtime)
    output_kind: Optional[OutputKind] = None
    inputs: Optional[List[TensorInfo]] = None
    outputs: Optional[List[TensorInfo]] = None
    onnx_sha256: Optional[str] = None
    external_data: Optional[Dict[str, str]] = None
    source: Optional[Dict[str, Any]] = None
    spec: Optional[Dict[str, Any]] = None
    export: Optional[Dict[str, Any]] = None
    quantization: Optional[Dict[str, Any]] = None
    extra: Dict[str, Any] = field(default_factory=dict)
    # The record as read: to_dict gives every field that was not changed since back exactly as written
    # (a null stays a null, an absent precision stays absent, a preprocessing record keeps its keys).
    _record: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    TYPED = ("classes", "palette", "preprocess", "precision", "target", "output_kind", "inputs", "outputs",
             "onnx_sha256", EXTERNAL_KEY) + _ENTRY_OBJECTS

    @classmethod
    def from_dict(cls, data: Any, path: PathLike) -> "ArtifactEntry":
        """The entry ``data`` describing the artifact at ``path`` (named in the one InputError when
        ``data`` lacks what every consumer reads)."""
        check_entry(data, path)
        return cls(
            classes=[str(c) for c in data["classes"]],
            palette=[[int(v) for v in c] for c in data["palette"]],
            preprocess=Preprocess.from_dict(data["preprocess"]),
            precision=Precision(data["precision"]) if data.get("precision") is not None else Precision.fp32,
            target=Target(data["target"]) if data.get("target") not in (None, ANY_TARGET) else None,
            output_kind=OutputKind(data["output_kind"]) if data.get("output_kind") is not None else None,
            inputs=[TensorInfo.from_dict(t) for t in data["inputs"]] if data.get("inputs") is not None else None,
            outputs=[TensorInfo.from_dict(t) for t in data["outputs"]] if data.get("outputs") is not None else None,
            onnx_sha256=data.get("onnx_sha256"),
            external_data=dict(data[EXTERNAL_KEY]) if data.get(EXTERNAL_KEY) is not None else None,
            **{k: _jsonable_copy(data.get(k)) for k in _ENTRY_OBJECTS},
            extra={k: _jsonable_copy(v) for k, v in data.items() if k not in cls.TYPED},
            _record=_jsonable_copy(data))

    def to_dict(self) -> Dict[str, Any]:
        """The entry as JSON data: what ``from_dict`` read (unknown keys and all), with any changes made since."""
        return _to_dict(self, self.TYPED, _entry_value)

    @property
    def fused_io(self) -> bool:
        """True when the model takes uint8 pixels and returns uint8 class ids (its preprocessing record's
        ``fused_io``; absent in every record written before the option: not fused)."""
        return self.preprocess.fused_io

    @property
    def input(self) -> Optional[TensorInfo]:
        """The image input (the first input), when the entry records its tensors."""
        return self.inputs[0] if self.inputs else None

    @property
    def static_batch(self) -> Optional[int]:
        """The input's fixed batch size, or None when it is dynamic (or not recorded)."""
        return self.input.static_batch if self.input is not None else None

    @property
    def source_onnx(self) -> Optional[str]:
        """The ONNX file this one was made from (a quantized variant's FP32 ONNX), if recorded."""
        onnx = (self.source or {}).get("onnx")
        return onnx if isinstance(onnx, str) else None

    @property
    def trt_versions(self) -> Optional[List[str]]:
        """The TensorRT lint profiles ("8.5", "10.x", ...) whose parser takes this file, per its pre-flight;
        None when no pre-flight is recorded."""
        versions = self.extra.get("trt_versions")
        return [str(v) for v in versions] if isinstance(versions, list) else None

    @property
    def deepstream(self) -> bool:
        """True for the bundle's DeepStream copy of a model (its nvinfer input), never a build source."""
        return bool(self.extra.get("deepstream"))

    def verify_file(self, path: PathLike, manifest_file: Optional[PathLike] = None) -> None:
        """InputError unless ``path``'s bytes are those this entry recorded (nothing to check when it
        recorded no sha256: an embedded entry, or one written by hand)."""
        path = Path(path)
        if self.onnx_sha256 is not None and sha256_of(path) != self.onnx_sha256:
            raise InputError("{} does not match its entry in {} (sha256 differs): the file was replaced or "
                             "damaged after it was made; make it again (`aspp-deploy export`, `import` or "
                             "`quantize`)".format(path, manifest_file or path.parent / MANIFEST_NAME))


def _entry_value(key: str, value: Any) -> Any:
    """A typed field of an entry as JSON data."""
    if isinstance(value, Preprocess):
        return value.to_dict()
    if key in ("inputs", "outputs"):
        return [t.to_dict() for t in value]
    if key == "palette":
        return [list(c) for c in value]
    return _jsonable_copy(value.value if isinstance(value, Enum) else value)


def _to_dict(obj: Any, typed: Any, to_json: Any) -> Dict[str, Any]:
    """``obj``'s record as read, with the typed fields changed since reading it written anew (a field
    set to None is dropped) and its ``extra`` keys as they are now."""
    record = obj._record  # type: Dict[str, Any]
    base = type(obj).from_dict(record, "") if record else None
    out = {k: _jsonable_copy(v) for k, v in record.items() if k in typed or k == "format"}
    for key in typed:
        attr = key.replace(EXTERNAL_KEY, "external_data")
        now = getattr(obj, attr)
        if base is not None and getattr(base, attr) == now:
            continue  # unchanged: the record's own value, or its absence
        if now is None:
            out.pop(key, None)
        else:
            out[key] = to_json(key, now)
    out.update(_jsonable_copy(obj.extra))
    return out


# -- the stable / volatile split between the embedded entry and the sidecar's ---------------------------


def stable_entry(entry: Mapping[str, Any]) -> Dict[str, Any]:
    """``entry`` without its ``VOLATILE`` facts: what is embedded in the ONNX (a copy)."""
    out = json.loads(json.dumps(entry))
    for dotted in VOLATILE:
        *parents, last = dotted.split(".")
        node = out
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return out


def volatile_part(entry: Mapping[str, Any]) -> Dict[str, Any]:
    """Only the ``VOLATILE`` facts of ``entry`` (without ``onnx_sha256``), nested as in ``entry``."""
    out = {}  # type: Dict[str, Any]
    for dotted in VOLATILE[1:]:
        *parents, last = dotted.split(".")
        node = entry  # type: Any
        target = out  # type: Dict[str, Any]
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
            target = target.setdefault(key, {})
        if isinstance(node, dict) and last in node:
            target[last] = node[last]
    return out


def merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> Dict[str, Any]:
    merged = dict(base)
    for k, v in extra.items():
        merged[k] = merge(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


def resolve_entry(embedded: Optional[Dict[str, Any]], sidecar: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The entry of an ONNX: its embedded one, else its sidecar's; when the sidecar describes this
    very file (same stable facts), the embedded entry with the sidecar's measured facts added back."""
    entry = embedded or sidecar
    if embedded and sidecar and stable_entry(sidecar) == stable_entry(embedded):
        entry = merge(stable_entry(embedded), volatile_part(sidecar))
    return entry


def parse_embedded(text: Optional[str]) -> Optional[Dict[str, Any]]:
    """The entry embedded in an ONNX's metadata (``text`` is the value under ``METADATA_KEY``; None:
    there is none); InputError when it is not a JSON object."""
    if text is None:
        return None
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:  # bytes that are not UTF-8 decode lazily
        raise InputError("the manifest embedded in the ONNX file is not valid JSON ({})".format(exc)) from None
    if not isinstance(data, dict):
        raise InputError("the manifest embedded in the ONNX file is not a JSON object")
    return data


# -- manifest.json ------------------------------------------------------------------------------------


@dataclass
class Manifest:
    """``manifest.json``: one entry per artifact file in its folder. Entries are kept as written and
    verified when one is asked for (``entry``), so one malformed entry does not hide the others."""

    artifacts: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    format: str = FORMAT
    extra: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any, path: PathLike) -> "Manifest":
        artifacts = data.get("artifacts", {}) if isinstance(data, dict) else None
        if not isinstance(data, dict) or not isinstance(artifacts, dict):
            raise InputError("{} is not an aspp-deploy manifest: expected an object with an 'artifacts' "
                             "object".format(path))
        found = data.get("format", FORMAT)  # manifests written before the format was recorded have none
        if found != FORMAT:
            raise InputError("{} is not an aspp-deploy manifest this version reads: its format is {!r}, not "
                             "{!r}".format(path, found, FORMAT))
        for name, entry in artifacts.items():
            if not isinstance(entry, dict):
                raise InputError("{} is malformed: the entry for {!r} is not an object".format(path, name))
        return cls({str(k): _jsonable_copy(v) for k, v in artifacts.items()}, FORMAT,
                   {k: _jsonable_copy(v) for k, v in data.items() if k not in ("artifacts", "format")})

    @classmethod
    def read(cls, folder: PathLike) -> "Manifest":
        """``folder/manifest.json`` (an empty manifest when there is none)."""
        path = Path(folder) / MANIFEST_NAME
        if not path.is_file():
            return cls()
        try:
            data = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputError("{} is not valid JSON: {}".format(path, exc)) from None
        return cls.from_dict(data, path)

    @classmethod
    def read_required(cls, folder: PathLike, why: str) -> "Manifest":
        """``folder/manifest.json``, which must exist (``why`` says what it is for)."""
        path = Path(folder) / MANIFEST_NAME
        if not path.is_file():
            raise InputError("{} is missing: {}".format(path, why))
        return cls.read(folder)

    def to_dict(self) -> Dict[str, Any]:
        out = _jsonable_copy(self.extra)
        out.update({"format": self.format, "artifacts": _jsonable_copy(self.artifacts)})
        return out

    def entry(self, name: str, folder: PathLike) -> Optional[ArtifactEntry]:
        """The verified entry of the file ``name`` in ``folder`` (None when the manifest has none)."""
        data = self.artifacts.get(name)
        return None if data is None else ArtifactEntry.from_dict(data, Path(folder) / name)

    def entries(self, folder: PathLike) -> Dict[str, ArtifactEntry]:
        """Every entry, verified (the first malformed one is refused, naming its file)."""
        return {name: ArtifactEntry.from_dict(data, Path(folder) / name)
                for name, data in sorted(self.artifacts.items())}


def read_artifact_entry(onnx_path: PathLike, embedded: Optional[str]) -> ArtifactEntry:
    """The verified entry of the ONNX at ``onnx_path`` for a runtime that has no ``onnx`` package:
    ``embedded`` is the JSON its metadata holds under ``METADATA_KEY`` (read through the engine's own
    model metadata), else the entry in ``manifest.json`` beside it. When ``manifest.json`` has an entry
    for the file, the file's bytes are verified against its sha256."""
    path = Path(onnx_path)
    sidecar = Manifest.read(path.parent).artifacts.get(path.name)
    entry = resolve_entry(parse_embedded(embedded), sidecar)
    if not entry:
        raise InputError("{} has no aspp-deploy manifest (embedded or in {} beside it): make it with "
                         "`aspp-deploy export` or `aspp-deploy import`".format(path, MANIFEST_NAME))
    if sidecar:
        ArtifactEntry.from_dict(sidecar, path).verify_file(path)
    return ArtifactEntry.from_dict(entry, path)


# -- the engine manifest ------------------------------------------------------------------------------


def engine_manifest_path(engine_path: PathLike) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    return Path(str(engine_path) + ".json")


@dataclass
class EngineManifest:
    """``<engine>.json``: what ``aspp-deploy build`` recorded about an engine: the TensorRT version and
    GPU it was built for, its precision, tensors, and the preprocessing/classes/palette of its ONNX.
    The compatibility checks against the running TensorRT and GPU are ``trt.runtime``'s."""

    tensorrt_version: Optional[str] = None
    precision: Optional[Precision] = None
    engine: Optional[str] = None
    engine_bytes: Optional[int] = None
    engine_sha256: Optional[str] = None
    preprocess: Optional[Preprocess] = None
    classes: List[str] = field(default_factory=list)
    palette: List[List[int]] = field(default_factory=list)
    version_compatible: bool = False
    extra: Dict[str, Any] = field(default_factory=dict)  # gpu, plan, io, layers, build settings, ...
    _record: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    TYPED = ("tensorrt_version", "precision", "engine", "engine_bytes", "engine_sha256", "preprocess", "classes",
             "palette", "version_compatible")

    @classmethod
    def from_dict(cls, data: Any, path: PathLike) -> "EngineManifest":
        """The engine manifest ``data`` read from ``path``; one InputError naming it when it is foreign or malformed."""
        if not isinstance(data, dict) or data.get("format") != ENGINE_FORMAT:
            raise InputError("{} is not an aspp-deploy engine manifest".format(path))

        def bad(what: str) -> InputError:
            return InputError("{} is malformed: {}; rebuild the engine with `aspp-deploy build`".format(path, what))

        pre = None
        if data.get("preprocess"):
            try:
                pre = Preprocess.from_dict(data["preprocess"])
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise bad("the preprocessing record is malformed ({})".format(exc)) from None
        classes, palette = data.get("classes") or [], data.get("palette") or []
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise bad("'classes' must be a list of names")
        if not isinstance(palette, list) or not all(
                isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
                for c in palette):
            raise bad("'palette' must be a list of RGB triples of 0..255")
        precision = data.get("precision")
        if precision is not None and precision not in {p.value for p in Precision}:
            raise bad("'precision' is {!r}, not one of fp32, fp16, int8".format(precision))
        size = data.get("engine_bytes")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise bad("'engine_bytes' must be a byte count")
        digest = data.get("engine_sha256")
        if digest is not None and not isinstance(digest, str):
            raise bad("'engine_sha256' must be a hex digest")
        version = data.get("tensorrt_version")
        return cls(tensorrt_version=version if isinstance(version, str) else None,
                   precision=Precision(precision) if precision is not None else None,
                   engine=data.get("engine") if isinstance(data.get("engine"), str) else None,
                   engine_bytes=size, engine_sha256=digest, preprocess=pre,
                   classes=[str(c) for c in classes], palette=[[int(v) for v in c] for c in palette],
                   version_compatible=bool(data.get("version_compatible")),
                   extra={k: _jsonable_copy(v) for k, v in data.items() if k not in cls.TYPED and k != "format"},
                   _record=_jsonable_copy(data))

    @classmethod
    def read(cls, engine_path: PathLike, need_preprocess: bool = True) -> "EngineManifest":
        """The manifest beside ``engine_path``, verified: it exists and is ours, it records the
        preprocessing (unless ``need_preprocess`` is False), and the engine has the size it recorded."""
        engine, path = Path(engine_path), engine_manifest_path(engine_path)
        if not engine.is_file():
            raise InputError("engine not found: {}".format(engine))
        if not path.is_file():
            raise InputError("{} is missing: build engines with `aspp-deploy build`, which writes it".format(path))
        try:
            data = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputError("{} is not valid JSON: {}".format(path, exc)) from None
        if not isinstance(data, dict):
            raise InputError("{} is not a JSON object".format(path))
        manifest = cls.from_dict(data, path)
        if need_preprocess and manifest.preprocess is None:
            raise InputError("{} records no preprocessing: build the engine from an ONNX made by "
                             "`aspp-deploy export`".format(path))
        if manifest.engine_bytes is not None and manifest.engine_bytes != engine.stat().st_size:
            raise InputError("{} does not match its manifest (the engine was replaced): rebuild it".format(engine))
        return manifest

    @property
    def fused_io(self) -> bool:
        """True when the engine takes uint8 pixels and returns uint8 class ids (built from a fused ONNX)."""
        return self.preprocess is not None and self.preprocess.fused_io

    def verify_bytes(self, data: bytes, engine_path: PathLike) -> None:
        """InputError unless the engine's bytes ``data`` are those the manifest recorded."""
        if self.engine_sha256 is not None and sha256_bytes(data) != self.engine_sha256:
            raise InputError("{} does not match its manifest (sha256 differs: the engine was replaced or "
                             "damaged): rebuild it".format(engine_path))

    def to_dict(self) -> Dict[str, Any]:
        """The manifest as JSON data: what was read (unknown keys and all), with any changes made since."""
        out = _to_dict(self, self.TYPED, _entry_value)
        out.setdefault("format", ENGINE_FORMAT)
        return out

    def get(self, key: str, default: Any = None) -> Any:
        """A value of the record by its JSON key (for readers of fields this class does not type)."""
        return self.to_dict().get(key, default)
