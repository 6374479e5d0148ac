"""What skfg's installs take: disk and ``pip install`` time (``docs/install.rst``, the README).

Each install goes into a fresh virtual environment (``python -m venv``), one ``pip
install`` command at a time, as the README and ``docs/install.rst`` write them. Its size
is the disk usage of the environment (``du``) less that of an empty one, its time the
wall time of its ``pip install`` commands. The torch and torchvision wheels come from
this machine's disk (``PIP_FIND_LINKS`` and local indexes), the rest from the package
index or pip's cache, so over a network the times are longer; the sizes do not depend
on where the wheels came from.

Rows: torch 2.14.1 alone (the CUDA build; split into NVIDIA's CUDA libraries, triton and
torch itself), torch 2.13.0 alone (the CPU wheel), and torch 2.14.1 + torchvision 0.29.1
followed by skfg with no extras, the quick start's ``[safe,onnx]`` (then the README's test
command, ``[test]``, on top), ``[safe,onnx,plot]`` and the developers' ``[test,docs]``.
From these: what torchvision and skfg add to torch, and an estimate (not a measurement:
no CPU torchvision that works with torch 2.13.0 is at hand) of the quick start with the
CPU wheels.

    python benchmarks/install_size.py --quick   # the CPU wheel's row only (about a minute)
    python benchmarks/install_size.py           # every row (about 5 minutes here; one venv at a time, 6.5 GB of disk at most)
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, write_results

TORCH = ["torch==2.14.1", "torchvision==0.29.1"]  # the README's pinned pair (.ci/run pins the same)
MIB = 2**20


def disk_mib(path):
    """Disk usage of ``path`` in MiB, as ``du`` counts it (allocated blocks, not file lengths)."""
    out = subprocess.run(["du", "-s", "--block-size=1", str(path)], check=True, capture_output=True, text=True)
    return int(out.stdout.split()[0]) / MIB


def site_packages(env):
    return next((env / "lib").glob("python3*/site-packages"))


def measure(steps, parts=False):
    """Install ``steps`` (each the arguments of one ``pip install``) into a fresh venv:
    ``{"steps": [{command, size_mib (cumulative), pip_s}], "size_mib", "pip_s"}``, and with
    ``parts`` the size of torch's parts (``nvidia*``, ``triton*``, ``torch`` itself)."""
    root = Path(tempfile.mkdtemp(prefix="skfg_install_"))
    env = root / "venv"
    try:
        subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
        empty = disk_mib(env)
        out = {"empty_venv_mib": empty, "steps": []}
        for args in steps:
            command = [str(env / "bin" / "pip"), "install", "-q", *args]
            t0 = time.perf_counter()
            subprocess.run(command, check=True, cwd=REPO)
            seconds = time.perf_counter() - t0
            out["steps"].append({"command": "pip install " + " ".join(args), "size_mib": disk_mib(env) - empty,
                                 "pip_s": seconds})
            print(out["steps"][-1], flush=True)
        out["size_mib"] = out["steps"][-1]["size_mib"]
        out["pip_s"] = sum(s["pip_s"] for s in out["steps"])
        if parts:
            groups = {"nvidia": 0.0, "triton": 0.0, "torch": 0.0}
            for entry in site_packages(env).iterdir():
                name = entry.name.lower()
                key = ("nvidia" if name.startswith("nvidia") else "triton" if name.startswith("triton")
                       else "torch" if name == "torch" or name.startswith("torch-") else None)
                if key:
                    groups[key] += disk_mib(entry)
            out["parts_mib"] = groups
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    plan = [("torch 2.13.0 alone (the CPU wheel)", "cpu_torch", [["torch==2.13.0"]], False)]
    if not args.quick:
        plan = [("torch 2.14.1 alone (the CUDA build)", "cuda_torch", [["torch==2.14.1"]], True), *plan,
                ("torch 2.14.1 + torchvision 0.29.1, then -e . (no extras)", "no_extras", [TORCH, ["-e", "."]], False),
                ('the same with -e ".[safe,onnx]" (the README\'s quick start)', "quick_start",
                 [TORCH, ["-e", ".[safe,onnx]"], ["-e", ".[test]"]], False),
                ('the same with -e ".[safe,onnx,plot]"', "plot", [TORCH, ["-e", ".[safe,onnx,plot]"]], False),
                ('the same with -e ".[test,docs]" (developers, as the CI does)', "developers",
                 [TORCH, ["-e", ".[test,docs]"]], False)]
    rows = []
    for label, key, steps, parts in plan:
        r = measure(steps, parts)
        if key == "quick_start":  # the README's test command runs after the quick start: a row of its own
            test = r["steps"].pop()
            r.update(size_mib=r["steps"][-1]["size_mib"], pip_s=sum(s["pip_s"] for s in r["steps"]),
                     test_adds_mib=test["size_mib"] - r["steps"][-1]["size_mib"], test_pip_s=test["pip_s"])
        rows.append(dict(r, install=label, key=key))
    by = {r["key"]: r for r in rows}
    derived = {}
    if "quick_start" in by:
        quick = by["quick_start"]
        derived["skfg_safe_onnx_adds_mib"] = quick["steps"][1]["size_mib"] - quick["steps"][0]["size_mib"]
        derived["torch_torchvision_mib"] = quick["steps"][0]["size_mib"]
        derived["torchvision_adds_mib"] = derived["torch_torchvision_mib"] - by["cuda_torch"]["size_mib"]
        # with the CPU wheels: torch 2.13.0's size plus what torchvision and skfg added to the CUDA build
        derived["cpu_quick_start_estimate_gib"] = (by["cpu_torch"]["size_mib"] + derived["torchvision_adds_mib"]
                                                   + derived["skfg_safe_onnx_adds_mib"]) / 1024
    pip = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, text=True).stdout.split()[1]
    table = [[r["install"], f"{r['size_mib']:.0f} MiB", f"{r['pip_s']:.1f} s"] for r in rows]
    notes = (f"Each install in a fresh venv (Python {sys.version.split()[0]}, pip {pip}); size: du of the environment "
             f"less that of an empty one ({rows[0]['empty_venv_mib']:.0f} MiB); time: wall time of its pip install "
             f"commands, torch and torchvision from this machine's disk.")
    if "cuda_torch" in by:
        p = by["cuda_torch"]["parts_mib"]
        notes += (f" Of torch 2.14.1 alone: nvidia-* {p['nvidia']:.0f} MiB, triton {p['triton']:.0f} MiB, torch "
                  f"{p['torch']:.0f} MiB. torchvision adds {derived['torchvision_adds_mib']:.0f} MiB, skfg "
                  f"[safe,onnx] {derived['skfg_safe_onnx_adds_mib']:.0f} MiB, the README's test command "
                  f"{by['quick_start']['test_adds_mib']:.0f} MiB in {by['quick_start']['test_pip_s']:.1f} s.")
    write_results("install_size_quick" if args.quick else "install_size",
                  {"rows": rows, "derived": derived, "pip": pip}, table, ["install", "size", "pip time"], notes)


if __name__ == "__main__":
    main()
