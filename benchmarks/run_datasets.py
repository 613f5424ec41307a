"""The default SpiceClustering on real and synthetic data sets, over several seeds,
next to the clusterers a user would try instead.

For each data set and seed, in its own process and one after another (nothing else
should run on the machine): ``SpiceClustering(k, random_state=seed)`` with every
other parameter at its default, timed; then, on the same images, KMeans on the
pixels, UMAP + KMeans (``umap-learn``, when installed; the N2D recipe without
the autoencoder: UMAP to 10 dimensions with 20 neighbours and ``min_dist=0``, then
KMeans), and ClustPy's deep clusterers DEC and N2D (``clustpy``, when installed, on
sets of up to :data:`CLUSTPY_MAX_IMAGES` images; see :func:`clustpy_peers`). One
SpiceClustering fit gives two rows: its final clustering (``labels_``, after
SPICE-Semi) and the clustering of its selected head (``self_labels_``). The load
average is printed before each fit and stored. Labels are used only to score.
Results go to ``benchmarks/results/datasets.json`` and the ``datasets`` section of
docs/benchmarks.md after each run. ``--reuse-peers`` fits only SpiceClustering and
copies the peers' rows from the stored result of the same data set and seed (they do
not depend on this code; the table names the commit they ran at).

Usage::

    python benchmarks/run_datasets.py --datasets digits usps fashion shapes \\
        cifar10-test mnist --seeds 0 1 2
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import datasets as data  # noqa: E402
from report import commit, cpu_model, machine, run_benchmark  # noqa: E402

#: name -> (loader, description, role). Defaults were chosen on the "development" sets;
#: the "held out" ones only report them.
LOADERS = {
    "digits": (data.digits, "scikit-learn digits (1,797, 8 px, gray)", "development"),
    "usps": (data.usps, "USPS (9,298, 16 px, gray)", "development"),
    "fashion": (data.fashion_mnist_subset, "Fashion-MNIST subset (12,669, 28 px, gray)",
                "development"),
    "shapes": (data.shapes, "random-colour shapes (2,000, 32 px, RGB; `datasets.shapes`)",
               "development"),
    # large enough that a CPU budget could leave a SPICE-Semi finetune its share (semi="auto"
    # gives colour images none: the probes that chose that rule ran on this set)
    "shapes-5k": (partial(data.shapes, n=5000, seed=7),
                  "random-colour shapes (5,000, 32 px, RGB; `datasets.shapes(n=5000, seed=7)`)",
                  "development"),
    "mnist": (data.mnist, "MNIST (70,000, 28 px, gray)", "held out"),
    "cifar10-test": (data.cifar10_test, "CIFAR-10 test (10,000, 32 px RGB, JPEG)", "held out"),
}
RESULTS = Path(__file__).resolve().parent / "results" / "datasets.json"


#: The rows of one SpiceClustering fit; the others (the peers) do not depend on this code.
OWN_ROWS = ("SpiceClustering (default)", "its selected head (self_labels_)")


def worker(name, seed, peers=True):
    import numpy as np

    from spice_learn import SpiceClustering
    from spice_learn.metrics import clustering_scores

    x, y = LOADERS[name][0]()
    k = len(np.unique(y))
    load_before = os.getloadavg()[0]
    model = SpiceClustering(k, random_state=seed)
    t = time.perf_counter()
    model.fit(x)
    fit_s = time.perf_counter() - t
    rows = dict(zip(OWN_ROWS, [(clustering_scores(y, model.labels_), fit_s),
                                (clustering_scores(y, model.self_labels_), None)]))
    if peers:
        rows.update(peer_rows(x, y, k, seed))
    info = {"dataset": name, "n": len(x), "k": k, "seed": seed, "commit": commit(),
            "load_before_fit": load_before, "plan": {key: (list(v) if isinstance(v, tuple) else v)
                                                     for key, v in model.plan_.items()},
            "n_nonempty": int(len(np.unique(model.labels_))), "cpu": cpu_model(),
            "entropy_weight": getattr(model, "entropy_weight_", None),
            "entropy_weight_scores": getattr(model, "entropy_weight_scores_", None),
            "semi_rounds": getattr(model, "semi_rounds_", None),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rows": {m: {**s, "seconds": sec} for m, (s, sec) in rows.items()}}
    print("RESULT " + json.dumps(info), flush=True)


def peer_rows(x, y, k, seed):
    """KMeans, UMAP + KMeans and ClustPy's peers on the pixels: ``{name: (scores, seconds)}``."""
    import numpy as np
    from sklearn.cluster import KMeans

    from spice_learn.metrics import clustering_scores

    rows = {}
    pixels = x.reshape(len(x), -1).astype(np.float32) / 255
    t = time.perf_counter()
    km = KMeans(k, n_init=10, random_state=seed).fit_predict(pixels)
    rows["KMeans on pixels"] = (clustering_scores(y, km), time.perf_counter() - t)
    try:
        import umap
    except ImportError:
        umap = None
    if umap is not None:
        t = time.perf_counter()
        z = umap.UMAP(n_components=10, n_neighbors=20, min_dist=0.0,
                      random_state=seed).fit_transform(pixels)
        labels = KMeans(k, n_init=10, random_state=seed).fit_predict(z)
        rows["UMAP + KMeans on pixels"] = (clustering_scores(y, labels), time.perf_counter() - t)
    rows.update(clustpy_peers(pixels, y, k, seed))
    return rows


