"""skfg: scikit-learn estimators for fine-grained visual classification with lightweight CNNs."""

from ._cache import clear_feature_cache
from .extractor import CNNFeatureExtractor
from .impostor import ImpostorClassifier
from .imprinting import ImprintedClassifier
from .localization import ObjectCropper
from .sequential import EarlyExitClassifier
from .softmax import SoftmaxClassifier

__version__ = "0.1.0"

__all__ = ["CNNFeatureExtractor", "EarlyExitClassifier", "ImpostorClassifier", "ImprintedClassifier", "ObjectCropper", "SoftmaxClassifier", "clear_feature_cache", "__version__"]
