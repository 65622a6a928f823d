"""What every command shares: option types, error handling, JSON output, progress."""

from __future__ import annotations

import functools
import math
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, TypeVar

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup

from aspp_deploy.errors import AsppDeployError
from aspp_deploy.io import atomic_write_text, json_text

# Not a terminal (a log file, a pipe, CI): lines are not folded at 80 columns.
console = Console(stderr=True, soft_wrap=not sys.stderr.isatty(), width=None if sys.stderr.isatty() else 180)
# Tables stay readable when piped or captured (no terminal: 80 columns would fold them).
out_console = Console(width=None if sys.stdout.isatty() else 180)
F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 1) -> None:
    """One clear line on stderr and a non-zero exit."""
    from rich.markup import escape

    # escaped: a message like "pip install 'aspp-deploy[openvino]'" must not lose its brackets to markup
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def handle_errors(fn: F) -> F:
    """Turn the errors a user can cause into one line and exit code 1 (no traceback).

    Before the command runs, its arguments are checked (``check_arguments``), so a bad value or an
    unwritable output path is refused before minutes of work, not after. Anything else that escapes
    the command still ends as one line (set ASPP_DEPLOY_DEBUG=1 to see the traceback instead).
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        restore = _terminate_as_interrupt()
        try:
            check_arguments(kwargs)
            with third_party_noise():
                return fn(*args, **kwargs)
        except _PASS_THROUGH:
            raise  # typer's own exits and usage errors
        except AsppDeployError as exc:
            fail(str(exc))
        except PermissionError as exc:
            fail(f"permission denied: {exc.filename or exc}")
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except OSError as exc:
            where = f"{exc.filename}: " if exc.filename else ""
            fail(f"{where}{exc.strerror or _first_line(exc)}")
        except MemoryError:
            fail("out of memory: try a smaller --batch, --limit or input size")
        except Exception as exc:
            if os.environ.get("ASPP_DEPLOY_DEBUG"):
                raise
            if type(exc).__name__ == "DecompressionBombError":  # Pillow's guard against huge images
                fail(f"refused an image too large to decode safely: {_first_line(exc)}")
            fail(f"unexpected {type(exc).__name__}: {_first_line(exc)} "
                 "(set ASPP_DEPLOY_DEBUG=1 to see the traceback)")
        finally:
            restore()
        return None

    return wrapper  # type: ignore[return-value]


def _terminate_as_interrupt() -> Callable[[], None]:
    """SIGTERM (a service stop, ``kill``) ends the command like Ctrl-C: temporary files are removed
    and the exit says so, instead of dying mid-write. Returns what puts the old handler back."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def interrupt(_sig: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except (ValueError, OSError):
        return lambda: None
    return lambda: signal.signal(signal.SIGTERM, previous)


def _pass_through() -> tuple:
    kinds: list = [typer.Exit, typer.Abort]
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            mod = __import__(module, fromlist=["ClickException", "Exit", "Abort"])
        except ImportError:
            continue
        kinds += [getattr(mod, n) for n in ("ClickException", "Exit", "Abort") if hasattr(mod, n)]
    return tuple(kinds)


_PASS_THROUGH = _pass_through()


def _usage_error_class() -> type:
    try:  # typer >= 0.20 carries its own click
        from typer._click.exceptions import UsageError
    except ImportError:
        from click.exceptions import UsageError
    return UsageError


_USAGE_ERROR = _usage_error_class()


def usage_error_line(exc: Any) -> str:
    """A click usage error (unknown or missing option, a value of the wrong type, an unknown command)
    as the text of one ``error:`` line that names the command and where its options are listed."""
    text = " ".join(str(exc.format_message()).split()).rstrip(".")
    text = text[:1].lower() + text[1:]
    ctx = getattr(exc, "ctx", None)
    path = getattr(ctx, "command_path", "") or "aspp-deploy"
    return f"{path}: {text} (see '{path} --help')"


