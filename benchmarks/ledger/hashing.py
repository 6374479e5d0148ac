"""Provenance of benchmark results: which skfg code a run executed, and whether it changed since.

A result is stale when the code that produced it has changed. "The code" is taken at the
grain of a definition (a function, a method, a class header, a module's top-level
statements) and restricted to what the run *executed*: :class:`ledger.tracer.Tracer`
records the code objects a benchmark process runs, and :func:`ledger.stamp.provenance`
stamps the result with the hash of every skfg definition it ran. A later edit to code the
run never executed (another estimator, the CLI, a new method) leaves the result valid; an
edit to anything it ran makes it stale.

What a run depended on beyond the code it ran (:func:`counted_definitions`): each module's
top-level statements (they ran at import); a module constant (``NAME = value`` at top level,
a definition of its own) when code that counts reads it by name, directly, through a
``from ... import`` of a skfg module or through another constant; a class header when one of
the class's own methods ran (or it has none, or is decorated, e.g. a dataclass), with the
headers of the skfg classes it inherits from. So editing a recipe constant stales the
results that read it, not every result that imported its module.

What a hash covers (:func:`definition_hashes`): the syntax tree of the definition, without
docstrings, comments, ``import`` statements, ``__all__`` and logging calls
(``logger.info(...)``, a module's ``logger = logging.getLogger(...)``), none of which can
change a number. A
definition that did not exist when the result was measured cannot have run, except when it
overrides something that did; :func:`stale_definitions` therefore also flags a new method
that overrides a method of a skfg base class that ran, a new dunder method and a new decorated
definition (a decorator may register it somewhere; ``classmethod``, ``staticmethod`` and
``property`` do not count). Not caught: a new method that code
outside skfg dispatches to by name (e.g. scikit-learn calling a newly added
``decision_function``), an import rebound to another object of the same name, a constant
read as a module attribute (``module.NAME``) and a class used only through inherited methods
while it has methods of its own.
"""

import ast
import hashlib
import json
from pathlib import Path

MODULE = "<module>"
_LOGGERS = {"logger", "_logger", "LOGGER"}
_LEVELS = {"debug", "info", "warning", "error", "exception", "critical"}


def _strip_docstring(node):
    body = getattr(node, "body", None)
    if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
            and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)):
        node.body = body[1:] or [ast.Pass()]


def code_hash(path):
    """SHA-1 of a Python file's code: its syntax tree without docstrings (comments are not
    in it). The per-module hash of the stamps written before definitions were recorded."""
    tree = ast.parse(Path(path).read_text())
    for node in ast.walk(tree):
        _strip_docstring(node)
    return hashlib.sha1(ast.dump(tree).encode()).hexdigest()


def _is_logging(stmt):
    """A logging call (``logger.info(...)``) or ``logger = logging.getLogger(...)``."""
    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
        func = stmt.value.func
        return (isinstance(func, ast.Attribute) and func.attr in _LEVELS and isinstance(func.value, ast.Name)
                and func.value.id in _LOGGERS)
    if isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Call):
        func = stmt.value.func
        return (isinstance(func, ast.Attribute) and func.attr == "getLogger" and isinstance(func.value, ast.Name)
                and func.value.id == "logging")
    return False


def _is_all(stmt):
    """``__all__ = [...]``: it only shapes ``from module import *``."""
    return (isinstance(stmt, (ast.Assign, ast.AugAssign)) and any(
        isinstance(t, ast.Name) and t.id == "__all__" for t in getattr(stmt, "targets", [getattr(stmt, "target", None)])))


class _Normalise(ast.NodeTransformer):
    """Drop docstrings and logging statements from every statement list."""

    def generic_visit(self, node):
        super().generic_visit(node)
        _strip_docstring(node)
        for field in ("body", "orelse", "finalbody"):
            stmts = getattr(node, field, None)
            if isinstance(stmts, list) and stmts and isinstance(stmts[0], ast.stmt):
                kept = [s for s in stmts if not _is_logging(s)]
                setattr(node, field, kept or [ast.Pass()])
        return node


