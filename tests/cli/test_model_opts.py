"""The model option groups a command builds once: ``ModelSourceOptions`` and ``ModelSpecOptions``."""

from __future__ import annotations

from pathlib import Path

import pytest

from aspp_deploy.cli._model_opts import ModelSourceOptions, ModelSpecOptions
from aspp_deploy.errors import InputError
from aspp_deploy.runtime.vocab import ChannelOrder, Layout, OutputKind, ResizePolicy


def test_spec_options_build_the_spec_the_flags_say():
    spec = ModelSpecOptions(height=32, width=48, layout=Layout.NHWC, channel_order=ChannelOrder.BGR, scale=1.0,
                            mean="1,2,3", resize=ResizePolicy.letterbox, classes="bg,cat",
                            output_kind=OutputKind.probabilities, dynamic="batch",
                            output_layout=Layout.NHWC, threshold=0.25).build()
    assert (spec.height, spec.width, spec.layout, spec.channel_order) == (32, 48, "NHWC", "BGR")
    assert (spec.scale, spec.mean, spec.resize, spec.classes) == (1.0, [1.0, 2.0, 3.0], "letterbox", ["bg", "cat"])
    assert (spec.output, spec.dynamic, spec.output_layout, spec.threshold) == ("probabilities", ["batch"], "NHWC", 0.25)
    nothing = ModelSpecOptions().build()  # nothing given: nothing said (the model's own spec applies)
    assert (nothing.height, nothing.layout, nothing.classes, nothing.output) == (None, None, None, None)


def test_spec_options_refuse_what_the_spec_refuses():
    with pytest.raises(InputError):
        ModelSpecOptions(mean="1,2").build()


@pytest.mark.parametrize("options,given", [
    (ModelSpecOptions(), False),
    (ModelSpecOptions(height=32), True),
    (ModelSpecOptions(classes="a,b"), True),
    (ModelSpecOptions(spec=Path("spec.yaml")), True),
    (ModelSpecOptions(layout=Layout.NCHW), True),
])
def test_spec_options_know_whether_anything_was_given(options, given):
    assert options.given is given


def test_source_options_as_the_pipeline_takes_them():
    source = ModelSourceOptions(Path("m.pt"), "pkg.mod:make", '{"num_classes": 3}', Path("w.pth"), trust_code=True)
    assert source.options == (Path("m.pt"), "pkg.mod:make", '{"num_classes": 3}', Path("w.pth"))
    assert source.keywords() == {"checkpoint": Path("m.pt"), "arch": "pkg.mod:make", "arch_args": '{"num_classes": 3}',
                                 "weights": Path("w.pth"), "trust_code": True}
    assert ModelSourceOptions().options == (None, None, None, None) and not ModelSourceOptions().trust_code
