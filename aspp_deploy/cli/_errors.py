"""Errors a user can cause, as one ``error:`` line and a non-zero exit (``fail``, ``handle_errors``)."""

from __future__ import annotations

import functools
import os
import signal
import threading
from typing import Any, Callable, TypeVar

import typer

from aspp_deploy.cli._checks import check_arguments
from aspp_deploy.cli._console import console, escape_markup, first_line
from aspp_deploy.cli._noise import third_party_noise
from aspp_deploy.errors import AsppDeployError

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 1) -> None:
    """One clear line on stderr and a non-zero exit."""
    # escaped: a message like "pip install 'aspp-deploy[openvino]'" must not lose its brackets to markup
    console.print(f"[bold red]error:[/] {escape_markup(message)}", highlight=False, soft_wrap=True)
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
            fail(f"{where}{exc.strerror or first_line(exc)}")
        except MemoryError:
            fail("out of memory: try a smaller --batch, --limit or input size")
        except Exception as exc:
            if os.environ.get("ASPP_DEPLOY_DEBUG"):
                raise
            if type(exc).__name__ == "DecompressionBombError":  # Pillow's guard against huge images
                fail(f"refused an image too large to decode safely: {first_line(exc)}")
            fail(f"unexpected {type(exc).__name__}: {first_line(exc)} "
                 "(set ASPP_DEPLOY_DEBUG=1 to see the traceback)")
        finally:
            restore()
        return None

    return wrapper  # type: ignore[return-value]


def _terminate_as_interrupt() -> Callable[[], None]:
    """SIGTERM (a service stop, ``kill``) ends the command like Ctrl-C: temporary files are removed
    and the exit says so, instead of dying mid-write. Returns what puts the old handler back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def interrupt(_sig: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except (ValueError, OSError):
        return lambda: None

    def restore() -> None:
        signal.signal(signal.SIGTERM, previous)

    return restore


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
