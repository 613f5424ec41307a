"""``n_clusters="auto"`` against the true number of classes, and what it costs.

For each data set and seed, in its own process and one after another (nothing else
should run on the machine): ``SpiceClustering(n_clusters="auto", random_state=seed)``
with every other parameter at its default (candidates 2-20), timed; then
``SpiceClustering(k_true, random_state=seed)``, timed, for the cost ratio. The
table gives the true ``k``, the chosen ``k``, ACC at the chosen ``k`` (Hungarian
matching; with a wrong ``k`` the unmatched clusters count as errors) and the two
times. Labels are used only to score. Results go to
``benchmarks/results/n_clusters.json`` and the ``n_clusters`` section of
docs/benchmarks.md.

Usage::

    python benchmarks/run_n_clusters.py --datasets digits digits-0-4 mnist-test-0-2 \\
        usps fashion --seeds 0
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import datasets as data  # noqa: E402
from report import commit, machine, run_benchmark  # noqa: E402


def _digits_0_4():
    x, y = data.digits()
    return x[y < 5], y[y < 5]


def _mnist_test_0_2():
    x, y = data.mnist()
    x, y = x[60_000:], y[60_000:]
    return x[y < 3], y[y < 3]


#: name -> (loader, description)
LOADERS = {
    "digits": (data.digits, "scikit-learn digits (1,797, 8 px)"),
    "digits-0-4": (_digits_0_4, "digits of classes 0-4 (901, 8 px)"),
    "mnist-test-0-2": (_mnist_test_0_2, "MNIST test, classes 0-2 (3,147, 28 px)"),
    "usps": (data.usps, "USPS (9,298, 16 px)"),
    "fashion": (data.fashion_mnist_subset, "Fashion-MNIST subset (12,669, 28 px)"),
    "shapes": (data.shapes, "random-colour shapes (2,000, 32 px RGB)"),
    "cifar10-test": (data.cifar10_test, "CIFAR-10 test (10,000, 32 px RGB)"),
}
RESULTS = Path(__file__).resolve().parent / "results" / "n_clusters.json"


def worker(name, seed):
    import numpy as np

    from spice_learn import SpiceClustering
    from spice_learn.metrics import cluster_accuracy

    x, y = LOADERS[name][0]()
    k = len(np.unique(y))
    info = {"dataset": name, "n": len(x), "k": k, "seed": seed, "commit": commit()}
    info["load_before_fit"] = os.getloadavg()[0]
    model = SpiceClustering("auto", random_state=seed)
    t = time.perf_counter()
    model.fit(x)
    info["auto_seconds"] = time.perf_counter() - t
    info["chosen_k"] = int(model.n_clusters_)
    info["scores"] = {str(c): float(s) for c, s in model.n_clusters_scores_.items()}
    info["auto_acc"] = float(cluster_accuracy(y, model.labels_))
    info["load_before_fixed_fit"] = os.getloadavg()[0]
    t = time.perf_counter()
    fixed = SpiceClustering(k, random_state=seed).fit(x)
    info["fixed_seconds"] = time.perf_counter() - t
    info["fixed_acc"] = float(cluster_accuracy(y, fixed.labels_))
    print("RESULT " + json.dumps(info), flush=True)


def table(results):
    lines = [
        "## Choosing the number of clusters: `n_clusters=\"auto\"`",
        "",
        f"Written by `python benchmarks/run_n_clusters.py`; {machine()}. Each line is one "
        "seed: `SpiceClustering(\"auto\", random_state=seed)` (candidates 2-20, every other "
        "parameter at its default), then `SpiceClustering(k, random_state=seed)` with the "
        "true `k`, each timed alone in the same process. ACC is Hungarian-matched; with a "
        "wrong `k` the unmatched clusters count as errors. `load` is the 1-minute load "
        "average before each of the two fits. The criterion was chosen on features of "
        "digits, its 0-4 subset, the MNIST 3-class subset, USPS and the Fashion subset "
        "(see `spice_learn.cluster_count`).",
        "",
        "| data set | seed | true k | chosen k | within ±1 | ACC (auto) | ACC (true k) | "
        "seconds auto / true k | ratio | commit, load |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = list(LOADERS)
    for r in sorted(results, key=lambda r: (order.index(r["dataset"]), r["seed"])):
        ok = "yes" if abs(r["chosen_k"] - r["k"]) <= 1 else "no"
        lines.append(
            f"| {LOADERS[r['dataset']][1]} | {r['seed']} | {r['k']} | {r['chosen_k']} | {ok} | "
            f"{r['auto_acc']:.3f} | {r['fixed_acc']:.3f} | {r['auto_seconds']:.0f} / "
            f"{r['fixed_seconds']:.0f} | {r['auto_seconds'] / r['fixed_seconds']:.2f} | "
            f"{r['commit']}; load {r['load_before_fit']:.1f}, {r['load_before_fixed_fit']:.1f} |")
    return "\n".join(lines)


def _summary(info):
    return (f"chosen k {info['chosen_k']} (true {info['k']}), ACC {info['auto_acc']:.3f} vs "
            f"{info['fixed_acc']:.3f}; {info['auto_seconds']:.0f} s vs "
            f"{info['fixed_seconds']:.0f} s")


def main(argv=None):
    return run_benchmark(argv, script=__file__, doc=__doc__, loaders=LOADERS,
                         default_seeds=[0], results_file=RESULTS, section="n_clusters",
                         table=table, worker=worker, summary=_summary)


if __name__ == "__main__":
    main()
