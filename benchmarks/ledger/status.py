"""Which results are stale: measured before a change to the code they ran.

``python benchmarks/ledger status`` lists every stamped result file whose executed code has
changed since it was measured (:func:`ledger.hashing.stale_results`), with the definitions
that changed, writes ``benchmarks/results/STATUS.md``, refreshes the stale marks of the README's
numbers and the numbers the README and the ``.rst`` sources show. A stale result never fails a test: the docs show it marked (a "stale"
mark beside the number, with "measured at <commit>, before changes to <names>"), and
``python benchmarks/ledger sweep`` re-runs the stale results when there is time.

Only the standard library and the ledger are imported: nothing is traced or timed.
"""

import argparse
import json
import subprocess
from pathlib import Path

from .hashing import stale_results

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"
STATUS = RESULTS / "STATUS.md"

# The results the README and the docs lean on most: re-run first (issue 43)
HEADLINE = ("recipe_headline", "recipe", "impostor_recipe", "imprinting_e2e", "early_exit_joint", "localization",
            "export", "extract", "index_scale", "scale", "open_set")


def stamp_of(path):
    return json.loads(Path(path).read_text()).get("provenance") or {}


def runs(stamp):
    """The runs that wrote a result file, oldest first: ``[(command, started, finished)]``
    (an earlier run's rows were merged into the file by the later ones)."""
    found = [(s.get("command", ""), s.get("run", ""), s.get("date", "")) for s in stamp.get("earlier_runs", {}).values()]
    found.append((stamp.get("command", ""), stamp.get("run", ""), stamp.get("date", "")))
    return sorted(found, key=lambda r: r[1] or r[2])


def _shorten(changed, limit=4):
    names = sorted({c.split(" (run ")[0] for c in changed})
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def stale_notes(results_dir=RESULTS, repo=REPO):
    """``{result name: note}`` of the stale result files, the note saying when they were
    measured and what changed since: ``"measured at 30b1a86 (2026-12-03 20:14 UTC),
    before changes to skfg/export.py:export_onnx"``."""
    notes = {}
    for file, changed in stale_results(results_dir, repo).items():
        stamp = stamp_of(Path(results_dir) / file)
        notes[Path(file).stem] = (f"measured at {stamp.get('commit', '?')[:7]} ({stamp.get('date', '?')}), "
                                  f"before changes to {_shorten(changed)}")
    return notes


def order(names):
    """Result names in re-run order: the headline files, then the other full runs, then
    the ``--quick`` ones."""
    def rank(name):
        if name in HEADLINE:
            return (0, HEADLINE.index(name), name)
        return (2 if name.endswith("_quick") else 1, 0, name)

    return sorted(names, key=rank)


def _commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def render(results_dir=RESULTS, repo=REPO):
    """``(STATUS.md text, {name: [changed]})``."""
    stale = {Path(f).stem: c for f, c in stale_results(results_dir, repo).items()}
    stamped = [p for p in sorted(Path(results_dir).glob("*.json")) if stamp_of(p)]
    lines = ["# Status of the results", "",
             f"Written by `python benchmarks/ledger status` at commit {_commit()}: {len(stale)} of {len(stamped)} "
             "stamped result files are stale (the code they ran has changed since). Their numbers are "
             "marked *stale* in the README and the docs; `python benchmarks/ledger sweep --dry-run` plans their "
             "re-run, headline files first.", ""]
    if stale:
        lines += ["| result | headline | measured at | finished | changed since | re-run with |",
                  "|---|---|---|---|---|---|"]
        for name in order(stale):
            stamp = stamp_of(Path(results_dir) / f"{name}.json")
            commands = "; ".join(f"`{c}`" for c, _, _ in runs(stamp))
            lines.append(f"| {name} | {'yes' if name in HEADLINE else ''} | {stamp.get('commit', '?')[:7]} | "
                         f"{stamp.get('date', '?')} | {_shorten(stale[name], 6)} | {commands} |")
    else:
        lines.append("Every stamped result is fresh.")
    state_file = Path(results_dir) / "sweep_state.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    if state:  # a file re-run over several commands, part-way (python benchmarks/ledger sweep)
        lines += ["", "Re-run part-way (`python benchmarks/ledger sweep` goes on with the next command; what the "
                  "finished ones wrote waits in `results/partial/`, the file above stays as committed until "
                  "the last):", ""]
        for name, part in state.items():
            lines.append(f"- {name}: {part['done']} of {len(part['commands'])} commands done, next "
                         f"`{part['commands'][part['done']][0]}`")
    return "\n".join(lines) + "\n", stale


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-write", action="store_true", help="only print (CI): neither STATUS.md nor the README")
    args = parser.parse_args(argv)
    text, stale = render()
    for name in order(stale):
        print(f"stale: {name:32s} {_shorten(stale[name])}")
    print(f"{len(stale)} stale result files" + ("" if args.no_write else f"; written {STATUS.relative_to(REPO)}"))
    if not args.no_write:
        STATUS.write_text(text)
        from .docs import sync_docs, sync_readme

        sync_readme()  # the numbers and their stale marks
        sync_docs()  # the numbers the .rst sources show
    return 0
