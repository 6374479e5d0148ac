"""The shape of the house: imports run only down the floors, and no module touches
another class's underscore attributes. Both are read from the source (ast), not run."""

import ast
import inspect
import re
from pathlib import Path

import pytest

import skfg

ROOT = Path(skfg.__file__).parent

# Floors from the ground up: a module imports only modules of lower floors. A new module
# must be given a floor here (docs/developing.rst explains where things go).
FLOORS = [
    # the standard library only: atomic writes, the warning and error classes, warnings and progress bars,
    # malloc's settings while training
    {"_files", "exceptions", "_messages", "_memory"},
    {"_decode"},  # numpy and Pillow only: what X holds, decoding, the inference resize
    {"serving"},  # + onnxruntime: an exported model served without torch
    # ground: torch / numpy / Pillow only
    {"_boxes", "_cache", "_distances", "_engine", "_table", "_training", "_version", "images", "pooling", "backbones",
     "store"},
    {"_base", "_data", "_network", "datasets", "index", "losses"},  # plumbing under the estimators
    {"extractor", "metrics", "parallel"},
    {"_classifier"},
    {"softmax", "impostor", "imprinting"},
    {"_exits", "localization"},
    {"early_exit", "export", "plotting"},
    {"persistence", "sequential"},  # the allow-list names the public estimators; the old early_exit name
    {"cli", "__init__"},  # the public face
    {"__main__"},  # python -m skfg
]
FLOOR = {name: level for level, names in enumerate(FLOORS) for name in names}
# sklearn's convention for extending a base estimator's constraints; torch's per-tensor
# in-place version counter and nn.Module's own registries, which the engine cache reads
# (never writes) to see in ~0.03 ms whether a network has changed; nn.Module's hook
# registries (per module and global), which the fused engine reads (never writes) to keep
# a network whose hooks a traced graph would not run (torch has no public way to ask)
ALLOWED_PRIVATE = {"_parameter_constraints", "_version", "_parameters", "_buffers", "_modules", "_forward_hooks",
                   "_forward_pre_hooks", "_global_forward_hooks", "_global_forward_pre_hooks"}


def _modules():
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        # a subpackage is one room; ``package`` is where the file's relative imports start
        yield path, rel.parts[0].removesuffix(".py"), list(rel.parts[:-1])


def _target(node, alias, package):
    """Path parts (under skfg/) that ``from ... import alias`` refers to, or None outside skfg."""
    if node.level:
        base = package[: len(package) - node.level + 1]
        return base + (node.module.split(".") if node.module else [alias.name])
    if (node.module or "").startswith("skfg."):
        return node.module.split(".")[1:]
    return None


def _upward_imports(source, room, package):
    """``(line, target room)`` of the imports of ``source`` that do not go down a floor."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                parts = _target(node, alias, package)
                if parts and parts[0] != room and FLOOR[parts[0]] >= FLOOR[room]:
                    yield node.lineno, parts[0]


def _private_uses(source, package=()):
    """``(line, code)`` where ``source`` reads or writes another object's ``_name``."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            if isinstance(owner, ast.Call) and getattr(owner.func, "id", None) == "super":
                continue
            if node.attr not in ALLOWED_PRIVATE:
                yield node.lineno, ast.unparse(node)
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:  # a private class or function of another module (a private module is fine)
                parts = _target(node, alias, list(package))
                module = ROOT.joinpath(*parts, alias.name) if parts and node.module else ROOT.joinpath(*parts or ["?"])
                if alias.name.startswith("_") and not alias.name.startswith("__") and parts and not module.with_suffix(".py").exists():
                    yield node.lineno, f"from {'.' * node.level}{node.module or ''} import {alias.name}"


def test_every_module_has_a_floor():
    missing = sorted({room for _, room, _ in _modules()} - set(FLOOR))
    assert not missing, f"give these modules a floor in FLOORS: {missing}"


def test_imports_run_only_down_the_floors():
    upward = [f"{path.relative_to(ROOT)}:{line} (floor {FLOOR[room]}) imports {target} (floor {FLOOR[target]})"
              for path, room, package in _modules() for line, target in _upward_imports(path.read_text(), room, package)]
    assert not upward, "\n".join(upward)


