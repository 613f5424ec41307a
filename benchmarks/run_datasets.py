"""The default SpiceClustering (stage 1 + SPICE-Self + SPICE-Semi "head") on real data sets.

For each data set: ``SpiceClustering(10, pretrain_time=..., random_state=seed)`` with
otherwise default settings. One fit gives both the SPICE-Self clustering
(``self_labels_``) and the SPICE-Semi one (``labels_``) on the same features and
seed; they are reported next to ``KMeans(n_init=10)`` on the pixels and on the
learned embedding, with ACC/NMI/ARI, seconds and the peak resident memory of
the process that ran it (each data set runs in its own subprocess). Labels are
used only to score. Results go to the ``datasets`` section of docs/benchmarks.md
after each data set.

Usage::

    python benchmarks/run_datasets.py --datasets digits usps fashion mnist cifar10-test \\
        --pretrain-minutes 0 5 5 12 8
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import datasets as data  # noqa: E402
from report import machine, write_section  # noqa: E402

LOADERS = {
    "digits": (data.digits, "scikit-learn digits (1,797, 8 px)", 0.95),
    "usps": (data.usps, "USPS (all 9,298, 16 px)", 0.985),
    "fashion": (data.fashion_mnist_subset, "Fashion-MNIST subset (12,669, 28 px)", 0.70),
    "mnist": (data.mnist, "MNIST (all 70,000, 28 px)", 0.99),
    "cifar10-test": (data.cifar10_test, "CIFAR-10 test (10,000 JPEG, 32 px)", None),
    "cifar10": (data.cifar10_all, "CIFAR-10 (all 60,000 JPEG, 32 px)", None),
}
RESULTS = Path(__file__).resolve().parent / "results" / "datasets.json"


def worker(name, pretrain_minutes, seed):
    import numpy as np
    import torch
    from sklearn.cluster import KMeans

    import spice_learn.estimator as estimator
    from spice_learn import SpiceClustering
    from spice_learn.embedding import embed_images
    from spice_learn.image_input import as_images
    from spice_learn.metrics import clustering_scores

    semi_seconds = [0.0]

    def timed(fn):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                semi_seconds[0] += time.perf_counter() - t
        return wrapper

    # SPICE-Semi's share of the fit time: its neighbour search and its training.
    estimator.nearest_neighbors = timed(estimator.nearest_neighbors)
    estimator.train_semi_head = timed(estimator.train_semi_head)

    x, y = LOADERS[name][0]()
    # digits: the demo's defaults (100 pretraining epochs, no time budget).
    budget = {} if name == "digits" else dict(pretrain_epochs=1000,
                                              pretrain_time=pretrain_minutes * 60)
    model = SpiceClustering(10, random_state=seed, **budget)
    t = time.perf_counter()
    model.fit(x)
    fit_s = time.perf_counter() - t
    rows = [{"method": "SPICE-Self (stage 1 + SPICE-Self)", "seconds": fit_s - semi_seconds[0],
             **clustering_scores(y, model.self_labels_)},
            {"method": "SPICE-Semi (\"head\", same fit)", "seconds": fit_s,
             **clustering_scores(y, model.labels_)}]
    emb = embed_images(model.backbone_, as_images(x), batch_size=512,
                       device=torch.device("cuda" if torch.cuda.is_available() else "cpu")).numpy()
    t = time.perf_counter()
    km = KMeans(10, n_init=10, random_state=seed).fit_predict(emb)
    rows.append({"method": "KMeans on the SPICE embedding", "seconds": time.perf_counter() - t,
                 **clustering_scores(y, km)})
    t = time.perf_counter()
    km = KMeans(10, n_init=10, random_state=seed).fit_predict(x.reshape(len(x), -1).astype(np.float32))
    rows.append({"method": "KMeans on pixels", "seconds": time.perf_counter() - t,
                 **clustering_scores(y, km)})
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    info = {"dataset": name, "n": len(x), "backbone": model.backbone_.name,
            "input_size": list(model.backbone_.input_size),
            "pretrain_epochs_done": len(model.pretrain_history_),
            "pretrain_minutes": None if name == "digits" else pretrain_minutes,
            "peak_rss_mib": peak_mib, "rows": rows, "seed": seed, "commit": _commit(),
            "semi_seconds": semi_seconds[0],
            "reliable_share": float(model.reliable_mask_.mean()),
            "reliable_acc": float(clustering_scores(y[model.reliable_mask_],
                                                    model.self_labels_[model.reliable_mask_])["acc"])
            if model.reliable_mask_.any() else None}
    print("RESULT " + json.dumps(info), flush=True)


def _commit():
    """The repository's commit (short hash; "+" when the tree has changes), or None."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, check=True,
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "spice_learn"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+" if dirty else "")


