"""Atomic file writes, hashing, JSON reading: nothing half-written ever appears under its final name."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator


@contextmanager
def atomic_path(final: Path | str, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it over ``final`` only on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix or final.suffix + ".tmp",
                               dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_image(image, path: Path | str, **kwargs) -> None:
    """Save a PIL image atomically; the format comes from the final name's extension."""
    path = Path(path)
    with atomic_path(path, suffix=path.suffix) as tmp:
        image.save(tmp, **kwargs)


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fingerprint(record: Dict[str, Any], spec: Dict[str, Any]) -> str:
    """What identifies a model source and its spec: file hashes, factory and arguments, the spec.
    Paths are left out (the same file moved is the same model)."""
    h = hashlib.sha256()
    kept = {k: v for k, v in record.items() if k not in ("file", "checkpoint", "weights")}
    h.update(json.dumps(kept, sort_keys=True, default=str).encode())
    h.update(json.dumps(spec, sort_keys=True, default=str).encode())
    return h.hexdigest()


def ensure_writable(folder: Path | str) -> None:
    """Create ``folder`` if needed and prove a file can be written there (one clear error if not)."""
    from aspp_deploy.errors import InputError

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".aspp-deploy-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise InputError(f"cannot write to {folder}: {exc.strerror or exc}") from None


def read_json_object(path: Path | str, missing_hint: str) -> Dict[str, Any]:
    """A JSON object from ``path``; one clear InputError when it is missing, not JSON or not an object."""
    from aspp_deploy.errors import InputError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} is missing: {missing_hint}")
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise InputError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} is not a JSON object")
    return data
