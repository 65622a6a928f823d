"""Measurements reused across runs: what a ``compare`` row (or ``quantize``'s validation) measured,
keyed by everything the figures depend on, so that nothing is measured twice.

An entry is ``<digest>.json`` plus, when it holds arrays (predicted masks), ``<digest>.npz``, in
``ARTIFACTS/result-cache/``. The digest is the sha256 of the key (canonical JSON). A caller's key
holds the artifact's sha256 (or the PyTorch source's fingerprint), the data's digest
(``samples_digest``: the image list and every image's and mask's sha256), the preprocessing and
the backend/precision settings; a figure measured against a reference also holds the reference's
key. An entry is used only when all of these hold, and is otherwise a miss (measured again and
rewritten), never trusted:

- the record parses, has this format, and its stored key *is* the requested key (not only the digest);
- the sha256 of its result (canonical JSON) matches the one recorded beside it;
- its arrays file, when it has one, has the sha256 recorded and loads without pickles.

The checksums catch truncation, corruption and hand edits; they are not a defence against someone
who rewrites the checksums too. Files are written atomically (arrays first, then the record that
names their sha256), and a cache that cannot be written (read-only folder, full disk) only costs
the reuse next time.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from aspp_deploy.io import atomic_write_bytes, atomic_write_text, hash_named_files

FORMAT = "aspp-deploy/result-cache/v1"
FOLDER = "result-cache"


def canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True)


def digest_of(key: dict) -> str:
    return hashlib.sha256(canonical(key).encode()).hexdigest()


def samples_digest(samples: Iterable, num_classes: int) -> str:
    """The data's identity: every sample's image and mask file names and contents (sha256), in
    order, and the number of classes the masks are read with. A sample without a mask (a folder of
    images) is marked as such, so the same images with and without masks never share a digest."""
    h = hashlib.sha256(f"classes={num_classes}\n".encode())
    for s in samples:
        if getattr(s, "mask", None) is None:
            h.update(b"no mask\n")
        hash_named_files(h, (Path(s.image),) if getattr(s, "mask", None) is None else (Path(s.image), Path(s.mask)))
    return h.hexdigest()


@dataclass
class Cached:
    result: dict
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


class ResultCache:
    """A folder of entries; ``folder=None`` turns the cache off (every ``get`` misses, ``put`` does
    nothing); ``read=False`` measures everything again but stores the new figures. ``why`` says,
    after a ``get``, why it missed, in words for the console ("no cached result")."""

    def __init__(self, folder: Path | None, read: bool = True) -> None:
        self.folder = Path(folder) if folder is not None else None
        self.read = read
        self.why = ""

    def _paths(self, digest: str) -> tuple[Path, Path]:
        assert self.folder is not None
        return self.folder / f"{digest}.json", self.folder / f"{digest}.npz"

    def get(self, key: dict) -> Cached | None:
        if self.folder is None:
            self.why = "no result cache"
            return None
        if not self.read:
            self.why = "--remeasure: cached results not read"
            return None
        key = json.loads(canonical(key))  # the key as it reads back from JSON (tuples -> lists)
        digest = digest_of(key)
        record_path, arrays_path = self._paths(digest)
        if not record_path.is_file():
            self.why = "no cached result"
            return None
        try:
            record = json.loads(record_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            self.why = f"cached result {record_path.name} is unreadable"
            return None
        if not isinstance(record, dict) or record.get("format") != FORMAT or record.get("digest") != digest \
                or record.get("key") != key:
            self.why = f"cached result {record_path.name} is for other settings"
            return None
        result = record.get("result")
        if not isinstance(result, dict) or record.get("result_sha256") != hashlib.sha256(
                canonical(result).encode()).hexdigest():
            self.why = f"cached result {record_path.name} fails its checksum"
            return None
        arrays: dict[str, np.ndarray] = {}
        if record.get("arrays_sha256") is not None:
            try:
                data = arrays_path.read_bytes()
                if hashlib.sha256(data).hexdigest() != record["arrays_sha256"]:
                    raise ValueError("checksum")
                with np.load(io.BytesIO(data), allow_pickle=False) as z:
                    arrays = {k: z[k] for k in z.files}
            except (OSError, ValueError, EOFError) as exc:
                self.why = f"cached result {arrays_path.name} is missing or damaged ({type(exc).__name__})"
                return None
        self.why = "reused"
        return Cached(result, arrays)

    def put(self, key: dict, result: dict, arrays: dict[str, np.ndarray] | None = None) -> bool:
        """Store ``result`` (JSON-able) and ``arrays`` under ``key``; False when it could not be written."""
        if self.folder is None:
            return False
        key = json.loads(canonical(key))
        result = json.loads(canonical(result))
        digest = digest_of(key)
        record_path, arrays_path = self._paths(digest)
        record = {"format": FORMAT, "digest": digest, "key": key, "result": result,
                  "result_sha256": hashlib.sha256(canonical(result).encode()).hexdigest(),
                  "arrays_sha256": None}
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            if arrays:
                buf = io.BytesIO()
                np.savez_compressed(buf, **arrays)
                data = buf.getvalue()
                atomic_write_bytes(arrays_path, data)
                record["arrays_sha256"] = hashlib.sha256(data).hexdigest()
            atomic_write_text(record_path, json.dumps(record, indent=1, sort_keys=True) + "\n")
        except OSError:
            return False
        return True
