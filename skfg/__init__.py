"""skfg: scikit-learn estimators for fine-grained visual classification with lightweight CNNs.

The public names load on first use (PEP 562), so ``import skfg`` and the command line's
``--help`` and ``--version`` start without importing torch.
"""

import importlib

from ._version import __version__

# public name -> the module that defines it
_PUBLIC = {
    "CNNFeatureExtractor": "extractor",
    "EarlyExitClassifier": "early_exit",
    "ImpostorClassifier": "impostor",
    "ImprintedClassifier": "imprinting",
    "ObjectCropper": "localization",
    "SoftmaxClassifier": "softmax",
    "clear_feature_cache": "_cache",
    "load_model": "persistence",
    "save_model": "persistence",
}
_SUBMODULES = {"backbones", "datasets", "early_exit", "exceptions", "export", "extractor", "images", "impostor",
               "imprinting", "index", "localization", "losses", "metrics", "parallel", "persistence", "plotting",
               "pooling", "sequential", "softmax", "store", "cli"}

__all__ = ["CNNFeatureExtractor", "EarlyExitClassifier", "ImpostorClassifier", "ImprintedClassifier", "ObjectCropper",
           "SoftmaxClassifier", "clear_feature_cache", "load_model", "save_model", "__version__"]


def __getattr__(name):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'skfg' has no attribute {name!r}")
    globals()[name] = value  # found once
    return value


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC) | _SUBMODULES)
