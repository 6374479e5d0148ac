"""Helpers shared by the benchmark scripts: data location and result files."""

import json
import os
import platform
from pathlib import Path

import torch

from skfg.cli import format_table

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DATA = Path(os.environ.get("SKFG_DATA_DIR", REPO.parent / "shared" / "datasets"))


def machine():
    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
    }


def write_results(name, payload, rows, header, notes=""):
    """Write ``results/<name>.json`` and a Markdown table ``results/<name>.md``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = dict(payload, machine=machine())
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    md = f"# {name}\n\n{format_table(rows, header)}\n"
    if notes:
        md += f"\n{notes}\n"
    (RESULTS / f"{name}.md").write_text(md)
    print(md)
