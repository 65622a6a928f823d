import pytest
import torch
import torch.nn.functional as F

from aspp_deploy.model.deeplab import (ASPP, ASPPConv, ASPPPooling, ModelConfig, build_model,
                                       feature_size)


def conv_out(n: int, k: int, r: int, p: int, s: int = 1) -> int:
    """The output-size formula of shared/DESIGN.md."""
    return (n + 2 * p - r * (k - 1) - 1) // s + 1


@pytest.mark.parametrize("h,w", [(7, 7), (8, 8), (13, 10), (16, 33), (1, 1)])
@pytest.mark.parametrize("rate", [1, 2, 6, 12, 18, 36])
def test_atrous_branch_preserves_size(h, w, rate):
    branch = ASPPConv(4, 3, rate).eval()
    y = branch(torch.randn(2, 4, h, w))
    assert y.shape[-2:] == (h, w)
    assert (conv_out(h, 3, rate, rate), conv_out(w, 3, rate, rate)) == (h, w)


@pytest.mark.parametrize("h,w", [(7, 9), (8, 8), (1, 1), (15, 4)])
def test_every_aspp_branch_and_pooling_preserve_size(h, w):
    aspp = ASPP(8, (6, 12, 18), out_channels=4).eval()
    x = torch.randn(2, 8, h, w)
    for branch in aspp.convs:
        assert branch(x).shape == (2, 4, h, w)
    assert ASPPPooling(8, 4).eval()(x).shape == (2, 4, h, w)
    assert aspp(x).shape == (2, 4, h, w)


@pytest.mark.parametrize("size", [(97, 130), (128, 128), (33, 64)])
@pytest.mark.parametrize("stride", [8, 16])
def test_model_output_matches_input_size_and_feature_formula(size, stride):
    model = build_model(ModelConfig(num_classes=3, output_stride=stride, aspp_depth=8)).eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        assert model(x).shape == (1, 3, *size)
        feats = model.backbone(x)
    assert feats.shape[-2:] == (feature_size(size[0], stride), feature_size(size[1], stride))


@pytest.mark.parametrize("h,w,rate", [(12, 16, 18), (16, 16, 16), (5, 3, 6)])
def test_degenerate_atrous_branch_equals_centre_1x1(h, w, rate):
    torch.manual_seed(0)
    branch = ASPPConv(16, 8, rate).eval()
    x = torch.randn(2, 16, h, w)
    conv = branch[0]
    centre = F.conv2d(x, conv.weight[:, :, 1:2, 1:2])
    assert torch.allclose(conv(x), centre, atol=1e-5)


def test_non_degenerate_branch_differs_from_centre_1x1():
    torch.manual_seed(0)
    conv = ASPPConv(16, 8, 6)[0]
    x = torch.randn(1, 16, 12, 16)
    assert not torch.allclose(conv(x), F.conv2d(x, conv.weight[:, :, 1:2, 1:2]), atol=1e-3)


def test_eval_mode_is_deterministic():
    model = build_model(ModelConfig(num_classes=4, aspp_depth=8)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_traced_model_has_no_baked_in_shapes():
    torch.manual_seed(0)
    model = build_model(ModelConfig(num_classes=4, aspp_depth=8)).eval()
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.randn(1, 3, 64, 64))
        x = torch.randn(2, 3, 96, 80)
        assert torch.allclose(traced(x), model(x), atol=1e-5)


def test_model_scripts():
    model = build_model(ModelConfig(num_classes=4, aspp_depth=8)).eval()
    scripted = torch.jit.script(model)
    x = torch.randn(1, 3, 48, 80)
    with torch.no_grad():
        assert torch.allclose(scripted(x), model(x), atol=1e-5)


def test_rates_follow_output_stride():
    assert ModelConfig(num_classes=2, output_stride=16).atrous_rates == (6, 12, 18)
    assert ModelConfig(num_classes=2, output_stride=8).atrous_rates == (12, 24, 36)


def test_torchvision_key_names():
    keys = set(build_model(ModelConfig(num_classes=21, backbone="resnet50")).state_dict())
    for k in ("backbone.conv1.weight", "backbone.layer4.2.conv3.weight",
              "backbone.layer1.0.downsample.0.weight", "classifier.0.convs.0.0.weight",
              "classifier.0.convs.3.0.weight", "classifier.0.convs.4.1.weight",
              "classifier.0.project.0.weight", "classifier.1.weight", "classifier.2.running_var",
              "classifier.4.weight", "classifier.4.bias"):
        assert k in keys, k


@pytest.mark.parametrize("backbone,channels", [("resnet18", 512), ("resnet34", 512), ("resnet50", 2048)])
def test_backbones_and_v2_head(backbone, channels):
    cfg = ModelConfig(num_classes=5, backbone=backbone, aspp_depth=8, head="v2",
                      atrous_rates=(6, 12, 18, 24))
    model = build_model(cfg).eval()
    assert model.backbone.out_channels == channels
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.classifier.modules())
    with torch.no_grad():
        assert model(torch.randn(1, 3, 65, 64)).shape == (1, 5, 65, 64)


def test_torchvision_state_dict_converts(tmp_path):
    from aspp_deploy.model.checkpoint import checkpoint_from_torchvision, load_checkpoint

    cfg = ModelConfig(num_classes=3, backbone="resnet50", output_stride=8, aspp_depth=8)
    sd = build_model(cfg).state_dict()
    sd["aux_classifier.0.weight"] = torch.zeros(1)  # torchvision's auxiliary head is dropped
    ckpt = checkpoint_from_torchvision(sd, ["a", "b", "c"], output_stride=8)
    ckpt.save(tmp_path / "c.pt")
    model = load_checkpoint(tmp_path / "c.pt").build()
    assert model.config.aspp_depth == 8 and model.config.atrous_rates == (12, 24, 36)