#: ClustPy's deep clusterers run on data sets of at most this many images: with their
#: default 100 autoencoder epochs (and DEC's 150 clustering epochs) they take minutes
#: per seed on 1,797 digits on the 2-core CPU, and the time grows with the images.
CLUSTPY_MAX_IMAGES = 2_000


def clustpy_peers(pixels, y, k, seed):
    """ClustPy's DEC (its defaults) and N2D (UMAP to ``k`` dimensions with 20 neighbours
    and ``min_dist=0``, as in the N2D paper; ClustPy's default t-SNE to ``k`` dimensions
    fails for more than 3 clusters) on the pixels, when ClustPy and umap-learn are
    installed and the set has at most :data:`CLUSTPY_MAX_IMAGES` images: rows of
    ``{name: (scores, seconds)}``."""
    from spice_learn.metrics import clustering_scores

    try:
        import umap
        from clustpy.deep import DEC, N2D
    except ImportError:
        return {}
    if len(pixels) > CLUSTPY_MAX_IMAGES:
        return {}
    peers = {
        "ClustPy DEC on pixels": lambda: DEC(n_clusters=k, random_state=seed),
        "ClustPy N2D on pixels": lambda: N2D(
            n_clusters=k, manifold_class=umap.UMAP, random_state=seed,
            manifold_params={"n_components": k, "n_neighbors": 20, "min_dist": 0.0}),
    }
    rows = {}
    for name, make in peers.items():
        t = time.perf_counter()
        labels = make().fit(pixels).labels_
        rows[name] = (clustering_scores(y, labels), time.perf_counter() - t)
    return rows


