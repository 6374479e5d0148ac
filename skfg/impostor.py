"""``ImpostorClassifier``: impostor networks (Lebedev et al.) and the RBF solver (Meyer et al.).

A CNN embedding (or a projection of given features) and a Gaussian RBF classifier that
votes over reference points, the *impostors*, one per training image
(impostor-networks.txt section 3, rbf-solver.txt section 3).
"""

import weakref
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import TransformerMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted
from torch import nn

from ._base import EmbeddingNamesMixin
from ._classifier import FEATURE_DEFAULTS, FINE_TUNE_RECIPE, BaseTorchClassifier
from ._data import FeatureData
from ._training import eval_mode, fit_loop, make_optimizer, make_scheduler
from .index import COMPRESSED, METHODS, NearestNeighborIndex
from .losses import ImpostorSet, PQCodebooks, class_log_proba, rbf_log_kernel, rbf_log_proba, weighted_finite_mean

IMPOSTOR_SCHEMES = ("fixed", "tied", "loose")

# fitted index -> its decoded impostors as torch tensors (freed with the index)
_TABLES = weakref.WeakKeyDictionary()


class _Embedding(nn.Module):
    """Features -> embedding: an optional linear layer, then division by a fixed scale.

    The scale is the mean impostor norm at initialisation (protocol step 3), so ``sigma``
    means the same across backbones and embedding sizes.
    """

    def __init__(self, n_features, embedding_dim):
        super().__init__()
        self.linear = None if embedding_dim is None else nn.Linear(n_features, embedding_dim)
        self.register_buffer("scale", torch.ones(()))

    def forward(self, x):
        return (x if self.linear is None else self.linear(x)) / self.scale


