"""Atomic file writes, hashing, JSON reading: nothing half-written ever appears under its final name."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import secrets
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator

from aspp_deploy.errors import DatasetError, InputError


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


# The output folders the user named in this process (``ensure_writable``), as absolute paths. A
# write below one of them never passes through a link found inside it: the folder itself may be a
# link (the user's choice), what lies inside it is not trusted.
_output_roots: list = []


def add_output_root(folder: Path | str) -> None:
    """Register ``folder`` as an output folder the user named (see ``atomic_path``)."""
    key = os.path.abspath(folder)
    if key not in _output_roots:
        _output_roots.append(key)


def _root_for(abs_path: str) -> str | None:
    """The deepest registered output folder that ``abs_path`` lies strictly inside (lexically)."""
    best = None
    for root in _output_roots:
        if abs_path != root and abs_path.startswith(root.rstrip(os.sep) + os.sep):
            if best is None or len(root) > len(best):
                best = root
    return best


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def refuse_unsafe_destination(path: Path | str, st: os.stat_result | None = None, label: str = "cannot write") -> None:
    """One InputError when ``path`` exists and is not a regular file: a symbolic link (never followed
    nor replaced), a folder, a device, a FIFO or a socket. A missing path passes."""
    if st is None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        except NotADirectoryError:
            return  # under a file: the write itself says so
    if stat.S_ISLNK(st.st_mode):
        try:
            target = f" (to {os.readlink(path)})"
        except OSError:
            target = ""
        raise InputError(f"{label} {path}: it is a symbolic link{target}; a write never follows or replaces a "
                         "link: give the path of a regular file")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{label} {path}: it is {_kind(st.st_mode)}, not a regular file; nothing was replaced")


def _open_folder_inside(root: str, parts: list, final: Path) -> int:
    """An fd of ``root/parts...``, made where missing, never passing through a link below ``root``
    (``root`` itself is followed: the user named it)."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    os.makedirs(root, exist_ok=True)
    fd = os.open(root, flags)
    here = root
    try:
        for part in parts:
            here = os.path.join(here, part)
            try:
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                try:
                    os.mkdir(part, 0o777, dir_fd=fd)
                except FileExistsError:
                    pass
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                raise InputError(f"cannot write {final}: {here} is a symbolic link inside the output folder {root}; "
                                 "links inside an output folder are never followed")
            if not stat.S_ISDIR(st.st_mode):
                raise InputError(f"cannot write {final}: {here} is {_kind(st.st_mode)}, not a folder")
            child = os.open(part, flags | nofollow, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def make_folder(root: Path | str, rel: Path | str) -> Path:
    """Make ``root/rel`` (and the folders on the way); a link inside ``root`` is refused, never
    followed (``root`` itself may be one: the user named it)."""
    path = Path(root) / rel
    parts = [p for p in Path(rel).parts if p not in ("", ".")]
    if ".." in parts or Path(rel).is_absolute():
        raise InputError(f"cannot write {path}: it is outside the output folder {root}")
    try:
        os.close(_open_folder_inside(os.path.abspath(root), parts, path))
    except (FileExistsError, NotADirectoryError) as exc:
        raise InputError(f"cannot write {path}: {exc.filename or root} is not a folder") from None
    return path


def _open_parent(final: Path, inside: Path | str | None) -> int:
    """An fd of ``final``'s folder (made where missing). Below an output folder (``inside``, else the
    deepest one registered by ``ensure_writable``) no component may be a link, and the folder must
    resolve inside it."""
    abs_final = os.path.abspath(final)
    root = os.path.abspath(inside) if inside is not None else _root_for(abs_final)
    if root is not None:
        if abs_final == root or not abs_final.startswith(root.rstrip(os.sep) + os.sep):
            raise InputError(f"cannot write {final}: it is outside the output folder {root}")
        parts = os.path.relpath(os.path.dirname(abs_final), root).split(os.sep)
        fd = _open_folder_inside(root, [p for p in parts if p not in ("", ".")], final)
        real_root = os.path.realpath(root)
        real_parent = os.path.realpath(os.path.dirname(abs_final))
        if real_parent != real_root and not real_parent.startswith(real_root.rstrip(os.sep) + os.sep):
            os.close(fd)
            raise InputError(f"cannot write {final}: it resolves to {real_parent}, outside the output folder {root}")
        return fd
    parent = os.path.dirname(abs_final)
    os.makedirs(parent, exist_ok=True)  # a folder the user named: links on the way are their choice
    return os.open(parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))


