"""Deprecated alias of :mod:`skfg.early_exit` (renamed in skfg 0.4; this name goes in 0.5)."""

import warnings

from .early_exit import EarlyExitClassifier, bh_threshold

__all__ = ["EarlyExitClassifier", "bh_threshold"]

warnings.warn("skfg.sequential was renamed skfg.early_exit in skfg 0.4; import from skfg.early_exit (or "
              "skfg.EarlyExitClassifier). The old name goes in 0.5.", FutureWarning, stacklevel=2)
