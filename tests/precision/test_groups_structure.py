"""layer_groups on graphs whose node names do not follow our module scheme: the groups come
from the graph structure (ASPP branches, projection, head, residual blocks), and the names are
used only where they are trustworthy."""

from __future__ import annotations

from collections import Counter

import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from aspp_deploy.export.aspp_find import find_aspp
from aspp_deploy.precision.groups import LayerGroup, grouping_rule, layer_groups
from tests.export.test_aspp_find import PoolBranch, UnetLike, cbr, export, ours, stripped, with_passes
from tests.precision.conftest import outlier_model

NAMED = (["backbone.stem"] + [f"backbone.layer{n}.{k}" for n in (1, 2, 3, 4) for k in (0, 1)]
         + [f"aspp.convs.{k}" for k in range(5)] + ["aspp.project", "head.classifier.1", "head.classifier.4"])
STRUCTURE = (["backbone.stem"] + [f"backbone.block{k}" for k in range(1, 9)]
             + [f"aspp.branch{k}" for k in range(5)] + ["aspp.project", "head"])


def convs_of(group: LayerGroup, model: onnx.ModelProto) -> list[str]:
    ops = {n.name or f"{n.op_type}_{i}": n.op_type for i, n in enumerate(model.graph.node)}
    return [n for n in group.nodes if ops[n] in ("Conv", "ConvTranspose")]


def check_partition(groups: list[LayerGroup], model: onnx.ModelProto) -> None:
    """No node in two groups, and every conv in one."""
    listed = Counter(n for g in groups for n in g.nodes)
    assert max(listed.values()) == 1
    convs = {n.name or f"{n.op_type}_{i}" for i, n in enumerate(model.graph.node) if n.op_type in ("Conv", "ConvTranspose")}
    assert convs <= set(listed)


def renamed(model: onnx.ModelProto, rename) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for i, node in enumerate(m.graph.node):
        node.name = rename(i, node.name)
    return m


@pytest.fixture(scope="module")
def v3() -> onnx.ModelProto:
    return ours("v3")


def test_our_model_is_grouped_by_names(v3):
    assert grouping_rule(v3) == "names"
    assert [g.name for g in layer_groups(v3)] == NAMED


def test_outlier_model_of_the_budget_tests_is_grouped_by_names(tmp_path):
    model = onnx.load(str(outlier_model(tmp_path / "m.onnx")))
    assert grouping_rule(model) == "names"
    assert [g.name for g in layer_groups(model)] == ["backbone.stem", "backbone.layer1.0", "head.classifier.4"]


@pytest.mark.parametrize("passes", [False, True], ids=["exported", "simplified+passes"])
def test_stripped_names_give_the_same_blocks_by_structure(v3, passes):
    source = with_passes(v3) if passes else v3
    by_name = layer_groups(source)
    model = stripped(source)
    assert grouping_rule(model) == "structure"
    groups = layer_groups(model)
    check_partition(groups, model)
    assert [g.name for g in groups] == STRUCTURE
    # residual blocks found by structure are exactly the named layers (same convs, same FLOPs)
    for s, n in zip(groups[:14], by_name[:14]):
        assert (len(convs_of(s, model)), s.flops) == (len(convs_of(n, source)), n.flops), (s.name, n.name)
    assert groups[-1].flops == by_name[-1].flops + by_name[-2].flops  # head = classifier.1 + .4
    # every ASPP branch is a group of its own, holding exactly that branch's convs
    (aspp,) = find_aspp(model)
    for k, branch in enumerate(aspp.branches):
        group = next(g for g in groups if g.name == f"aspp.branch{k}")
        assert convs_of(group, model) == [f"Conv_{i}" for i in branch.node_indices
                                          if model.graph.node[i].op_type == "Conv"]
    assert [len(convs_of(g, model)) for g in groups if g.name.startswith("aspp.branch")] == [1] * 5


def test_meaningless_names_are_not_used(v3):
    model = renamed(v3, lambda i, _: f"node_{i}")
    assert grouping_rule(model) == "structure"
    groups = layer_groups(model)
    assert [g.name for g in groups] == STRUCTURE
    assert all(n.startswith("node_") for g in groups for n in g.nodes)