class ImpostorClassifier(EmbeddingNamesMixin, TransformerMixin, BaseTorchClassifier):
    """Impostor network: an embedding plus a Gaussian RBF vote over impostors.

    An image (or feature vector) ``x`` is embedded, ``y = f(x)``, and classified by the
    RBF rule of impostor-networks eq. (2)-(3)::

        p(l | x) = sum_{j: l_j = l} w_j exp(-||y - c_j||^2 / (2 sigma^2)) / sum_j (same)

    over the impostors ``c_j``, one per training sample (``w_j = 1`` unless
    ``learn_weights``). Training minimises the leave-own-impostor-out NCA loss, eq. (4),
    or eq. (6) with the attachment term for loose impostors.

    On features (``Pipeline([CNNFeatureExtractor(), ImpostorClassifier()])``) the
    embedding is a learned projection of the features. Given ``extractor`` it is the CNN
    itself, trained end to end (its last ``trainable_blocks`` stages), the paper's method.

    Parameters
    ----------
    sigma : float, default=0.6
        Gaussian bandwidth, in units of the mean impostor norm (impostors and embedding
        are divided by it at initialisation, protocol step 3). Choose it on validation
        data, e.g. with ``GridSearchCV``.
    impostors : {"fixed", "tied", "loose"}, default="loose"
        ``"fixed"``: impostors are the initial embeddings of the training samples, never
        updated; ``"tied"``: reset to the current embeddings every ``refresh_every``
        epochs, and to the final embeddings after training; ``"loose"``: free parameters pulled towards the embeddings by
        ``attachment * ||f(x_i) - c_i||^2`` (eq. 6).
    embedding_dim : int or None, default=512
        Width of the learned linear projection before the RBF layer (the paper's resized
        last layer, randomly initialised). ``None`` keeps the input features (end to
        end, the CNN's pooled features).
    n_neighbors : int or None, default=None
        ``None`` sums over every impostor exactly. An integer sums over the nearest
        ``n_neighbors`` only (rbf-solver eq. 4): found by ``index`` at prediction time and
        exactly among the current impostors during training.
    index : {"exact", "brute", "hnsw", "ivf", "pq", "opq", "ivfpq"}, default="exact"
        How impostors are stored and searched (:class:`skfg.index.NearestNeighborIndex`).
        The compressed ones (``"pq"``, ``"opq"``, ``"ivfpq"``) keep ``code_size`` bytes per
        impostor; with ``impostors="fixed"`` the network trains against the decoded
        impostors and adapts to the compression (paper, "Impostor compression"); for
        the other schemes the final impostors are compressed after training, and for
        ``"loose"`` with ``"pq"`` / ``"opq"`` the codebooks are then tuned
        (``codebook_epochs``).
    code_size : int, default=16
        Bytes per impostor of the compressed indexes.
    codebook_epochs : int, default=30
        For ``impostors="loose"`` with ``index="pq"`` or ``"opq"``: after training, the
        final impostors are compressed and their codebooks trained as the loose
        impostors' free parameters (eq. 4 on the decoded impostors; codes and network
        fixed) for up to this many epochs; the best epoch on the held-out samples is kept
        (the untuned codebooks if none beats them). ``0`` only compresses. Cheap: it runs
        on the final embeddings, not on the images. See ``docs/impostor.rst`` for the
        accuracy of 16-byte codes with and without it.
    attachment : float, default=1.0
        ``lambda`` of eq. (6), for ``impostors="loose"``.
    refresh_every : int, default=10
        For ``impostors="tied"``: epochs between resets of the impostors.
    learn_weights : bool, default=False
        Learn a weight per impostor (rbf-solver eq. 2), initialised to 1.
    impostor_lr_scale : float, default=1.0
        Learning rate of the loose impostors (and weights) relative to ``lr``.
    extractor : CNNFeatureExtractor or None, default=None
        ``None``: ``X`` holds features. Otherwise ``X`` holds images and the extractor's
        backbone is the embedding network, fine-tuned end to end.
    trainable_blocks : int, "all" or "auto", default="auto"
        With ``extractor``: how many of the last backbone stages train (``"auto"``: all).
    augment : bool or Augmentation, default=True
        With ``extractor``: the training augmentation, as in :class:`skfg.SoftmaxClassifier`.
    cache_frozen : bool, default=True
        With ``extractor`` and ``augment=False``: reuse the frozen stages' outputs.
    head_epochs : int or "auto", default="auto"
        ``"auto"``: 0 (not yet tuned for impostors). With ``extractor``: epochs of
        training the projection (and impostors) alone on the frozen CNN's features
        before the end-to-end epochs, as in
        :class:`skfg.SoftmaxClassifier`. The impostors are then reset to the warmed-up
        embeddings. It speeds up the slowly learning random projection; choose it on
        validation data.
    warm_start : bool, default=False
        Start ``fit`` from the fitted network, as in :class:`skfg.SoftmaxClassifier`;
        the impostors are then initialised from its embeddings by the (possibly new)
        scheme. A variant of ours for compressed impostors (the paper compresses the
        initial embeddings): train ``"loose"``, then
        ``set_params(impostors="fixed", index="pq", warm_start=True).fit(X, y)``: the
        trained embeddings are compressed, and the network adapts to their codes (on
        stanford_cars_a features 16-byte PQ codes then stay within about a point of the
        uncompressed model, where compressing the initial embeddings loses 3-4 points;
        see ``docs/impostor.rst``).
    optimizer : {"adam", "adamw", "sgd", "auto"}, default="auto"
        ``"auto"``: Adam, on features and when fine-tuning (the softmax recipe's SGD
        setting is not yet tuned for impostor heads).
    lr : float or "auto", default="auto"
        ``"auto"``: 1e-3 in both modes (when fine-tuning a small training set, times
        the factor of :class:`skfg.SoftmaxClassifier`'s ``lr``).
    backbone_lr_scale : float, default=0.1
    weight_decay : float or "auto", default="auto"
        1e-4. Applied to the network's weights, never to impostor positions, biases or
        normalisation weights.
    momentum : float, default=0.9
    schedule : {"cosine", "step", "constant"}, default="cosine"
    warmup_epochs, precision, ema_decay, freeze_batchnorm : as in :class:`skfg.SoftmaxClassifier`.
    label_smoothing : float or "auto", default="auto"
        Smoothing ``e`` of the vote's targets in the loss:
        ``(1 - e) * -log p(l_i | x_i) + e * mean_l -log p(l | x_i)``
        (:func:`skfg.losses.impostor_loss`). ``"auto"``: 0 (smoothing by 0.1, as the
        softmax recipe does, did not help end to end; ``docs/impostor.rst``).
    max_grad_norm : float or None, default=None
        As in :class:`skfg.SoftmaxClassifier`.
    divergence_guard : float, None or "auto", default="auto"
        As in :class:`skfg.SoftmaxClassifier`, but ``"auto"`` is None (no guard) in both
        modes: the Adam fine-tuning here was measured without it.
    max_epochs : int or "auto", default="auto"
        ``"auto"``: 60 on features, 11 when fine-tuning.
    batch_size : int or "auto", default="auto"
    validation_fraction : float or "auto", default="auto"
        Held out to pick the best epoch; ``"auto"``: 0.1 on features, 0 when fine-tuning
        (0.1 on fewer than 1,000 images to choose between probe and fine-tune, then a
        refit on every image, as in :class:`skfg.SoftmaxClassifier`). For ``"fixed"`` and ``"tied"`` the held-out
        samples become impostors after training too (their initial, resp. final,
        embeddings, consistent with the other impostors), so every training sample
        votes. Loose impostors are trained parameters that trail the embeddings; fresh
        held-out embeddings among them would outvote them (end to end on cars this
        dropped accuracy to 15 %), so there the held-out samples do not vote.
    n_iter_no_change : int or None, default=10
    random_state : int, RandomState or None, default=None
    device : str, default="auto"
    checkpoint_dir : str or None, default=None
    verbose : bool, int or "auto", default="auto"
        A progress bar over the training epochs (and the extraction of frozen features): ``"auto"`` shows it in a terminal or a
        Jupyter notebook once the work has run a few seconds (short calls print
        nothing); ``True``/``1`` always, ``False``/``0`` never.

    Attributes
    ----------
    classes_ : ndarray
    module_ : torch.nn.Module
        The embedding network (``transform`` runs it).
    index_ : NearestNeighborIndex
        The impostors (exact vectors or PQ codes).
    impostor_labels_ : ndarray of shape (n_impostors,)
        Class index (into ``classes_``) of each impostor.
    impostor_weights_ : ndarray of shape (n_impostors,) or None
        Learned ``w_j`` (``learn_weights=True``).
    impostor_memory_bytes_ : int
        Memory of the stored impostors (codes, codebooks).
    codebook_history_ : list of dict or None
        Per-epoch loss and held-out score of the codebook tuning (``codebook_epochs``);
        ``None`` when the codebooks were not tuned.
    codebook_best_epoch_ : int or None
        The tuning epoch whose codebooks were kept (``0``: the untuned ones).
    history_, best_epoch_, n_iter_, interrupted_, fine_tuned_, probe_comparison_, n_features_in_,
    preprocessing_, trunk_settings_, layers_, n_features_ :
        As in :class:`skfg.SoftmaxClassifier`.

    See Also
    --------
    skfg.SoftmaxClassifier : The softmax baselines ("ConvNet", "ConvNet-extra").
    skfg.metrics.ks_distance : Compare open-set scores of seen and unseen classes.

    Examples
    --------
    >>> import numpy as np
    >>> from skfg import ImpostorClassifier
    >>> rng = np.random.RandomState(0)
    >>> X = np.r_[rng.randn(30, 5) + 2, rng.randn(30, 5) - 2]
    >>> y = np.r_[["a"] * 30, ["b"] * 30]
    >>> clf = ImpostorClassifier(embedding_dim=8, max_epochs=5, random_state=0).fit(X, y)
    >>> clf.predict(X[:2]).tolist(), clf.score(X, y)
    (['a', 'a'], 1.0)
    >>> clf.transform(X).shape
    (60, 8)
    """

    # Adam at 1e-3 (the features' setting) also when fine-tuning; the rest of the recipe
    # (all stages, warm-up, augmentation) is shared. Not yet re-tuned on the recipe's base.
    _feature_defaults = {**FEATURE_DEFAULTS, "lr": 1e-3}
    _fine_tune_defaults = {**FINE_TUNE_RECIPE, "optimizer": "adam", "lr": 1e-3, "backbone_lr_scale": 0.1,
                           "weight_decay": 1e-4, "label_smoothing": 0.0, "head_epochs": 0, "divergence_guard": None}

    _parameter_constraints = {
        **BaseTorchClassifier._parameter_constraints,
        "sigma": [Interval(Real, 0, None, closed="neither")],
        "impostors": [StrOptions(set(IMPOSTOR_SCHEMES))],
        "embedding_dim": [Interval(Integral, 1, None, closed="left"), None],
        "n_neighbors": [Interval(Integral, 1, None, closed="left"), None],
        "index": [StrOptions(set(METHODS))],
        "code_size": [Interval(Integral, 1, None, closed="left")],
        "codebook_epochs": [Interval(Integral, 0, None, closed="left")],
        "attachment": [Interval(Real, 0, None, closed="left")],
        "refresh_every": [Interval(Integral, 1, None, closed="left")],
        "learn_weights": ["boolean"],
        "impostor_lr_scale": [Interval(Real, 0, None, closed="left")],
    }

    def __init__(
        self,
        sigma=0.6,
        *,
        impostors="loose",
        embedding_dim=512,
        n_neighbors=None,
        index="exact",
        code_size=16,
        codebook_epochs=30,
        attachment=1.0,
        refresh_every=10,
        learn_weights=False,
        impostor_lr_scale=1.0,
        extractor=None,
        trainable_blocks="auto",
        augment=True,
        cache_frozen=True,
        head_epochs="auto",
        warm_start=False,
        optimizer="auto",
        lr="auto",
        backbone_lr_scale="auto",
        weight_decay="auto",
        momentum=0.9,
        schedule="cosine",
        warmup_epochs="auto",
        label_smoothing="auto",
        precision="auto",
        ema_decay=None,
        max_grad_norm=None,
        divergence_guard="auto",
        freeze_batchnorm=True,
        max_epochs="auto",
        batch_size="auto",
        validation_fraction="auto",
        n_iter_no_change=10,
        random_state=None,
        device="auto",
        checkpoint_dir=None,
        verbose="auto",
    ):
        self.sigma = sigma
        self.impostors = impostors
        self.embedding_dim = embedding_dim
        self.n_neighbors = n_neighbors
        self.index = index
        self.code_size = code_size
        self.codebook_epochs = codebook_epochs
        self.attachment = attachment
        self.refresh_every = refresh_every
        self.learn_weights = learn_weights
        self.impostor_lr_scale = impostor_lr_scale
        self.extractor = extractor
        self.trainable_blocks = trainable_blocks
        self.augment = augment
        self.cache_frozen = cache_frozen
        self.head_epochs = head_epochs
        self.warm_start = warm_start
        self.optimizer = optimizer
        self.lr = lr
        self.backbone_lr_scale = backbone_lr_scale
        self.weight_decay = weight_decay
        self.momentum = momentum
        self.schedule = schedule
        self.warmup_epochs = warmup_epochs
        self.label_smoothing = label_smoothing
        self.precision = precision
        self.ema_decay = ema_decay
        self.max_grad_norm = max_grad_norm
        self.divergence_guard = divergence_guard
        self.freeze_batchnorm = freeze_batchnorm
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.random_state = random_state
        self.device = device
        self.checkpoint_dir = checkpoint_dir
        self.verbose = verbose

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]  # embeddings are float32 like the network
        return tags

    # ------------------------------------------------------------------ model
    def _make_head(self, n_features, n_classes):
        return _Embedding(n_features, self.embedding_dim)

    def _make_index(self):
        return NearestNeighborIndex(self.index, code_size=self.code_size, random_state=0)

    def _begin_training(self, ctx):
        net, train_idx, val_idx = ctx.net, ctx.train_idx, ctx.val_idx
        if self.index in COMPRESSED:  # fail before training, not after it
            n = len(ctx.y) if self.impostors == "tied" else len(train_idx)  # tied: the held-out rows vote too
            self._make_index().check_trainable(n, self.embedding_dim or net.mean.numel())
        # Protocol steps 1-3: initial embeddings are the impostors, divided by their mean norm.
        net.eval()
        emb = ctx.begin_data.outputs(net, np.arange(len(ctx.y)))
        norm = float(emb[train_idx].norm(dim=1).mean().clamp_min(1e-12))
        net.head.scale.mul_(norm)  # relative to the current scale: a warm start keeps it consistent
        emb = emb / norm
        vectors = emb[train_idx]
        training_index = None
        if self.impostors == "fixed" and self.index in COMPRESSED:
            # train against the decoded impostors, so the network adapts to the compression
            training_index = self._make_index().fit(vectors.cpu().numpy())
            vectors = torch.from_numpy(training_index.reconstruct()).to(emb.device)
        own = torch.full((len(ctx.y),), -1, dtype=torch.long)
        own[torch.as_tensor(train_idx)] = torch.arange(len(train_idx))
        ctx.memo.update(training_index=training_index, initial_val=emb[val_idx] if val_idx is not None else None)
        return ImpostorSet(vectors, ctx.labels(train_idx), int(ctx.y.max()) + 1, trainable=self.impostors == "loose",
                           learn_weights=self.learn_weights, own=own.to(emb.device))

    def _aux_param_groups(self, aux):
        # impostor positions and weights: no weight decay (it would pull them to 0)
        return [{"params": aux.parameters(), "lr_scale": self.impostor_lr_scale, "weight_decay": 0.0}]

    def _epoch_start(self, ctx, epoch):
        if self.impostors == "tied" and epoch > 0 and epoch % self.refresh_every == 0:
            with eval_mode(ctx.net):
                ctx.aux.vectors.copy_(ctx.data.outputs(ctx.net, ctx.train_idx))

    def _training_loss(self, ctx, batch):
        x, t, w, rows = batch
        attachment = self.attachment if self.impostors == "loose" else 0.0
        loss = ctx.aux(ctx.data.forward(ctx.net, x), t, rows, self.sigma, n_neighbors=self.n_neighbors,
                       attachment=attachment, label_smoothing=float(self._setting("label_smoothing")))
        return weighted_finite_mean(loss, w)

    def _validation_outputs(self, ctx, idx):
        return _finite(ctx.aux.log_proba(ctx.data.outputs(ctx.net, idx), self.sigma, self.n_neighbors))

    def _search_log_proba(self, emb, labels, log_weights):
        """rbf-solver eq. (4) over the ``n_neighbors`` impostors that ``index_`` finds."""
        d, cols = self.index_.search(emb.detach().cpu().numpy(), int(self.n_neighbors))
        cols = torch.from_numpy(cols).to(emb.device)
        valid = cols >= 0
        cols = cols.clamp_min(0)
        lw = None if log_weights is None else log_weights[cols]
        lk = rbf_log_kernel(torch.from_numpy(d).to(emb.device), self.sigma, lw).masked_fill(~valid, float("-inf"))
        return class_log_proba(lk, labels[cols], len(self.classes_))

    def _end_training(self, ctx):
        aux, val_idx = ctx.aux, ctx.val_idx
        vectors = aux.vectors.detach()
        if self.impostors == "tied":  # constraint (5): c_i = f(x_i) with the final network
            vectors = ctx.data.outputs(ctx.net, ctx.train_idx)
        labels = aux.labels
        log_w = None if aux.log_weights is None else aux.log_weights.detach()
        if self.impostors == "loose":
            val_idx = None  # free impostors trail the embeddings: fresh held-out ones would outvote them
        if val_idx is not None:  # the held-out samples vote too
            extra = ctx.memo["initial_val"] if self.impostors == "fixed" else ctx.data.outputs(ctx.net, val_idx)
            extra_labels = ctx.labels(val_idx).to(labels.device)
        index = ctx.memo["training_index"]
        if index is None:
            all_vectors = vectors if val_idx is None else torch.cat([vectors, extra])
            index = self._make_index().fit(all_vectors.cpu().numpy())
        elif val_idx is not None:
            index.add(extra.cpu().numpy())
        if val_idx is not None:
            labels = torch.cat([labels, extra_labels])
            if log_w is not None:
                log_w = torch.cat([log_w, torch.zeros(len(val_idx), device=log_w.device)])
        self.codebook_history_ = self.codebook_best_epoch_ = None
        if self.impostors == "loose" and self.index in ("pq", "opq") and self.codebook_epochs > 0:
            self._tune_codebooks(ctx, index)
        self.index_ = index
        self.impostor_labels_ = labels.cpu().numpy()
        self.impostor_weights_ = None if log_w is None else log_w.exp().cpu().numpy()
        self.impostor_memory_bytes_ = index.memory_bytes

    def _tune_codebooks(self, ctx, index):
        """Train the PQ codebooks of the compressed loose impostors (codes and network fixed).

        The loss is eq. (4) with ``c_i = decode(code_i)``, on the final embeddings of the
        training samples (each sample's own impostor left out); the held-out samples pick
        the best epoch, as in the network's training. No attachment term: each impostor's
        code, assigned from its trained position, already ties it to its sample, and
        eq. (6)'s pull (lambda = 1) drew the codebooks back towards a plain k-means fit
        (stanford_cars_a, 16-byte PQ, two seeds: 44.9 / 44.0 % vs 46.3 / 44.5 % without).
        """
        aux, val_idx = ctx.aux, ctx.val_idx
        device = aux.labels.device
        log_w = None if aux.log_weights is None else aux.log_weights.detach()
        book = PQCodebooks(*index.pq_codebooks(), aux.labels, aux.n_classes, log_weights=log_w, own=aux.own).to(device)
        emb = FeatureData(ctx.data.outputs(ctx.net, np.arange(len(ctx.y))).cpu(), device)  # final embeddings
        loader = emb.loader(ctx.train_idx, ctx.y, ctx.sample_weight, self._batch_size(len(ctx.train_idx)),
                            ctx.generator, False)

        def step(batch):
            e, t, w, rows = (v.to(device) for v in batch)
            return weighted_finite_mean(book(e, t, rows, self.sigma, n_neighbors=self.n_neighbors), w), len(t)

        validate = untuned = None
        if val_idx is not None:
            val_emb, y_val = emb.X[val_idx].to(device), ctx.labels(val_idx)
            w_val = torch.as_tensor(ctx.sample_weight[val_idx], dtype=torch.float32, device=device)

            def score():
                out = _finite(book.log_proba(val_emb, self.sigma, self.n_neighbors))
                return (out.argmax(1) == y_val).float().mean(), self._loss(out, y_val, w_val)

            validate, untuned = score, [float(v) for v in score()]
            untuned_centroids = book.centroids.detach().clone()
        optimizer = make_optimizer([{"params": [book.centroids], "lr_scale": self.impostor_lr_scale,
                                     "weight_decay": 0.0}], self._setting("optimizer"), self._setting("lr"),
                                   self._setting("weight_decay"), self.momentum)
        with torch.enable_grad():
            result = fit_loop(book, loader, step, optimizer=optimizer,
                              scheduler=make_scheduler(optimizer, self.schedule, self.codebook_epochs, len(loader)),
                              max_epochs=self.codebook_epochs, validate=validate,
                              patience=self.n_iter_no_change if validate else None, generator=ctx.generator,
                              verbose=self.verbose)
        best_epoch = result["best_epoch"]
        if untuned is not None:
            best = result["history"][best_epoch - 1]
            if (untuned[0], -untuned[1]) >= (best["val_score"], -best["val_loss"]):  # tuning did not help
                book.centroids.data.copy_(untuned_centroids)
                best_epoch = 0
        index.set_pq_centroids(book.centroids.detach().cpu().numpy())
        self.codebook_history_, self.codebook_best_epoch_ = result["history"], best_epoch

    # ------------------------------------------------------------- prediction
    def _impostor_table(self, device):
        """Decoded impostors (float64), labels, log-weights and squared norms, cached between
        predict calls (outside the estimator: predicting must not change its ``__dict__``)."""
        cache = _TABLES.get(self.index_)
        if cache is None or cache[0] is not self.impostor_labels_ or cache[1] != str(device):
            vectors = torch.from_numpy(self.index_.reconstruct()).to(device).double()
            labels = torch.as_tensor(self.impostor_labels_, device=device)
            log_w = self._impostor_log_weights(device)
            sq_norms = (vectors * vectors).sum(1)
            _TABLES[self.index_] = cache = (self.impostor_labels_, str(device), vectors, labels, log_w, sq_norms)
        return cache[2:]

    def _outputs(self, X):
        emb = super()._outputs(X)  # the embeddings
        if self.n_neighbors is None or self.n_neighbors >= len(self.impostor_labels_):  # exact sum over every impostor
            vectors, labels, log_w, sq_norms = self._impostor_table(emb.device)
            return rbf_log_proba(emb, vectors, labels, self.sigma, len(self.classes_), log_weights=log_w,
                                 sq_norms=sq_norms)
        # searched: never decode the index (a prebuilt one may hold 10^7 impostors)
        labels = torch.as_tensor(self.impostor_labels_, device=emb.device)
        return self._search_log_proba(emb, labels, self._impostor_log_weights(emb.device))

    def _impostor_log_weights(self, device):
        """``log w_j`` of the learned or given impostor weights (rbf-solver eq. 2), or None."""
        if self.impostor_weights_ is None:
            return None
        return torch.as_tensor(np.log(self.impostor_weights_), device=device)

    def set_impostors(self, index, labels, weights=None):
        """Vote over a prebuilt index of impostors instead of the training set's.

        For a reference collection far larger than the training set (a catalogue of
        10^7 items): embed it with :meth:`transform` (on a cluster with
        :class:`skfg.parallel.ParallelPostFit` or :func:`skfg.parallel.extract_features`),
        build the index chunk by chunk (:meth:`NearestNeighborIndex.train` on a sample,
        then :meth:`NearestNeighborIndex.add_chunks`), possibly as several shards
        (:class:`skfg.index.ShardedIndex`), and hand it over with each row's label. The
        network, ``sigma`` and ``classes_`` stay as fitted; ``predict`` then votes with
        rbf-solver eq. (4) over the ``n_neighbors`` nearest rows of ``index``.

        Parameters
        ----------
        index : NearestNeighborIndex or ShardedIndex
            Fitted, over vectors of this model's embedding space (``transform``'s columns).
        labels : array-like of shape (n_vectors,)
            The class of each of the index's ``n_vectors_`` rows, among ``classes_``.
        weights : array-like of shape (n_vectors,), optional
            A positive weight per impostor (rbf-solver eq. 2); default 1.

        Returns
        -------
        self

        Raises
        ------
        ValueError
            Without ``n_neighbors`` (a prebuilt index is searched, never summed over), for
            another dimension, a label count that differs from the index's rows, labels
            not in ``classes_`` (named), or non-positive weights.
        """
        check_is_fitted(self, "index_")
        if self.n_neighbors is None:
            raise ValueError("set_impostors needs n_neighbors (the prebuilt index is searched for each query's "
                             "nearest impostors); set_params(n_neighbors=10), say, first")
        if getattr(index, "dim_", None) != self.index_.dim_ or not hasattr(index, "n_vectors_"):
            raise ValueError(f"index must be a fitted index of {self.index_.dim_}-dimensional embeddings (this "
                             f"model's transform output); got {getattr(index, 'dim_', 'an unfitted index')}")
        labels = np.asarray(labels)
        if labels.shape != (index.n_vectors_,):
            raise ValueError(f"labels must have one entry per indexed vector ({index.n_vectors_}); "
                             f"got shape {labels.shape}")
        unknown = np.setdiff1d(labels, self.classes_)
        if len(unknown):
            raise ValueError(f"labels hold classes the model does not know: {unknown[:5].tolist()}"
                             f"{' ...' if len(unknown) > 5 else ''}; known: classes_")
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float64)
            if weights.shape != labels.shape or not (weights > 0).all():
                raise ValueError(f"weights must be positive, one per indexed vector ({index.n_vectors_})")
        self.index_ = index
        self.impostor_labels_ = np.searchsorted(self.classes_, labels)
        self.impostor_weights_ = weights
        self.impostor_memory_bytes_ = index.memory_bytes
        return self

    def transform(self, X):
        """The learned embedding ``f(x)`` (in the impostors' space).

        Serves metric learning and retrieval, including classes never seen in training
        (evaluate with :func:`skfg.metrics.recall_at_k` and :func:`skfg.metrics.nmi_kmeans`).

        Parameters
        ----------
        X : array-like
            Features, or images when ``extractor`` is set.

        Returns
        -------
        embedding : ndarray of shape (n_samples, embedding_dim)
        """
        check_is_fitted(self, "module_")
        with torch.inference_mode():
            return super()._outputs(X).float().cpu().numpy()


    def _embedding_dim(self):
        check_is_fitted(self, "index_")
        return self.index_.dim_


def _finite(log_proba):
    """Log-probabilities with ``-inf`` (classes with no candidate impostor) made finite."""
    return log_proba.float().clamp_min(-1e4)
