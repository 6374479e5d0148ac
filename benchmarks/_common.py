"""Helpers shared by the benchmark scripts: data location, result files, timing.

Every result file is stamped with its provenance (:mod:`_provenance`): the commit, whether
the measured code had uncommitted changes, a hash of each skfg module the run imported and,
finer, a hash of each skfg definition (function, method, class header, module top level)
the run executed, recorded by a call hook that starts when a script in ``benchmarks/``
imports this module. :func:`stale_results` lists the result files whose executed code has
changed since; ``status.py`` shows them and the docs mark their numbers stale, so a number
cannot silently outlive the code it measured (without freezing the code), while an edit to
code a benchmark never ran leaves its results valid.
"""

import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from _provenance import (HASHING, Tracer, code_hash, definition_hashes, executed_definitions, known_definitions,
                         refresh_stamp, stale_results)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DATA = Path(os.environ.get("SKFG_DATA_DIR", REPO.parent / "shared" / "datasets"))

# The executed-code record of a benchmark run: on for the scripts in benchmarks/, off when
# this module is imported by the tests.
TRACER = Tracer()
if sys.argv and sys.argv[0] and Path(sys.argv[0]).resolve().parent == REPO / "benchmarks":
    TRACER.start()
_MERGED = {}  # result name -> {run: stamp} of the rows a run merges into it
_RUN_ID = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") + f" pid {os.getpid()}"  # this process


def machine():
    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
    }


def machine_gflops(seconds=1.0, n=1024):
    """This machine's float32 matrix-multiply speed now (GFLOP/s, all torch threads): a
    speed fingerprint for rows whose budgets are wall time, which compare only when
    measured at the same speed."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - t0) / 1e9


def multiply_adds(module, x):
    """Multiply-adds of one forward pass of ``module`` on ``x`` (convolutions and linear layers)."""
    total = []

    def hook(m, inputs, out):
        if isinstance(m, torch.nn.Conv2d):
            total.append(out.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1])
        elif isinstance(m, torch.nn.Linear):
            total.append(out.numel() * m.in_features)

    handles = [m.register_forward_hook(hook) for m in module.modules()]
    with torch.inference_mode():
        module(x)
    for h in handles:
        h.remove()
    return sum(total)


def _git(*args):
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _imported_skfg_files():
    return sorted({Path(m.__file__).resolve() for name, m in list(sys.modules.items())
                   if (name == "skfg" or name.startswith("skfg.")) and getattr(m, "__file__", None)
                   and REPO in Path(m.__file__).resolve().parents})


LIBRARIES = ("torch", "torchvision", "numpy", "scipy", "scikit-learn", "faiss-cpu", "onnxruntime", "skops", "pillow")


def script_hashes():
    """``{path: hash}`` of the benchmark code this run executes: the script and every
    module of ``benchmarks/`` it imported (``_common``, ``_provenance``, ...)."""
    files = {Path(m.__file__).resolve() for m in list(sys.modules.values()) if getattr(m, "__file__", None)}
    if sys.argv and sys.argv[0]:
        files.add(Path(sys.argv[0]).resolve())
    here = REPO / "benchmarks"
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
    """Commit, date, and the hashes of the skfg code this process imported (per module) and
    executed (per definition; every definition of the imported modules when no trace ran)."""
    files = _imported_skfg_files()
    if TRACER.seen:
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
        "code": {str(f.relative_to(REPO)): code_hash(f) for f in files},
        "definitions": definitions,
        "known": known_definitions(files, REPO),
        "executed": executed,
        "hashing": HASHING,
    }


def seed_interval(values, confidence=0.95):
    """``(mean, half-width)`` of a Student-t interval for the mean of per-seed values
    (half-width nan for a single seed)."""
    from scipy import stats

    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float(values.mean()), float("nan")
    sem = values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean()), float(stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * sem)


def seed_summary(rows, parts=("val", "test")):
    """Mean and 95 % half-width (:func:`seed_interval`) of each part's accuracy
    (``"<part>_accuracy"``) over one row's seeds: ``{"<part>_mean", "<part>_half_width"}``."""
    out = {}
    for k in parts:
        out[f"{k}_mean"], out[f"{k}_half_width"] = seed_interval([r[f"{k}_accuracy"] for r in rows])
    return out