def test_names_that_lump_the_aspp_branches_together_are_not_used(v3):
    # /classifier/classifier.0/convs.2/convs.2.0/Conv -> /classifier/classifier.0/convs/convs.2.0/Conv
    def lump(_: int, name: str) -> str:
        parts = name.split("/")
        if len(parts) > 3 and parts[3].startswith("convs."):
            parts[3] = "convs"
        return "/".join(parts)

    model = renamed(v3, lump)
    assert {g.name for g in layer_groups(model) if g.name.startswith("aspp")} >= {"aspp.branch0", "aspp.branch4"}
    assert grouping_rule(model) == "structure"


# --- torchvision's deeplabv3_mobilenet_v3_large, in miniature ------------------------------

class SE(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, 4, 1), nn.Conv2d(4, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))


class InvertedResidual(nn.Module):
    """1x1 expand, (dilated) depthwise 3x3, squeeze-excitation gate, 1x1 project, residual Add."""

    def __init__(self, c: int, dilation: int = 1, act: type[nn.Module] = nn.Hardswish) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Sequential(nn.Conv2d(c, 2 * c, 1, bias=False), nn.BatchNorm2d(2 * c), act()),
            nn.Sequential(nn.Conv2d(2 * c, 2 * c, 3, padding=dilation, dilation=dilation, groups=2 * c, bias=False),
                          nn.BatchNorm2d(2 * c), act()),
            SE(2 * c),
            nn.Sequential(nn.Conv2d(2 * c, c, 1, bias=False), nn.BatchNorm2d(c)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class TorchvisionASPP(nn.Module):
    def __init__(self, cin: int, cout: int, rates=(12, 24, 36)) -> None:
        super().__init__()
        self.convs = nn.ModuleList([cbr(cin, cout, 1)] + [cbr(cin, cout, 3, dilation=r) for r in rates]
                                   + [PoolBranch(cin, cout)])
        self.project = nn.Sequential(nn.Conv2d(cout * (len(rates) + 2), cout, 1, bias=False), nn.BatchNorm2d(cout),
                                     nn.ReLU(), nn.Dropout(0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([c(x) for c in self.convs], 1))


class MobileDeepLabLike(nn.Module):
    """Node names /backbone/backbone.<i>/... (no layerN scopes: by name it is all one stem),
    HardSwish, SiLU (Sigmoid + Mul) and SE gates, dilated depthwise convs in residual blocks."""

    def __init__(self, classes: int = 5, c: int = 8) -> None:
        super().__init__()

        def down() -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU())

        self.backbone = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c), nn.Hardswish()),
            InvertedResidual(c), down(), InvertedResidual(c, act=nn.SiLU), down(), down(),
            InvertedResidual(c, dilation=2), InvertedResidual(c, dilation=2))
        self.classifier = nn.Sequential(TorchvisionASPP(c, 8), nn.Conv2d(8, 8, 3, padding=1, bias=False),
                                        nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        return F.interpolate(self.classifier(self.backbone(x)), size=size, mode="bilinear", align_corners=False)


def test_mobilenet_like_backbone_is_cut_at_residual_blocks():
    torch.manual_seed(0)
    model = export(MobileDeepLabLike(), 128)
    (aspp,) = find_aspp(model)  # the dilated residual blocks of the backbone are not ASPPs
    assert aspp.rates == [12, 24, 36] and aspp.has_image_pool
    assert grouping_rule(model) == "structure"
    groups = layer_groups(model)
    check_partition(groups, model)
    assert [g.name for g in groups] == (["backbone.stem"] + [f"backbone.block{k}" for k in range(1, 7)]
                                        + [f"aspp.branch{k}" for k in range(5)] + ["aspp.project", "head"])
    # each inverted residual (expand, depthwise, SE fc1+fc2, project) is one group, gates included
    sizes = {g.name: len(convs_of(g, model)) for g in groups}
    assert [sizes[f"backbone.block{k}"] for k in (1, 3, 5, 6)] == [5, 5, 5, 5]
    assert [sizes[f"backbone.block{k}"] for k in (2, 4)] == [1, 2]  # the stride-2 convs between them
    assert convs_of(groups[8], model) == ["/classifier/classifier.0/convs.1/convs.1.0/Conv"]  # aspp.branch1


def test_graph_without_aspp_is_cut_into_flop_parts():
    torch.manual_seed(0)
    model = stripped(export(UnetLike(), 64))
    assert grouping_rule(model) == "structure"
    groups = layer_groups(model)
    check_partition(groups, model)
    assert 4 <= len(groups) <= 8
    assert [g.name for g in groups] == [f"graph.part{k}" for k in range(1, len(groups) + 1)]
    total = sum(g.flops for g in groups)
    assert total > 0 and max(g.flops for g in groups) < 0.4 * total
