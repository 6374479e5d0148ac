"""The warnings and errors skfg raises for its own reasons (as :mod:`sklearn.exceptions`).

They are also importable where they were first defined (``skfg.images.ImageDecodeError``,
``skfg.images.ImageTooLargeError``, ``skfg._base.SkfgVersionWarning``).
"""

__all__ = ["ImageDecodeError", "ImageTooLargeError", "SkfgVersionWarning"]


class SkfgVersionWarning(UserWarning):
    """A model saved by another version of skfg was loaded."""


class ImageDecodeError(ValueError):
    """An image could not be read; the message names the file (or the index in X)."""


class ImageTooLargeError(ImageDecodeError):
    """An image would exceed :data:`skfg.images.MAX_PIXELS` when decoded or resized
    (refused before any allocation); the message names the file and its size."""