def _digest(nodes):
    return hashlib.sha1("\n".join(ast.dump(n) for n in nodes).encode()).hexdigest()


_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


_CACHES = ("cache", "lru_cache", "cached_property")  # functools' memoising decorators


def _is_builtin_decorator(node):
    """``@classmethod``, ``@staticmethod``, ``@property``, ``@x.setter`` and functools'
    caches (``@functools.lru_cache(...)``): they register nothing."""
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Name):
        return node.id in ("classmethod", "staticmethod", "property", *_CACHES)
    return isinstance(node, ast.Attribute) and node.attr in ("setter", "getter", "deleter", *_CACHES)


def _names(nodes):
    """The names ``nodes`` read (``ast.Name`` loads), sorted."""
    return sorted({n.id for node in nodes for n in ast.walk(node)
                   if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)})


def _constant_names(stmt):
    """Names a top-level ``NAME = value`` (or ``NAME: type = value``) binds; [] otherwise."""
    if isinstance(stmt, ast.Assign) and all(isinstance(t, ast.Name) for t in stmt.targets):
        return [t.id for t in stmt.targets]
    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
        return [stmt.target.id]
    return []


def _outline(body, prefix, out, info):
    for node in body:
        if not isinstance(node, _DEFS):
            continue
        key = prefix + node.name
        if isinstance(node, ast.ClassDef):
            header = [*node.decorator_list, *node.bases, *node.keywords,
                      *(s for s in node.body if not isinstance(s, (*_DEFS, ast.Import, ast.ImportFrom)))]
            out[key] = _digest(header)
            info[key] = {"bases": [ast.unparse(b).split(".")[-1] for b in node.bases],
                         "decorated": any(not _is_builtin_decorator(d) for d in node.decorator_list),
                         "methods": [key + "." + n.name for n in node.body if isinstance(n, _DEFS)
                                     and not isinstance(n, ast.ClassDef)],
                         "refs": _names(header)}
            _outline(node.body, key + ".", out, info)
        else:
            out[key] = _digest([node])
            info[key] = {"decorated": any(not _is_builtin_decorator(d) for d in node.decorator_list),
                         "refs": _names([node])}


def _imported_from(path, node):
    """The file a top-level ``from ... import`` of the module at ``path`` reads (a relative
    import, or an absolute one of the module's own top-level package), or None."""
    path = Path(path).resolve()
    if node.level:
        base = path.parent
        for _ in range(node.level - 1):
            base = base.parent
    else:
        top = path.parent
        while (top.parent / "__init__.py").is_file():
            top = top.parent
        if not node.module or node.module.split(".")[0] != top.name:
            return None
        base = top.parent
    parts = node.module.split(".") if node.module else []
    target = base.joinpath(*parts) if parts else base
    for candidate in (target.with_suffix(".py"), target / "__init__.py"):
        if candidate.is_file():
            return str(candidate)
    return None


_PARSED = {}  # (path, source) -> _parse's result: every stamp checks the same files


def _parse(path):
    """``(hashes, info)``: each definition's hash, and what the checks need to know of it
    (``bases`` and ``methods`` of a class, ``decorated``, ``constant``, the names it reads,
    ``refs``; under ``"<module>"`` also ``imports``: ``{name: (file, name there)}``)."""
    source = Path(path).read_text()
    key = (str(path), source)
    if key not in _PARSED:
        _PARSED[key] = _parse_source(path, source)
    return _PARSED[key]


def _parse_source(path, source):
    tree = _Normalise().visit(ast.parse(source))
    out, info = {}, {}
    rest, constants, imports = [], {}, {}
    for s in tree.body:
        if isinstance(s, ast.ImportFrom):
            source = _imported_from(path, s)
            if source is not None:
                imports.update({a.asname or a.name: (source, a.name) for a in s.names})
        if isinstance(s, (*_DEFS, ast.Import, ast.ImportFrom)) or _is_all(s):
            continue
        names = _constant_names(s)
        for name in names:
            constants.setdefault(name, []).append(s)
        if not names:
            rest.append(s)
    out[MODULE] = _digest(rest)
    info[MODULE] = {"refs": _names(rest), "imports": imports}
    for name, stmts in constants.items():  # a module constant is a definition of its own
        out[name] = _digest(stmts)
        info[name] = {"constant": True, "refs": _names([s.value for s in stmts])}
    _outline(tree.body, "", out, info)
    return out, info


