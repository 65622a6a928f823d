"""Warnings and log records of other libraries, held while a command runs and summarised in one line."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from rich.console import Console

from aspp_deploy.cli._console import console, escape_markup, first_line


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
                                      first_line(Exception(record.getMessage()))))

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
        self.records.append((_source(filename), first_line(Exception(str(message)))))

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
