"""Torch helpers shared by the nearest-neighbour index and the losses: squared L2
distances, and decoding of product-quantisation codes (differentiable in the codebooks)."""

import torch


def squared_distances(queries, points, points_sq_norms=None):
    """``(n, m)`` squared L2 distances between the rows of two tensors (clamped at 0).

    ``points_sq_norms`` (``(points * points).sum(1)``) may be passed when it is reused.
    """
    if points_sq_norms is None:
        points_sq_norms = (points * points).sum(1)
    d = (queries * queries).sum(1, keepdim=True) - 2 * queries @ points.T + points_sq_norms
    return d.clamp_min_(0)


def decode_pq(centroids, codes, rotation=None):
    """Decode PQ codes in torch: differentiable in ``centroids`` (and ``rotation``).

    Parameters
    ----------
    centroids : Tensor of shape (n_subquantizers, 256, dim // n_subquantizers)
    codes : LongTensor of shape (n, n_subquantizers)
    rotation : Tensor of shape (dim, dim), optional
        OPQ's orthonormal ``A`` (codes encode ``A x``); decoding applies ``A^T``.

    Returns
    -------
    vectors : Tensor of shape (n, dim)
        Equal to :meth:`NearestNeighborIndex.reconstruct` for the same codebooks.
    """
    m = centroids.shape[0]
    parts = centroids[torch.arange(m, device=codes.device), codes]  # (n, m, dsub): sub-vector j of row i
    vectors = parts.reshape(len(codes), -1)
    return vectors if rotation is None else vectors @ rotation  # rows: (A^T y)^T = y^T A
