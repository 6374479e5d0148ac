"""What a benchmark keeps between its processes (fitted models, finished rows), reused only
on the skfg code that produced it, with that code in the result's stamp.

A benchmark that takes hours on 2 cores runs in parts (``--resume``, across sessions) and
keeps each finished part in a work folder. Reusing a part is honest only while the skfg
code it ran is unchanged, and the stamp of the result must name that code although this
process never ran it. :class:`Parts` keeps, with each value (or joblib file), the skfg
definitions this process had executed when it was kept, hashed as a stamp hashes them
(:func:`ledger.hashing.executed_definitions`); a resumed run refuses parts whose definitions
have changed since (:func:`ledger.hashing.stale_definitions`), adds the code they ran to
its own trace (so :func:`ledger.stamp.provenance` stamps it), and starts afresh instead. Parts
of other settings are refused (the command line differs from the run it resumes).
"""

import importlib
import json
import os
from pathlib import Path

import joblib

from .hashing import executed_definitions, known_definitions, stale_definitions
from .stamp import REPO, imported_skfg_files
from .tracer import TRACER


class Parts:
    """The finished parts of a run, kept in ``work/parts.json`` as they finish: values by
    key (and joblib files, :meth:`dump`), the skfg code (file, qualified name) the process
    had run and its definitions' hashes (with every definition its modules had, as a stamp
    keeps them).

    Parameters
    ----------
    work : str or Path
        The folder the parts are kept in (made when missing).
    settings : dict
        What defines the run (JSON): a resumed run with other settings is refused.
    resume : bool
        Take the parts an earlier process kept in ``work`` while the skfg code they ran is
        unchanged (else, and without ``resume``, start empty: the run ignores and overwrites
        them, never reusing a file it did not write).
    cache : bool, default=False
        The parts are a cache (fitted teachers, extracted features): kept with other
        settings, they are not reused (the run starts afresh) instead of refused.
    """

    def __init__(self, work, settings, resume, cache=False):
        settings = json.loads(json.dumps(settings))  # as kept (tuples become lists)
        self.work = Path(work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.path = self.work / "parts.json"
        saved = json.loads(self.path.read_text()) if resume and self.path.is_file() else None
        if saved is not None and "definitions" not in saved:  # kept before the code was hashed: not reused
            print(f"not resuming: the parts in {self.work} do not record the code they ran", flush=True)
            saved = None
        if saved is not None and cache and saved["settings"] != settings:  # a cache of other settings
            print(f"not reusing: the parts in {self.work} were kept with other settings", flush=True)
            saved = None
        if saved is not None:
            if saved["settings"] != settings:
                changed = sorted(k for k in {*settings, *saved["settings"]}
                                 if saved["settings"].get(k) != settings.get(k))
                raise SystemExit(f"--resume: the parts in {self.work} were run with other {', '.join(changed)}; "
                                 "run without --resume")
            changed = stale_definitions(saved["definitions"], REPO, saved["known"])
            if changed:  # measured on other code: the run starts afresh (a sweep left unattended goes on)
                print(f"not resuming: the parts in {self.work} ran skfg code that has changed since "
                      f"({', '.join(changed[:4])}{' ...' if len(changed) > 4 else ''})", flush=True)
                saved = None
            else:
                print(f"resuming: {len(saved['values'])} parts from {self.path}", flush=True)
        self.saved = saved or {"settings": settings, "values": {}, "code": [], "definitions": {}, "known": {}}
        TRACER.add(self.saved["code"])
        for f in {f for f, _ in self.saved["code"]}:  # imported, so that the stamp hashes their modules
            module = Path(f).relative_to(REPO).with_suffix("")
            importlib.import_module(".".join(module.parts[:-1] if module.name == "__init__" else module.parts))

    def get(self, key, default=None):
        """The value kept under ``key``, or ``default``."""
        return self.saved["values"].get(key, default)

    def put(self, key, value):
        """Keep ``value`` (JSON) under ``key``, with the skfg code run so far."""
        self.saved["values"][key] = value
        skfg_dir = str(REPO / "skfg")
        self.saved["code"] = sorted((f, q) for f, q in TRACER.codes() if f.startswith(skfg_dir))
        files = imported_skfg_files()
        self.saved["definitions"] = executed_definitions(files, TRACER, REPO)
        self.saved["known"] = known_definitions(files, REPO)  # what counts as new code later
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.saved))
        os.replace(tmp, self.path)

    def dump(self, key, obj):
        """Keep ``obj`` in ``work/<key>.joblib`` (a part, :meth:`put`)."""
        joblib.dump(obj, self.work / f"{key}.joblib")
        self.put(f"file {key}", f"{key}.joblib")

    def load(self, key, default=None):
        """The object :meth:`dump` kept under ``key`` in this run (or the run resumed), or ``default``."""
        name = self.get(f"file {key}")
        return default if name is None else joblib.load(self.work / name)
