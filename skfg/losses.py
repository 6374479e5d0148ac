"""Losses and the RBF prediction rule of the impostor networks, and ELoPE's class-mean
embedding loss, as small torch functions.

Notation of impostor-networks.txt section 3: embeddings ``y = f(x)``, impostors
``c_1..c_M`` with labels ``l_j``, Gaussian kernel ``g(y, c; sigma) = exp(-||y - c||^2 / (2 sigma^2))``
(eq. 2), optionally times a learned weight ``w_j`` per impostor (rbf-solver eq. 2). Every
function works in log space (log-sum-exp), so nothing underflows for a tiny ``sigma``.
"""

import torch
import torch.nn.functional as F

from .index import squared_distances


def rbf_log_kernel(sq_dist, sigma, log_weights=None):
    """``log(w_j g(y, c_j; sigma)) = -d^2 / (2 sigma^2) + log w_j`` (eq. 2).

    Parameters
    ----------
    sq_dist : Tensor of shape (n, K)
        Squared distances from each embedding to K impostors.
    sigma : float
    log_weights : Tensor of shape (n, K) or (K,), optional
        Log of the per-impostor weights.
    """
    out = sq_dist * (-0.5 / sigma**2)
    return out if log_weights is None else out + log_weights


def class_log_proba(log_kernel, labels, n_classes):
    """Log of the RBF prediction rule (eq. 3; rbf-solver eq. 4 when the columns are the
    nearest neighbours only): ``log p(l) = log sum_{j: l_j = l} k_j - log sum_j k_j``.

    Parameters
    ----------
    log_kernel : Tensor of shape (n, K)
        Log kernel values (``-inf`` for excluded impostors).
    labels : LongTensor of shape (n, K) or (K,)
        Class of each column's impostor.
    n_classes : int

    Returns
    -------
    log_proba : Tensor of shape (n, n_classes)
        Normalised log probabilities, computed in float64; ``-inf`` for a class with no
        impostor among the columns.
    """
    s = log_kernel.double()
    top = s.max(dim=1, keepdim=True).values
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    s = s - top
    # terms beyond e^-700 relative to the largest are 0 to double precision anyway; making
    # them exactly 0 avoids subnormal numbers, on which exp is ~100x slower on x86 CPUs
    e = torch.exp(s.masked_fill(s < -700.0, float("-inf")))
    labels = labels.expand_as(e) if labels.dim() == 1 else labels
    sums = torch.zeros(len(e), n_classes, dtype=e.dtype, device=e.device).scatter_add_(1, labels, e)
    return torch.log_softmax(torch.log(sums), dim=1)  # the shift by ``top`` cancels


def impostor_nll(log_kernel, column_labels, targets):
    """Per-sample NCA loss of eq. (4): ``-log(sum_{j: l_j = l_i} k_ij / sum_j k_ij)``.

    Self-exclusion is the caller's: set each sample's own impostor to ``-inf`` first
    (see :func:`exclude_self`).

    Parameters
    ----------
    log_kernel : Tensor of shape (n, K)
    column_labels : LongTensor of shape (n, K) or (K,)
    targets : LongTensor of shape (n,)

    Returns
    -------
    loss : Tensor of shape (n,)
        ``inf`` for a sample with no impostor of its own class among the columns.
    """
    labels = column_labels.expand_as(log_kernel) if column_labels.dim() == 1 else column_labels
    same = labels == targets[:, None]
    num = torch.logsumexp(log_kernel.masked_fill(~same, float("-inf")), dim=1)
    return torch.logsumexp(log_kernel, dim=1) - num


def exclude_self(log_kernel, own):
    """Set column ``own[i]`` of row ``i`` to ``-inf`` (rows with ``own[i] < 0`` untouched)."""
    rows = torch.nonzero(own >= 0).squeeze(1)
    out = log_kernel.clone()
    out[rows, own[rows]] = float("-inf")
    return out


def impostor_loss(embeddings, targets, impostors, labels, sigma, *, own=None, log_weights=None,
                  n_neighbors=None, attachment=0.0):
    """Per-sample loss of the impostor networks: eq. (4), or eq. (6) with ``attachment > 0``.

    Parameters
    ----------
    embeddings : Tensor of shape (n, d)
        ``f(x_i)`` for a mini-batch.
    targets : LongTensor of shape (n,)
    impostors : Tensor of shape (M, d)
    labels : LongTensor of shape (M,)
    sigma : float
    own : LongTensor of shape (n,), optional
        Row of each sample's own impostor (``-1``: none). It is left out of the sums and,
        with ``attachment``, pulled towards ``f(x_i)``.
    log_weights : Tensor of shape (M,), optional
        Learned impostor weights (rbf-solver eq. 2), in log space.
    n_neighbors : int, optional
        Sum over the ``n_neighbors`` nearest impostors only (rbf-solver eq. 4), found
        exactly among the current impostors.
    attachment : float
        ``lambda`` of eq. (6): adds ``lambda ||f(x_i) - c_i||^2``.

    Returns
    -------
    loss : Tensor of shape (n,)
        ``inf`` where no impostor of the sample's class is among the candidates.
    """
    lk = rbf_log_kernel(squared_distances(embeddings, impostors), sigma, log_weights)
    if own is not None:
        lk = exclude_self(lk, own)
    column_labels = labels
    if n_neighbors is not None and n_neighbors < lk.shape[1]:
        lk, cols = torch.topk(lk, int(n_neighbors), dim=1)  # largest kernel = nearest (weights included)
        column_labels = labels[cols]
    loss = impostor_nll(lk, column_labels, targets)
    if attachment and own is not None:
        has = own >= 0
        gap = torch.zeros_like(loss)
        gap[has] = ((embeddings[has] - impostors[own[has]]) ** 2).sum(1)
        loss = loss + attachment * gap
    return loss


