"""Atomic file writes, hashing, JSON reading: nothing half-written ever appears under its final name."""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator


TMP_SUFFIX = ".tmp"
_cleaned: set = set()


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask is set-and-return)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


def clean_orphans(folder: Path | str) -> None:
    """Remove temporary files that an earlier, killed writer left in ``folder`` (their names carry
    the writer's process id; a live writer's are kept). Done once per folder and process."""
    folder = Path(folder)
    key = str(folder.resolve())
    if key in _cleaned:
        return
    _cleaned.add(key)
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for e in entries:
        parts = e.name.split(".")
        # .NAME.PID.RANDOM.tmp (NAME may hold dots itself)
        if not (e.name.startswith(".") and e.name.endswith(TMP_SUFFIX) and len(parts) >= 5
                and parts[-3].isdigit()):
            continue
        if int(parts[-3]) != os.getpid() and not _pid_alive(int(parts[-3])):
            try:
                if e.is_file(follow_symlinks=False):
                    os.unlink(e.path)
            except OSError:
                pass


@contextmanager
def atomic_path(final: Path | str, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it over ``final`` only on success.

    The temporary name is hidden, carries the writer's process id and ends in ``.tmp`` (never an
    input's extension such as ``.jpg``, so no folder scan takes it for input; ``suffix`` is only for
    writers that need a given extension, e.g. a video encoder). It is removed on any failure,
    Ctrl-C included, and a killed writer's leftovers are removed by the next write to the folder.
    The file gets the mode a plain ``open()`` would give it (0666 less the umask), not mkstemp's 0600.
    """
    from aspp_deploy.errors import InputError

    final = Path(final)
    if final.is_dir():
        raise InputError(f"cannot write {final}: it is a folder")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        clean_orphans(final.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.{os.getpid()}.", suffix=suffix or TMP_SUFFIX,
                                   dir=final.parent)
    except (FileExistsError, NotADirectoryError) as exc:
        raise InputError(f"cannot write {final}: {exc.filename or final.parent} is not a folder") from None
    tmp_path = Path(tmp)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        os.close(fd)
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def folder_lock(folder: Path | str) -> Iterator[None]:
    """An exclusive advisory lock on ``folder`` itself (no lock file is left behind), for
    read-modify-write updates of a file in it; a no-op where the platform has no flock."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends, for steps that must finish together (an
    artifact's rename and its manifest entry): the interrupt then arrives with both written.
    Python runs signal handlers in the main thread only, so elsewhere this does nothing."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list = []
    previous = {sig: signal.signal(sig, lambda s, _f: held.append(s)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if held:
            signal.raise_signal(held[0])  # delivered now, to the handler that was there before


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by None: JSON has no such numbers, and a file
    holding a bare ``NaN`` is not JSON any reader accepts."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def json_text(payload: Any, **kwargs: Any) -> str:
    """Strict JSON for ``payload`` (non-finite numbers written as null), ending in a newline."""
    kwargs.setdefault("indent", 2)
    return json.dumps(json_safe(payload), allow_nan=False, **kwargs) + "\n"


def atomic_save_image(image, path: Path | str, **kwargs) -> None:
    """Save a PIL image atomically; the format comes from the final name's extension (the temporary
    file ends in ``.tmp``, so the format is passed explicitly)."""
    from PIL import Image

    path = Path(path)
    kwargs.setdefault("format", Image.registered_extensions().get(path.suffix.lower()))
    with atomic_path(path) as tmp:
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
