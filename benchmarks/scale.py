"""Scaling out on Dask (issue 25): distributed extraction against in-process, and resuming.

Rows, all in one run on ``stanford_cars_a`` train images (160 px, EfficientNet-Lite0):

- extraction in process (``CNNFeatureExtractor.transform``) and on a
  ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)`` through
  ``ParallelPostFit(extractor).transform`` of a ``dask.array`` of paths, and through
  ``extract_features(..., client=...)`` into a ``FeatureStore``, at two image counts:
  images/s, the ratio to in-process with its range over ``--rounds`` rounds (each
  running every size and way in turn), the largest feature difference, and the client
  process's peak resident memory (``ru_maxrss``) after each size, which must not grow with
  the image count beyond the results it holds;
- resuming: ``extract_features`` in a child process killed after half of its chunks are
  on disk, then run again: the chunks computed by the second run, and the features
  against an uninterrupted run.

    python benchmarks/scale.py --quick     # 48 and 96 images
    python benchmarks/scale.py             # 400 and 800 images
"""

import argparse
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

from _common import DATA, ratio_over_rounds, untraced, write_results
from skfg import CNNFeatureExtractor
from skfg.datasets import load_image_folder
from skfg.parallel import ParallelPostFit, extract_features
from skfg.store import FeatureStore


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def resume_row(paths, chunk_size, expected):
    """Kill an extraction half-way (a child process), resume it here, count what it computes."""
    with tempfile.TemporaryDirectory() as folder:
        listing = Path(folder) / "paths.txt"
        listing.write_text("\n".join(map(str, paths)))
        store_dir = Path(folder) / "store"
        child = textwrap.dedent(f"""
            import numpy as np
            from skfg import CNNFeatureExtractor
            from skfg.parallel import extract_features
            paths = np.asarray(open({str(listing)!r}).read().split("\\n"))
            extract_features(CNNFeatureExtractor().fit(), paths, {str(store_dir)!r}, chunk_size={chunk_size})
        """)
        proc = subprocess.Popen([sys.executable, "-c", child])
        n_chunks = -(-len(paths) // chunk_size)
        while proc.poll() is None and len(list(store_dir.glob("chunk-*.npy"))) < n_chunks // 2:
            time.sleep(0.2)
        proc.kill()
        proc.wait()
        finished = {p: p.stat().st_mtime_ns for p in store_dir.glob("chunk-*.npy")}
        missing = len(FeatureStore(store_dir).missing_chunks())
        store = extract_features(CNNFeatureExtractor().fit(), paths, store_dir, chunk_size=chunk_size)
        rewritten = sum(p.stat().st_mtime_ns != t for p, t in finished.items())
        diff = float(np.abs(store.to_numpy() - expected).max())
        return {"n_chunks": n_chunks, "chunks_before_kill": len(finished), "chunks_missing_at_resume": missing,
                "finished_chunks_rewritten": rewritten, "max_abs_diff_vs_uninterrupted": diff}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds, each running every size and way")
    args = parser.parse_args()
    from distributed import Client, LocalCluster
    import dask.array as da

    sizes, chunk = ((48, 96), 16) if args.quick else ((400, 800), 64)
    X, _ = load_image_folder(DATA / "stanford_cars_a" / "train")
    X = X[np.random.RandomState(0).permutation(len(X))[: max(sizes)]]
    ext = CNNFeatureExtractor(cache=False).fit()
    ext.transform(X[:8])  # warm up
    results, rows, diff, peak = [], [], {}, {}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        model = ParallelPostFit(ext).fit(X[:2])
        model.transform(da.from_array(np.asarray(X[:8], dtype=object), chunks=4)).compute()  # warm the workers
        with tempfile.TemporaryDirectory() as folder:  # traced once: the stamp records the store's code
            extract_features(ext, X[:8], folder, chunk_size=4, client=client).to_numpy()
        seconds = {}  # (n, way) -> seconds per round
        # every size and way once per round: a slow spell hits all alike. Untraced: the call
        # hook runs in this process only, so it would slow the in-process way alone
        for r in untraced(range(args.rounds)):
            for n in sizes:
                paths = X[:n]
                t = time.perf_counter()
                local = ext.transform(paths)
                seconds.setdefault((n, "local"), []).append(time.perf_counter() - t)
                t = time.perf_counter()
                remote = model.transform(da.from_array(np.asarray(paths, dtype=object), chunks=chunk)).compute()
                seconds.setdefault((n, "dask"), []).append(time.perf_counter() - t)
                with tempfile.TemporaryDirectory() as folder:
                    t = time.perf_counter()
                    stored = extract_features(ext, paths, folder, chunk_size=chunk, client=client).to_numpy()
                    seconds.setdefault((n, "store"), []).append(time.perf_counter() - t)
                diff[n] = max(diff.get(n, 0.0), float(np.abs(remote - local).max()), float(np.abs(stored - local).max()))
                peak[n] = peak_rss_mb()
                print(r, n, {w: f"{seconds[n, w][-1]:.1f} s" for w in ("local", "dask", "store")}, flush=True)
        for n in sizes:
            ips = {w: n / float(np.median(seconds[n, w])) for w in ("local", "dask", "store")}
            row = {"n_images": n, "in_process_images_per_s": ips["local"], "dask_images_per_s": ips["dask"],
                   "store_images_per_s": ips["store"], "seconds_per_round": {w: seconds[n, w] for w in ips},
                   "max_abs_diff": diff[n], "client_peak_rss_mb": peak[n]}
            cells = []
            for way in ("dask", "store"):
                ratio, low, high = ratio_over_rounds(seconds[n, "local"], seconds[n, way])
                row.update({f"{way}_vs_in_process": ratio, f"{way}_vs_in_process_low": low,
                            f"{way}_vs_in_process_high": high})
                cells.append(f"{ips[way]:.1f} ({ratio:.2f}x [{low:.2f}-{high:.2f}])")
            results.append(row)
            rows.append((n, f"{ips['local']:.1f}", *cells, f"{row['max_abs_diff']:.1e}",
                         f"{row['client_peak_rss_mb']:.0f}"))
            print(rows[-1], flush=True)
    resume = resume_row(X[: sizes[0]], chunk, ext.transform(X[: sizes[0]]))
    notes = (f"2 CPU cores; LocalCluster of 2 single-threaded worker processes; chunks of {chunk} images; "
             "in-process: the same extractor, no feature cache. img/s: on the median seconds over "
             f"{args.rounds} rounds, each running every size and way in turn (in brackets: the ratio to in process [lowest-highest "
             "within a round]; a range holding 1.00 is no difference). Client peak RSS is the process's high-water "
             f"mark after each size (last round).\n\nResume: {resume['chunks_before_kill']} of {resume['n_chunks']} chunks on disk "
             f"when the first run was killed; the second run computed the {resume['chunks_missing_at_resume']} "
             f"missing ones and rewrote {resume['finished_chunks_rewritten']} of the finished; "
             f"largest difference to an uninterrupted extraction {resume['max_abs_diff_vs_uninterrupted']:.1e}.")
    write_results("scale" + ("_quick" if args.quick else ""), {"rows": results, "resume": resume, "rounds": args.rounds}, rows,
                  ("images", "in process img/s", "dask img/s", "store img/s", "max |diff|", "client peak MB"),
                  notes, headline={f"{way} vs in process, {r['n_images']} images": r[f"{way}_vs_in_process"]
                                   for r in results for way in ("dask", "store")},
                  headline_ranges={f"{way} vs in process, {r['n_images']} images": [
                      r[f"{way}_vs_in_process_low"], r[f"{way}_vs_in_process_high"]]
                      for r in results for way in ("dask", "store")})


if __name__ == "__main__":
    main()
