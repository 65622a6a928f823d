"""The ``aspp-deploy`` command line: a thin layer over the Python API.

One module-level function per command in the ``*_cmd`` modules (each adds its commands in ``register``;
no command module imports another); what they share lives in the helper modules: ``_console`` (the
consoles, ``write_json``), ``_errors`` (one ``error:`` line per failure: ``fail``, ``handle_errors``),
``_click`` (the ``Command``/``Group`` classes), ``_checks`` (argument checks before any work),
``_progress`` (bars, progress lines, the heartbeat), ``_noise`` (other libraries' warnings),
``_model_opts`` (the model options and their ``ModelSourceOptions``/``ModelSpecOptions`` groups) and
``_images``. Pipeline modules that bring torch, onnx or ONNX Runtime are imported inside the command,
so ``--help`` stays quick."""

from __future__ import annotations

import typer

from aspp_deploy.cli import bench_cmd, build_cmd, compare_cmd, data_cmd, eval_cmd, export_cmd, train_cmd
from aspp_deploy.cli import bundle_cmd, predict_cmd, quantize_cmd, serve_cmd
from aspp_deploy.cli._click import Group

app = typer.Typer(
    cls=Group,  # usage mistakes are one error line and exit 1, like every other error; no <bool> in help
    name="aspp-deploy",
    help="Export, quantize, build, benchmark and ship DeepLab/ASPP segmentation models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(data_cmd.app, name="data")
train_cmd.register(app)
eval_cmd.register(app)
export_cmd.register(app)
bench_cmd.register(app)
build_cmd.register(app)
compare_cmd.register(app)
quantize_cmd.register(app)
bundle_cmd.register(app)
predict_cmd.register(app)
serve_cmd.register(app)


def main() -> None:
    app()