def table(results):
    import numpy as np

    lines = [
        "## Default SpiceClustering on data sets, over seeds, next to the alternatives",
        "",
        f"Written by `python benchmarks/run_datasets.py`; {machine()}. Each fit ran "
        "alone in its own process with `SpiceClustering(k, random_state=seed)` and every "
        "other parameter at its default; KMeans (`n_init=10`), UMAP + KMeans and, on sets of "
        f"up to {CLUSTPY_MAX_IMAGES:,} images, ClustPy's DEC and N2D (UMAP to k dimensions) "
        "ran after it on the same images (pixels scaled to [0, 1]). ACC and NMI: mean over "
        "the seeds and the worst seed; seconds: mean wall time of the whole `fit` (of the "
        "clusterer for the others). The selected-head row comes from the same fits as the default "
        "row (before SPICE-Semi), so it has no time of its own. Defaults were chosen on the "
        "development sets; the held-out sets only report them. `load` is the 1-minute load "
        "average when each fit started; the fits ran one after another with nothing else on "
        "the machine, so values of 1.4-1.7 are the previous fit fading out of the average (a "
        "concurrent job on these 2 cores would keep it at 2 or more during the fit). UMAP's "
        "seconds include numba's compilation in each fresh process.",
        "",
        "| data set | method | ACC mean | ACC worst | NMI mean | seconds | seeds | commit, load, plan |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by_set = {}
    for r in results:
        by_set.setdefault(r["dataset"], []).append(r)
    for name in LOADERS:
        runs = sorted(by_set.get(name, []), key=lambda r: r["seed"])
        if not runs:
            continue
        label = f"{LOADERS[name][1]} — {LOADERS[name][2]}"
        for i, method in enumerate(runs[0]["rows"]):
            got = [r["rows"][method] for r in runs if method in r["rows"]]
            acc = [g["acc"] for g in got]
            nmi = [g["nmi"] for g in got]
            secs = [g["seconds"] for g in got if g["seconds"] is not None]
            note = ""
            if i == 0:
                plan = runs[0]["plan"]
                commits = sorted({str(r["commit"]) for r in runs})
                loads = ", ".join(f"{r['load_before_fit']:.1f}" for r in runs)
                empty = [r["k"] - r["n_nonempty"] for r in runs]
                peers = sorted({str(r["peers_commit"]) for r in runs if "peers_commit" in r})
                rounds = [r.get("semi_rounds") for r in runs]
                modes = sorted({str(r["plan"]["semi"]) for r in runs if "semi" in r["plan"]})
                epochs = sorted({r["plan"]["pretrain_epochs"] for r in runs})
                budget = plan.get("pretrain_budget")
                speeds = [round(r["plan"].get("pretrain_views_per_second") or 0) for r in runs]
                lo, hi = min(speeds), max(speeds)
                speed = str(lo) if lo == hi else f"{lo}-{hi}"
                note = (f"{'/'.join(commits)}"
                        + (f" (peers' rows from {'/'.join(peers)})" if peers else "")
                        + f"; load {loads}; {plan['backbone']} at "
                        f"{plan['input_size'][0]} px, {'/'.join(map(str, epochs))} SimCLR epochs"
                        + (f" (budget {budget:.0f} s at {speed} views/s measured)"
                           if budget else "")
                        + (f" (invariances: {'/'.join(plan['invariances']) or 'none'})"
                           if "invariances" in plan else "")
                        + f", {plan['head_objective']} heads"
                        + (f"; SPICE-Semi {'/'.join(modes)}" if modes else "")
                        + (f", rounds kept {rounds}"
                           if all(n is not None for n in rounds) else "")
                        + (f"; empty clusters {empty}" if any(empty) else "")
                        + (f"; {runs[0]['cpu']}" if "cpu" in runs[0] else ""))
            lines.append(
                f"| {label if i == 0 else ''} | {method} | {np.mean(acc):.3f} | "
                f"{min(acc):.3f} | {np.mean(nmi):.3f} | "
                f"{(f'{np.mean(secs):.0f}' if secs else '')} | "
                f"{','.join(str(r['seed']) for r in runs)} | {note} |")
    return "\n".join(lines)


def _summary(info):
    rows = info["rows"]
    return ("; ".join(f"{m}: ACC {v['acc']:.3f}" for m, v in rows.items())
            + f"; fit {rows['SpiceClustering (default)']['seconds']:.0f} s")


def main(argv=None):
    return run_benchmark(argv, script=__file__, doc=__doc__, loaders=LOADERS,
                         default_seeds=[0, 1, 2], results_file=RESULTS, section="datasets",
                         table=table, worker=worker, summary=_summary, own_rows=OWN_ROWS)


if __name__ == "__main__":
    main()