class _OneLineUsageErrors:
    """Usage errors end like every other bad input: one ``error:`` line and exit code 1, not a panel
    with exit code 2 (the README's convention). Flags take no value, so their help shows no type."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _blank_flag_metavars(self)

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None and getattr(option, "metavar", None) is None:
            option.metavar = ""
        return option

    def make_context(self, info_name: Any, args: Any, parent: Any = None, **extra: Any) -> Any:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)  # type: ignore[misc]
        except _USAGE_ERROR as exc:
            _usage_fail(exc)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)  # type: ignore[misc]
        except _USAGE_ERROR as exc:
            _usage_fail(exc)


def _blank_flag_metavars(command: Any, ctx: Any = None) -> None:
    params = list(getattr(command, "params", []))
    if ctx is not None:  # the command's --help option (made once per command, then cached)
        try:
            params.append(command.get_help_option(ctx))
        except Exception:  # an older typer/click: its help shows no type anyway
            pass
    for param in params:
        if getattr(param, "is_flag", False) and getattr(param, "metavar", None) is None:
            param.metavar = ""


def _usage_fail(exc: Any) -> None:
    if type(exc).__name__ == "NoArgsIsHelpError":  # no arguments: the help is the answer
        raise exc
    fail(usage_error_line(exc))


class Command(_OneLineUsageErrors, TyperCommand):
    """The class of every ``aspp-deploy`` command: ``@app.command(cls=Command)``."""


class Group(_OneLineUsageErrors, TyperGroup):
    """The class of ``aspp-deploy`` and its command groups: ``typer.Typer(cls=Group)``. Its commands
    get the same conventions even where they were registered without ``cls=Command``."""

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            _blank_flag_metavars(command, ctx)
        return command


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else repr(exc))[:500]


# cpu, cuda, cuda:N (PyTorch, ONNX Runtime), tensorrt (ONNX Runtime's TensorRT provider), auto (train)
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?|tensorrt)$")
# Options naming an output folder (checked like --json, but as folders).
_OUTPUT_FOLDERS = ("report", "cache_dir")


def check_arguments(kwargs: dict) -> None:
    """Refuse, before any work, what no command can use: a negative count or size, a NaN or infinite
    or negative number, an unknown device, a --json path that is a folder or lies under a file, an
    output folder that is a file or cannot be created. Each command still checks its own ranges."""
    from aspp_deploy.errors import InputError

    flags = _option_flags()
    for name, value in kwargs.items():
        flag = flags.get(name, "--" + name.replace("_", "-"))
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"{flag} {value} is impossible: it must be a finite number")
        if isinstance(value, (int, float)) and value < 0:
            raise InputError(f"{flag} {value} is impossible: it must be 0 or more")
        if name == "device" and isinstance(value, str) and not _DEVICE.match(value):
            raise InputError(f"{flag} {value!r} is not a device: use cpu, cuda or cuda:N")
        if name == "json_out" and isinstance(value, Path):
            check_output_file(value, flag)
        if name in _OUTPUT_FOLDERS and isinstance(value, Path):
            check_output_folder(value, flag)


def _option_flags() -> dict:
    """Parameter name -> the option as typed (``json_out`` -> ``--json``), from the running command."""
    try:  # typer >= 0.20 carries its own click
        from typer._click.globals import get_current_context
    except ImportError:
        from click import get_current_context
    try:
        ctx = get_current_context(silent=True)
    except Exception:  # a typer without it: fall back to the parameter names
        ctx = None
    if ctx is None or not hasattr(ctx, "command"):
        return {}
    return {p.name: (max(p.opts, key=len) if p.opts else p.name) for p in ctx.command.params}


def _nearest_existing(path: Path) -> Path:
    for candidate in [path, *path.parents]:
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path(".")


def _check_can_create_under(path: Path, flag: str, start: Path | None = None) -> None:
    from aspp_deploy.errors import InputError

    base = _nearest_existing(start if start is not None else path)
    if not base.is_dir():
        raise InputError(f"{flag} {path}: {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {path}: cannot write in {base} (permission denied)")


def check_output_file(path: Path, flag: str) -> None:
    """One InputError unless a file can be written at ``path`` (not a folder, not under a file)."""
    from aspp_deploy.errors import InputError
    from aspp_deploy.io import refuse_unsafe_destination

    if path.is_dir() and not path.is_symlink():
        raise InputError(f"{flag} {path} is a folder: give a file name")
    refuse_unsafe_destination(path, label=flag)  # a link, device, FIFO or socket is never replaced
    _check_can_create_under(path, flag, start=path.parent)


def check_output_folder(path: Path, flag: str) -> None:
    """One InputError unless ``path`` is a folder or one can be made there."""
    from aspp_deploy.errors import InputError

    if path.exists() and not path.is_dir():
        raise InputError(f"{flag} {path} is a file, not a folder")
    _check_can_create_under(path, flag)


def write_json(path: Path | None, payload: dict) -> None:
    if path is not None:
        atomic_write_text(path, json_text(payload, default=str))
        console.print(f"wrote {path}", highlight=False)


def command_line() -> str:
    """The command as typed, for provenance records."""
    return " ".join(["aspp-deploy", *sys.argv[1:]])


LOG_EVERY_S = 10.0  # progress lines when the output is not a terminal
STILL_WORKING_S = 30.0  # "still ..." lines for a long step when the output is not a terminal


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


class LineProgress:
    """``rich.progress.Progress``'s task API for output that is not a terminal: a plain line per task
    every ``every`` seconds ("label: 120/200"), and one when a task that logged before completes, so a
    redirected log shows that a long step is moving without a bar's control characters."""

    def __init__(self, out: Console | None = None, every: float = LOG_EVERY_S) -> None:
        import time

        self._clock = time.monotonic
        self._out = out or console
        self._every = every
        self._tasks: dict[int, dict] = {}

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def add_task(self, description: str, total: float | None = None, visible: bool = True,
                 completed: float = 0, **_: Any) -> int:
        task_id = len(self._tasks)
        self._tasks[task_id] = {"description": description, "total": total, "visible": visible,
                                "completed": completed, "last": self._clock(), "logged": False}
        return task_id

    def update(self, task_id: int, *, completed: float | None = None, total: float | None = None,
               advance: float | None = None, visible: bool | None = None, description: str | None = None,
               **_: Any) -> None:
        task = self._tasks[task_id]
        for key, value in (("total", total), ("visible", visible), ("description", description),
                           ("completed", completed)):
            if value is not None:
                task[key] = value
        if advance:
            task["completed"] += advance
        done = task["total"] is not None and task["completed"] >= task["total"]
        now = self._clock()
        if task["visible"] and (now - task["last"] >= self._every or (done and task["logged"])):
            task["last"], task["logged"] = now, not done
            count = f"{task['completed']:g}" + (f"/{task['total']:g}" if task["total"] is not None else "")
            self._out.print(f"{task['description']}: {count}{' (done)' if done else ''}", highlight=False)

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)


