"""The calibration cache: activation ranges keyed by sha256 of (model, data, settings).

A cache entry is two files in the cache folder, both named by the key's digest:
``<digest>.key.json`` (what the key was made of, for people and for explaining a miss) and the
payload in the format of the tool that reads it back (ONNX Runtime's ``TensorsData`` JSON, or a
TensorRT-style scale table for ModelOpt). Because the file name *is* the digest of the model's
sha256, the calibration images' names and sha256 and every setting that shapes the ranges, a
changed model, image or setting can only ever miss: a cache is never silently reused. The key
record also holds the payload's sha256: a payload is used only when its bytes still have it, and one
that does not verify is deleted (a tool that reads whatever file is there can never use it on a miss).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from aspp_deploy.io import atomic_write_text, sha256_file

KEY_SUFFIX = ".key.json"


@dataclass(frozen=True)
class CacheKey:
    model_sha256: str
    data_sha256: str
    settings: dict = field(hash=False)
    label: str = ""  # which artifact it is for (explains a miss; not part of the digest)

    @property
    def digest(self) -> str:
        blob = json.dumps({"model": self.model_sha256, "data": self.data_sha256,
                           "settings": self.settings}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def to_dict(self) -> dict:
        return {"digest": self.digest, "model_sha256": self.model_sha256,
                "data_sha256": self.data_sha256, "settings": self.settings, "label": self.label}


@dataclass
class CacheLookup:
    key: CacheKey
    payload: Path | None  # where the payload is or will be written; None: caching is off
    hit: bool
    reason: str  # one line: why it hit or missed

    def to_dict(self) -> dict:
        return {"key": self.key.digest, "hit": self.hit, "reason": self.reason,
                "file": str(self.payload) if self.payload else None}


class CalibrationCache:
    """A folder of cache entries; ``folder=None`` turns caching off."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = Path(folder) if folder is not None else None

    def lookup(self, key: CacheKey, payload_suffix: str) -> CacheLookup:
        if self.folder is None:
            return CacheLookup(key, None, False, "cache off")
        payload = self.folder / f"{key.digest}{payload_suffix}"
        record = self.folder / f"{key.digest}{KEY_SUFFIX}"
        recorded = _read(record) if record.is_file() else {}
        if payload.is_file() and recorded.get("digest") == key.digest:
            if recorded.get("payload_sha256") == sha256_file(payload):
                return CacheLookup(key, payload, True, f"reused {payload.name}")
            reason = f"discarded {payload.name}: its contents are not those recorded with its key"
        else:
            reason = self.explain_miss(key)
        # A payload is only ever read on a hit: one that does not verify (garbage, swapped, left by an
        # interrupted run without its key) is removed, so no tool can pick it up on a miss.
        for stale in (payload, record):
            if stale.is_file():
                stale.unlink()
        return CacheLookup(key, payload, False, reason)

    def commit(self, lookup: CacheLookup) -> None:
        """Record the key, with the payload's sha256, once the payload has been written (a payload
        without a key, or whose bytes no longer have the recorded hash, never hits)."""
        if lookup.payload is None or not lookup.payload.is_file():
            return
        record = {**lookup.key.to_dict(), "payload_sha256": sha256_file(lookup.payload)}
        atomic_write_text(lookup.payload.with_name(f"{lookup.key.digest}{KEY_SUFFIX}"),
                          json.dumps(record, indent=2, sort_keys=True) + "\n")

    def explain_miss(self, key: CacheKey) -> str:
        """Why no entry matched: what changed against the newest entry with the same label."""
        if self.folder is None or not self.folder.is_dir():
            return "no cache yet"
        records = sorted(self.folder.glob(f"*{KEY_SUFFIX}"), key=lambda p: p.stat().st_mtime)
        same = [r for r in map(_read, records)
                if r.get("label") == key.label and r.get("digest") != key.digest]
        if not same:
            return "no cache yet"
        old = same[-1]
        changed = []
        if old.get("model_sha256") != key.model_sha256:
            changed.append("model")
        if old.get("data_sha256") != key.data_sha256:
            changed.append("calibration images")
        diff = sorted(k for k in set(old.get("settings", {})) | set(key.settings)
                      if old.get("settings", {}).get(k) != key.settings.get(k))
        if diff:
            changed.append("settings (" + ", ".join(diff) + ")")
        return "stale cache not used: " + (", ".join(changed) or "different key") + " changed"


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
