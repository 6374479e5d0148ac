"""Saving and loading fitted models in a safe format, which never runs code from the file.

:func:`save_model` writes the skops format (a zip of JSON and arrays; torch weights are
stored as state-dict bytes and read back with ``torch.load(weights_only=True)``).
:func:`load_model` builds only the types of an explicit allow-list
(:func:`loadable_types`: skfg's public estimators and their parts, the scikit-learn
estimators a Pipeline holds with them, plain data), checked by name *before* anything is
imported; a file naming any other type or any function is refused, and the message names
it. A loaded model never chooses where skfg writes (:func:`forget_write_paths`).
:func:`save_model` writes atomically: a failed save leaves the previous file intact.

Weights still equal to a backbone's packaged ImageNet weights are saved by reference
(the backbone's name and a SHA-256 digest; :mod:`skfg.backbones._reference`) in every format, so a
model with a frozen EfficientNet-Lite0 takes kilobytes, not 19 MB; loading restores them
from the installed package and refuses clearly when they differ. ``save_model(...,
embed_weights=True)`` or :func:`embedded_weights` keeps every weight in the file.

Pickle and joblib files (``joblib.dump``) can run any code they hold when they are
loaded: load them only from sources you trust (``load_model(path, allow_pickle=True)``).
Every saved model, in either format, carries the skfg version; loading one saved by
another version warns (:class:`skfg.exceptions.SkfgVersionWarning`).
"""

import contextlib
import functools
import json
import os
import zipfile

import numpy as np

from ._files import atomic_path
from .backbones import embedded_weights

# The classes a saved model may contain, by name, checked before anything is imported.
# skfg's public estimators and their documented parts (given as classes: skfg is imported)
# and the scikit-learn estimators a user puts in a Pipeline with them (given by their public
# module: :func:`loadable_types` resolves each to the module that defines it).
SKLEARN_LOADABLE = {
    "sklearn.pipeline": ("Pipeline", "FeatureUnion"),
    "sklearn.preprocessing": ("StandardScaler", "Normalizer", "MinMaxScaler", "MaxAbsScaler", "RobustScaler",
                              "LabelEncoder", "LabelBinarizer"),
    "sklearn.decomposition": ("PCA", "TruncatedSVD"),
    "sklearn.discriminant_analysis": ("LinearDiscriminantAnalysis",),
    "sklearn.svm": ("LinearSVC", "SVC"),
    "sklearn.linear_model": ("LogisticRegression", "RidgeClassifier"),
    "sklearn.neighbors": ("KNeighborsClassifier", "NearestCentroid"),
    "sklearn.dummy": ("DummyClassifier",),
}
# skops' nodes that rebuild a function or a bound method: never built unless the user
# trusts the name (a function stored in a model could be called on the file's terms)
_CALLABLE_NODES = {"FunctionNode", "MethodNode", "PartialNode", "OperatorFuncNode"}


def _type_name(cls):
    return f"{cls.__module__}.{cls.__qualname__}"


def _skfg_loadable():
    from .extractor import CNNFeatureExtractor
    from .images import Augmentation, Preprocessing
    from .impostor import ImpostorClassifier
    from .imprinting import ImprintedClassifier
    from .index import NearestNeighborIndex
    from .localization import ObjectCropper
    from .parallel import ParallelPostFit
    from .early_exit import EarlyExitClassifier
    from .softmax import SoftmaxClassifier

    return [Augmentation, CNNFeatureExtractor, EarlyExitClassifier, ImpostorClassifier, ImprintedClassifier,
            NearestNeighborIndex, ObjectCropper, ParallelPostFit, Preprocessing, SoftmaxClassifier]