def _create_temp(final: Path, suffix: str | None, inside: Path | str | None) -> tuple:
    """(folder fd, temp name, temp fd): an empty temporary file beside ``final``, created with
    O_CREAT|O_EXCL|O_NOFOLLOW (never an existing file or a planted link), mode 0666 less the umask."""
    final = Path(final)
    try:
        refuse_unsafe_destination(final)  # before any folder is made for it
        dfd = _open_parent(final, inside)
    except (FileExistsError, NotADirectoryError) as exc:
        raise InputError(f"cannot write {final}: {exc.filename or final.parent} is not a folder") from None
    try:
        try:
            st = os.stat(final.name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None:
            refuse_unsafe_destination(final, st)
        clean_orphans(final.parent)
        flags = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
                 | getattr(os, "O_CLOEXEC", 0))
        for _ in range(100):
            name = f".{final.name}.{os.getpid()}.{secrets.token_hex(4)}{suffix or TMP_SUFFIX}"
            try:
                fd = os.open(name, flags, 0o666, dir_fd=dfd)  # the kernel applies the umask, as open() does
                return dfd, name, fd
            except FileExistsError:
                continue
        raise InputError(f"cannot write {final}: no free temporary name in {final.parent}")
    except BaseException:
        os.close(dfd)
        raise