def paired_by_seed(rows, base_rows, parts=("val", "test")):
    """``row - base`` of each part's accuracy (``"<part>_accuracy"``) on the seeds both ran:
    ``{"seeds", "<part>_per_seed", "<part>_mean", "<part>_half_width"}`` (95 % Student-t,
    :func:`seed_interval`), or ``None`` with fewer than two common seeds."""
    mine, base = {r["seed"]: r for r in rows}, {r["seed"]: r for r in base_rows}
    common = sorted(set(mine) & set(base))
    if len(common) < 2:
        return None
    out = {"seeds": common}
    for k in parts:
        d = [mine[s][f"{k}_accuracy"] - base[s][f"{k}_accuracy"] for s in common]
        out[f"{k}_per_seed"] = d
        out[f"{k}_mean"], out[f"{k}_half_width"] = seed_interval(d)
    return out


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
                if "definitions" in old and old.get("hashing", 1) >= HASHING:
                    earlier[run] = old  # hashed the current way already: kept as recorded
                else:  # recounted the current way (as recorded if that fails)
                    earlier[run] = refresh_stamp(old, REPO) or old
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


def alternating_ms(predictors, X, repeats, per_round=False, batch=1):
    """Per predictor, mean over the batches of ``X`` (``batch`` items each; images one by
    one by default) of the best-of-``repeats`` time per item (ms); with ``per_round``,
    every time itself: ``(repeats, n_predictors, n_batches)`` ms per item.

    The predictors run one after the other on each batch, so a slow spell of the machine
    hits all of them alike. Each first runs once, untimed, with the code trace on (it
    records the code the timed calls execute); every timed round runs with it off.
    """
    chunks = [X[i : i + batch] for i in range(0, len(X) - batch + 1, batch)]
    for predict in predictors:
        predict(chunks[0])
    times = np.empty((repeats, len(predictors), len(chunks)))
    with TRACER.paused():
        for r in range(repeats):
            for j, x in enumerate(chunks):
                for k, predict in enumerate(predictors):
                    t = time.perf_counter()
                    predict(x)
                    times[r, k, j] = (time.perf_counter() - t) / len(x)
    times *= 1000
    return times if per_round else times.min(0).mean(1)


def untraced(iterable):
    """Iterate with the provenance hook paused (:meth:`_provenance.Tracer.paused`) while the
    loop body runs: for timed rounds whose code has run traced before (a warm-up), since
    the hook costs the timed code 3-36 % (``results/tracer_overhead.md``)."""
    with TRACER.paused():
        yield from iterable


def ratio_over_rounds(base, other):
    """Speed-up of ``other`` over ``base`` from their times in rounds that each time every
    setting in turn (one time a round each): ``(median, lowest, highest)`` of the ratios
    measured within each round alone, so the headline always lies in its range. The range
    is the spread of repeated runs: a speed-up whose range holds 1 is none."""
    base, other = np.asarray(base, dtype=float), np.asarray(other, dtype=float)
    if base.shape != other.shape or base.ndim != 1 or len(base) == 0:
        raise ValueError(f"one time a round for each: got shapes {base.shape} and {other.shape}")
    per_round = base / other
    return float(np.median(per_round)), float(per_round.min()), float(per_round.max())


def speedup_spread(times):
    """Speed-up of predictor 1 over predictor 0 from :func:`alternating_ms`'s ``per_round``
    times: ``(median, low, high)`` of the speed-ups measured in each round alone
    (:func:`ratio_over_rounds`; never a best-of, which can lie outside that range)."""
    return ratio_over_rounds(times[:, 0].mean(1), times[:, 1].mean(1))