def _data_types():
    """The plain data types of a saved model: Python's, NumPy's arrays, dtypes and random states."""
    builtin = [int, float, complex, str, bool, bytes, bytearray, list, tuple, set, dict, slice, type(None)]
    numpy = [np.ndarray, np.ma.MaskedArray, np.dtype, np.random.RandomState, np.random.Generator, np.random.SeedSequence]
    bit_generators = [t for t in vars(np.random).values() if isinstance(t, type) and issubclass(t, np.random.BitGenerator)]
    scalars = set(np.sctypeDict.values())
    names = {_type_name(t) for t in [*builtin, *numpy, *scalars, *bit_generators]}
    names |= {f"numpy.random.{t.__name__}" for t in bit_generators}  # skops names them by their public path
    names |= {f"{t.__module__}.{t.__name__}" for t in scalars}
    return names


@functools.lru_cache(maxsize=None)
def loadable_types():
    """The type names (``"module.Class"``) that :func:`load_model` builds without being told.

    skfg's public estimators and their parts (:class:`~skfg.index.NearestNeighborIndex`,
    :class:`~skfg.parallel.ParallelPostFit`, :class:`~skfg.images.Preprocessing`,
    :class:`~skfg.images.Augmentation`), the scikit-learn estimators of
    :data:`SKLEARN_LOADABLE`, and plain data (Python's containers and scalars, NumPy's
    arrays, dtypes and random states). Nothing else: not skfg's private classes, not the
    rest of scikit-learn, never a function.

    Returns
    -------
    names : frozenset of str
    """
    import importlib

    classes = list(_skfg_loadable())
    for module, names in SKLEARN_LOADABLE.items():
        public = importlib.import_module(module)  # our own fixed list, never a name from a file
        classes += [getattr(public, name) for name in names]
    renamed = {"skfg.sequential.EarlyExitClassifier"}  # files saved before skfg 0.4 (the module's old name)
    return frozenset({_type_name(c) for c in classes} | renamed | _data_types())


def _named_types(path):
    """``(type names, callable names)`` of every node in a skops file, read from its
    ``schema.json`` as text: nothing is imported or built."""
    with zipfile.ZipFile(path) as archive:
        schema = json.loads(archive.read("schema.json"))
    types, callables = set(), set()
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            if "__loader__" in node and ("__module__" in node or "__class__" in node):
                module, cls = str(node.get("__module__")), str(node.get("__class__"))
                # a dot in the class part would split "module.Class" elsewhere than the import does
                name = f"{module}.{cls}" if "." not in cls else f"{module}:{cls}"
                if node["__loader__"] in _CALLABLE_NODES:
                    func = (node.get("content") or {}).get("func") if node["__loader__"] == "MethodNode" else None
                    callables.add(f"{name}.{func}" if func else name)
                else:
                    types.add(name)
            stack.extend(node.values())
    return types, callables


# Parameters that name a folder skfg writes to, and what :func:`load_model` sets them to
WRITE_PATH_PARAMS = {"cache": True, "checkpoint_dir": None}


def forget_write_paths(model):
    """Reset every parameter that names a folder to write to (:data:`WRITE_PATH_PARAMS`),
    in ``model`` and every estimator it holds, fitted parts included.

    A loaded model must not choose where skfg writes: an extractor's ``cache`` folder
    becomes the in-memory cache, a ``checkpoint_dir`` becomes None; give them again
    (``set_params``) to use them.

    Returns
    -------
    reset : list of str
        ``"<class>.<parameter>"`` of each reset parameter.
    """
    from sklearn.base import BaseEstimator

    reset, seen, stack = [], set(), [model]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, BaseEstimator):
            params = obj.get_params(deep=False)
            for name, safe in WRITE_PATH_PARAMS.items():
                if isinstance(params.get(name), (str, os.PathLike)):
                    obj.set_params(**{name: safe})
                    reset.append(f"{type(obj).__name__}.{name}")
        if isinstance(obj, (list, tuple)):
            stack.extend(obj)
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif hasattr(obj, "__dict__") and not isinstance(obj, type):
            stack.extend(v for v in vars(obj).values() if isinstance(v, (BaseEstimator, list, tuple, dict)))
    return reset