def _commit(final: Path, dfd: int, name: str) -> None:
    """Rename the temporary file ``name`` over ``final`` (both in the folder ``dfd``), checking again
    that ``final`` did not become a link or a non-regular file meanwhile."""
    try:
        st = os.stat(Path(final).name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        st = None
    if st is not None:
        refuse_unsafe_destination(final, st)
    os.replace(name, Path(final).name, src_dir_fd=dfd, dst_dir_fd=dfd)


def _discard(dfd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dfd)
    except FileNotFoundError:
        pass
    finally:
        os.close(dfd)


@contextmanager
def atomic_path(final: Path | str, suffix: str | None = None, *, inside: Path | str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it over ``final`` only on success. The one
    write path: every file this tool writes goes through it (or ``atomic_file``).

    The temporary name is hidden, carries the writer's process id and ends in ``.tmp`` (never an
    input's extension such as ``.jpg``, so no folder scan takes it for input; ``suffix`` is only for
    writers that need a given extension, e.g. a video encoder). It is created with
    O_CREAT|O_EXCL|O_NOFOLLOW, removed on any failure, Ctrl-C included, and a killed writer's leftovers
    are removed by the next write to the folder. The file gets the mode a plain ``open()`` would give
    it (0666 less the umask).

    Refused with one InputError: a ``final`` that is a symbolic link or exists and is not a regular
    file (a folder, device, FIFO, socket: nothing is replaced), and, below an output folder (``inside``,
    else the one ``ensure_writable`` registered), a folder on the way that is a link or resolves
    outside it.
    """
    final = Path(final)
    with _temp_then_rename(final, suffix, inside) as (fd, name):
        os.close(fd)
        yield final.parent / name


@contextmanager
def atomic_file(final: Path | str, *, inside: Path | str | None = None) -> Iterator[Any]:
    """``atomic_path``'s checks and rename, yielding the temporary file already open for binary
    writing (no path is reopened: nothing can be swapped in between)."""
    with _temp_then_rename(Path(final), None, inside) as (fd, _):
        with os.fdopen(fd, "wb") as f:
            yield f


@contextmanager
def _temp_then_rename(final: Path, suffix: str | None, inside: Path | str | None) -> Iterator[tuple[int, str]]:
    """The checked temporary file beside ``final`` (its descriptor and name) for the body to fill; renamed
    over ``final`` when the body ends normally, removed when it does not."""
    dfd, name, fd = _create_temp(final, suffix, inside)
    done = False
    try:
        yield fd, name
        _commit(final, dfd, name)
        done = True
    finally:
        if done:
            os.close(dfd)
        else:
            _discard(dfd, name)


# Temporary folders (quantization work, reference masks, calibration, a bundle or repository being
# assembled) are named PREFIX + pid + "." or "-" + random + SUFFIX and hold an flock on themselves
# while alive: a later run removes those whose writer is gone (killed with -9), and only those.
_STALE_RANDOM = r"[A-Za-z0-9_]+"


def _folder_owner(name: str, prefix: str, suffix: str) -> int | None:
    m = re.fullmatch(re.escape(prefix) + r"(\d+)[.-]" + _STALE_RANDOM + re.escape(suffix), name)
    return int(m.group(1)) if m else None


def _lock_free(path: str) -> bool:
    """True when no live process holds the folder's lock (checked without following a link)."""
    try:
        import fcntl
    except ImportError:
        return True
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def stale_folders(parent: Path | str, prefix: str, suffix: str = "") -> list:
    """Our temporary folders in ``parent`` whose creating process is gone: named PREFIX PID . RANDOM
    SUFFIX, a real folder (not a link) owned by this user, the pid not alive and its lock free."""
    found = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return found
    for e in entries:
        pid = _folder_owner(e.name, prefix, suffix)
        if pid is None or pid == os.getpid() or _pid_alive(pid):
            continue
        try:
            st = os.lstat(e.path)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or (hasattr(os, "getuid") and st.st_uid != os.getuid()):
            continue
        if _lock_free(e.path):
            found.append(Path(e.path))
    return found


def remove_folder(path: Path | str) -> None:
    """Remove a folder we made; a link is never followed (only a real folder is removed)."""
    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            shutil.rmtree(path, ignore_errors=True)  # rmtree never follows links inside
    except OSError:
        pass


def clean_stale_folders(parent: Path | str, prefix: str, suffix: str = "") -> None:
    for path in stale_folders(parent, prefix, suffix):
        remove_folder(path)


class TempFolder:
    """A temporary folder ``PREFIX<pid>-RANDOM`` (in ``parent``, else the system's temporary folder),
    locked while this object lives and removed with it; making one first removes the folders of the
    same prefix that a killed run left. Used like ``tempfile.TemporaryDirectory`` (``name``,
    ``cleanup()``, ``with ... as name``)."""

    def __init__(self, prefix: str, parent: Path | str | None = None, suffix: str = "", sep: str = "-") -> None:
        import weakref

        parent = str(parent) if parent is not None else tempfile.gettempdir()
        clean_stale_folders(parent, prefix, suffix)
        self.name = tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}{sep}", suffix=suffix, dir=parent)
        self._lock = _hold_lock(self.name)
        self._finalizer = weakref.finalize(self, _release, self.name, self._lock)

    @property
    def path(self) -> Path:
        return Path(self.name)

    def cleanup(self) -> None:
        self._finalizer()

    def __enter__(self) -> str:
        return self.name

    def __exit__(self, *exc: Any) -> None:
        self.cleanup()


def _hold_lock(path: str) -> int | None:
    try:
        import fcntl

        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    except (ImportError, OSError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        pass
    return fd


def _release(path: str, lock: int | None) -> None:
    if lock is not None:
        try:
            os.close(lock)
        except OSError:
            pass
    remove_folder(path)


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


def atomic_write_bytes(path: Path | str, data: bytes, *, inside: Path | str | None = None) -> None:
    with atomic_file(path, inside=inside) as f:
        f.write(data)


def atomic_write_text(path: Path | str, text: str, *, inside: Path | str | None = None) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), inside=inside)


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


def atomic_save_image(image, path: Path | str, *, inside: Path | str | None = None, **kwargs) -> None:
    """Save a PIL image atomically; the format comes from the final name's extension (the temporary
    file ends in ``.tmp``, so the format is passed explicitly)."""
    from PIL import Image

    path = Path(path)
    kwargs.setdefault("format", Image.registered_extensions().get(path.suffix.lower()))
    with atomic_file(path, inside=inside) as f:
        image.save(f, **kwargs)


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_named_files(h: Any, paths: Iterable[Path]) -> None:
    """Feed the hash ``h`` each file's name and content sha256 (``name NUL sha256 LF``), in order: what a
    digest of a list of files (calibration images, validation samples) covers."""
    for p in paths:
        h.update(p.name.encode())
        h.update(b"\0")
        h.update(sha256_file(p).encode())
        h.update(b"\n")


