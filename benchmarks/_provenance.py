"""Provenance of benchmark results: which skfg code a run executed, and whether it changed since.

A result is stale when the code that produced it has changed. "The code" is taken at the
grain of a definition (a function, a method, a class header, a module's top-level
statements) and restricted to what the run *executed*: :class:`Tracer` records the code
objects a benchmark process runs (a ``sys.settrace`` hook on call events only; line
events stay off), and :func:`provenance` stamps the result with the hash of every skfg
definition it ran. A later edit to code the run never executed (another estimator, the
CLI, a new method) leaves the result valid; an edit to anything it ran makes it stale.

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
``decision_function``), and an import rebound to another object of the same name.

Stamps written before definitions were recorded (``"code"`` only: one hash per imported
module) are checked per module, as they were written. :func:`upgrade_stamp` converts such a
stamp while every module still hashes as recorded (the code is then the measured code):
it records every definition of those modules as executed, since which ran is unknown.
"""

import ast
import hashlib
import sys
import threading
from contextlib import contextmanager
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


def _is_builtin_decorator(node):
    """``@classmethod``, ``@staticmethod``, ``@property`` and ``@x.setter``: they register nothing."""
    if isinstance(node, ast.Name):
        return node.id in ("classmethod", "staticmethod", "property")
    return isinstance(node, ast.Attribute) and node.attr in ("setter", "getter", "deleter")


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
                         "decorated": any(not _is_builtin_decorator(d) for d in node.decorator_list)}
            _outline(node.body, key + ".", out, info)
        else:
            out[key] = _digest([node])
            info[key] = {"decorated": any(not _is_builtin_decorator(d) for d in node.decorator_list)}


def _parse(path):
    tree = _Normalise().visit(ast.parse(Path(path).read_text()))
    out, info = {}, {}
    out[MODULE] = _digest([s for s in tree.body if not isinstance(s, (*_DEFS, ast.Import, ast.ImportFrom))
                           and not _is_all(s)])
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


class Tracer:
    """Records the code objects run in this process (and in threads started after
    :meth:`start`), at a call-event hook that returns at once and leaves line tracing off."""

    def __init__(self):
        self.seen = set()
        self.active = False

    def _hook(self, frame, event, arg):
        self.seen.add(frame.f_code)

    def start(self):
        sys.settrace(self._hook)
        threading.settrace(self._hook)
        self.active = True

    def stop(self):
        sys.settrace(None)
        threading.settrace(None)
        self.active = False

    @contextmanager
    def paused(self):
        """Switch the hook off around timed code (whose code has run traced before)."""
        was = self.active
        if was:
            self.stop()
        try:
            yield
        finally:
            if was:
                self.start()

    def executed(self, files):
        """``{file: set of co_qualname}`` of the recorded code objects from ``files``."""
        files = {str(Path(f).resolve()): f for f in files}
        out = {f: set() for f in files.values()}
        for code in list(self.seen):
            f = files.get(code.co_filename) or files.get(str(Path(code.co_filename).resolve()))
            if f is not None:
                out[f].add(code.co_qualname)
        return out


def known_definitions(files, relative_to):
    """``{module path: [every definition]}`` of ``files``: what a later check counts as not new."""
    return {str(Path(f).resolve().relative_to(relative_to)): sorted(definition_hashes(f)) for f in files}


def executed_definitions(files, tracer, relative_to):
    """``{module path: {definition: hash}}`` of the definitions the traced process ran in
    ``files``. A module's top-level statements and its class headers ran at import (before
    any tracer started, perhaps) and are always counted."""
    stamp = {}
    for f, qualnames in tracer.executed(files).items():
        hashes, info = _parse(f)
        keys = ({MODULE} | {k for k, meta in info.items() if "bases" in meta}
                | {definition_of(q, hashes) for q in qualnames})
        stamp[str(Path(f).resolve().relative_to(relative_to))] = {k: hashes[k] for k in sorted(keys)}
    return stamp


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


def _unchanged_definitions(stamp, repo):
    """``{module: definition hashes}`` of the stamp's modules as they are now, or ``None``
    when one of them no longer hashes as recorded (the code is not the code that ran)."""
    current = {}
    for module, h in stamp["code"].items():
        path = Path(repo) / module
        if not path.is_file() or code_hash(path) != h:
            return None
        current[module] = definition_hashes(path)
    return current


def upgrade_stamp(stamp, repo):
    """A per-module stamp converted to per-definition, every definition counted as run;
    ``None`` when a module no longer hashes as recorded (the stamp is stale: re-run)."""
    if "definitions" in stamp:
        return stamp
    definitions = _unchanged_definitions(stamp, repo)
    if definitions is None:
        return None
    return dict(stamp, definitions=definitions, known={m: sorted(d) for m, d in definitions.items()},
                executed="unknown: every definition of the imported modules")


def refresh_stamp(stamp, repo):
    """A per-definition stamp rehashed with the current normalisation, and given the list of
    every definition its modules had (``known``), while each module still hashes as recorded
    (then the code is the code that ran, and only how it is hashed changed); ``None`` when a
    module changed (stale: re-run). Earlier runs' stamps are refreshed alike."""
    if "definitions" not in stamp:
        return upgrade_stamp(stamp, repo)
    current = _unchanged_definitions(stamp, repo)
    if current is None:
        return None
    out = dict(stamp)
    out["definitions"] = {m: {k: current[m][k] for k in keys if k in current[m]}
                          for m, keys in stamp["definitions"].items()}
    out["known"] = {m: sorted(d) for m, d in current.items()}
    if "earlier_runs" in stamp:
        out["earlier_runs"] = {}
        for run, earlier in stamp["earlier_runs"].items():
            refreshed = refresh_stamp(earlier, repo)
            if refreshed is None:
                return None
            out["earlier_runs"][run] = refreshed
    return out


def status(stamp):
    """How precisely a stamp records what its run executed: ``"unstamped"``, ``"per module"``,
    ``"every definition"`` (converted, or not traced) or ``"traced"`` (over all its runs)."""
    if not stamp:
        return "unstamped"
    if "definitions" not in stamp:
        return "per module"
    runs = [stamp, *stamp.get("earlier_runs", {}).values()]
    return "traced" if all(str(r.get("executed", "")).startswith("traced") for r in runs) else "every definition"


def main(argv=None):
    """``python benchmarks/_provenance.py``: how each result file's provenance is recorded
    (and the command that wrote it); ``--upgrade`` converts per-module stamps to
    per-definition ones, and rehashes per-definition ones written before the current
    normalisation, where the code is still the measured code."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--upgrade", action="store_true", help="rewrite the per-module stamps")
    args = parser.parse_args(argv)
    repo = Path(__file__).resolve().parents[1]
    for path in sorted((repo / "benchmarks" / "results").glob("*.json")):
        saved = json.loads(path.read_text())
        stamp = saved.get("provenance")
        kind = status(stamp)
        if stamp and (kind == "per module" or "known" not in stamp):
            upgraded = refresh_stamp(stamp, repo)
            if upgraded is None:
                kind += ", stale: re-run it"
            elif args.upgrade:
                saved["provenance"] = upgraded
                path.write_text(json.dumps(saved, indent=2) + "\n")
                kind = status(upgraded) + " (upgraded now)"
        command = (stamp or {}).get("command") or ""
        print(f"{path.name:40s} {kind:34s} {command}")


if __name__ == "__main__":
    main()
