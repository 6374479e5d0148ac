"""``BaseTorchClassifier``: what every skfg torch classifier shares.

Subclasses define the head (``_make_head``) and the loss (``_loss``); this base does the
rest: input validation (features, or images through ``extractor``), label encoding,
the validation split, building the network (with ``trainable_blocks`` of the backbone
and the frozen-prefix cache), calling :func:`skfg._training.fit_loop`, prediction
(``predict == classes_[argmax(predict_proba)]``) and pickling.
"""

import hashlib
import json
from abc import ABCMeta, abstractmethod
from numbers import Integral, Real

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.model_selection import ShuffleSplit, StratifiedShuffleSplit
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, column_or_1d, validate_data
from torch.utils.data import DataLoader, TensorDataset

from ._base import TorchStateMixin, resolve_device
from ._network import FeatureNet
from ._training import OPTIMIZERS, SCHEDULES, fit_loop, make_generator, make_optimizer, make_scheduler
from .backbones import build_backbone, get_backbone_spec
from .metrics import entropy
from .images import ImageDataset, ImageSource, eval_transform, iter_batches, normalize_batch, train_transform


class _ImageBatches:
    """uint8 image batches -> normalised float batches, as a re-iterable for ``fit_loop``."""

    def __init__(self, loader, mean, std, device):
        self.loader, self.mean, self.std, self.device = loader, mean, std, device

    def __iter__(self):
        for x, *rest in self.loader:
            yield (_to_input(x, self.mean, self.std, self.device), *rest)


class _WeightedImageDataset(ImageDataset):
    def __init__(self, X, y, w, transform):
        super().__init__(X, y, transform)
        self.w = w

    def __getitem__(self, i):
        x, t = super().__getitem__(i)
        return x, t, self.w[i], i


