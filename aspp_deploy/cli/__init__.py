"""The ``aspp-deploy`` command line: a thin layer over the Python API."""

from __future__ import annotations

import typer

from aspp_deploy.cli import bench_cmd, build_cmd, compare_cmd, data_cmd, eval_cmd, export_cmd, train_cmd
from aspp_deploy.cli import bundle_cmd, predict_cmd, quantize_cmd, serve_cmd
from aspp_deploy.cli._common import Group

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
