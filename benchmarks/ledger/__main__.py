"""``python benchmarks/ledger COMMAND [options]``: the ledger's commands.

- ``status``: list the stale results, write ``results/STATUS.md`` and sync the docs' numbers;
- ``sweep``: re-run the stale results, headline files first (``--dry-run``, ``--only``,
  ``--budget-minutes``);
- ``docs``: ``--sync`` rewrites the numbers the README and ``docs/*.rst`` show from the
  results, ``--check`` lists those out of date.
"""

import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # benchmarks/ (the package's parent), not the package itself

from ledger import docs, status, sweep  # noqa: E402

COMMANDS = {"status": status.main, "sweep": sweep.main, "docs": docs.main}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(__doc__)
    sys.exit(COMMANDS[sys.argv[1]](sys.argv[2:]))
