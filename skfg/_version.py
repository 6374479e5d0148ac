"""The version of skfg, stamped into every saved model."""

__version__ = "0.3.0"