def definition_hashes(path):
    """``{definition: SHA-1}`` for a Python file: ``"<module>"`` (its top-level statements
    other than definitions and imports), each function ``"f"``, each class header ``"C"``
    (decorators, bases, class-level statements) and each method ``"C.m"`` (nested functions
    belong to the definition around them)."""
    return _parse(path)[0]


def definition_of(qualname, definitions):
    """The definition a code object's ``co_qualname`` belongs to: ``"f.<locals>.g"`` and
    ``"C.m.<locals>.<lambda>"`` belong to ``"f"`` and ``"C.m"``; module-level code to
    ``"<module>"``."""
    parts = qualname.split(".<locals>")[0].split(".")
    while parts:
        key = ".".join(parts)
        if key in definitions:
            return key
        parts.pop()
    return MODULE


def known_definitions(files, relative_to):
    """``{module path: [every definition]}`` of ``files``: what a later check counts as not new."""
    return {str(Path(f).resolve().relative_to(relative_to)): sorted(definition_hashes(f)) for f in files}


def counted_definitions(parsed, ran):
    """What a run depended on, given the functions and methods it ran (``ran``: ``{file:
    keys}``; ``parsed``: ``{file: _parse(file)}``): those, each module's top-level
    statements, the header of each class one of whose own methods ran (or that has none,
    or is decorated, e.g. a dataclass), with every skfg class it inherits from, and the
    module constants all of these read, directly, through an import or through another
    constant. ``{file: {definition: hash}}``."""
    classes = {}  # class name -> (file, key)
    for f, (_, info) in parsed.items():
        for key, meta in info.items():
            if "bases" in meta:
                classes.setdefault(key.split(".")[-1], (f, key))
    keys = {f: {MODULE} | set(ran.get(f, ())) for f in parsed}
    for f, (_, info) in parsed.items():
        for key, meta in info.items():
            if "bases" in meta and (meta["decorated"] or not meta["methods"]
                                    or any(m in keys[f] for m in meta["methods"])):
                keys[f].add(key)
                bases = {key.split(".")[-1]} | _ancestors(key.split(".")[-1], {
                    n: parsed[g][1][k]["bases"] for n, (g, k) in classes.items()})
                for name in bases:
                    if name in classes:
                        keys[classes[name][0]].add(classes[name][1])
    work = [(f, k) for f, ks in keys.items() for k in ks]
    while work:
        f, key = work.pop()
        info = parsed[f][1]
        for name in info.get(key, {}).get("refs", ()):
            target, hops = (f, name), 0
            while target is not None and target[0] in parsed and hops < 8:
                there = parsed[target[0]][1]
                if there.get(target[1], {}).get("constant"):
                    if target[1] not in keys[target[0]]:
                        keys[target[0]].add(target[1])
                        work.append(target)
                    break
                target, hops = there[MODULE]["imports"].get(target[1]), hops + 1  # a re-export
    return {f: {k: parsed[f][0][k] for k in sorted(ks) if k in parsed[f][0]} for f, ks in keys.items()}


def executed_definitions(files, tracer, relative_to):
    """``{module path: {definition: hash}}`` of the definitions the traced process ran in
    ``files``, with what they depend on (:func:`counted_definitions`): a module's top-level
    statements and class headers ran at import (before any tracer started, perhaps); a
    class header counts when the class was used, a constant when counted code reads it."""
    parsed = {str(Path(f).resolve()): _parse(f) for f in files}
    ran = {}
    for f, qualnames in tracer.executed(files).items():
        hashes = parsed[str(Path(f).resolve())][0]
        ran[str(Path(f).resolve())] = {definition_of(q, hashes) for q in qualnames}
    counted = counted_definitions(parsed, ran)
    return {str(Path(f).relative_to(Path(relative_to).resolve())): v for f, v in counted.items()}