def _skops():
    try:
        import skops.io
    except ImportError as exc:
        raise ImportError("The safe model format needs skops: pip install skops (skfg's [safe] extra).") from exc
    return skops.io


def save_model(model, path, *, embed_weights=False):
    """Save a fitted model (an estimator or a Pipeline) in the safe format.

    Parameters
    ----------
    model : estimator
    path : str or path-like
        The file to write (``.skops`` by convention).
    embed_weights : bool, default=False
        Store every weight in the file. By default the tensors still equal to a
        backbone's packaged ImageNet weights are stored by reference (the backbone's name
        and a SHA-256 digest) and restored from the installed package on loading, which
        refuses, naming both digests, when the installed weights differ: a frozen
        EfficientNet-Lite0 takes kilobytes instead of 19 MB. Embed them for a machine
        without the weights package.
    """
    sio = _skops()
    with embedded_weights() if embed_weights else contextlib.nullcontext(), atomic_path(path) as tmp:
        sio.dump(model, tmp)


def is_safe_format(path):
    """Whether ``path`` starts as skfg's safe format does (a zip archive: ``PK\\x03\\x04``).

    A pickle or joblib file starts with the pickle protocol's bytes instead, even when it
    holds torch state (itself zip archives) further on; a file that starts as a zip but is
    truncated still counts, and :func:`load_model` reports it as damaged.
    """
    with open(path, "rb") as fh:
        return fh.read(4) == b"PK\x03\x04"


# The first bytes of the kinds of file a model argument gets by mistake (model_file_kind).
_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", b"II*\x00", b"MM\x00*")
# pickle protocols 2-5, and the compressions joblib.dump(compress=...) writes (zlib, gzip, bz2, xz, lzma, lz4)
_PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"\x78\x01", b"\x78\x5e", b"\x78\x9c",
                 b"\x78\xda", b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"\x5d\x00\x00", b"\x04\x22\x4d\x18")


