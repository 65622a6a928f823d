"""What every command shares: option types, error handling, JSON output, progress."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any, Callable, TypeVar

import typer
from rich.console import Console

from aspp_deploy.errors import AsppDeployError
from aspp_deploy.io import atomic_write_text

console = Console(stderr=True)
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
    """Turn the errors a user can cause into one line and exit code 1 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except AsppDeployError as exc:
            fail(str(exc))
        except PermissionError as exc:
            fail(f"permission denied: {exc.filename or exc}")
        except KeyboardInterrupt:
            fail("interrupted", 130)
        return None

    return wrapper  # type: ignore[return-value]


def signed(value: float, digits: int = 4) -> str:
    """``+0.0012`` / ``-0.0012``, and ``+0.0000`` for anything that rounds to zero (never ``-0.0000``)."""
    text = f"{value:+.{digits}f}"
    return f"{0.0:+.{digits}f}" if float(text) == 0 else text


def write_json(path: Path | None, payload: dict) -> None:
    if path is not None:
        atomic_write_text(path, json.dumps(payload, indent=2, default=str) + "\n")
        console.print(f"wrote {path}", highlight=False)


def command_line() -> str:
    """The command as typed, for provenance records."""
    return " ".join(["aspp-deploy", *sys.argv[1:]])
