"""The FP32 ONNX that ``compare`` and ``bundle`` start from: reused when it still describes the model
the user named, made (exported or imported) when missing or out of date.

Which model: ``--checkpoint``/``--arch``/``--weights`` (exported), ``--onnx`` (imported), or, with none
of them, whatever ``ARTIFACTS/model.onnx`` already holds (its manifest says where it came from), else
the shipped checkpoint. Out of date = the manifest's ``source.fingerprint`` (model files by content,
factory and arguments, the resolved spec) differs from the named model's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from aspp_deploy.errors import AsppDeployError, InputError
from aspp_deploy.export.manifest import read_onnx_manifest
from aspp_deploy.export.onnx_export import ExportOptions, onnx_from_source
from aspp_deploy.export.onnx_import import onnx_from_foreign
from aspp_deploy.io import sha256_file
from aspp_deploy.runtime.manifest import ArtifactEntry
from aspp_deploy.model.sources import archive_kind, checkpoint_source, load_source, ModelSource, resolve_for_source
from aspp_deploy.spec import ModelSpec

FP32_NAME = "model"


@dataclass
class Fp32Artifact:
    path: Path
    entry: dict
    source: ModelSource | None     # the PyTorch model for torch rows, None when there is none
    no_torch: str | None           # why there is no PyTorch model
    action: str                    # reused | exported | imported

    @property
    def typed(self) -> ArtifactEntry:
        """``entry`` as the typed manifest entry."""
        return ArtifactEntry.from_dict(self.entry, self.path)


def _entry(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return read_onnx_manifest(path).entry
    except InputError:
        return None


def _spec_matches(spec: ModelSpec, recorded: dict | None) -> bool:
    """True when every value the user gave equals what the recorded (resolved) spec holds."""
    if not recorded:
        return False
    flat = {**{k: v for k, v in recorded.items() if k != "input"}, **(recorded.get("input") or {})}
    flat["num_classes"] = len(flat.get("classes") or [])
    for key, value in spec.given().items():
        have = flat.get(key)
        if isinstance(value, list) and isinstance(have, list):
            if [float(v) if isinstance(v, (int, float)) else v for v in value] != \
                    [float(v) if isinstance(v, (int, float)) else v for v in have]:
                return False
        elif have != value:
            return False
    return True


# What a manifest's source record may rebuild by itself: data only. A factory names code to import and
# call, a TorchScript file is a program, a torch.export archive unpickles: the user names those on the
# command line, never a file they were handed.
CODE_SOURCES = {"factory": "--arch {arch} --weights {weights}", "torchscript": "--checkpoint {file} --trust-code",
                "torch.export": "--checkpoint {file} --trust-code"}


def source_from_record(record: dict) -> ModelSource:
    """The PyTorch model a manifest's ``source`` record names, when it is one of our checkpoints (plain
    tensors, read with ``weights_only=True``, sha256 checked); a record that names code is refused
    with the flag that would run it, so nothing read from a file chooses code to run."""
    kind = record.get("kind")
    if kind in CODE_SOURCES:
        how = CODE_SOURCES[kind].format(**{k: record.get(k) or "?" for k in ("arch", "weights", "file")})
        raise InputError(f"the model was made from code ({kind}), which is never run because a manifest "
                         f"names it: give {how} to run the PyTorch rows")
    if kind != "checkpoint":
        raise InputError(f"the model came as {kind or 'an unknown source'}: no PyTorch model to run")
    path, sha = Path(record.get("checkpoint") or ""), record.get("checkpoint_sha256")
    if not path.is_file():
        raise InputError(f"the PyTorch model it was made from is gone ({path})")
    if sha256_file(path) != sha:
        raise InputError(f"{path} changed since the ONNX was made from it")
    if archive_kind(path) != "checkpoint":
        raise InputError(f"{path} is a TorchScript or torch.export archive, not a checkpoint: give --checkpoint "
                         f"{path} to run it")
    return checkpoint_source(path)


def ensure_fp32(artifacts: Path, spec: ModelSpec, *, checkpoint: Path | None = None, arch: str | None = None,
                arch_args: str | None = None, weights: Path | None = None, onnx: Path | None = None,
                images: list[Path] | None = None, log: Callable[[str], None] = lambda m: None,
                trust_code: bool = False) -> Fp32Artifact:
    """``trust_code`` (``--trust-code``) lets a named ``checkpoint`` that is TorchScript or torch.export load;
    it never applies to a model a manifest names."""
    fp32 = artifacts / f"{FP32_NAME}.onnx"
    entry = _entry(fp32)
    named = checkpoint is not None or arch is not None or onnx is not None
    if onnx is not None:
        if checkpoint is not None or arch is not None:
            raise InputError("give one model: --onnx, --checkpoint or --arch")
        no_torch = "the model came as ONNX (imported): there is no PyTorch model to run"
        if not Path(onnx).is_file():
            raise InputError(f"ONNX model not found: {onnx}")
        src = (entry or {}).get("source") or {}
        if entry and src.get("kind") == "onnx" and src.get("file_sha256") == sha256_file(onnx) \
                and _spec_matches(spec, entry.get("spec")) and not (entry.get("preprocess") or {}).get("fused_io"):
            return Fp32Artifact(fp32, entry, None, no_torch, "reused")
        if entry:
            log(f"{fp32} was made from another model or spec: importing {onnx} again")
        result = onnx_from_foreign(Path(onnx), spec, artifacts, ExportOptions(name=FP32_NAME), images, log)
        return Fp32Artifact(result.onnx_path, result.entry, None, no_torch, "imported")
    if not named and entry and (entry.get("source") or {}).get("fingerprint"):
        if not _spec_matches(spec, entry.get("spec")):
            raise InputError(f"{fp32} was made with another spec; name the model (--checkpoint, --arch or --onnx) "
                             "to make it again with the spec given")
        try:
            source, reason = source_from_record(entry["source"]), None
        except AsppDeployError as exc:
            source, reason = None, str(exc)
        log(f"using {fp32} ({(entry.get('model') or {}).get('label') or 'its recorded source'}); give "
            "--checkpoint, --arch or --onnx to compare another model")
        return Fp32Artifact(fp32, entry, source, reason, "reused")
    source = load_source(checkpoint, arch, arch_args, weights, trust_code=trust_code)
    resolved, _, _ = resolve_for_source(source, spec)
    fingerprint = source.fingerprint(resolved.to_dict())
    if entry and (entry.get("source") or {}).get("fingerprint") == fingerprint:
        return Fp32Artifact(fp32, entry, source, None, "reused")
    if entry:
        log(f"{fp32} was exported from another checkpoint or model (or spec): exporting again")
    result = onnx_from_source(source, spec, artifacts, ExportOptions(name=FP32_NAME), images, log)
    return Fp32Artifact(result.onnx_path, result.entry, source, None, "exported")
