"""What a result file holds beside its numbers, and writing it: the stamp of its provenance.

:func:`write_results` writes ``results/<name>.json`` and its Markdown rendering
``results/<name>.md``, stamped by :func:`provenance`: the command, the commit, whether
``skfg/`` had uncommitted changes, the date, the hash of the benchmark's own code (the script
and the modules directly in ``benchmarks/`` it imported, :func:`script_hashes`), the
versions of Python and :data:`LIBRARIES`, a manifest hash of each data set, and the hash of
every skfg definition the run executed (:mod:`ledger.tracer`, :mod:`ledger.hashing`).
:func:`mergeable_rows` lets a run add rows to a file measured on the same code, whose
runs' stamps the file then keeps under ``earlier_runs``; :func:`headline_history` keeps the
headline values of a file's earlier runs.
"""

import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from .hashing import HASHING, code_hash, definition_hashes, executed_definitions, known_definitions, stale_results
from .tracer import TRACER

REPO = Path(__file__).resolve().parents[2]
BENCHMARKS = REPO / "benchmarks"
RESULTS = BENCHMARKS / "results"
DATA = Path(os.environ.get("SKFG_DATA_DIR", REPO.parent / "shared" / "datasets"))
_MERGED = {}  # result name -> {run: stamp} of the rows a run merges into it
_RUN_ID = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") + f" pid {os.getpid()}"  # this process


def cpu_model():
    """The CPU's model name (``/proc/cpuinfo``), or the platform's processor where there is none."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine():
    """The machine a result was measured on: CPUs and their model, torch's threads and version, Python."""
    import torch

    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
    }



def _git(*args):
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def imported_skfg_files():
    """The files of the skfg modules this process imported."""
    return sorted({Path(m.__file__).resolve() for name, m in list(sys.modules.items())
                   if (name == "skfg" or name.startswith("skfg.")) and getattr(m, "__file__", None)
                   and REPO in Path(m.__file__).resolve().parents})


LIBRARIES = ("torch", "torchvision", "numpy", "scipy", "scikit-learn", "faiss-cpu", "onnxruntime", "skops", "pillow")


def script_hashes():
    """``{path: hash}`` of the benchmark code this run executes: the script and every
    module directly in ``benchmarks/`` it imported (``_common``, ...; the ledger, which
    measures nothing, is not hashed)."""
    files = {Path(m.__file__).resolve() for m in list(sys.modules.values()) if getattr(m, "__file__", None)}
    if sys.argv and sys.argv[0]:
        files.add(Path(sys.argv[0]).resolve())
    here = BENCHMARKS
    return {str(f.relative_to(REPO)): code_hash(f) for f in sorted(files)
            if f.parent == here and f.suffix == ".py" and f.is_file()}


def library_versions():
    """Python's version and each of :data:`LIBRARIES`' (None when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def data_manifests(root=None):
    """``{data set: hash}`` of every data set under ``DATA``: a SHA-1 of each file's path
    (relative to the data set) and size, so that another copy of the same data hashes
    the same and an added, removed or changed file does not."""
    import hashlib

    root = Path(DATA if root is None else root)
    out = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        h = hashlib.sha1()
        for path in sorted(f for f in folder.rglob("*") if f.is_file()):
            h.update(f"{path.relative_to(folder).as_posix()}\t{path.stat().st_size}\n".encode())
        out[folder.name] = h.hexdigest()
    return out


def format_table(rows, header):
    """Rows of cells as an aligned Markdown table (the benchmarks' own: no private skfg names)."""
    cells = [[str(v) for v in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row):
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths)) + " |"

    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells[1:])])


def render_markdown(name, stamp, rows, header, notes=""):
    """The ``results/<name>.md`` of a result: its measured line, table and notes."""
    commit = (stamp["commit"] or "unknown")[:10] + (" + uncommitted changes" if stamp["uncommitted_changes"] else "")
    md = f"# {name}\n\nMeasured at commit {commit}, {stamp['date']}"
    if stamp.get("earlier_runs"):
        md += " (and, for the rows of earlier runs, " + "; ".join(sorted(stamp["earlier_runs"])) + ")"
    md += f".\n\n{format_table(rows, header)}\n"
    if notes:
        md += f"\n{notes}\n"
    return md


