"""Losses and the RBF prediction rule of the impostor networks, ELoPE's class-mean
embedding loss, the multi-exit loss and knowledge distillation: small torch functions, and the modules that hold a loss's state
(:class:`ImpostorSet`, :class:`PQCodebooks`, :class:`ClassMeanLoss`) in the style of
pytorch-metric-learning (a module with its parameters or buffers and a ``forward`` that
returns the loss).

Notation of impostor-networks.txt section 3: embeddings ``y = f(x)``, impostors
``c_1..c_M`` with labels ``l_j``, Gaussian kernel ``g(y, c; sigma) = exp(-||y - c||^2 / (2 sigma^2))``
(eq. 2), optionally times a learned weight ``w_j`` per impostor (rbf-solver eq. 2). Every
function works in log space (log-sum-exp), so nothing underflows for a tiny ``sigma``.
"""

import torch
import torch.nn.functional as F
from torch import nn

from ._distances import decode_pq, squared_distances


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


def rbf_log_proba(embeddings, impostors, labels, sigma, n_classes, *, log_weights=None, n_neighbors=None,
                  sq_norms=None):
    """Log of the RBF prediction rule over impostors: eq. (3) over all of them, or
    rbf-solver eq. (4) over the ``n_neighbors`` nearest (found exactly).

    The sum over all impostors runs in float64 (float32 matrix products round
    differently with the batch size), in chunks of 1024 embeddings; ``sq_norms``
    (``(impostors ** 2).sum(1)``) may be passed when it is reused.

    Returns
    -------
    log_proba : Tensor of shape (n, n_classes)
    """
    if n_neighbors is None or n_neighbors >= len(labels):
        emb, impostors = embeddings.double(), impostors.double()
        log_weights = None if log_weights is None else log_weights.double()
        sq_norms = (impostors * impostors).sum(1) if sq_norms is None else sq_norms
        out = [class_log_proba(rbf_log_kernel(squared_distances(emb[i : i + 1024], impostors, sq_norms), sigma,
                                              log_weights), labels, n_classes) for i in range(0, len(emb), 1024)]
        return torch.cat(out) if out else torch.empty(0, n_classes, dtype=torch.float64)
    lk = rbf_log_kernel(squared_distances(embeddings, impostors), sigma, log_weights)
    lk, cols = torch.topk(lk, int(n_neighbors), dim=1)
    return class_log_proba(lk, labels[cols], n_classes)


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
                  n_neighbors=None, attachment=0.0, label_smoothing=0.0, n_classes=None):
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
    label_smoothing : float
        ``e``: the NCA term becomes ``(1 - e) * -log p(l_i | x_i) + e * mean_l -log p(l | x_i)``
        over the ``n_classes`` classes of the vote (eq. 3), as a softmax's label smoothing
        does; ``-log p`` of a class with no impostor among the candidates counts as 30.
    n_classes : int, optional
        Needed with ``label_smoothing``.

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
    if label_smoothing:
        log_p = class_log_proba(lk, column_labels, int(n_classes))
        loss = (-(1 - label_smoothing) * log_p.gather(1, targets[:, None]).squeeze(1)
                - label_smoothing * log_p.clamp_min(-30).mean(1)).to(lk.dtype)
    else:
        loss = impostor_nll(lk, column_labels, targets)
    if attachment and own is not None:
        has = own >= 0
        gap = torch.zeros_like(loss)
        gap[has] = ((embeddings[has] - impostors[own[has]]) ** 2).sum(1)
        loss = loss + attachment * gap
    return loss


def weighted_finite_mean(loss, w):
    """Weighted mean of per-sample losses, skipping ``inf`` ones (a sample whose class has
    no other impostor among the candidates has no eq.-(4) term)."""
    w = w * torch.isfinite(loss)
    return (torch.where(w > 0, loss, torch.zeros_like(loss)) * w).sum() / w.sum().clamp_min(1e-12)


