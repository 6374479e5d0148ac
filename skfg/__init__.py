"""skfg: scikit-learn estimators for fine-grained visual classification with lightweight CNNs."""

from ._cache import clear_feature_cache
from .extractor import CNNFeatureExtractor
from .impostor import ImpostorClassifier
from .imprinting import ImprintedClassifier
from .localization import ObjectCropper
from .early_exit import EarlyExitClassifier
from ._version import __version__
from .persistence import load_model, save_model
from .softmax import SoftmaxClassifier

__all__ = ["CNNFeatureExtractor", "EarlyExitClassifier", "ImpostorClassifier", "ImprintedClassifier", "ObjectCropper",
           "SoftmaxClassifier", "clear_feature_cache", "load_model", "save_model", "__version__"]
