"""Box geometry of the localization module (numpy only): the box of a heat map and the
intersection over union of boxes. Boxes are ``(x0, y0, x1, y1)`` in pixels, far edges
exclusive. Re-exported by :mod:`skfg.localization`.
"""

from numbers import Real

import numpy as np
from scipy import ndimage

__all__ = ["box_iou", "check_tau", "heatmap_to_box"]

_MAX_GRID = 512  # heatmap_to_box upsamples to the image size, at most this many cells a side


def _axis_weights(n_in, n_out):
    """Source indices and weights of 1-D linear interpolation with half-pixel centres
    (``align_corners=False``, as ``torch.nn.functional.interpolate``)."""
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(int), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, src - lo


def _resize_bilinear(m, size):
    """Bilinear resize of a 2-D map to ``size`` (rows, cols)."""
    if tuple(size) == m.shape:
        return m
    lo, hi, w = _axis_weights(m.shape[0], size[0])
    m = m[lo] * (1 - w)[:, None] + m[hi] * w[:, None]
    lo, hi, w = _axis_weights(m.shape[1], size[1])
    return m[:, lo] * (1 - w) + m[:, hi] * w


def heatmap_to_box(heatmap, image_shape, tau=0.3, upsample=True, component=False):
    """Bounding box of the object in a heat map (ELoPE section 5, last paragraph).

    The map is min-max normalised and binarised at ``tau``; the box is the smallest
    rectangle containing every cell whose value is strictly greater than ``tau``
    (the paper's rule) or, with ``component=True``, only the connected region of such
    cells around the map's maximum; mapped to the image's pixel coordinates (the map
    is taken to cover the whole image).

    Parameters
    ----------
    heatmap : array-like of shape (I, J)
        Any finite values; only their order matters.
    image_shape : tuple of int
        ``(height, width, ...)`` of the image the map covers (numpy order: rows first).
    tau : float in [0, 1), default=0.3
        Binarisation threshold on the normalised map (ELoPE Table 2: 0.3 on birds,
        0.2 on cars and aircraft).
    upsample : bool, default=True
        Resize the map bilinearly to the image size (at most 512 cells a side) before
        normalising and thresholding, so the box edges fall between map cells instead
        of on the coarse ``I x J`` grid. ``False`` thresholds the ``I x J`` cells
        themselves, as the paper describes it.
    component : bool, default=False
        Box only the 8-connected region above ``tau`` that holds the maximum, so a
        second, weaker hot spot elsewhere does not stretch the box (ours; finer maps
        have such spots: ``docs/localization.rst``).

    Returns
    -------
    box : ndarray of shape (4,), float64
        ``(x0, y0, x1, y1)`` in pixels, ``0 <= x0 < x1 <= width`` and
        ``0 <= y0 < y1 <= height`` (the far edges are exclusive, as in
        :func:`skfg.datasets.make_fine_grained`). A constant map gives the whole image.

    Raises
    ------
    ValueError
        If the map is not 2-D, holds NaN or infinite values, or ``tau`` is outside [0, 1).

    Examples
    --------
    >>> import numpy as np
    >>> from skfg.localization import heatmap_to_box
    >>> m = np.zeros((4, 4)); m[1:3, 2] = 1.0           # a hot block: rows 1-2, column 2
    >>> heatmap_to_box(m, (40, 80), upsample=False).tolist()   # cells are 10 x 20 pixels
    [40.0, 10.0, 60.0, 30.0]
    >>> heatmap_to_box(np.ones((7, 7)), (30, 50)).tolist()     # no object found: everything
    [0.0, 0.0, 50.0, 30.0]
    >>> m[3, 0] = 0.8                                   # a second, weaker spot, not connected
    >>> heatmap_to_box(m, (40, 80), upsample=False).tolist()
    [0.0, 10.0, 60.0, 40.0]
    >>> heatmap_to_box(m, (40, 80), upsample=False, component=True).tolist()
    [40.0, 10.0, 60.0, 30.0]
    """
    m = np.asarray(heatmap, dtype=np.float64)
    if m.ndim != 2 or m.size == 0:
        raise ValueError(f"heatmap must be a non-empty 2-D array, got shape {m.shape}.")
    if not np.isfinite(m).all():
        raise ValueError("heatmap holds NaN or infinite values.")
    height, width = int(image_shape[0]), int(image_shape[1])
    if height < 1 or width < 1:
        raise ValueError(f"image_shape must be (height, width) of at least 1 pixel, got {tuple(image_shape)}.")
    check_tau(tau)
    if upsample:
        m = _resize_bilinear(m, (min(height, _MAX_GRID), min(width, _MAX_GRID)))
    lo, hi = m.min(), m.max()
    if hi - lo <= 1e-12 * max(1.0, abs(hi), abs(lo)):  # constant: no object found, keep it all
        return np.array([0.0, 0.0, float(width), float(height)])
    m = (m - lo) / (hi - lo)
    mask = m > tau  # never empty: the maximum is 1 > tau
    if component:
        labels, _ = ndimage.label(mask, structure=np.ones((3, 3)))
        mask = labels == labels[np.unravel_index(np.argmax(m), m.shape)]
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    h, w = m.shape
    return np.array([cols[0] * width / w, rows[0] * height / h, (cols[-1] + 1) * width / w, (rows[-1] + 1) * height / h])


def check_tau(tau):
    if isinstance(tau, bool) or not isinstance(tau, Real) or not 0 <= tau < 1:
        raise ValueError(f"tau must be a number in [0, 1), got {tau!r}.")


def box_iou(boxes_a, boxes_b):
    """Intersection over union of boxes ``(x0, y0, x1, y1)``, row by row.

    The measure of ELoPE Table 4: a box counts as correct when its IoU with the
    ground-truth box is at least 0.5.

    Parameters
    ----------
    boxes_a, boxes_b : array-like of shape (4,) or (n, 4)
        Broadcast against each other.

    Returns
    -------
    iou : float or ndarray of shape (n,)
        In [0, 1]; 0 where the union is empty.

    Examples
    --------
    >>> from skfg.localization import box_iou
    >>> float(box_iou([0, 0, 10, 10], [5, 0, 15, 10]))   # overlap 50, union 150
    0.3333333333333333
    """
    a, b = np.asarray(boxes_a, dtype=np.float64), np.asarray(boxes_b, dtype=np.float64)
    if a.shape[-1] != 4 or b.shape[-1] != 4:
        raise ValueError(f"boxes must have 4 coordinates (x0, y0, x1, y1) in the last axis; got {a.shape} and {b.shape}.")
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area = lambda c: np.clip(c[..., 2] - c[..., 0], 0, None) * np.clip(c[..., 3] - c[..., 1], 0, None)  # noqa: E731
    union = area(a) + area(b) - inter
    iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return iou[()] if iou.ndim == 0 else iou