def model_file_kind(path):
    """What the file ``path`` is, read from its first bytes and, for a zip, its member names,
    without unpickling or decoding anything.

    Parameters
    ----------
    path : str or path-like
        An existing file.

    Returns
    -------
    kind : str
        ``"safe"`` (skfg's safe format, :func:`save_model`), ``"pickle"`` (a pickle or
        joblib file, compressed or not), ``"damaged"`` (starts as the safe format but is
        not a whole zip archive: truncated?), ``"torch"`` (a ``torch.save`` archive),
        ``"onnx"`` (an ONNX graph, e.g. from :func:`skfg.export.export_onnx`),
        ``"image"``, ``"empty"`` or ``"unknown"``.

    Examples
    --------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "model.skops")
    >>> with open(path, "wb") as fh:
    ...     _ = fh.write(b"\\xff\\xd8\\xff\\xe0 a JPEG")
    >>> model_file_kind(path)
    'image'
    """
    path = os.fspath(path)
    with open(path, "rb") as fh:
        head = fh.read(30 + 65535)  # a zip's first local header and member name at most
    if not head:
        return "empty"
    if head.startswith(b"PK\x03\x04"):
        # the first member's name, from its local header (30 bytes, then the name): a truncated
        # archive may still show a whole zip stored inside it (torch state), without that member
        first = head[30:30 + int.from_bytes(head[26:28], "little")].decode("utf-8", "replace")
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return "damaged"
        if first not in names:
            return "damaged"
        if "schema.json" in names:
            return "safe"
        return "torch" if any(n.endswith("/data.pkl") or n == "data.pkl" for n in names) else "unknown"
    if head.startswith(_IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return "image"
    if head.startswith(_PICKLE_MAGIC):
        return "pickle"
    # an ONNX ModelProto starts with its ir_version (field 1, a varint: tag 0x08)
    if head[:1] == b"\x08" and (path.lower().endswith(".onnx") or b"pytorch" in head or b"onnx" in head):
        return "onnx"
    return "unknown"


def not_a_model_message(path, kind):
    """The one-line reason why the file ``path`` of :func:`model_file_kind` ``kind`` is no
    model file skfg can load (None for ``"safe"`` and ``"pickle"``)."""
    return {
        "image": f"{path} is an image, not a model file.",
        "onnx": f"{path} is an ONNX file, not a model file of skfg: serve it with skfg.serving.OnnxModel "
                "(or onnxruntime).",
        "torch": f"{path} is a PyTorch file (torch.save), not a model file of skfg: save a fitted estimator "
                 "with skfg.save_model.",
        "damaged": f"{path} is a damaged (truncated?) model file of skfg's safe format.",
        "empty": f"{path} is empty, not a model file.",
        "unknown": f"{path} is not a model file of skfg (neither skfg's safe format, written by skfg.save_model "
                   "or skfg fit, nor a joblib/pickle file).",
    }.get(kind)


def load_model(path, *, trusted=(), allow_pickle=False):
    """Load a model saved by :func:`save_model`, without running code from the file.

    Parameters
    ----------
    path : str or path-like
    trusted : sequence of str, default=()
        Further type or function names (``"module.Class"``) to build, after you have
        inspected them. By default only :func:`loadable_types` are: skfg's public
        estimators and their parts, the scikit-learn estimators of
        :data:`SKLEARN_LOADABLE`, and plain data; never a function (a function stored in a
        model could be called on the file's terms). The names are checked as text before
        anything is imported, so a file naming a module cannot make loading import it.
    allow_pickle : bool, default=False
        Also accept a pickle or joblib file. It can run any code it holds: only for
        files from sources you trust.

    Returns
    -------
    model : estimator
        With every folder to write to forgotten (:func:`forget_write_paths`): a
        ``cache=`` folder becomes the in-memory cache and ``checkpoint_dir`` None, so
        that a file cannot choose where skfg writes. Give them again with ``set_params``.

    Raises
    ------
    ValueError
        If the file names a type that is not trusted (the message lists them), is not a
        model file, or is truncated or damaged (the message names the file).

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from skfg import SoftmaxClassifier, load_model, save_model
    >>> X = np.random.RandomState(0).randn(20, 3)
    >>> clf = SoftmaxClassifier(max_epochs=2, random_state=0).fit(X, X[:, 0] > 0)
    >>> path = os.path.join(tempfile.mkdtemp(), "clf.skops")
    >>> save_model(clf, path)
    >>> bool((load_model(path).predict_proba(X) == clf.predict_proba(X)).all())
    True
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No such model file: {path}")
    kind = model_file_kind(path)
    if not_a_model_message(path, kind):
        raise ValueError(not_a_model_message(path, kind))
    if kind == "pickle":
        if not allow_pickle:
            raise ValueError(
                f"{path} is a pickle or joblib file, not skfg's safe format (save one with skfg.save_model). If it "
                "comes from a source you trust, pass allow_pickle=True: loading a pickle can run any code it holds."
            )
        import joblib

        try:
            model = joblib.load(path)
        except Exception as exc:  # truncated, damaged, or not a pickle
            raise ValueError(f"{path} is truncated or damaged ({type(exc).__name__}: {exc}).") from exc
        forget_write_paths(model)
        return model
    sio = _skops()
    try:
        types, callables = _named_types(path)
    except Exception as exc:
        raise ValueError(f"{path} is damaged or not a model file ({type(exc).__name__}: {exc}).") from exc
    trusted = {trusted} if isinstance(trusted, str) else set(trusted)
    refused = sorted((types - loadable_types() - trusted) | (callables - trusted))
    if refused:
        raise ValueError(
            f"{path} holds types that skfg does not trust: {', '.join(refused)}. Load only files from "
            "sources you trust; after inspecting these types, pass them as trusted=[...]."
        )
    try:
        model = sio.load(path, trusted=sorted(types | callables))
    except Exception as exc:
        raise ValueError(f"{path} could not be loaded ({type(exc).__name__}: {exc}).") from exc
    forget_write_paths(model)
    return model
