"""SPICE-Semi settings on sklearn digits: neighbours (100 vs "auto") and rounds (1 vs 2).

For each seed, one fit with ``semi=None`` learns the representation (SimCLR
stage 1 with the default settings) and SPICE-Self; every other fit reuses that
backbone (``backbone=first.backbone_``) with the same ``random_state``, so its
cached views and SPICE-Self heads are the same and only SPICE-Semi differs. The
SPICE-Self ACC of every reused fit is printed to show that. Labels are used only
to score. Results go to the ``semi_rounds`` section of docs/benchmarks.md.

Usage::

    python benchmarks/run_semi_rounds.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import machine, write_section  # noqa: E402

from spice_learn import SpiceClustering  # noqa: E402
from spice_learn.metrics import clustering_scores  # noqa: E402

SETTINGS = [
    ("n_neighbors=100, 1 round (the paper)", {"n_neighbors": 100, "semi_rounds": 1}),
    ('n_neighbors="auto", 1 round', {"semi_rounds": 1}),
    ('n_neighbors="auto", 2 rounds (default)', {"semi_rounds": 2}),
]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    digits = load_digits()
    X = np.rint(digits.images * (255 / 16)).astype(np.uint8)
    y = digits.target
    print(f"machine: {machine()}", flush=True)
    rows = {name: [] for name, _ in [("SPICE-Self", None)] + SETTINGS}
    for seed in args.seeds:
        start = time.perf_counter()
        first = SpiceClustering(10, semi=None, random_state=seed).fit(X)
        self_acc = clustering_scores(y, first.labels_)["acc"]
        print(f"seed {seed}: stage 1 + SPICE-Self {time.perf_counter() - start:.0f} s, "
              f"ACC {self_acc:.3f}", flush=True)
        rows["SPICE-Self"].append((self_acc, clustering_scores(y, first.labels_)["nmi"], 0.0))
        for name, kwargs in SETTINGS:
            start = time.perf_counter()
            model = SpiceClustering(10, backbone=first.backbone_, random_state=seed,
                                    **kwargs).fit(X)
            seconds = time.perf_counter() - start
            scores = clustering_scores(y, model.labels_)
            reused_self = clustering_scores(y, model.self_labels_)["acc"]
            print(f"  {name}: ACC {scores['acc']:.3f} NMI {scores['nmi']:.3f} "
                  f"({seconds:.0f} s for the whole reused fit; its SPICE-Self ACC "
                  f"{reused_self:.3f})", flush=True)
            rows[name].append((scores["acc"], scores["nmi"], seconds))
    lines = [
        "## SPICE-Semi settings on sklearn digits", "",
        f"`python benchmarks/run_semi_rounds.py --seeds {' '.join(map(str, args.seeds))}` on "
        f"{machine()}. One stage-1 + SPICE-Self fit per seed; every SPICE-Semi setting reuses "
        "its backbone and seed, so only SPICE-Semi differs. Seconds: the whole reused fit "
        "(embedding the views, SPICE-Self heads, SPICE-Semi).", "",
        "| setting | ACC per seed | mean ACC | mean NMI | mean seconds |",
        "|---|---|---|---|---|",
    ]
    for name, values in rows.items():
        acc, nmi, sec = np.array(values).T
        lines.append(f"| {name} | {' '.join(f'{a:.3f}' for a in acc)} | {acc.mean():.3f} | "
                     f"{nmi.mean():.3f} | {'' if name == 'SPICE-Self' else f'{sec.mean():.0f}'} |")
    print(f"wrote {write_section('semi_rounds', chr(10).join(lines))}", flush=True)


if __name__ == "__main__":
    main()
