"""find_aspp recognises ASPP blocks by graph structure alone: our DeepLab v3/v2 heads (plain,
simplified, after our passes, with names stripped), an smp-like separable ASPP, and nothing in
a U-Net, residual blocks or Inception-like blocks."""

from __future__ import annotations

import io
import json
import time
import warnings

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from aspp_deploy.export.aspp_find import find_aspp
from aspp_deploy.export.passes import degenerate_atrous, pool_broadcast
from aspp_deploy.model.deeplab import ModelConfig, build_model

ASPP_SOURCE = "/backbone/layer4/layer4.1/relu_1/Relu_output_0"


def export(model: nn.Module, size: int = 128, **kwargs) -> onnx.ModelProto:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model.eval(), (torch.randn(1, 3, size, size),), buf,  # pyright: ignore[reportArgumentType]
                          opset_version=17, dynamo=False, input_names=["input"], output_names=["logits"], **kwargs)
    return onnx.load_from_string(buf.getvalue())


def ours(head: str = "v3", size: int = 128) -> onnx.ModelProto:
    torch.manual_seed(0)
    return export(build_model(ModelConfig(num_classes=6, backbone="resnet18", aspp_depth=16, head=head)), size)


def with_passes(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxsim

    model, ok = onnxsim.simplify(model)
    assert ok
    model, _ = degenerate_atrous(model)
    model, _ = pool_broadcast(model)
    return model


def stripped(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for node in m.graph.node:
        node.name = ""
    return m


# --- small look-alikes of other projects' models -------------------------------------------

def cbr(cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, padding=dilation * (k // 2), dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class SepConv(nn.Sequential):
    """smp's SeparableConv2d: a depthwise (dilated) 3x3 conv, then a 1x1 conv."""

    def __init__(self, cin: int, cout: int, rate: int) -> None:
        super().__init__(nn.Conv2d(cin, cin, 3, padding=rate, dilation=rate, groups=cin, bias=False),
                         nn.Conv2d(cin, cout, 1, bias=False))


class PoolBranch(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        for m in self:
            x = m(x)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class SmpASPP(nn.Module):
    def __init__(self, cin: int, cout: int, rates=(12, 24, 36)) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            [cbr(cin, cout, 1)]
            + [nn.Sequential(SepConv(cin, cout, r), nn.BatchNorm2d(cout), nn.ReLU()) for r in rates]
            + [PoolBranch(cin, cout)])
        self.project = nn.Sequential(nn.Conv2d(cout * (len(rates) + 2), cout, 1, bias=False), nn.BatchNorm2d(cout),
                                     nn.ReLU(), nn.Dropout(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([c(x) for c in self.convs], 1))


class DeepLabV3PlusLike(nn.Module):
    """segmentation_models_pytorch's DeepLabV3Plus in miniature: separable ASPP, then a decoder
    that concatenates the upsampled ASPP output with projected low-level features."""

    def __init__(self, classes: int = 5, c: int = 16) -> None:
        super().__init__()
        self.stem = cbr(3, 8, stride=2)
        self.low = cbr(8, 12, stride=2)
        self.mid = nn.Sequential(cbr(12, c, stride=2), cbr(c, c, stride=2))
        self.aspp = nn.Sequential(SmpASPP(c, c), SepConv(c, c, 1), nn.BatchNorm2d(c), nn.ReLU())
        self.reduce = cbr(12, 6, 1)
        self.fuse = nn.Sequential(SepConv(c + 6, c, 1), nn.BatchNorm2d(c), nn.ReLU())
        self.head = nn.Conv2d(c, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = self.low(self.stem(x))
        y = F.interpolate(self.aspp(self.mid(low)), scale_factor=4, mode="bilinear", align_corners=True)
        y = self.fuse(torch.cat([y, self.reduce(low)], 1))
        return F.interpolate(self.head(y), scale_factor=4, mode="bilinear", align_corners=True)


class UnetLike(nn.Module):
    """Encoder-decoder with skip Concats and an Inception-like bottleneck; no dilation."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.e1 = nn.Sequential(cbr(3, 8), cbr(8, 8))
        self.e2 = nn.Sequential(cbr(8, 16), cbr(16, 16))
        self.b1, self.b3, self.b5 = cbr(16, 8, 1), cbr(16, 8, 3), cbr(16, 8, 5)
        self.up2 = nn.ConvTranspose2d(24, 16, 2, stride=2)
        self.d2 = nn.Sequential(cbr(32, 16), cbr(16, 16))
        self.up1 = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.d1 = nn.Sequential(cbr(16, 8), cbr(8, 8))
        self.head = nn.Conv2d(8, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = self.e1(x)
        s2 = self.e2(F.max_pool2d(s1, 2))
        b = F.max_pool2d(s2, 2)
        b = torch.cat([self.b1(b), self.b3(b), self.b5(b)], 1)
        y = self.d2(torch.cat([self.up2(b), s2], 1))
        return self.head(self.d1(torch.cat([self.up1(y), s1], 1)))


@pytest.fixture(scope="module")
def v3() -> onnx.ModelProto:
    return ours("v3")


# --- our model ------------------------------------------------------------------------------

def test_our_v3_head(v3):
    (m,) = find_aspp(v3)
    assert m.describe() == (f"ASPP at {ASPP_SOURCE}: 1x1 + atrous r6, r12, r18 + image pool, "
                            "merged by Concat /classifier/classifier.0/Concat")
    assert [b.kind for b in m.branches] == ["1x1", "atrous", "atrous", "atrous", "image-pool"]
    assert m.rates == [6, 12, 18] and [b.rates for b in m.branches] == [[], [6], [12], [18], []]
    assert m.has_image_pool and m.merge_op == "Concat" and m.merge_nodes == ["/classifier/classifier.0/Concat"]
    assert m.source == ASPP_SOURCE and m.source_node == "/backbone/layer4/layer4.1/relu_1/Relu"
    assert [b.convs for b in m.branches] == [[f"/classifier/classifier.0/convs.{k}/convs.{k}.{0 if k < 4 else 1}/Conv"]
                                             for k in range(5)]
    pool = m.branches[4]
    # the pooling branch: the Shape/Slice/Concat side chain computing the Resize sizes is not in it
    assert [n.rsplit("/", 1)[-1] for n in pool.nodes] == ["GlobalAveragePool", "Conv", "Relu", "Resize"]
    assert m.project == ["/classifier/classifier.0/project/project.0/Conv"]
    d = json.loads(json.dumps(m.to_dict()))
    assert d["rates"] == [6, 12, 18] and len(d["branches"]) == 5 and d["describe"] == m.describe()


def test_our_v3_after_simplify_and_passes(v3):
    import onnxsim

    simplified, ok = onnxsim.simplify(v3)
    assert ok
    (m,) = find_aspp(simplified)
    assert m.rates == [6, 12, 18] and len(m.branches) == 5 and m.has_image_pool
    # 128 px input -> 8x8 features: rates 12 and 18 only read padding, degenerate_atrous makes
    # them 1x1 convs; pool_broadcast turns the Resize into an Expand. Still an ASPP (rule 2).
    (m,) = find_aspp(with_passes(v3))
    assert [b.kind for b in m.branches] == ["1x1", "atrous", "1x1", "1x1", "image-pool"]
    assert m.rates == [6]
    assert m.branches[4].nodes[-1].endswith("Resize__broadcast")
    assert m.describe().startswith(f"ASPP at {ASPP_SOURCE}: 3x 1x1 + atrous r6 + image pool, merged by Concat")


def test_our_v2_head_is_an_add_tree():
    model = ours("v2")
    (m,) = find_aspp(model)
    assert m.merge_op == "Add" and len(m.merge_nodes) == 2 and m.merge_node == "/classifier/classifier.0/Add_1"
    assert [b.kind for b in m.branches] == ["atrous"] * 3 and m.rates == [6, 12, 18]
    assert not m.has_image_pool and m.project == []
    assert m.describe() == (f"ASPP at {ASPP_SOURCE}: atrous r6, r12, r18, merged by Add "
                            "/classifier/classifier.0/Add_1 (a tree of 2 Adds)")
    (m,) = find_aspp(with_passes(model))  # r12, r18 -> 1x1: one atrous + two 1x1 branches
    assert [b.kind for b in m.branches] == ["atrous", "1x1", "1x1"] and m.rates == [6]


def test_v2_with_every_rate_degenerate_is_not_reported():
    # 64 px -> 4x4 features: every rate reads only padding, so no dilated conv is left
    assert find_aspp(with_passes(ours("v2", 64))) == []


def test_names_are_never_read(v3):
    (named,) = find_aspp(v3)
    (m,) = find_aspp(stripped(v3))
    assert m.rates == named.rates and [b.kind for b in m.branches] == [b.kind for b in named.branches]
    assert m.source == ASPP_SOURCE  # tensor names are still there
    assert m.merge_node == "/classifier/classifier.0/Concat_output_0"  # unnamed node: its output
    assert m.branches[1].convs == ["/classifier/classifier.0/convs.1/convs.1.0/Conv_output_0"]
    assert m.describe().endswith("merged by Concat /classifier/classifier.0/Concat_output_0")
    # node names that say nothing (node_<i>) change nothing but the names reported
    renamed = stripped(v3)
    for i, node in enumerate(renamed.graph.node):
        node.name = f"node_{i}"
    (r,) = find_aspp(renamed)
    assert r.rates == [6, 12, 18] and r.merge_node.startswith("node_")


# --- other models -----------------------------------------------------------------------------

@pytest.mark.parametrize("keep_bn", [False, True], ids=["bn-folded", "bn-kept"])
def test_smp_like_separable_aspp(keep_bn):
    torch.manual_seed(0)
    kwargs = {"training": torch.onnx.TrainingMode.PRESERVE, "do_constant_folding": False} if keep_bn else {}
    model = export(DeepLabV3PlusLike(), 128, **kwargs)
    assert any(n.op_type == "BatchNormalization" for n in model.graph.node) == keep_bn
    (m,) = find_aspp(model)  # the decoder Concat (ASPP output + low-level features) is not one
    assert [b.kind for b in m.branches] == ["1x1", "separable-atrous", "separable-atrous", "separable-atrous",
                                            "image-pool"]
    assert m.rates == [12, 24, 36] and m.has_image_pool
    assert [len(b.convs) for b in m.branches] == [1, 2, 2, 2, 1]  # depthwise + pointwise
    assert m.source == "/mid/mid.1/mid.1.2/Relu_output_0" and m.merge_node == "/aspp/aspp.0/Concat"
    assert m.describe() == ("ASPP at /mid/mid.1/mid.1.2/Relu_output_0: 1x1 + separable atrous r12, r24, r36 "
                            "+ image pool, merged by Concat /aspp/aspp.0/Concat")
    assert m.project == ["/aspp/aspp.0/project/project.0/Conv"]


def test_unet_has_no_aspp():
    torch.manual_seed(0)
    model = export(UnetLike(), 64)
    assert sum(n.op_type == "Concat" for n in model.graph.node) == 3
    assert find_aspp(model) == []
    assert find_aspp(stripped(model)) == []


# --- the rule, on hand-built graphs ---------------------------------------------------------

def _graph(branches: dict[str, list[tuple]], merge: str = "Concat", residual: bool = False) -> onnx.ModelProto:
    """A stem conv, then parallel branches from its output merged by ``merge``. A branch is a
    list of (op, attributes) steps; Conv steps take kernel k, dilation d, group g."""
    c = 4
    rng = np.random.default_rng(0)
    inits, nodes = [], []

    def weight(name, shape):
        inits.append(numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name))
        return name

    nodes.append(helper.make_node("Conv", ["input", weight("w0", (c, 3, 3, 3))], ["t"], pads=[1] * 4))
    outs = ["t"] if residual else []
    for b, steps in branches.items():
        x = "t"
        for s, (op, a) in enumerate(steps):
            y = f"{b}_{s}"
            if op == "Conv":
                k, d, g = a.get("k", 3), a.get("d", 1), a.get("g", 1)
                nodes.append(helper.make_node("Conv", [x, weight(f"{y}_w", (c, c // g, k, k))], [y],
                                              pads=[d * (k // 2)] * 4, dilations=[d, d], group=g))
            elif op == "Pool":
                nodes.append(helper.make_node("GlobalAveragePool", [x], [y]))
            elif op == "Expand":
                shape = numpy_helper.from_array(np.array([1, c, 16, 16], np.int64), f"{y}_shape")
                inits.append(shape)
                nodes.append(helper.make_node("Expand", [x, shape.name], [y]))
            elif op == "SiLU":  # x * sigmoid(x): a gate, one step of the chain
                nodes += [helper.make_node("Sigmoid", [x], [f"{y}_s"]), helper.make_node("Mul", [x, f"{y}_s"], [y])]
            else:
                nodes.append(helper.make_node(op, [x], [y]))
            x = y
        outs.append(x)
    if merge == "Concat":
        nodes.append(helper.make_node("Concat", outs, ["out"], axis=1))
    elif merge == "Sum":
        nodes.append(helper.make_node("Sum", outs, ["out"]))
    else:
        acc = outs[0]
        for k, o in enumerate(outs[1:]):
            nodes.append(helper.make_node("Add", [acc, o], [f"add{k}"]))
            acc = f"add{k}"
        nodes.append(helper.make_node("Identity", [acc], ["out"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


ATROUS = lambda d: [("Conv", {"d": d}), ("Relu", {})]  # noqa: E731
ONE = [("Conv", {"k": 1}), ("Relu", {})]
POOL = [("Pool", {}), ("Conv", {"k": 1}), ("Relu", {}), ("Expand", {})]


def test_rule_two_atrous_branches_are_enough():
    (m,) = find_aspp(_graph({"a": ATROUS(2), "b": ATROUS(4)}))
    assert m.rates == [2, 4] and m.source == "t" and m.source_node == "t"  # unnamed: output name


def test_rule_one_atrous_needs_two_more_1x1_or_pool_branches():
    assert find_aspp(_graph({"a": ATROUS(2), "b": ONE})) == []
    assert find_aspp(_graph({"a": ATROUS(2), "b": ONE, "p": POOL}))[0].rates == [2]
    # a plain 3x3 branch makes it an Inception-like block, not an ASPP
    assert find_aspp(_graph({"a": ATROUS(2), "b": ONE, "c": [("Conv", {}), ("Relu", {})]})) == []


def test_rule_residual_blocks_with_dilation_are_not_aspp():
    # main branch with two dilated convs + identity shortcut, and + a 1x1 shortcut
    main = [("Conv", {"d": 2}), ("Relu", {}), ("Conv", {"d": 2})]
    assert find_aspp(_graph({"m": main}, merge="Add", residual=True)) == []
    assert find_aspp(_graph({"m": main, "s": [("Conv", {"k": 1})]}, merge="Add")) == []


def test_sum_merge_gates_and_separable_branches():
    sep = lambda d: [("Conv", {"d": d, "g": 4}), ("Conv", {"k": 1}), ("SiLU", {})]  # noqa: E731
    (m,) = find_aspp(_graph({"a": sep(3), "b": sep(5), "c": ONE}, merge="Sum"))
    assert m.merge_op == "Sum" and [b.kind for b in m.branches] == ["separable-atrous", "separable-atrous", "1x1"]
    assert m.rates == [3, 5] and [len(b.nodes) for b in m.branches] == [4, 4, 2]  # Sigmoid+Mul inside
    (m,) = find_aspp(_graph({"a": ATROUS(2), "b": ATROUS(3), "c": ATROUS(4), "d": ATROUS(5)}, merge="Add"))
    assert m.rates == [2, 3, 4, 5] and len(m.merge_nodes) == 3 and m.merge_node == "add2"


def test_large_graph_is_fast():
    # 6,000 residual units (24,000 nodes) and an ASPP at the end
    c, n = 2, 6000
    w = numpy_helper.from_array(np.zeros((c, c, 3, 3), np.float32), "w")
    nodes, t = [], "input"
    for i in range(n):
        nodes += [helper.make_node("Conv", [t, "w"], [f"a{i}"], pads=[1] * 4),
                  helper.make_node("Relu", [f"a{i}"], [f"b{i}"]),
                  helper.make_node("Conv", [f"b{i}", "w"], [f"c{i}"], pads=[1] * 4),
                  helper.make_node("Add", [f"c{i}", t], [f"d{i}"])]
        t = f"d{i}"
    nodes += [helper.make_node("Conv", [t, "w"], [f"r{r}"], pads=[r] * 4, dilations=[r, r]) for r in (2, 3)]
    nodes.append(helper.make_node("Concat", ["r2", "r3"], ["out"], axis=1))
    graph = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, c, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    start = time.perf_counter()
    (m,) = find_aspp(model)
    assert time.perf_counter() - start < 10  # well under 1 s here; quadratic would take minutes
    assert m.source == f"d{n - 1}" and m.rates == [2, 3]