def fingerprint(record: Dict[str, Any], spec: Dict[str, Any]) -> str:
    """What identifies a model source and its spec: file hashes, factory and arguments, the spec.
    Paths are left out (the same file moved is the same model)."""
    h = hashlib.sha256()
    kept = {k: v for k, v in record.items() if k not in ("file", "checkpoint", "weights")}
    h.update(json.dumps(kept, sort_keys=True, default=str).encode())
    h.update(json.dumps(spec, sort_keys=True, default=str).encode())
    return h.hexdigest()


PROBE_NAME = ".aspp-deploy-write-test"


def ensure_writable(folder: Path | str) -> None:
    """Create ``folder`` if needed and prove a file can be written there (one clear error if not).
    The probe is a new file of a unique name (O_CREAT|O_EXCL|O_NOFOLLOW: never a planted file or
    link), removed at once. ``folder`` becomes an output folder: writes below it never pass through
    a link found inside it (see ``atomic_path``)."""
    folder = Path(folder)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # .NAME.PID.RANDOM.tmp: a killed run's probe is removed by clean_orphans like any leftover
        probe = folder / f"{PROBE_NAME}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}"
        os.close(os.open(probe, flags, 0o600))
        os.unlink(probe)
    except OSError as exc:
        raise InputError(f"cannot write to {folder}: {exc.strerror or exc}") from None
    add_output_root(folder)


def read_json_object(path: Path | str, missing_hint: str) -> Dict[str, Any]:
    """A JSON object from ``path``; one clear InputError when it is missing, not JSON or not an object."""
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


# -- replacing a folder the tool wrote (a bundle, a Triton repository) -------------------------------


def is_replaceable(out: Path, marker: str, fmt: str) -> bool:
    """True when ``out`` may be replaced: missing, empty, or a folder this tool wrote (its ``marker``
    JSON names ``fmt``)."""
    if not out.exists():
        return True
    if not out.is_dir():
        return False
    if not any(out.iterdir()):
        return True
    try:
        return json.loads((out / marker).read_text()).get("format") == fmt
    except (OSError, ValueError, AttributeError):
        return False


def replace_folder(out: Path, assemble: Callable[[Path], Any]) -> Any:
    """Run ``assemble(tmp)`` on a temporary sibling of ``out``, then rename it into place: ``out`` is
    the old folder or the complete new one, never a half-written one (the caller checks that ``out``
    may be replaced). Returns what ``assemble`` returned."""
    ensure_writable(out.parent)
    # .NAME.<pid>.RANDOM.tmp / .old, locked while we live: a killed run's are removed here (a previous
    # folder a run was killed in the middle of swapping comes back first)
    for stale in stale_folders(out.parent, f".{out.name}.", ".old"):
        if not os.path.lexists(out) and (stale / "previous").is_dir() and not (stale / "previous").is_symlink():
            os.replace(stale / "previous", out)
        remove_folder(stale)
    building = TempFolder(f".{out.name}.", out.parent, suffix=".tmp", sep=".")
    tmp = building.path
    old: TempFolder | None = None
    try:
        info = assemble(tmp)
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it 0700; the result gets the usual mode
        if out.exists():
            old = TempFolder(f".{out.name}.", out.parent, suffix=".old", sep=".")
            os.replace(out, old.path / "previous")
        os.replace(tmp, out)
    except BaseException:
        if old is not None and (old.path / "previous").exists() and not out.exists():
            os.replace(old.path / "previous", out)  # put the previous folder back
        raise
    finally:
        building.cleanup()  # the lock goes; the folder is gone already when it became ``out``
        if old is not None:
            old.cleanup()
    return info


def check_inside(path: Path, root: Path, real_root: str | None = None) -> None:
    """One DatasetError unless ``path`` resolves (links followed) inside the dataset folder ``root``:
    a link in a dataset never makes a command read a file from elsewhere. ``root`` itself may be a
    link (the user named it)."""
    real_root = real_root or os.path.realpath(root)
    real = os.path.realpath(path)
    if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
        raise DatasetError(f"{path} resolves to {real}, outside the dataset folder {root}: a dataset's files "
                           "must lie inside it (copy the file in, or give the folder it is in)")
