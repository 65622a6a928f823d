"""The two consoles every command prints on, and the small output helpers that go with them."""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from aspp_deploy.io import atomic_write_text, json_text

# Not a terminal (a log file, a pipe, CI): lines are not folded at 80 columns.
console = Console(stderr=True, soft_wrap=not sys.stderr.isatty(), width=None if sys.stderr.isatty() else 180)
# Tables stay readable when piped or captured (no terminal: 80 columns would fold them).
out_console = Console(width=None if sys.stdout.isatty() else 180)


def write_json(path: Path | None, payload: dict) -> None:
    if path is not None:
        atomic_write_text(path, json_text(payload, default=str))
        console.print(f"wrote {path}", highlight=False)


def command_line() -> str:
    """The command as typed, for provenance records."""
    return " ".join(["aspp-deploy", *sys.argv[1:]])


def escape_markup(text: str) -> str:
    """``text`` printed as it is: rich markup in it (``[brackets]``) escaped."""
    return escape(text)


def first_line(exc: BaseException) -> str:
    """The first non-blank line of an error's text (at most 500 characters), for a one-line message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else repr(exc))[:500]
