"""Helpers shared by the benchmark scripts: data location and result files."""

import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from skfg._table import format_table

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


def alternating_ms(predictors, X, repeats):
    """Per predictor, mean over images of the best-of-``repeats`` time of one image (ms).

    The predictors run one after the other on each image, so a slow spell of the machine
    hits all of them alike.
    """
    best = np.full((len(predictors), len(X)), np.inf)
    for _ in range(repeats):
        for i in range(len(X)):
            for k, predict in enumerate(predictors):
                t = time.perf_counter()
                predict(X[i : i + 1])
                best[k, i] = min(best[k, i], time.perf_counter() - t)
    return 1000 * best.mean(1)