def progress(out: Console | None = None) -> Any:
    """A transient progress bar on a terminal, plain progress lines otherwise (``LineProgress``)."""
    from rich.progress import Progress

    out = out or console
    return Progress(console=out, transient=True) if out.is_terminal else LineProgress(out)


class working:  # noqa: N801 - used like rich's console.status
    """``with working("quantizing to int8"):`` a spinner on a terminal; otherwise, once the step has
    taken ``STILL_WORKING_S`` seconds, a "quantizing to int8: still working (30 s)" line every as many
    seconds, so a redirected log never goes silent for minutes (a quick step prints nothing)."""

    def __init__(self, text: str, out: Console | None = None, every: float = STILL_WORKING_S) -> None:
        self.text, self.out, self.every = text, out or console, every
        self._status: Any = None
        self._stop: Any = None
        self._thread: Any = None

    def __enter__(self) -> "working":
        if self.out.is_terminal:
            self._status = self.out.status(self.text)
            self._status.__enter__()
            return self
        import threading
        import time

        self._stop = threading.Event()
        start = time.monotonic()

        def beat() -> None:
            while not self._stop.wait(self.every):
                self.out.print(f"{self.text}: still working ({_duration(time.monotonic() - start)})",
                               highlight=False)

        self._thread = threading.Thread(target=beat, name="aspp-deploy-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._status is not None:
            self._status.__exit__(*exc)
        if self._stop is not None:
            self._stop.set()
            self._thread.join(timeout=1.0)


class third_party_noise:  # noqa: N801 - a context manager, named for what it holds
    """Python warnings and log records from other libraries (onnxconverter_common's truncation
    warnings, ONNX Runtime's "consider pre-processing", torch.export's and ModelOpt's chatter) are
    collected while a command runs and summarised in one ``note:`` line at the end, so the console
    shows our lines. ASPP_DEPLOY_DEBUG=1 lets them through as they come. Our own code reports through
    the console, never through ``warnings`` or ``logging``."""

    SHOWN_KINDS = 3

    def __init__(self, out: Console | None = None) -> None:
        self.out = out or console
        self.records: list[tuple[str, str]] = []  # (source, first line of the message)
        self._warnings: Any = None
        self._handler: Any = None
        self._saved: list[tuple[Any, list, bool]] = []

    def __enter__(self) -> "third_party_noise":
        if os.environ.get("ASPP_DEPLOY_DEBUG"):
            return self
        import logging
        import warnings

        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("default")
        warnings.showwarning = self._on_warning  # type: ignore[assignment]
        outer = self

        class _Collect(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                outer.records.append((record.name if record.name != "root" else _source(record.pathname),
                                      _first_line(Exception(record.getMessage()))))

        self._handler = _Collect(level=logging.WARNING)
        root = logging.getLogger()
        root.addHandler(self._handler)
        # Libraries that print through handlers of their own: theirs are set aside, ours collects.
        for logger in list(logging.Logger.manager.loggerDict.values()):
            if isinstance(logger, logging.Logger) and logger.handlers:
                self._saved.append((logger, list(logger.handlers), logger.propagate))
                logger.handlers, logger.propagate = [], True
        return self

    def _on_warning(self, message: Any, category: Any, filename: str, lineno: int, file: Any = None,
                    line: Any = None) -> None:
        self.records.append((_source(filename), _first_line(Exception(str(message)))))

    def __exit__(self, *exc: Any) -> None:
        if self._warnings is None:
            return None
        import logging

        self._warnings.__exit__(*exc)
        logging.getLogger().removeHandler(self._handler)
        for logger, handlers, propagate in self._saved:
            logger.handlers, logger.propagate = handlers, propagate
        note = self.summary()
        if note:
            self.out.print(f"[dim]note:[/] {escape_markup(note)}", highlight=False, soft_wrap=True)
        return None

    def summary(self) -> str:
        """``41 messages from other libraries hidden: onnxconverter_common 40x "the float32 number ..."``."""
        if not self.records:
            return ""
        kinds: dict[tuple[str, str], list] = {}  # messages that differ only in numbers are one kind
        for source, text in self.records:
            key = (source, re.sub(r"(?<![A-Za-z_])-?\d[\d.e+-]*", "N", text))
            kinds.setdefault(key, [text, 0])[1] += 1
        shown = sorted(kinds.items(), key=lambda kv: -kv[1][1])[:self.SHOWN_KINDS]
        parts = [f"{source} {count}x \"{_clip(example, 100)}\"" for (source, _), (example, count) in shown]
        rest = len(kinds) - len(shown)
        return (f"{len(self.records)} message(s) from other libraries hidden: " + "; ".join(parts)
                + (f"; {rest} other kind(s)" if rest > 0 else "") + " (ASPP_DEPLOY_DEBUG=1 shows them)")


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n - 3] + "..."


def _source(path: str) -> str:
    """The top-level package a file belongs to (``.../site-packages/onnxruntime/x.py`` -> onnxruntime)."""
    parts = Path(path).parts
    for marker in ("site-packages", "dist-packages"):
        if marker in parts:
            i = parts.index(marker)
            if i + 1 < len(parts):
                return Path(parts[i + 1]).stem
    return Path(path).stem


def escape_markup(text: str) -> str:
    from rich.markup import escape

    return escape(text)
