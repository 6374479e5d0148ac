"""torchvision backbones split into stages (module objects are shared, not copied).

Each function returns the stage modules in forward order and the ImageNet classifier;
the stage names are stated once, where the backbone is registered (``__init__.py``).
"""

from torch import nn


def _seq(modules):
    return nn.Sequential(*modules)


def resnet_stages(model):
    stem = _seq([model.conv1, model.bn1, model.relu, model.maxpool])
    classifier = _seq([model.avgpool, nn.Flatten(1), model.fc])
    return [stem, model.layer1, model.layer2, model.layer3, model.layer4], classifier


def _split_features(features, bounds):
    return [_seq(features[a:b]) for a, b in bounds]


def mobilenet_v2_stages(model):
    # features: 0 stem | 1 (16) | 2-3 (24) | 4-6 (32) | 7-10 (64) | 11-13 (96) | 14-16 (160) | 17 (320) | 18 head
    bounds = [(0, 1), (1, 2), (2, 4), (4, 7), (7, 11), (11, 14), (14, 17), (17, 18), (18, 19)]
    classifier = _seq([nn.AdaptiveAvgPool2d(1), nn.Flatten(1), *model.classifier])
    return _split_features(model.features, bounds), classifier


def mobilenet_v3_small_stages(model):
    # features: 0 stem | 1 (16) | 2-3 (24) | 4-6 (40) | 7-8 (48) | 9-11 (96) | 12 head (576)
    bounds = [(0, 1), (1, 2), (2, 4), (4, 7), (7, 9), (9, 12), (12, 13)]
    classifier = _seq([model.avgpool, nn.Flatten(1), *model.classifier])
    return _split_features(model.features, bounds), classifier


def mobilenet_v3_large_stages(model):
    # features: 0 stem | 1 (16) | 2-3 (24) | 4-6 (40) | 7-10 (80) | 11-12 (112) | 13-15 (160) | 16 head (960)
    bounds = [(0, 1), (1, 2), (2, 4), (4, 7), (7, 11), (11, 13), (13, 16), (16, 17)]
    classifier = _seq([model.avgpool, nn.Flatten(1), *model.classifier])
    return _split_features(model.features, bounds), classifier


def squeezenet1_1_stages(model):
    # features: 0-1 conv+relu (64) | 2-4 pool, fire, fire (128) | 5-7 (256) | 8-12 (512)
    bounds = [(0, 2), (2, 5), (5, 8), (8, 13)]
    classifier = _seq([*model.classifier, nn.Flatten(1)])
    return _split_features(model.features, bounds), classifier