@pytest.mark.parametrize("room, code, upward", [
    ("images", "from .early_exit import EarlyExitClassifier", True),
    ("softmax", "from ._exits import run_stages", True),
    ("_base", "from .extractor import CNNFeatureExtractor", True),
    ("early_exit", "from ._exits import run_stages", False),
    ("early_exit", "import numpy as np", False),
])
def test_the_floor_check_catches_an_upward_import(room, code, upward):
    assert bool(list(_upward_imports(code, room, []))) is upward


def test_no_module_touches_another_objects_private_attributes():
    found = [f"{path.relative_to(ROOT)}:{line}: {code}"
             for path, _, package in _modules() for line, code in _private_uses(path.read_text(), package)]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("code, bad", [
    ("ext._weights_fingerprint = 1", True),
    ("self._fit(X)", False),
    ("super()._outputs(X)", False),
    ("from ._classifier import _FeatureData", True),
    ("from ._data import FeatureData", False),
])
def test_the_private_attribute_check_catches_what_it_should(code, bad):
    assert bool(list(_private_uses(code))) is bad


# ------------------------------------------------------------ the benchmarks use the public API only
BENCHMARKS = ROOT.parent / "benchmarks"


def _skfg_private_names(source):
    """``(line, code)`` where ``source`` (outside the package) uses a private skfg name: a
    private module (``skfg._table``), a private name of a module, or another object's
    ``_attribute``."""
    for node in ast.walk(ast.parse(source)):
        modules = []
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "skfg":
            modules = [node.module]
            names = [a.name for a in node.names]
            if any(n.startswith("_") and not n.startswith("__") for n in names):
                yield node.lineno, f"from {node.module} import {', '.join(names)}"
        elif isinstance(node, ast.Import):
            modules = [a.name for a in node.names if a.name.split(".")[0] == "skfg"]
        for module in modules:
            if any(part.startswith("_") and not part.startswith("__") for part in module.split(".")):
                yield node.lineno, f"import of {module}"
    yield from _private_uses(source)


def test_the_benchmarks_and_the_ledger_use_only_public_names():
    """No exemption list: what a benchmark needs becomes public API or stays in the benchmark."""
    files = sorted(BENCHMARKS.rglob("*.py"))
    assert any(f.parent.name == "ledger" for f in files)
    found = [f"{path.relative_to(ROOT.parent)}:{line}: {code}"
             for path in files for line, code in _skfg_private_names(path.read_text())]
    assert not found, "make these public API, or keep them in the benchmark:\n" + "\n".join(found)


@pytest.mark.parametrize("code, bad", [
    ("from skfg._table import format_table", True),
    ("import skfg._training", True),
    ("from skfg.export import _graph", True),
    ("clf._setting('lr')", True),
    ("from skfg.export import inference_module", False),
    ("self._phase = 1", False),
    ("from _common import DATA", False),
])
def test_the_public_names_check_catches_what_it_should(code, bad):
    assert bool(list(_skfg_private_names(code))) is bad


# ------------------------------------------------------------ the extractor is not a settings bag
# Names bound to a CNNFeatureExtractor in the package's code (``ext``, ``extractor``,
# ``self.extractor``, ``self.extractor_``, ``fitted_ext``): reading its parameters elsewhere
# than extractor.py couples a module to its settings; it should take the extractor's
# ``preprocessing_`` (skfg.images.Preprocessing) or ``pooled_trunk_`` instead.
EXTRACTOR_NAME = re.compile(r"(ext|extractor)_?|\w+_ext")
MAX_EXTRACTOR_SETTING_READS = 15


def _extractor_setting_reads(source):
    """``(line, code)`` reading a parameter (or ``input_normalization``) of a
    CNNFeatureExtractor bound to a name of :data:`EXTRACTOR_NAME`, by attribute or getattr."""
    settings = set(skfg.CNNFeatureExtractor().get_params()) | {"input_normalization"}

    def is_extractor(node):
        name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")
        return EXTRACTOR_NAME.fullmatch(name) is not None

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in settings and is_extractor(node.value):
            yield node.lineno, ast.unparse(node)
        elif (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "getattr" and len(node.args) >= 2
              and is_extractor(node.args[0]) and isinstance(node.args[1], ast.Constant)
              and node.args[1].value in settings):
            yield node.lineno, ast.unparse(node)


