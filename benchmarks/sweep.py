"""Re-run the stale results, one at a time, headline files first; stop and resume at will.

``python benchmarks/sweep.py --dry-run`` prints the plan: every stale result file
(``benchmarks/status.py``) in priority order (:data:`status.HEADLINE` first, then the other
full runs, then the ``--quick`` ones), the commands that wrote it (a file filled over several
runs is re-run with each of them, oldest first) and the minutes each took last time.
Without ``--dry-run`` it runs them, one command at a time and alone (it warns when the
machine is busy: two torch jobs on two cores slow each other), each writing its result as
it finishes, with its output in ``benchmarks/logs/<name>.log``.

It can stop at any point (``--budget-minutes``, Ctrl-C, the end of a session) and go on
later: a result file re-run in full is fresh and is left out of the next plan, and the
commands of a file filled over several runs are counted off in
``benchmarks/results/sweep_state.json`` (committed with the results), so a sweep resumes
with the next command, not from the first.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import status

REPO = status.REPO
STATE = status.RESULTS / "sweep_state.json"
LOGS = REPO / "benchmarks" / "logs"


def _minutes(started, finished):
    """Minutes between a run's start (``"2026-12-03 02:46:12 UTC pid 1"``) and its
    ``"2026-12-03 03:09 UTC"`` end, or None when either is unknown."""
    try:
        t0 = datetime.strptime(started[:23], "%Y-%m-%d %H:%M:%S UTC")
        t1 = datetime.strptime(finished[:20], "%Y-%m-%d %H:%M UTC")
    except ValueError:
        return None
    return max((t1 - t0).total_seconds() / 60, 1.0)


def _load_state():
    return json.loads(STATE.read_text()) if STATE.is_file() else {}


def _save_state(state):
    if state:
        STATE.write_text(json.dumps(state, indent=2) + "\n")
    elif STATE.is_file():
        STATE.unlink()


def plan(only=None, results_dir=status.RESULTS, repo=REPO, state=None):
    """``[(name, [(command, minutes or None)])]``: the commands still to run, in order."""
    state = _load_state() if state is None else state
    stale = {Path(f).stem for f in status.stale_results(results_dir, repo)}
    names = stale | set(state)  # a file part-way through its commands is finished first
    if only:
        names &= set(only)
    out = []
    for name in status.order(names):
        if name in state:
            commands = state[name]["commands"][state[name]["done"]:]
        else:
            stamp = status.stamp_of(Path(results_dir) / f"{name}.json")
            commands = [(c, _minutes(started, finished)) for c, started, finished in status.runs(stamp)]
        out.append((name, [tuple(c) for c in commands]))
    return out


def _busy():
    """The 1-minute load average when another job is running (above 0.5 on this machine's cores)."""
    try:
        load = os.getloadavg()[0]
    except OSError:  # pragma: no cover - not available
        return None
    return load if load > 0.5 else None


def run(name, commands, budget_s=None, started=None):
    """Run ``commands`` of the result ``name`` in turn; return how many finished."""
    state = _load_state()
    counted = len(commands) > 1 or name in state  # several commands: count them off
    if counted:
        state.setdefault(name, {"commands": [list(c) for c in commands], "done": 0})
        _save_state(state)
    LOGS.mkdir(exist_ok=True)
    finished = 0
    for command, minutes in commands:
        if budget_s is not None and minutes is not None and time.monotonic() - started + 60 * minutes > budget_s:
            print(f"  stop: {command!r} took {minutes:.0f} min last time, more than the budget left", flush=True)
            break
        argv = shlex.split(command)
        if argv and argv[0] == "python":
            argv[0] = sys.executable
        print(f"  run: {command}", flush=True)
        t0 = time.monotonic()
        with open(LOGS / f"{name}.log", "a") as log:
            log.write(f"\n=== {datetime.now():%Y-%m-%d %H:%M} {command}\n")
            log.flush()
            code = subprocess.run(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode
        print(f"  exit {code} after {(time.monotonic() - t0) / 60:.1f} min (log: {LOGS.relative_to(REPO)}/{name}.log)",
              flush=True)
        if code != 0:
            break
        finished += 1
        if counted:
            state[name]["done"] += 1
            if state[name]["done"] >= len(state[name]["commands"]):
                state.pop(name)
            _save_state(state)
    return finished


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="print the plan and its estimated time only")
    parser.add_argument("--only", help="comma-separated result names (e.g. recipe,export)")
    parser.add_argument("--budget-minutes", type=float, help="start no command that would end past this budget")
    args = parser.parse_args(argv)
    todo = plan(args.only.split(",") if args.only else None)
    total = sum(m or 0 for _, commands in todo for _, m in commands)
    unknown = sum(m is None for _, commands in todo for _, m in commands)
    print(f"{len(todo)} stale result files, {sum(len(c) for _, c in todo)} commands, about {total:.0f} min"
          + (f" (+ {unknown} of unknown length)" if unknown else ""))
    for name, commands in todo:
        print(f"{name}{' (headline)' if name in status.HEADLINE else ''}:")
        for command, minutes in commands:
            print(f"  {'?' if minutes is None else f'{minutes:.0f}':>4s} min  {command}")
    if args.dry_run or not todo:
        return 0
    load = _busy()
    if load is not None:
        print(f"warning: the machine is busy (load {load:.1f}); timings measured now are slowed", flush=True)
    started, budget_s = time.monotonic(), None if args.budget_minutes is None else 60 * args.budget_minutes
    for name, commands in todo:
        print(f"{name}:", flush=True)
        if run(name, commands, budget_s, started) < len(commands):
            if budget_s is not None and time.monotonic() - started >= budget_s:
                break
    status.main([])
    return 0


if __name__ == "__main__":
    sys.exit(main())
