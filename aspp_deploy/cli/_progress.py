"""Progress a user sees: a bar or spinner on a terminal, plain lines in a log (``progress``,
``working``, ``LineProgress``)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import TaskID

from aspp_deploy.cli._console import console


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
                 completed: float = 0, **_: Any) -> TaskID:
        task_id = TaskID(len(self._tasks))
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