def provenance():
    """The stamp of a result written by this process: the command, the commit, the date,
    the hashes of the benchmark code (:func:`script_hashes`), the library versions, the data
    manifests and the hashes of the skfg definitions the process executed (every definition
    of the imported modules when no trace ran), with every definition those modules have
    (``known``: what counts as new code later)."""
    files = imported_skfg_files()
    if TRACER.codes():
        definitions, executed = executed_definitions(files, TRACER, REPO), "traced"
    else:
        definitions = {str(f.relative_to(REPO)): definition_hashes(f) for f in files}
        executed = "unknown: every definition of the imported modules"
    return {
        "command": " ".join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]]) if sys.argv else None,
        "scripts": script_hashes(),
        "versions": library_versions(),
        "data": data_manifests(),
        "commit": _git("rev-parse", "HEAD") or None,
        "uncommitted_changes": bool(_git("status", "--porcelain", "--", "skfg")),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "definitions": definitions,
        "known": known_definitions(files, REPO),
        "executed": executed,
        "hashing": HASHING,
    }


def mergeable_rows(name, key="rows"):
    """The rows (``payload[key]``) of ``results/<name>.json`` when the code they measured has not changed since
    (:func:`stale_results`), so a run can add rows (more seeds, more
    settings) to them; ``[]`` when there is no such file. Raises ``ValueError`` naming the
    modules that changed otherwise."""
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        return []
    saved = json.loads(path.read_text())
    changed = stale_results(RESULTS).get(path.name, [])
    if changed or "provenance" not in saved:
        raise ValueError(f"cannot merge into {path.name}: it was measured on other code (changed: "
                         f"{', '.join(changed) or 'no provenance stamp'}); run every row again without --merge")
    stamp = saved["provenance"]
    run = stamp.get("run", "legacy")
    runs = {**stamp.get("earlier_runs", {}), run: {k: v for k, v in stamp.items() if k != "earlier_runs"}}
    _MERGED[name] = runs
    rows = saved[key]
    if isinstance(rows, list) and all(isinstance(r, dict) for r in rows):
        for r in rows:
            r.setdefault("run", run)
    return rows


def headline_history(name, results_dir=None):
    """The headline values of every earlier run of a result, newest first:
    ``[{"commit", "date", "values"}]`` (the file's own ``headline`` and its ``history``)."""
    path = Path(RESULTS if results_dir is None else results_dir) / f"{name}.json"
    if not path.is_file():
        return []
    old = json.loads(path.read_text())
    earlier = list(old.get("history", []))
    if old.get("headline"):
        stamp = old.get("provenance") or {}
        earlier.insert(0, {"commit": stamp.get("commit"), "date": stamp.get("date"), "values": old["headline"]})
    return earlier


def write_results(name, payload, rows, header, notes="", rows_key="rows", headline=None, headline_ranges=None):
    """Write ``results/<name>.json`` and a Markdown table ``results/<name>.md``, both
    stamped with the run's :func:`provenance`.

    ``headline`` (``{label: value}``) are the numbers the docs lean on; the file keeps
    those of its earlier runs with their commit and date under ``history``
    (:func:`headline_history`), so the spread across runs can be set beside the spread
    within one (``headline_ranges``, ``{label: [low, high]}`` over this run's rounds; the
    docs show the earlier runs' values where they fall outside it).

    Rows (``payload[rows_key]``, dicts) are tagged with the ``run`` that measured them; rows
    merged from an earlier file (:func:`mergeable_rows`) keep theirs, and the stamp keeps
    those runs' own provenance under ``earlier_runs`` (as long as a row of theirs is left),
    so a file filled over several runs is checked against the code each of them ran."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = provenance()
    stamp["run"] = _RUN_ID
    table = payload.get(rows_key)
    if isinstance(table, list) and all(isinstance(r, dict) for r in table):
        for r in table:
            r.setdefault("run", stamp["run"])
        kept = {r["run"] for r in table} - {stamp["run"]}
        earlier = {}
        for run, old in _MERGED.get(name, {}).items():
            if run in kept:  # (mergeable_rows checked that the code it ran is unchanged)
                earlier[run] = old
        if earlier:
            stamp["earlier_runs"] = earlier
    # the table as written, so that the .md is a rendering of the JSON (tests re-render it)
    markdown = {"rows": [[str(v) for v in r] for r in rows], "header": [str(h) for h in header], "notes": notes}
    payload = dict(payload, machine=machine(), provenance=stamp, markdown=markdown)
    if headline is not None:
        payload.update(headline=headline, history=headline_history(name))
    if headline_ranges is not None:  # {label: [low, high]}: each headline's range within this run
        payload["headline_ranges"] = headline_ranges
    md = render_markdown(name, stamp, markdown["rows"], markdown["header"], notes)
    for path, text in ((RESULTS / f"{name}.json", json.dumps(payload, indent=2) + "\n"), (RESULTS / f"{name}.md", md)):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # atomic: a killed run leaves the old file
        tmp.write_text(text)
        os.replace(tmp, path)
    print(md)
