"""Helpers shared by the measuring scripts: data location, timing, intervals over seeds.

Writing a result and its stamp is the ledger's (``benchmarks/ledger``, re-exported here:
:func:`write_results`, :func:`mergeable_rows`); this module, hashed into every stamp, holds
only what shapes a measured number. Timed code runs with the provenance hook paused
(:func:`alternating_ms`, :func:`untraced`, :func:`timed`) after it ran once traced.
"""

import time

import numpy as np
import torch

from ledger.stamp import DATA, REPO, RESULTS, format_table, machine, mergeable_rows, write_results  # noqa: F401
from ledger.tracer import TRACER


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


def timed(fn, warmup=None):
    """``(fn(), seconds)``: ``fn`` timed with the provenance hook paused, after ``warmup()``
    (``fn`` itself by default) ran once traced and untimed, so that the stamp records the
    code the timed call runs. A fit given here runs twice (seeded: the same model; the
    second is returned): for spans of seconds to minutes whose code the hook slows (fits on
    features, extraction); a whole fine-tune is timed traced instead
    (``results/tracer_overhead.md``). ``warmup`` may be a shorter call of the same code
    (a transform of a few images)."""
    (warmup or fn)()
    with TRACER.paused():
        t = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t


def untraced(iterable):
    """Iterate with the provenance hook paused (:meth:`ledger.tracer.Tracer.paused`) while
    the loop body runs: for timed rounds whose code has run traced before (a warm-up), so
    the hook costs them nothing (its cost on traced spans: ``results/tracer_overhead.md``)."""
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