def test_few_modules_read_the_extractors_settings():
    found = [f"{path.relative_to(ROOT)}:{line}: {code}" for path, room, _ in _modules() if room != "extractor"
             for line, code in _extractor_setting_reads(path.read_text())]
    assert len(found) <= MAX_EXTRACTOR_SETTING_READS, "\n".join(found)


@pytest.mark.parametrize("code, n", [
    ("tf = eval_transform(ext.image_size, ext.resize)", 2),
    ("getattr(self.extractor, 'pooling', None)", 1),
    ("self.extractor_.input_normalization()", 1),
    ("prep = ext.preprocessing_; self.image_size", 0),
    ("args.image_size", 0),
])
def test_the_settings_count_sees_reads(code, n):
    assert len(list(_extractor_setting_reads(code))) == n


def test_the_pooled_forward_is_written_once():
    """Only skfg._network.PooledTrunk pools a trunk's stage outputs; everything else calls it."""
    found = [f"{path.relative_to(ROOT)}:{node.lineno}" for path, room, _ in _modules() if room not in ("_network", "pooling")
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None))
             in ("pool_stage_outputs", "forward_features", "global_pool")]
    assert not found, found


def test_the_training_loop_stays_short():
    """fit_loop delegates to TrainingState, the divergence guard and the progress bar."""
    from skfg._training import fit_loop

    assert len(inspect.getsource(fit_loop).splitlines()) <= 120


def test_the_index_has_no_method_name_chains():
    """NearestNeighborIndex reads what differs between index types from its table (one row
    per method), never by comparing ``self.method`` with names."""
    source = (ROOT / "index.py").read_text()
    compared = [node.lineno for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Compare)
                and "self.method" in {ast.unparse(node.left), *map(ast.unparse, node.comparators)}]
    assert not compared, f"index.py compares self.method at lines {compared}"


# ------------------------------------------------------------ docs/developing.rst names what exists
DEVELOPING = ROOT.parent / "docs" / "developing.rst"


def _named_in_developing(text):
    """``(kind, name)`` of what docs/developing.rst names: file paths, the targets of
    :class:/:func:/:meth: roles, and the Python identifiers in double backticks."""
    for target in re.findall(r":(?:class|func|meth|mod|data):`~?([\w.]+)`", text):
        yield "object", target
    for literal in re.findall(r"``([^`]+)``", text):
        if re.fullmatch(r"[\w./-]+\.(py|md|json)|[\w-]+/([\w./-]*)", literal):
            yield "path", literal
        elif re.fullmatch(r"[A-Za-z_][\w.]*(\(.*\))?", literal):
            yield "identifier", literal.split("(")[0].split(".")[-1]


def _developing_problems(text):
    import importlib

    sources = "\n".join(p.read_text() for p in [*ROOT.rglob("*.py"), *(ROOT.parent / "tests").glob("*.py"),
                                                *(ROOT.parent / "benchmarks").glob("*.py")])
    for kind, name in _named_in_developing(text):
        if kind == "path":
            if not any((base / name).exists() for base in (ROOT.parent, ROOT)):
                yield f"no file {name}"
        elif kind == "object":
            parts = name.split(".")
            for cut in range(len(parts), 0, -1):  # the longest importable module, then attributes
                try:
                    obj = importlib.import_module(".".join(parts[:cut]))
                except ImportError:
                    continue
                for attr in parts[cut:]:
                    obj = getattr(obj, attr, None)
                break
            if obj is None:
                yield f"no object {name}"
        elif not re.search(rf"\b{re.escape(name)}\b", sources):
            yield f"no name {name} in skfg/, tests/ or benchmarks/"


def test_developing_names_only_files_and_code_that_exist():
    problems = sorted(set(_developing_problems(DEVELOPING.read_text())))
    assert not problems, "docs/developing.rst is out of date:\n" + "\n".join(problems)


def test_the_developing_check_sees_a_renamed_function():
    renamed = "Training" + "Stats"  # (spelled apart: this file is searched too)
    text = f"Training runs in :func:`skfg._training.fit_loops` over ``{renamed}`` in ``skfg/_trainer.py``."
    assert sorted(_developing_problems(text)) == ["no file skfg/_trainer.py", f"no name {renamed} in skfg/, "
                                                  "tests/ or benchmarks/", "no object skfg._training.fit_loops"]