def _ancestors(cls, classes, seen=None):
    """Names of the skfg classes ``cls`` inherits from (by name, through ``classes``)."""
    seen = set() if seen is None else seen
    for base in classes.get(cls, ()):
        if base in classes and base not in seen:
            seen.add(base)
            _ancestors(base, classes, seen)
    return seen


def stale_definitions(stamp_definitions, repo, known=None):
    """Definitions of a stamp that changed since it was written: ``["module:definition"]``.

    A recorded definition counts when it is gone or hashes differently; a new one (not in
    ``known``, ``{module: [every definition it had]}``, when given; else not recorded) when
    it is a dunder method, decorated, or overrides a method of a skfg base class that ran
    (the unchanged code that called it may now call the override)."""
    repo = Path(repo)
    known = known or {}
    parsed = {}
    for path in sorted(repo.glob("skfg/**/*.py")):
        parsed[str(path.relative_to(repo))] = _parse(path)
    classes, methods = {}, {}  # class name -> base names; -> names of its methods that ran
    for _, (hashes, info) in parsed.items():
        for key, meta in info.items():
            if "bases" in meta:
                classes.setdefault(key.split(".")[-1], meta["bases"])
    for recorded in stamp_definitions.values():
        for key in recorded:
            if "." in key:
                cls, name = key.rsplit(".", 1)
                methods.setdefault(cls.split(".")[-1], set()).add(name)
    changed = []
    for module, recorded in sorted(stamp_definitions.items()):
        if module not in parsed:
            changed.append(f"{module}: removed")
            continue
        hashes, info = parsed[module]
        changed += [f"{module}:{key}" for key, h in recorded.items() if hashes.get(key) != h]
        for key in sorted(set(hashes) - set(known.get(module, recorded))):
            if "." not in key:  # a new function or class: nothing that ran refers to it ...
                if info.get(key, {}).get("decorated"):  # ... unless a decorator registers it
                    changed.append(f"{module}:{key} (new, decorated)")
                continue
            cls, name = key.rsplit(".", 1)
            if cls not in set(known.get(module, recorded)):  # a method of a new class
                continue
            owner = cls.split(".")[-1]
            if name.startswith("__") and name.endswith("__"):
                changed.append(f"{module}:{key} (new dunder)")
            elif info.get(key, {}).get("decorated"):
                changed.append(f"{module}:{key} (new, decorated)")
            elif any(name in methods.get(a, ()) for a in _ancestors(owner, classes)):
                changed.append(f"{module}:{key} (new override)")
    return changed


# How definitions are hashed and counted: a stamp hashed another way is stale (re-run it).
HASHING = 2


def stale_results(results_dir=None, repo=None):
    """``{result file: [what changed]}`` of the stamped results whose executed code changed
    since they were measured (:func:`stale_definitions`, for every run whose rows the file
    holds), the benchmark's own code included (the script and the ``benchmarks/`` modules it
    imported); a stamp hashed another way than :data:`HASHING` counts as changed.
    Unstamped files are skipped."""
    repo = Path(repo) if repo is not None else Path(__file__).resolve().parents[2]
    results_dir = Path(results_dir) if results_dir is not None else repo / "benchmarks" / "results"
    stale = {}
    for path in sorted(results_dir.glob("*.json")):
        stamp = json.loads(path.read_text()).get("provenance")
        if not stamp:
            continue
        changed = []
        for run, recorded in [(None, stamp), *stamp.get("earlier_runs", {}).items()]:
            tag = f" (run {run})" if run else ""
            if "definitions" not in recorded or recorded.get("hashing", 1) != HASHING:
                changed.append("hashed another way" + tag)
                continue
            changed += [c + tag for c in stale_definitions(recorded["definitions"], repo, recorded.get("known"))]
            changed += [f"{f} (benchmark code){tag}" for f, h in recorded.get("scripts", {}).items()
                        if not (repo / f).is_file() or code_hash(repo / f) != h]
        if changed:
            stale[path.name] = changed
    return stale
