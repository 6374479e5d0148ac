"""The shape of the house: imports run only down the floors, and no module touches
another class's underscore attributes. Both are read from the source (ast), not run."""

import ast
from pathlib import Path

import pytest

import skfg

ROOT = Path(skfg.__file__).parent

# Floors from the ground up: a module imports only modules of lower floors. A new module
# must be given a floor here (docs/developing.rst explains where things go).
FLOORS = [
    {"_files"},  # the standard library only: atomic writes
    # ground: torch / numpy / Pillow only
    {"_boxes", "_cache", "_distances", "_table", "_training", "_version", "images", "pooling", "backbones", "store"},
    {"_base", "_data", "_network", "datasets", "index", "losses"},  # plumbing under the estimators
    {"extractor", "metrics", "parallel"},
    {"_classifier", "localization"},
    {"softmax", "impostor", "imprinting"},
    {"_exits"},
    {"sequential", "export", "plotting"},
    {"persistence"},  # its allow-list names the public estimators
    {"cli", "__init__"},  # the public face
    {"__main__"},  # python -m skfg
]
FLOOR = {name: level for level, names in enumerate(FLOORS) for name in names}
# sklearn's convention for extending a base estimator's constraints
ALLOWED_PRIVATE = {"_parameter_constraints"}


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
    ("images", "from .sequential import EarlyExitClassifier", True),
    ("softmax", "from ._exits import run_stages", True),
    ("_base", "from .extractor import CNNFeatureExtractor", True),
    ("sequential", "from ._exits import run_stages", False),
    ("sequential", "import numpy as np", False),
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


def test_the_benchmarks_and_the_docs_extension_use_only_public_names():
    files = [*sorted(BENCHMARKS.glob("*.py")), *sorted((ROOT.parent / "docs" / "_ext").glob("*.py"))]
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
