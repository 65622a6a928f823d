"""The click classes of ``aspp-deploy`` and its commands: usage mistakes are one error line, flags
show no type in help."""

from __future__ import annotations

from typing import Any

from typer.core import TyperCommand, TyperGroup

from aspp_deploy.cli._errors import fail


def _usage_error_class() -> type[Exception]:
    try:  # typer >= 0.20 carries its own click
        from typer._click.exceptions import UsageError
    except ImportError:
        from click.exceptions import UsageError  # pyright: ignore[reportMissingImports]
    return UsageError


_USAGE_ERROR: type[Exception] = _usage_error_class()


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
