"""Global pooling of CNN feature maps and L2 normalisation.

``global_pool(x, "kmax", k)`` is the global k-max pooling of ELoPE eq. (2)-(3): for each
channel d, sort the I*J activations in descending order (S_d) and average the first K,
GKMP(y)_d = 1/K sum_{k<=K} S_{d,k}. K = 1 gives global max pooling, K = I*J global
average pooling. ``"kmax_weighted"`` is eq. (4), with K learned weights: a network that
trains it holds a :class:`WeightedKMaxPool` per layer; without learned weights (all 1,
e.g. in :class:`skfg.CNNFeatureExtractor`) it equals ``"kmax"``.
"""

import torch
import torch.nn.functional as F
from torch import nn

POOLINGS = ("gap", "gmp", "kmax", "kmax_weighted")


def kmax_pool(x, k, weights=None):
    """Global k-max pooling (ELoPE eq. 3): mean of the ``k`` largest values per channel.

    With ``weights`` (K values), the weighted version of eq. (4):
    ``1/K sum_k w_k S_{d,k}`` over the activations sorted in descending order.

    Parameters
    ----------
    x : Tensor of shape (n, C, H, W)
    k : int
        Number of maxima averaged; clipped to ``H * W``.
    weights : Tensor of shape (k,), optional
        ``w_k`` of eq. (4); the first ``H * W`` are used when ``k`` is clipped.

    Returns
    -------
    Tensor of shape (n, C)
    """
    flat = x.flatten(2)
    k = min(int(k), flat.shape[-1])
    if weights is None:
        return flat.topk(k, dim=-1, sorted=False).values.mean(-1)
    top = flat.topk(k, dim=-1, sorted=True).values  # S_{d,1..K}, descending (eq. 2)
    return (top * weights[:k]).mean(-1)


class WeightedKMaxPool(nn.Module):
    """Global k-max pooling with K learnable weights (ELoPE eq. 4), initialised to 1.

    With all weights 1 it is plain k-max pooling (eq. 3). The paper's schedule trains
    with plain k-max first, then fine-tunes the weights.

    Parameters
    ----------
    k : int, default=4
    """

    def __init__(self, k=4):
        super().__init__()
        self.k = int(k)
        self.weight = nn.Parameter(torch.ones(self.k))

    def forward(self, x):
        return kmax_pool(x, self.k, self.weight)


def global_pool(x, method="gap", k=4):
    """Pool a ``(n, C, H, W)`` map to ``(n, C)`` with ``"gap"``, ``"gmp"`` or ``"kmax"``
    (``"kmax_weighted"`` with all weights 1 is ``"kmax"``)."""
    if method == "gap":
        return x.mean(dim=(2, 3))
    if method == "gmp":
        return x.amax(dim=(2, 3))
    if method in ("kmax", "kmax_weighted"):
        return kmax_pool(x, k)
    raise ValueError(f"Unknown pooling {method!r}; valid: {', '.join(POOLINGS)}")


def l2_normalize(x, eps=1e-12):
    """Rows of ``x`` divided by their L2 norm (zero rows stay zero)."""
    return F.normalize(x, p=2, dim=-1, eps=eps)


def pool_stage_outputs(maps, layers, pooling="gap", k=4, normalize=True, pools=None):
    """Pool each stage's map (and L2-normalise it) and concatenate, in ``layers`` order.

    ``pools`` maps a layer name to a pooling module (learned weighted k-max pooling)
    used instead of ``pooling``.
    """
    parts = []
    for name in layers:
        v = pools[name](maps[name]) if pools is not None and name in pools else global_pool(maps[name], pooling, k)
        parts.append(l2_normalize(v) if normalize else v)
    return torch.cat(parts, dim=1)