class BaseTorchClassifier(TorchStateMixin, ClassifierMixin, BaseEstimator, metaclass=ABCMeta):
    """Base class of skfg's torch classifiers; not used directly."""

    _parameter_constraints = {
        "extractor": [None, HasMethods(["fit", "transform"])],
        "trainable_blocks": [Interval(Integral, 0, None, closed="left"), StrOptions({"all"})],
        "augment": ["boolean"],
        "cache_frozen": ["boolean"],
        "head_epochs": [Interval(Integral, 0, None, closed="left")],
        "warm_start": ["boolean"],
        "optimizer": [StrOptions(set(OPTIMIZERS))],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "backbone_lr_scale": [Interval(Real, 0, None, closed="left")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "momentum": [Interval(Real, 0, 1, closed="left")],
        "schedule": [StrOptions(set(SCHEDULES))],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left"), None],
        "random_state": ["random_state"],
        "device": [str, None],
        "checkpoint_dir": [str, None],
        "verbose": ["verbose"],
    }

    # Checks of sklearn's suite that cannot hold for a mini-batch SGD learner, with why.
    _expected_failed_checks = {
        "check_sample_weight_equivalence_on_dense_data": (
            "weights scale each sample's loss; with shuffled mini-batches and early "
            "stopping, repeating a sample is not the same optimisation path"
        ),
    }

    # ------------------------------------------------------------ subclass API
    @abstractmethod
    def _make_head(self, n_features, n_classes):
        """The trainable module mapping pooled features to the loss's inputs."""

    def _loss(self, outputs, y, w):
        """Weighted mean cross-entropy of the outputs taken as logits (0 for an all-zero-weight batch)."""
        return (F.cross_entropy(outputs, y, reduction="none") * w).sum() / w.sum().clamp_min(1e-12)

    def _proba(self, outputs):
        return torch.softmax(outputs, dim=1)

    # Hooks for heads that need more than logits (the impostor classifier). ``aux`` is an
    # optional module trained with the network (checkpointed and restored with it).
    def _begin_training(self, net, data, y, train_idx, val_idx):
        """Called once the network is built and standardised; returns ``aux`` (or None)."""
        return None

    def _training_loss(self, net, aux, data, x, t, w, idx):
        """Loss of a mini-batch; ``idx`` are the samples' rows in the training data."""
        return self._loss(data.forward(net, x), t, w)

    def _validation_outputs(self, net, aux, data, idx):
        """Outputs of samples ``idx`` comparable to what ``_outputs`` gives at predict time."""
        return data.outputs(net, idx)

    def _epoch_start(self, net, aux, data, epoch):
        """Called before each training epoch (0-based; also after a resume)."""

    def _end_training(self, net, aux, data, y, train_idx, val_idx, sample_weight, generator):
        """Called with the restored best weights (under ``torch.no_grad``); set head-specific
        fitted attributes. ``sample_weight`` covers every sample (index it with ``train_idx``)."""

    def _check_params(self):
        """Checks of parameter combinations, before any work (raise ``ValueError``)."""

    def _pool_weight_epochs(self):
        """Epochs of the second step of ELoPE's schedule for ``pooling="kmax_weighted"``
        (0: the pooling weights train from the start)."""
        return 0

    # ---------------------------------------------------------------- fitting
    def _batch_size(self, n_train):
        """``"auto"``: 64, but small enough for at least 8 mini-batches per epoch."""
        if self.batch_size == "auto":
            return int(min(64, max(1, n_train // 8)))
        return int(self.batch_size)

    def _validate_inputs(self, X, y, sample_weight):
        if self.extractor is None:
            X, y = validate_data(self, X, y, dtype=np.float32)
        else:
            X = ImageSource(X)
            y = column_or_1d(y, warn=True)
            if len(y) != len(X):
                raise ValueError(f"X has {len(X)} images but y has {len(y)} labels.")
        check_classification_targets(y)
        classes, y_enc = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(f"{type(self).__name__} needs samples of at least 2 classes; got one class: {classes[0]!r}.")
        n = len(y_enc)
        sample_weight = _check_sample_weight(sample_weight, np.empty((n, 1)), dtype=np.float32)
        if np.any(sample_weight < 0) or not np.any(sample_weight > 0):
            raise ValueError("sample_weight must be non-negative with at least one positive value.")
        return X, classes, y_enc, sample_weight

    def _split(self, y, n_classes, rng):
        """Train / validation indices (stratified when every class can be split)."""
        n = len(y)
        n_val = int(round(self.validation_fraction * n))
        if self.validation_fraction == 0 or n_val < 1 or n - n_val < 1:
            return np.arange(n), None
        counts = np.bincount(y, minlength=n_classes)
        if counts.min() >= 2 and n_classes <= n_val <= n - n_classes:
            splitter = StratifiedShuffleSplit(1, test_size=n_val, random_state=rng)
        else:
            splitter = ShuffleSplit(1, test_size=n_val, random_state=rng)
        train, val = next(splitter.split(np.zeros(n), y))
        return np.sort(train), np.sort(val)

    def _build_network(self, n_features, n_classes, trunk=None, extractor=None, layers=None):
        """The untrained FeatureNet: ``trunk`` (a StagedNetwork) with the subclass's head.

        ``extractor`` and ``layers`` default to the fitted ``extractor_`` and ``layers_``."""
        head = self._make_head(n_features, n_classes)
        if trunk is None:
            return FeatureNet(head, n_features)
        ext = self.extractor_ if extractor is None else extractor
        layers = self.layers_ if layers is None else layers
        used = trunk.stage_names[: max(trunk.stage_names.index(n) for n in layers) + 1]
        n_train = len(used) if self.trainable_blocks == "all" else min(int(self.trainable_blocks), len(used))
        frozen = used[: len(used) - n_train]
        return FeatureNet(head, n_features, trunk, layers, ext.pooling, ext.k, ext.normalize, frozen)

    def _warm_start_from(self, net, classes):
        """Load the previous fit's weights into ``net`` (built for this fit, so the
        freezing of ``trainable_blocks`` is this fit's); clear errors when it cannot be the
        same network. Returns a digest of the loaded state (for the checkpoint signature)."""
        name = type(self).__name__
        if not np.array_equal(classes, self.classes_):
            raise ValueError(f"{name}(warm_start=True) needs the classes of the previous fit: it had "
                             f"{len(self.classes_)} classes, y has {len(classes)} (or other labels).")
        old, new = self.module_.state_dict(), net.state_dict()
        if old.keys() != new.keys() or any(old[k].shape != new[k].shape for k in new):
            diff = sorted(k for k in new.keys() | old.keys()
                          if k not in old or k not in new or old[k].shape != new[k].shape)
            raise ValueError(f"{name}(warm_start=True): the network of these parameters differs from the "
                             f"previous fit's (e.g. in {', '.join(diff[:3])}); the number of features, "
                             "embedding_dim, the extractor (or its absence) and the head must stay the same.")
        net.load_state_dict(old)
        h = hashlib.sha1()
        for k in sorted(old):
            h.update(k.encode())
            h.update(old[k].detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def _make_module(self, name):
        if self.extractor is None:
            return self._build_network(self.n_features_in_, len(self.classes_))
        trunk = build_backbone(self.extractor_.backbone, weights=None).to(memory_format=torch.channels_last)
        return self._build_network(self.n_features_, len(self.classes_), trunk)

    def _signature(self, y, sample_weight, n_items):
        params = {k: v for k, v in self.get_params(deep=False).items() if k not in ("verbose", "checkpoint_dir", "device")}
        h = hashlib.sha1(json.dumps(params, sort_keys=True, default=repr).encode())
        h.update(np.ascontiguousarray(y).tobytes())
        h.update(np.ascontiguousarray(sample_weight).tobytes())
        h.update(str(n_items).encode())
        return f"{type(self).__name__}:{h.hexdigest()}"

    def fit(self, X, y, sample_weight=None):
        """Train the network.

        Parameters
        ----------
        X : array-like
            Features ``(n_samples, n_features)``, or images (paths, uint8 arrays, PIL
            images) when ``extractor`` is set.
        y : array-like of shape (n_samples,)
            Class labels (strings or integers).
        sample_weight : array-like of shape (n_samples,), optional
            Per-sample weights of the loss.

        Returns
        -------
        self
        """
        previous = dict(self.__dict__)
        try:
            return self._fit(X, y, sample_weight)
        except BaseException:  # a failed fit leaves the model as it was (fitted or not)
            self.__dict__.clear()
            self.__dict__.update(previous)
            raise

    def _fit(self, X, y, sample_weight):
        self._validate_params()
        self._check_params()
        X, classes, y_enc, sample_weight = self._validate_inputs(X, y, sample_weight)
        device = resolve_device(self.device)
        generator = make_generator(self.random_state)
        train_idx, val_idx = self._split(y_enc, len(classes), check_random_state(self.random_state))
        warm = self.warm_start and hasattr(self, "module_")
        fitted_ext = None
        if self.extractor is None:
            net = self._build_network(X.shape[1], len(classes))
        else:
            ext = clone(self.extractor).fit()
            fitted_ext = (clone(self.extractor), ext.layers_, ext.n_features_out_)  # set once training is done
            net = self._build_network(ext.n_features_out_, len(classes), ext.network_, fitted_ext[0], ext.layers_)
        warm_digest = self._warm_start_from(net, classes) if warm else None
        net = net.to(device)
        data = _FeatureData(X, device) if self.extractor is None else _ImageData(
            X, net, ext, device, prefix_cache=self.cache_frozen and not self.augment)
        net.eval()  # BatchNorm statistics untouched
        warm_up = self.extractor is not None and self.head_epochs > 0
        pooled = None
        if self.extractor is not None:  # one pass over the images, reused until the CNN trains
            pooled = data.pooled(net, np.arange(len(y_enc))).float()
        if not warm:
            # Centre the initial features per dimension and divide by one scale, their RMS
            # standard deviation: per-dimension scales would amplify the drift of features
            # that are tiny on their own (L2-normalised) once the CNN trains. (A warm
            # start keeps the previous fit's standardisation, which its weights expect.)
            feats = data.pooled(net, train_idx).float() if pooled is None else pooled[torch.as_tensor(train_idx)]
            net.mean.copy_(feats.mean(0))
            net.scale.fill_(float(feats.var(0, unbiased=False).mean().sqrt().clamp_min(1e-6)))

        signature = self._signature(y_enc, sample_weight, len(X))
        if warm_digest is not None:  # a checkpoint resumes only the training that started from these weights
            signature += ":warm:" + warm_digest
        head_result = None
        if warm_up:  # linear probing, then fine-tuning: the head first learns on the frozen CNN's features
            head_result = self._warm_up_head(net, pooled, y_enc, sample_weight, train_idx, val_idx, device, generator,
                                             signature)
        n_second = self._pool_weight_epochs() if net.pools is not None else 0
        if n_second:  # ELoPE's two steps: plain k-max first (weights fixed at 1) ...
            net.pools.requires_grad_(False)
        result = self._train(net, data, y_enc, sample_weight, train_idx, val_idx, device, generator,
                             self.max_epochs, signature, start_data=None if pooled is None else _PooledData(pooled, device))
        if n_second:  # ... then everything at lr / 10 (the pooling weights at lr)
            net.pools.requires_grad_(True)
            second = self._train(net, data, y_enc, sample_weight, train_idx, val_idx, device, generator,
                                 n_second, signature + ":weighted", lr_scale=0.1, pool_lr_scale=10.0)
            result = _chain(result, second)
        if head_result is not None:
            result = _chain(head_result, result)
        # Training finished: set the fitted attributes together.
        if fitted_ext is not None:
            self.extractor_, self.layers_, self.n_features_ = fitted_ext  # the trained CNN is in module_
        self.module_ = net.eval()
        self.classes_ = classes
        self.device_ = device
        self.history_ = result["history"]
        self.best_epoch_ = result["best_epoch"]
        self.n_iter_ = len(result["history"])
        self.interrupted_ = result["interrupted"]
        return self

    def _warm_up_head(self, net, pooled, y_enc, sample_weight, train_idx, val_idx, device, generator, signature):
        """``head_epochs`` of training the head alone on the frozen CNN's pooled features
        (``pooled``: every sample, computed once without augmentation). The head module is
        shared with ``net``, so the end-to-end training starts from it."""
        head_net = FeatureNet(net.head, pooled.shape[1]).to(device)
        head_net.mean.copy_(net.mean)
        head_net.scale.copy_(net.scale)
        return self._train(head_net, _FeatureData(pooled.cpu(), device), y_enc, sample_weight, train_idx, val_idx,
                           device, generator, self.head_epochs, signature + ":head")

    def _train(self, net, data, y_enc, sample_weight, train_idx, val_idx, device, generator, max_epochs, signature,
               lr_scale=1.0, pool_lr_scale=1.0, start_data=None):
        """Train ``net`` (already standardised) on ``data[train_idx]``; the shared part of
        ``fit`` and of warm-started training. ``train_idx`` may repeat samples
        (oversampling); ``signature=None`` disables checkpoints; ``lr_scale`` multiplies
        every learning rate; ``pool_lr_scale`` multiplies the rate of the weighted k-max
        pooling weights once more (ELoPE's second step: 10, the new weights at ``lr``);
        ``start_data`` (a :class:`_PooledData` of the current CNN) serves ``_begin_training``
        without another pass over the images."""
        y_all = torch.as_tensor(y_enc)
        with torch.no_grad():
            aux = self._begin_training(net, data if start_data is None else start_data, y_all, train_idx, val_idx)
        module = net if aux is None else torch.nn.ModuleDict({"net": net, "aux": aux})

        def step(batch):
            x, t, w, i = (v.to(device) for v in batch)
            return self._training_loss(net, aux, data, x, t, w, i), len(t)

        validate = None
        if val_idx is not None:
            y_val = torch.as_tensor(y_enc[val_idx], device=device)

            w_val = torch.as_tensor(sample_weight[val_idx], device=device)

            def validate():
                out = self._validation_outputs(net, aux, data, val_idx)
                return (out.argmax(1) == y_val).float().mean(), self._loss(out, y_val, w_val)

        groups = [{"params": [p for p in net.head.parameters() if p.requires_grad], "lr_scale": 1.0}]
        if net.trunk is not None:
            groups.append({"params": list(net.trunk_parameters()), "lr_scale": self.backbone_lr_scale})
            # the K weights of weighted k-max pooling start at 1 (decay would pull them to 0)
            groups.append({"params": net.pool_parameters(), "lr_scale": pool_lr_scale, "weight_decay": 0.0})
        groups += [dict(g, params=list(g["params"])) for g in self._aux_param_groups(aux)]
        if any(p.requires_grad for g in groups for p in g["params"]):
            optimizer = make_optimizer(groups, self.optimizer, self.lr * lr_scale, self.weight_decay, self.momentum)
            result = fit_loop(
                module,
                data.loader(train_idx, y_enc, sample_weight, self._batch_size(len(train_idx)), generator, self.augment),
                step,
                optimizer=optimizer,
                scheduler=make_scheduler(optimizer, self.schedule, max_epochs),
                max_epochs=max_epochs,
                validate=validate,
                patience=self.n_iter_no_change if val_idx is not None else None,
                generator=generator,
                checkpoint_dir=self.checkpoint_dir if signature is not None else None,
                signature=signature or "",
                verbose=self.verbose,
                epoch_callback=lambda epoch: self._epoch_start(net, aux, data, epoch),
            )
        else:  # nothing trainable (e.g. a fixed RBF vote on features): no epochs to run
            net.eval()
            result = {"history": [], "best_epoch": 0, "interrupted": False}
        net.eval()
        with torch.no_grad():
            self._end_training(net, aux, data, y_all, train_idx, val_idx, sample_weight, generator)
        return result

    def _aux_param_groups(self, aux):
        """Optimiser groups of ``aux`` (``{"params", "lr_scale", "weight_decay"}``)."""
        return [] if aux is None else [{"params": aux.parameters(), "lr_scale": 1.0}]

    # ------------------------------------------------------------- prediction
    def _outputs(self, X):
        check_is_fitted(self, "module_")
        net = self.module_.eval()
        if self.extractor is None:
            X = validate_data(self, X, dtype=np.float32, reset=False)
            return _FeatureData(X, self.device_).outputs(net, np.arange(len(X)))
        source = ImageSource(X)
        return _predict_images(net, source, np.arange(len(source)), self.extractor_, self.device_)

    def predict_proba(self, X):
        """Class probabilities; rows sum to 1, columns follow ``classes_``.

        Parameters
        ----------
        X : array-like
            Features, or images when ``extractor`` is set.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
        """
        with torch.inference_mode():
            return self._proba(self._outputs(X).double()).cpu().numpy()  # float64: rows sum to 1

    def predict(self, X):
        """Predicted labels: ``classes_[argmax(predict_proba(X))]``."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    def open_set_score(self, X):
        """Open-set score: the entropy of ``predict_proba`` (higher: more likely an unknown class).

        Impostor-networks section 4.2: a classifier that is less confident on images of
        classes it never saw can flag them; compare the scores of seen and unseen
        classes with :func:`skfg.metrics.ks_distance`.

        Parameters
        ----------
        X : array-like
            Features, or images when ``extractor`` is set.

        Returns
        -------
        score : ndarray of shape (n_samples,)
            In nats, between 0 and ``log(n_classes)``.
        """
        return entropy(self.predict_proba(X))


def _chain(first, second):
    """The result of two consecutive ``_train`` calls as one (epochs numbered on)."""
    n = len(first["history"])
    return {
        "history": first["history"] + [dict(h, epoch=h["epoch"] + n) for h in second["history"]],
        "best_epoch": n + second["best_epoch"],
        "interrupted": first["interrupted"] or second["interrupted"],
    }


def _to_input(batch, mean, std, device):
    """uint8 image batch -> normalised channels-last float batch on ``device``."""
    x = normalize_batch(batch.to(device), mean, std)
    return x.contiguous(memory_format=torch.channels_last)


def _chunks(idx, size=256):
    return [idx[i : i + size] for i in range(0, len(idx), size)]


def _predict_images(net, source, idx, extractor, device):
    """Network outputs for images ``idx`` with the extractor's inference preprocessing."""
    spec = get_backbone_spec(extractor.backbone)
    tf = eval_transform(extractor.image_size, extractor.resize)
    outs = [net(_to_input(b, spec.mean, spec.std, device))
            for _, b in iter_batches(source, tf, extractor.batch_size, idx, n_jobs=0)]
    return torch.cat(outs)


class _FeatureData:
    """Training data that is already a feature matrix."""

    def __init__(self, X, device):
        self.X, self.device = torch.as_tensor(X), device

    def loader(self, idx, y, w, batch_size, generator, augment):
        ds = TensorDataset(self.X[idx], torch.as_tensor(y[idx]), torch.as_tensor(w[idx]), torch.as_tensor(idx))
        return DataLoader(ds, batch_size=batch_size, shuffle=True, generator=generator)

    def forward(self, net, x):
        return net(x)

    def features(self, net, x):
        """The head's input (standardised pooled features) of a training batch."""
        return net.features(x)

    def outputs(self, net, idx):
        return torch.cat([net(self.X[c].to(self.device)) for c in _chunks(idx, 4096)])

    def pooled(self, net, idx):
        return self.X[idx].to(self.device)


class _PooledData(_FeatureData):
    """Every sample's pooled features (rows in sample order), computed once with the CNN
    as it is before training: what ``_begin_training`` reads (initial impostors, class
    means) while the CNN is unchanged, instead of a second pass over the images."""

    def outputs(self, net, idx):
        """``net``'s outputs: its head on the standardised pooled features (as ``net(x)``)."""
        return torch.cat([net.head((self.pooled(net, c) - net.mean) / net.scale) for c in _chunks(idx, 4096)])


class _ImageData:
    """Training images, with the frozen-prefix cache.

    When the first stages are frozen, their output for an image does not change during
    training. Without augmentation it is computed once per image and reused every epoch
    (and for validation); training then starts at the first trainable stage.
    """

    def __init__(self, source, net, extractor, device, prefix_cache):
        self.source, self.net, self.device, self.ext = source, net, device, extractor
        self.mean, self.std = extractor.network_.mean, extractor.network_.std
        self.eval_tf = eval_transform(extractor.image_size, extractor.resize)
        start = net.first_trainable
        # the cache is possible when some stage is frozen and no feature layer is frozen
        self.cut = start not in (None, net.stages[0]) and not set(net.layers) & set(net.frozen)
        self.start = start if self.cut else None
        self.prefix_cache = prefix_cache and self.cut
        self._prefix = {}

    def prefix(self, net, idx):
        """Frozen-prefix outputs of images ``idx`` (computed once each)."""
        missing = [i for i in idx if i not in self._prefix]
        if missing:
            was_training = net.training
            net.eval()
            with torch.no_grad():
                for chunk, batch in iter_batches(self.source, self.eval_tf, 16, missing, n_jobs=0):
                    h = net.prefix(_to_input(batch, self.mean, self.std, self.device))
                    self._prefix.update(zip(chunk.tolist(), h.cpu()))
            net.train(was_training)
        return torch.stack([self._prefix[i] for i in idx])

    def loader(self, idx, y, w, batch_size, generator, augment):
        if self.prefix_cache:
            ds = TensorDataset(self.prefix(self.net, idx), torch.as_tensor(y[idx]), torch.as_tensor(w[idx]),
                               torch.as_tensor(idx))
            return DataLoader(ds, batch_size=batch_size, shuffle=True, generator=generator)
        tf = train_transform(self.ext.image_size) if augment else self.eval_tf
        ds = torch.utils.data.Subset(_WeightedImageDataset(self.source, y, w, tf), idx)
        return _ImageBatches(DataLoader(ds, batch_size=batch_size, shuffle=True, generator=generator),
                             self.mean, self.std, self.device)

    def forward(self, net, x):
        return net(x, self.start) if self.prefix_cache else net(x)

    def features(self, net, x):
        """The head's input (standardised pooled features) of a training batch."""
        return net.features(x, self.start) if self.prefix_cache else net.features(x)

    def outputs(self, net, idx):
        if self.cut:
            return torch.cat([net(self.prefix(net, c).to(self.device), self.start) for c in _chunks(idx)])
        return _predict_images(net, self.source, idx, self.ext, self.device)

    def pooled(self, net, idx):
        with torch.no_grad():
            if self.cut:
                return torch.cat([net.pooled(self.prefix(net, c).to(self.device), self.start) for c in _chunks(idx)])
            return torch.cat([net.pooled(_to_input(b, self.mean, self.std, self.device))
                              for _, b in iter_batches(self.source, self.eval_tf, 16, idx, n_jobs=0)])