class ImpostorSet(nn.Module):
    """The impostors of one training run and their loss, eq. (4) or (6).

    ``vectors`` (``c_j``, ``(M, d)``) are a parameter when ``trainable`` (loose impostors),
    else a buffer; ``learn_weights`` learns ``log w_j`` (rbf-solver eq. 2) from ``w = 1``;
    ``own`` gives each training sample's own impostor (``-1``: none), left out of its sums
    (not in the state dict: it describes one fit's data).
    """

    def __init__(self, vectors, labels, n_classes, *, trainable=False, learn_weights=False, own=None,
                 log_weights=None):
        super().__init__()
        self.n_classes = int(n_classes)
        if trainable:
            self.vectors = nn.Parameter(vectors.clone())
        elif vectors is not None:
            self.register_buffer("vectors", vectors.clone())
        self.register_buffer("labels", labels.clone())
        if learn_weights:
            self.log_weights = nn.Parameter(torch.zeros(len(labels), device=labels.device))
        else:  # fixed weights (or none)
            self.register_buffer("log_weights", log_weights)
        self.register_buffer("own", own, persistent=False)

    def positions(self):
        """The impostors ``c_j``, ``(M, d)``."""
        return self.vectors

    def log_proba(self, embeddings, sigma, n_neighbors=None):
        """Class log-probabilities of the RBF rule over these impostors (:func:`rbf_log_proba`)."""
        return rbf_log_proba(embeddings, self.positions(), self.labels, sigma, self.n_classes,
                             log_weights=self.log_weights, n_neighbors=n_neighbors)

    def forward(self, embeddings, targets, rows, sigma, *, n_neighbors=None, attachment=0.0, label_smoothing=0.0):
        """Per-sample loss of the samples at ``rows`` of the training data (see :func:`impostor_loss`)."""
        own = None if self.own is None else self.own[rows]
        return impostor_loss(embeddings, targets, self.positions(), self.labels, sigma, own=own,
                             log_weights=self.log_weights, n_neighbors=n_neighbors, attachment=attachment,
                             label_smoothing=label_smoothing, n_classes=self.n_classes)


class PQCodebooks(ImpostorSet):
    """Impostors under product quantisation: each keeps its code, the codebooks are the
    free parameters (``c_j = decode(code_j)``, :func:`skfg.index.decode_pq`; ``centroids``,
    ``codes`` and OPQ's ``rotation`` as :meth:`skfg.index.NearestNeighborIndex.pq_codebooks`
    gives them); ``log_weights`` are fixed.
    """

    def __init__(self, centroids, codes, rotation, labels, n_classes, *, log_weights=None, own=None):
        super().__init__(None, labels, n_classes, own=own, log_weights=log_weights)
        self.centroids = nn.Parameter(torch.as_tensor(centroids))
        self.register_buffer("codes", torch.as_tensor(codes))
        self.register_buffer("rotation", None if rotation is None else torch.as_tensor(rotation))

    def positions(self):
        return decode_pq(self.centroids, self.codes, self.rotation)


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


EMBEDDING_LOSSES = ("class_means", "within", "center")


class ClassMeanLoss(nn.Module):
    """ELoPE's embedding loss with its state, the class means (a buffer, updated by eq. 6-7).

    Parameters
    ----------
    kind : {"class_means", "within", "center"}, default="class_means"
        ``"class_means"``: ``L_w + L_b`` (:func:`class_mean_loss`); ``"within"``: ``L_w``
        only; ``"center"``: the center loss (:func:`center_loss`), the baseline.
    alpha : float, default=0.5
        Update rate of the means (eq. 6).
    gamma : float, default=16.0
        Weight of ``L_b`` (eq. 10; unused by ``"within"`` and ``"center"``).
    margin : float, default=0.75
        ``m`` of eq. 10.

    Examples
    --------
    >>> import torch
    >>> loss = ClassMeanLoss()
    >>> loss.start(torch.eye(2), torch.tensor([0, 1]), n_classes=2)
    >>> float(loss(torch.eye(2), torch.tensor([0, 1])))   # every sample on its mean
    0.0
    """

    def __init__(self, kind="class_means", alpha=0.5, gamma=16.0, margin=0.75):
        super().__init__()
        if kind not in EMBEDDING_LOSSES:
            raise ValueError(f"Unknown embedding loss {kind!r}; valid: {', '.join(EMBEDDING_LOSSES)}.")
        self.kind, self.alpha, self.gamma, self.margin = kind, float(alpha), float(gamma), float(margin)
        self.register_buffer("means", torch.zeros(0, 0))

    def extra_repr(self):
        return f"kind={self.kind!r}, alpha={self.alpha}, gamma={self.gamma}, margin={self.margin}"

    @torch.no_grad()
    def start(self, embeddings, targets, n_classes):
        """Set the means to the class means of the (normalised) ``embeddings``."""
        emb = F.normalize(embeddings, dim=1)
        means = torch.zeros(int(n_classes), emb.shape[1], dtype=emb.dtype, device=emb.device)
        means.index_add_(0, targets, emb)
        counts = torch.bincount(targets, minlength=len(means)).clamp_min(1)
        self.means = means / counts[:, None].to(emb.dtype)

    def forward(self, embeddings, targets):
        """The loss of a mini-batch; the means move to ``mu^t`` (eq. 6-7)."""
        if self.kind == "center":
            loss, means = center_loss(embeddings, targets, self.means, alpha=self.alpha)
        else:
            gamma = self.gamma if self.kind == "class_means" else 0.0
            loss, means = class_mean_loss(embeddings, targets, self.means, alpha=self.alpha, gamma=gamma,
                                          margin=self.margin)
        self.means.copy_(means)
        return loss


