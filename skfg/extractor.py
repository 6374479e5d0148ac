"""``CNNFeatureExtractor``: images -> pooled features of one or several CNN stages."""

import hashlib
import json
import os
from numbers import Integral

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from ._base import TorchStateMixin, image_input_tags, resolve_device
from ._cache import get_feature_cache
from ._engine import ENGINES, cached_engine, engine_batches, resolve_engine, serving
from ._messages import progress_bar
from ._network import PooledTrunk, trunk_settings
from .backbones import build_backbone, by_reference, get_backbone_spec, probe_channels, state_fingerprint
from .images import ImageSource, Preprocessing
from .pooling import POOLINGS


def resolve_layers(layers, stage_names):
    """Validate ``layers`` ("last", a stage name or a list of them) against the backbone."""
    if isinstance(layers, str):
        layers = [stage_names[-1]] if layers == "last" else [layers]
    layers = list(layers)
    if not layers:
        raise ValueError("layers is empty; give 'last' or stage names.")
    unknown = [name for name in layers if name not in stage_names]
    if unknown:
        raise ValueError(
            f"Unknown layer(s) {unknown}. Valid layers for this backbone: "
            f"{', '.join(stage_names)} (or 'last')."
        )
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers has duplicates: {layers}")
    return layers


class CNNFeatureExtractor(TorchStateMixin, TransformerMixin, BaseEstimator):
    """Extract pooled features of a pretrained CNN from images.

    A scikit-learn transformer: ``fit`` loads the backbone (it learns nothing from the
    data), ``transform`` maps images to a float32 array ``(n_images, n_features)``.
    With several ``layers`` the per-layer features are concatenated; their column ranges
    are in ``feature_groups_``.

    Parameters
    ----------
    backbone : str, default="efficientnet_lite0"
        A name from :func:`skfg.backbones.list_backbones`.
    weights : None, "imagenet", path or torchvision weights enum, default="imagenet"
        Where the weights come from (see :func:`skfg.backbones.build_backbone`).
        Nothing is ever downloaded.
    layers : "last", str or list of str, default="last"
        Stages whose outputs become features, e.g. ``["stage4", "stage6", "head"]``.
    pooling : {"gap", "gmp", "kmax", "kmax_weighted"}, default="gap"
        Global average, global max, or global k-max pooling (ELoPE eq. 3).
        ``"kmax_weighted"`` (eq. 4) learns K weights over the sorted maxima when a
        classifier fine-tunes this extractor (``SoftmaxClassifier(extractor=...)``);
        here, with no learned weights, it equals ``"kmax"``.
    k : int, default=4
        Number of maxima averaged by the k-max poolings.
    normalize : bool, default=True
        L2-normalise each layer's pooled vector.
    image_size : int, default=224
        Side of the square network input, and the fine-tuning recipe's test size (its
        training crops are 179 px). Fine-tuned for 11 epochs at 224 px, EfficientNet-Lite0
        is more accurate on ``stanford_cars_a`` than for 22 epochs at 160 px in about the
        same fitting time (``benchmarks/results/default_candidate.md``); 160 px (the
        previous default) predicts faster.
    resize : {"crop", "squash"}, default="squash"
        ``"squash"``: resize the whole image to ``image_size x image_size`` (the usual
        practice for fine-grained images: the object's ends are not cut off);
        ``"crop"``: resize the shorter side to ``image_size`` and take the centre crop
        (the default before skfg 0.3).
    batch_size : int, default=4
        Images per forward pass. Small batches in channels-last memory format are the
        fastest on CPUs (see ``benchmarks/results/extract.md``).
    device : str, default="auto"
        ``"auto"`` uses CUDA when present, else the CPU.
    n_jobs : int or None, default=None
        Threads that decode images while the network runs; 0 decodes in the calling
        thread. ``None`` picks 0 when the network runs on the CPU (it already uses every
        core, and a decode thread measured no faster on 2 cores, see
        ``benchmarks/results/extract.md``) and ``min(4, cpu_count)`` on a GPU.
    cache : bool or str, default=True
        Reuse features of images seen before with the same settings: ``True`` keeps
        them in memory (process-wide, see :func:`skfg.clear_feature_cache`), a
        directory path also stores them on disk (shared between processes and runs),
        ``False`` disables caching.
    verbose : bool, int or "auto", default="auto"
        A progress bar over the images being transformed: ``"auto"`` shows it in a terminal or a
        Jupyter notebook once the work has run a few seconds (short calls print
        nothing); ``True``/``1`` always, ``False``/``0`` never.
    jpeg_draft : bool, default=False
        Decode JPEG files at a reduced size (libjpeg's DCT scaling: 1/2, 1/4 or 1/8, while
        both sides stay at least ``image_size``) instead of decoding the full photograph
        and resizing it: a faster decode of large files, with slightly different pixels
        (its effect on accuracy is measured in ``benchmarks/results/draft.md``).
    engine : {"auto", "fused", "eager", "onnxruntime"}, default="auto"
        How the network runs in ``transform`` (and in ``predict`` of a classifier given
        this extractor): ``"fused"`` folds every BatchNorm into the convolution before it
        (same features within float32 rounding, faster on CPUs); ``"eager"`` runs the
        network as trained; ``"onnxruntime"`` exports it to ONNX in memory once (about
        half a second) and runs it with onnxruntime (the ``[onnx]`` extra, CPU only; the
        fastest network here, see ``docs/inference.rst``). ``"auto"`` is
        ``"onnxruntime"`` where the extra is installed and the network is on the CPU (a
        network that does not export runs ``"fused"``), else ``"fused"``. Training never
        uses an engine; nothing of it is saved with a model.

    Attributes
    ----------
    network_ : StagedNetwork
        The backbone, in eval mode, on ``device_``.
    device_ : str
        The torch device used.
    layers_ : list of str
        The resolved layer names.
    feature_groups_ : dict of str -> slice
        Columns of each layer in the output of ``transform``.
    n_features_out_ : int
        Number of output columns.
    preprocessing_ : skfg.images.Preprocessing
        How ``transform`` turns images into the network's input (image size, resize,
        the backbone's normalisation, batch size, decode threads), from the current
        parameters.
    pooled_trunk_ : skfg._network.PooledTrunk
        ``network_`` with this extractor's layers and pooling: the module ``transform``
        runs on a batch of ``preprocessing_`` (a view of ``network_``, not a copy).

    See Also
    --------
    skfg.backbones.list_backbones : Available backbones.

    Notes
    -----
    X holds images, not a feature matrix, so ``validate_data`` (and
    ``n_features_in_``) do not apply; :class:`skfg.images.ImageSource` validates X
    instead and names the offending image in its errors.

    Examples
    --------
    >>> from skfg import CNNFeatureExtractor
    >>> from skfg.datasets import make_fine_grained
    >>> X, y = make_fine_grained(n_classes=3, n_per_class=2, image_size=64, random_state=0)
    >>> ext = CNNFeatureExtractor(layers=["stage4", "head"], image_size=64).fit(X)
    >>> ext.transform(X).shape
    (6, 1360)
    >>> ext.feature_groups_["stage4"]
    slice(0, 80, None)
    """

    _parameter_constraints = {
        "backbone": [str],  # checked against the registry at fit (register_backbone may add names)
        "weights": "no_validation",  # checked by build_backbone
        "layers": [str, list, tuple],
        "pooling": [StrOptions(set(POOLINGS))],
        "k": [Interval(Integral, 1, None, closed="left")],
        "normalize": ["boolean"],
        "image_size": [Interval(Integral, 16, None, closed="left")],
        "resize": [StrOptions({"crop", "squash"})],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "device": [str, None],
        "n_jobs": [Interval(Integral, 0, None, closed="left"), None],
        "cache": ["boolean", str, os.PathLike],
        "verbose": ["verbose", StrOptions({"auto"})],
        "jpeg_draft": ["boolean"],
        "engine": [StrOptions(set(ENGINES))],
    }

    def __init__(
        self,
        backbone="efficientnet_lite0",
        *,
        weights="imagenet",
        layers="last",
        pooling="gap",
        k=4,
        normalize=True,
        image_size=224,
        resize="squash",
        batch_size=4,
        device="auto",
        n_jobs=None,
        cache=True,
        verbose="auto",
        jpeg_draft=False,
        engine="auto",
    ):
        self.backbone = backbone
        self.weights = weights
        self.layers = layers
        self.pooling = pooling
        self.k = k
        self.normalize = normalize
        self.image_size = image_size
        self.resize = resize
        self.batch_size = batch_size
        self.device = device
        self.n_jobs = n_jobs
        self.cache = cache
        self.verbose = verbose
        self.jpeg_draft = jpeg_draft
        self.engine = engine

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X=None, y=None):
        """Load the backbone and resolve the layers; X and y are not used.

        Parameters
        ----------
        X : ignored
        y : ignored

        Returns
        -------
        self : CNNFeatureExtractor
        """
        spec = get_backbone_spec(self.backbone)
        layers = resolve_layers(self.layers, list(spec.stages))
        device = resolve_device(self.device)
        resolve_engine(self.engine, device)  # (onnxruntime missing: fail before any work)
        network = build_backbone(self.backbone, self.weights)
        try:
            channels = probe_channels(network, image_size=self.image_size)
        except RuntimeError as exc:
            raise ValueError(
                f"image_size={self.image_size} is too small for backbone {self.backbone!r}: {exc}"
            ) from exc
        # Everything checked: now set the fitted attributes (never half of them).
        self.network_ = network.to(device, memory_format=torch.channels_last).eval()
        self.device_ = device
        self.layers_ = layers
        self.feature_groups_, start = {}, 0
        for name in layers:
            self.feature_groups_[name] = slice(start, start + channels[name][0])
            start += channels[name][0]
        self.n_features_out_ = start
        self._weights_fingerprint = state_fingerprint(self.network_)
        return self

    def _make_module(self, name):
        return build_backbone(self.backbone, weights=None).to(memory_format=torch.channels_last)

    def _pretrained_sources(self, name):
        return [("", self.backbone)] if name == "network_" and by_reference(self.backbone, self.weights) else []

    def input_normalization(self):
        """``(mean, std)`` per channel with which images in [0, 1] are normalised for the backbone."""
        spec = get_backbone_spec(self.backbone)
        return spec.mean, spec.std

    @property
    def preprocessing_(self):
        check_is_fitted(self, "network_")  # (an AttributeError before fit, as for fitted attributes)
        return Preprocessing.from_extractor(self)

    @property
    def pooled_trunk_(self):
        check_is_fitted(self, "network_")
        return PooledTrunk(self.network_, self.layers_, self.pooling, self.k, self.normalize).eval()

    def inference_engine(self, engine=None):
        """The callable ``transform`` runs on each input batch of ``preprocessing_``: the
        pooled trunk as engine ``engine`` (default: the ``engine`` parameter), built at its
        first use and kept while the network's weights and these settings stay the same.

        Returns
        -------
        run : callable
            Input batch ``(n, 3, S, S)`` (normalised, channels-last, on ``device_``) ->
            features ``(n, n_features_out_)`` as a torch tensor.
        """
        check_is_fitted(self, "network_")
        engine = resolve_engine(self.engine if engine is None else engine, self.device_)
        key = (tuple(self.layers_), self.pooling, self.k, bool(self.normalize), int(self.image_size), str(self.device_))
        example = lambda: self.preprocessing_.example_batch(self.device_)  # noqa: E731 - (made only to build)
        return cached_engine(self.network_, engine, example, build=lambda: self.pooled_trunk_, key=key)

    def trunk_settings(self):
        """What a classifier that fine-tunes this (fitted) extractor's trunk keeps to rebuild it:
        the backbone, layers, pooling, ``k``, ``normalize`` and whether the weights are the
        backbone's packaged ones (``skfg._network.trunk_settings``)."""
        check_is_fitted(self, "network_")
        return trunk_settings(self.backbone, self.layers_, self.pooling, self.k, self.normalize,
                              by_reference(self.backbone, self.weights))

    def set_network(self, network):
        """Use ``network``, a fine-tuned backbone of the same architecture, as ``network_``.

        How a fine-tuning estimator hands its trained trunk to a fitted extractor: the
        network is frozen, moved to ``device_`` (channels-last), and the feature cache
        keys follow its weights. Returns ``self``.
        """
        check_is_fitted(self, "network_")
        old, new = self.network_.state_dict(), network.state_dict()
        if old.keys() != new.keys() or any(old[k].shape != new[k].shape for k in old):
            raise ValueError(f"set_network needs a {self.backbone!r} network of the same architecture as network_.")
        self.network_ = network.requires_grad_(False).to(self.device_, memory_format=torch.channels_last).eval()
        self._weights_fingerprint = state_fingerprint(self.network_)
        return self

    def _cache_key(self):
        """Fingerprint of everything that determines the features, from the current parameters
        (the weights' fingerprint is taken at ``fit`` and by :meth:`set_network`)."""
        settings = {
            "backbone": self.backbone,
            "weights": self._weights_fingerprint,
            "layers": self.layers_,
            "pooling": "kmax" if self.pooling == "kmax_weighted" else self.pooling,  # same features
            "k": self.k if self.pooling.startswith("kmax") else None,
            "normalize": bool(self.normalize),
            "image_size": int(self.image_size),
            "resize": self.resize,
        }
        if self.jpeg_draft:  # other pixels: other features (the key of the full decode is unchanged)
            settings["jpeg_draft"] = True
        return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()

    def transform(self, X):
        """Features of the images in X.

        Parameters
        ----------
        X : array-like
            Image paths (1-D), a uint8 array ``(n, H, W[, 3])``, or a list of PIL images.

        Returns
        -------
        features : ndarray of shape (n_images, n_features), dtype float32
            ``n_features`` is ``n_features_out_``.

        Raises
        ------
        skfg.exceptions.ImageDecodeError
            If an image cannot be decoded; the message names the file. Use
            :func:`skfg.datasets.verify_images` to list every bad file at once.
        """
        check_is_fitted(self, "network_")
        source = ImageSource(X)
        n = len(source)
        out = np.empty((n, self.n_features_out_), dtype=np.float32)
        directory = None
        if isinstance(self.cache, (str, os.PathLike)):
            directory = os.fspath(self.cache)
            if not directory:
                raise ValueError("cache='' is not a directory; use True, False or a path.")
        use_cache = bool(self.cache)
        todo = np.arange(n)
        if use_cache:
            cache, config = get_feature_cache(), self._cache_key()
            keys = [source.cache_key(i) for i in range(n)]
            found = cache.get(config, keys, directory, shape=(self.n_features_out_,))
            todo = np.array([i for i, v in enumerate(found) if v is None], dtype=int)
            for i, v in enumerate(found):
                if v is not None:
                    out[i] = v
        if len(todo) == 0:
            return out
        run = self.inference_engine()
        batches = engine_batches(run, self.preprocessing_, source, self.device_, todo)
        with serving(run), progress_bar(self.verbose, len(todo), "extracting", "img") as progress:
            for idx, x in batches:
                feats = run(x).float().cpu().numpy()
                out[idx] = feats
                if use_cache:
                    cache.put(config, [keys[i] for i in idx], feats, directory)
                progress.update(len(idx))
        return out

    def get_feature_names_out(self, input_features=None):
        """Output column names: ``"<layer>_<channel>"``.

        Returns
        -------
        names : ndarray of str
        """
        check_is_fitted(self, "network_")
        names = []
        for layer, cols in self.feature_groups_.items():
            names.extend(f"{layer}_{i}" for i in range(cols.stop - cols.start))
        return np.asarray(names, dtype=object)

    def __sklearn_tags__(self):
        return image_input_tags(super().__sklearn_tags__())
