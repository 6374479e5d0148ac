"""What the provenance tracer costs the spans the benchmarks time while it is on (issue 43).

The call hook that records which skfg code a run executes (``_provenance.Tracer``) stays on
while scripts time a whole fit, an extraction or a search: those spans run once, so they
cannot be timed untraced after a traced warm-up as ``alternating_ms`` does. This measures
the hook's cost on the kinds of span the benchmarks time that way, each run traced and
untraced in turn over ``--rounds`` rounds (the order swapped every round):

- ``extract``: ``CNNFeatureExtractor.transform`` of images from ``stanford_cars_a``;
- ``fit on features``: ``SoftmaxClassifier`` on frozen features (many small Python calls
  per epoch: the hook's worst case among the timed spans);
- ``fine-tune``: ``SoftmaxClassifier(extractor=...)`` end to end, the recipe's fit;
- ``predict``: ``predict_proba`` of a fine-tuned model on images.

The overhead is the median over rounds of traced / untraced time, with its range; the
target is below 1 % on every row (issue 43, item 5).

    python benchmarks/tracer_overhead.py --quick
    python benchmarks/tracer_overhead.py
"""

import argparse
import time

import numpy as np

from _common import DATA, TRACER, ratio_over_rounds, write_results
from skfg import CNNFeatureExtractor, SoftmaxClassifier, clear_feature_cache
from skfg.datasets import load_image_folder


def spans(X, y, feats, quick):
    """``{name: zero-argument function}``: each a span as the benchmarks time it."""
    size = 96 if quick else 160

    def extract():
        clear_feature_cache()
        CNNFeatureExtractor(image_size=size, cache=False).fit().transform(X)

    def fit_features():
        SoftmaxClassifier(max_epochs=30 if quick else 100, random_state=0).fit(feats, y)

    def fine_tune():
        SoftmaxClassifier(extractor=CNNFeatureExtractor(image_size=size, cache=False), max_epochs=2,
                          head_epochs=1, random_state=0).fit(X, y)

    model = SoftmaxClassifier(extractor=CNNFeatureExtractor(image_size=size, cache=False), max_epochs=1,
                              head_epochs=0, random_state=0).fit(X, y)

    def predict():
        model.predict_proba(X)

    return {"extract": extract, "fit on features": fit_features, "fine-tune": fine_tune, "predict": predict}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n-images", type=int, default=96)
    args = parser.parse_args()
    n = 32 if args.quick else args.n_images
    rounds = 3 if args.quick else args.rounds
    X, y = load_image_folder(DATA / "stanford_cars_a" / "train")
    keep = np.isin(y, np.unique(y)[:8])
    X, y = X[keep][:n], y[keep][:n]
    feats = CNNFeatureExtractor(image_size=96, cache=False).fit().transform(X)
    todo = spans(X, y, feats, args.quick)
    for run in todo.values():  # traced once, untimed: the stamp records the code, caches warm
        run()
    seconds = {name: np.empty((rounds, 2)) for name in todo}  # [:, 0] untraced, [:, 1] traced
    for r in range(rounds):
        for name, run in todo.items():
            for traced in ((False, True) if r % 2 == 0 else (True, False)):
                t0 = time.perf_counter()
                if traced:
                    run()
                else:
                    with TRACER.paused():
                        run()
                seconds[name][r, int(traced)] = time.perf_counter() - t0
    rows, table = [], []
    for name, s in seconds.items():
        ratio, low, high = ratio_over_rounds(s[:, 1], s[:, 0])  # traced time / untraced time, per round
        overhead, lo, hi = ratio - 1, low - 1, high - 1
        rows.append({"span": name, "untraced_s": float(np.median(s[:, 0])), "traced_s": float(np.median(s[:, 1])),
                     "overhead": overhead, "overhead_low": lo, "overhead_high": hi,
                     "rounds_untraced_s": s[:, 0].tolist(), "rounds_traced_s": s[:, 1].tolist()})
        table.append([name, f"{np.median(s[:, 0]):.2f}", f"{np.median(s[:, 1]):.2f}",
                      f"{100 * overhead:+.1f} % [{100 * lo:+.1f}, {100 * hi:+.1f}]"])
    worst = max(r["overhead"] for r in rows)
    notes = (f"{len(X)} images of 8 classes, {rounds} rounds (traced and untraced in turn, order swapped each "
             f"round); overhead = median over rounds of traced / untraced time - 1, with the lowest-highest "
             f"round. Target below 1 % on every row: {'met' if worst < 0.01 else 'missed'} "
             f"(largest median {100 * worst:+.1f} %).")
    write_results("tracer_overhead_quick" if args.quick else "tracer_overhead",
                  {"rows": rows, "rounds": rounds, "n_images": len(X), "target_met": bool(worst < 0.01)},
                  table, ["span", "untraced s", "traced s", "overhead [range]"], notes)


if __name__ == "__main__":
    main()