# ------------------------------------------------------------ multi-exit training
def multi_exit_loss(logits, targets, weights, loss, *, exit_weights=None, distillation=0.0, temperature=1.0):
    """Loss of a network with several exits, trained jointly.

    ``sum_m a_m * loss(z_m, y, w)`` over the exits' logits ``z_m`` (the last exit is the
    network's own output), plus, with ``distillation = lambda > 0``, the last exit taught
    to the earlier ones ("Be Your Own Teacher", Zhang et al., 2019):
    ``lambda * sum_{m < M} a_m * T^2 * KL(softmax(z_M / T) || softmax(z_m / T))``, the
    teacher's probabilities detached, per sample weighted by ``w``.

    Parameters
    ----------
    logits : Tensor of shape (n, M, n_classes)
        The logits of the ``M`` exits, the last one last.
    targets : Tensor of shape (n,)
    weights : Tensor of shape (n,)
        Sample weights.
    loss : callable
        ``loss(logits (n, n_classes), targets, weights) -> scalar``: the per-exit loss
        (e.g. the classifier's weighted, label-smoothed cross-entropy).
    exit_weights : sequence of float, optional
        ``a_m``, one non-negative weight per exit; all 1 by default (the plain sum).
    distillation : float, default=0.0
        ``lambda``: the weight of the distillation term (0: none).
    temperature : float, default=1.0
        ``T``: the softmax temperature of the distillation term.

    Returns
    -------
    Tensor
        The scalar loss.
    """
    n_exits = logits.shape[1]
    a = [1.0] * n_exits if exit_weights is None else [float(v) for v in exit_weights]
    if len(a) != n_exits or min(a) < 0 or not any(a):
        raise ValueError(f"exit_weights must be {n_exits} non-negative numbers (one per exit, not all 0), got {exit_weights!r}.")
    total = sum(a[m] * loss(logits[:, m], targets, weights) for m in range(n_exits) if a[m])
    if distillation:
        teacher = F.log_softmax(logits[:, -1].detach().float() / float(temperature), dim=1)
        for m in range(n_exits - 1):
            if a[m]:
                total = total + distillation * a[m] * distillation_loss(logits[:, m], teacher, weights, temperature)
    return total


# ------------------------------------------------------------ knowledge distillation
def soften(proba, temperature=1.0):
    """Log-probabilities of ``proba`` at temperature ``T``: ``log softmax(log(p) / T)``.

    A teacher known only by its probabilities ``p = softmax(z)`` (``predict_proba``) gives
    the same softened targets as its logits would, ``softmax(z / T)``, since ``log p``
    and ``z`` differ by a constant per row. Probabilities of 0 count as 1e-12.

    Parameters
    ----------
    proba : Tensor of shape (n, n_classes)
    temperature : float, default=1.0

    Returns
    -------
    Tensor of shape (n, n_classes)
    """
    return F.log_softmax(torch.log(proba.double().clamp_min(1e-12)) / float(temperature), dim=1).float()


def distillation_loss(logits, teacher_log_proba, weights, temperature=1.0):
    """Knowledge distillation (Hinton, Vinyals and Dean, 2015): the per-sample weighted
    mean of ``T^2 * KL(q_T || softmax(z / T))``.

    ``q_T`` is the teacher's softened distribution (:func:`soften`); the ``T^2`` keeps the
    gradients' size independent of ``T`` (section 2 of the paper).

    Parameters
    ----------
    logits : Tensor of shape (n, n_classes)
        The student's logits ``z``.
    teacher_log_proba : Tensor of shape (n, n_classes)
        ``log q_T``, the teacher's log-probabilities at temperature ``T`` (no gradient).
    weights : Tensor of shape (n,)
        Sample weights.
    temperature : float, default=1.0
        ``T``.

    Returns
    -------
    Tensor
        The scalar loss (0 for an all-zero-weight batch).
    """
    t = float(temperature)
    student = F.log_softmax(logits.float() / t, dim=1)
    kl = F.kl_div(student, teacher_log_proba.detach().float(), log_target=True, reduction="none").sum(1)
    return t * t * (kl * weights).sum() / weights.sum().clamp_min(1e-12)