# ------------------------------------------------------------ ELoPE embedding losses
def update_class_means(means, embeddings, targets, alpha=0.5):
    """ELoPE eq. (6)-(7): class means moved towards this batch's embeddings.

    ``mu_c^t = mu_c^{t-1} - alpha * sum_n d(c_n, c) (mu_c^{t-1} - f(x_n)) / (1 + sum_n d(c_n, c))``.
    The result depends on ``embeddings`` (keep it in the graph: the paper backpropagates
    through the update); classes absent from the batch keep their mean.

    Parameters
    ----------
    means : Tensor of shape (n_classes, d)
        ``mu^{t-1}`` (no gradient).
    embeddings : Tensor of shape (n, d)
        ``f(x_n)``, L2-normalised.
    targets : LongTensor of shape (n,)
    alpha : float
        Learning rate of the means.

    Returns
    -------
    Tensor of shape (n_classes, d)
    """
    onehot = F.one_hot(targets, means.shape[0]).to(embeddings.dtype)  # (n, C)
    counts = onehot.sum(0)[:, None]
    delta = (counts * means - onehot.T @ embeddings) / (1 + counts)  # eq. (7)
    return means - alpha * delta  # eq. (6)


def class_mean_loss(embeddings, targets, means, *, alpha=0.5, gamma=16.0, margin=0.75):
    """ELoPE's embedding loss ``L_e = L_w + L_b`` (eq. 5, 9, 10), on updated class means.

    ``L_w = 1/(2N) sum_n ||f(x_n) - mu_{c_n}^t||^2`` and
    ``L_b = gamma/(4|P|) sum_{(k,c) in P} max(m - ||mu_k^t - mu_c^t||^2, 0)^2`` over the
    unordered pairs ``P`` of classes present in the batch (0 with fewer than two). The
    defaults are the paper's Table 2.

    Parameters
    ----------
    embeddings : Tensor of shape (n, d)
        Embedding-layer outputs; L2-normalised here.
    targets : LongTensor of shape (n,)
    means : Tensor of shape (n_classes, d)
        Class means of the previous iteration (a buffer, no gradient).
    alpha, gamma, margin : float

    Returns
    -------
    loss : Tensor (scalar)
    new_means : Tensor of shape (n_classes, d)
        ``mu^t``, detached: store it for the next iteration.

    Examples
    --------
    >>> import torch
    >>> emb = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> loss, means = class_mean_loss(emb, torch.tensor([0, 1]), torch.zeros(2, 2))
    >>> means.tolist()   # each mean moves halfway (alpha=0.5, 1 sample: /2) to its sample
    [[0.25, 0.0], [0.0, 0.25]]
    """
    f = F.normalize(embeddings, dim=1)
    mu = update_class_means(means, f, targets, alpha)
    within = ((f - mu[targets]) ** 2).sum(1).mean() / 2  # eq. (9)
    present = torch.unique(targets)
    if len(present) < 2:
        between = f.new_zeros(())
    else:
        k, c = torch.triu_indices(len(present), len(present), offset=1, device=f.device)
        d2 = ((mu[present[k]] - mu[present[c]]) ** 2).sum(1)
        between = gamma / (4 * len(d2)) * (margin - d2).clamp_min(0).pow(2).sum()  # eq. (10)
    return within + between, mu.detach()


def center_loss(embeddings, targets, centers, *, alpha=0.5):
    """Center loss (Wen et al.), the baseline of ELoPE's embedding loss.

    ``1/(2N) sum_n ||f(x_n) - c_{y_n}||^2`` against the centres *before* this batch's
    update; the centres then move by eq. (6)-(7) without gradient.

    Returns
    -------
    loss : Tensor (scalar)
    new_centers : Tensor of shape (n_classes, d), detached
    """
    f = F.normalize(embeddings, dim=1)
    loss = ((f - centers[targets]) ** 2).sum(1).mean() / 2
    with torch.no_grad():
        new = update_class_means(centers, f.detach(), targets, alpha)
    return loss, new