def table(results):
    lines = [
        "## Default SpiceClustering on real data sets (stage 1 + SPICE-Self + SPICE-Semi)",
        "",
        f"Written by `python benchmarks/run_datasets.py`; {machine()}. Each data set ran in "
        "its own process with `SpiceClustering(10, pretrain_epochs=1000, "
        "pretrain_time=<budget>, random_state=0)` and otherwise default settings (the "
        "pretraining budget is the binding limit; the learning-rate schedule follows it); "
        "digits ran the demo's defaults (100 epochs, no budget). The SPICE-Self and "
        "SPICE-Semi rows come from the same fit: `self_labels_` (selected head) and "
        "`labels_` (after SPICE-Semi \"head\" with its defaults: reliable samples at "
        "tau_c = 0.95 among `n_neighbors=\"auto\"` neighbours, 2 rounds of 1000 FixMatch "
        "steps on the cached views, class-balanced draws). Rows measured with an earlier "
        "version of the library say so in their notes. The SPICE-Self time "
        "excludes SPICE-Semi, the SPICE-Semi time is the whole fit. Peak memory is the "
        "process's peak resident set (data, model, cache). Targets are the best published "
        "results (SPC; digits: this project's bar).",
        "",
        "| data set | method | ACC | NMI | ARI | seconds | peak RSS | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        label, target = LOADERS[r["dataset"]][1], LOADERS[r["dataset"]][2]
        for i, row in enumerate(r["rows"]):
            note = ""
            if i == 0:
                budget = (f" in {r['pretrain_minutes']} min" if r.get("pretrain_minutes")
                          else "")
                note = (f"{r['backbone']} at {r['input_size'][0]} px, "
                        f"{r['pretrain_epochs_done']} pretraining epochs{budget}"
                        + (f"; target ACC ≥ {target}" if target else ""))
            elif i == 1 and "reliable_share" in r:
                acc = r["reliable_acc"]
                note = (f"{r['reliable_share']:.0%} reliable"
                        + (f" (their SPICE-Self ACC {acc:.3f})" if acc is not None else "")
                        + f"; SPICE-Semi took {r['semi_seconds']:.0f} s")
                note += (f"; commit {r['commit']}" if r.get("commit") else
                         "; **earlier version** (bd4d7a3 or before: 1 SPICE-Semi round, "
                         "100 neighbours, uniform draws)")
            lines.append(
                f"| {label if i == 0 else ''} | {row['method']} | {row['acc']:.3f} | "
                f"{row['nmi']:.3f} | {row['ari']:.3f} | {row['seconds']:.0f} | "
                f"{(str(round(r['peak_rss_mib'])) + ' MiB') if i == 0 else ''} | {note} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+",
                        default=["digits", "usps", "fashion", "mnist", "cifar10-test"],
                        choices=sorted(LOADERS))
    parser.add_argument("--pretrain-minutes", type=float, nargs="+", default=[0, 5, 5, 12, 8],
                        help="pretraining budget per data set (one value, or one per data set)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--table-only", action="store_true",
                        help="rewrite the docs/benchmarks.md section from the stored results")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.pretrain_minutes[0], args.seed)
    if args.table_only:
        order = list(LOADERS)
        results = sorted(json.loads(RESULTS.read_text()),
                         key=lambda r: order.index(r["dataset"]))
        print(f"wrote {write_section('datasets', table(results))}")
        return None
    budgets = args.pretrain_minutes
    budgets = budgets * len(args.datasets) if len(budgets) == 1 else budgets
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    print(f"machine: {machine()}", flush=True)
    for name, minutes in zip(args.datasets, budgets):
        print(f"{name}: pretraining budget {minutes} min ...", flush=True)
        out = subprocess.run(
            [sys.executable, __file__, "--worker", name, "--pretrain-minutes", str(minutes),
             "--seed", str(args.seed)], capture_output=True, text=True)
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
        if out.returncode != 0 or not line:
            print(out.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"{name} failed")
        info = json.loads(line[-1][len("RESULT "):])
        print(json.dumps(info, indent=1), flush=True)
        results = [r for r in results if r["dataset"] != name] + [info]
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=1))
        order = list(LOADERS)
        results.sort(key=lambda r: order.index(r["dataset"]))
        print(f"wrote {write_section('datasets', table(results))}", flush=True)


if __name__ == "__main__":
    main()
