"""SPICE-Semi's neighbour step alone: time and peak extra memory at N = 70,000 x 512.

Random clustered float32 features (N x D) are searched for their ``n_s = 100``
cosine nearest neighbours with :func:`spice_learn.neighbors.nearest_neighbors`,
once per backend (``--backend``): ``torch`` (blocks of rows against all
samples) and ``faiss`` (exact ``IndexFlatIP`` search; skipped with a message
when faiss is not installed), then the reliability score is computed. Each run
(one N, one backend) happens in a fresh subprocess; "peak extra memory" is the highest
resident set sampled every 5 ms during the step minus the resident set just
before it (the features are already loaded then). A dense N x N float32 similarity matrix would
need ``4 N^2`` bytes (19.6 GB at N = 70,000). Results go to the ``neighbors``
section of docs/benchmarks.md.

Usage::

    python benchmarks/run_neighbors.py --n 70000 --dim 512 --n-neighbors 100
    python benchmarks/run_neighbors.py --n 2000 --backend faiss --no-doc   # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import machine, write_section  # noqa: E402


def _rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def worker(n, dim, n_neighbors, block_mib, backend):
    import numpy as np
    import torch

    from spice_learn.neighbors import nearest_neighbors, reliability_scores

    versions = f"torch {torch.__version__}"
    if backend == "faiss":  # imported before the measurement; searches with torch's threads
        import faiss

        versions = f"faiss {faiss.__version__}"
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(10, dim)).astype(np.float32)
    labels = rng.integers(0, 10, n)
    features = torch.from_numpy(centers[labels] + rng.normal(size=(n, dim)).astype(np.float32))
    before = _rss_mib()
    peak, done = [before], threading.Event()

    def sample():  # the process's resident set every 5 ms while the step runs
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mib())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t = time.perf_counter()
    idx = nearest_neighbors(features, n_neighbors, block_bytes=block_mib << 20, backend=backend)
    search_s = time.perf_counter() - t
    t = time.perf_counter()
    scores = reliability_scores(idx, labels)
    score_s = time.perf_counter() - t
    done.set()
    sampler.join()
    print("RESULT " + json.dumps({
        "n": n, "dim": dim, "n_neighbors": n_neighbors, "block_mib": block_mib,
        "backend": backend, "version": versions, "threads": torch.get_num_threads(),
        "search_s": search_s, "score_s": score_s,
        "rss_before_mib": before, "peak_extra_mib": peak[0] - before,
        "dense_matrix_gib": 4 * n * n / 2**30, "mean_score": float(scores.mean()),
    }), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[70_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--n-neighbors", type=int, default=100)
    parser.add_argument("--block-mib", type=int, default=64, help="torch backend: MiB per block")
    parser.add_argument("--backend", nargs="+", choices=["torch", "faiss"],
                        default=["torch", "faiss"],
                        help="backends to time, each N in its own process (faiss is skipped "
                             "when not installed)")
    parser.add_argument("--no-doc", action="store_true", help="print only")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.n[0], args.dim, args.n_neighbors, args.block_mib, args.backend[0])
    backends = list(dict.fromkeys(args.backend))
    if "faiss" in backends:
        try:
            import faiss  # noqa: F401
        except ImportError:
            print("faiss is not installed (pip install faiss-cpu): its rows are skipped",
                  file=sys.stderr)
            backends.remove("faiss")
    if not backends:
        raise SystemExit("no backend to run")
    rows, load = [], [os.getloadavg()[0]]
    for n in args.n:
        for backend in backends:
            out = subprocess.run(
                [sys.executable, __file__, "--worker", "--n", str(n), "--dim", str(args.dim),
                 "--n-neighbors", str(args.n_neighbors), "--block-mib", str(args.block_mib),
                 "--backend", backend],
                check=False, capture_output=True, text=True)
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            if out.returncode != 0 or not line:
                print(out.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"N={n}, backend={backend} failed")
            rows.append(json.loads(line[-1][len("RESULT "):]))
            print(rows[-1], flush=True)
    load.append(os.getloadavg()[0])
    versions = ", ".join(dict.fromkeys(r["version"] for r in rows))
    described = {
        "torch": f"`torch` (blocks of rows against all samples, {args.block_mib} MiB per block)",
        "faiss": "`faiss` (exact `faiss.knn` search on the normalised features, in blocks of "
                 "query rows)",
    }
    lines = [
        "## SPICE-Semi neighbour step alone",
        "",
        f"Written by `python benchmarks/run_neighbors.py`; {machine()}. Random clustered "
        f"float32 features, {args.n_neighbors} cosine neighbours per sample with "
        "`spice_learn.neighbors.nearest_neighbors`, backend "
        f"{' or '.join(described[b] for b in backends)}, then the reliability scores "
        f"({versions}). Each N and backend ran in a fresh process; peak extra memory = highest "
        "resident set sampled every 5 ms during the step minus the resident set before it "
        "(features already loaded). Load average of the machine "
        f"{load[0]:.1f} at the start and {load[1]:.1f} at the end, on {os.cpu_count()} "
        "cores (above that, other jobs shared the machine and times are upper bounds; "
        "the ratio of the two backends at one N is the more robust number).",
        "",
        "| N | dims | backend | search s | score s | peak extra memory | dense N×N float32 would need |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['n']:,} | {r['dim']} | {r['backend']} | {r['search_s']:.1f} | "
                     f"{r['score_s']:.2f} | {r['peak_extra_mib']:.0f} MiB | "
                     f"{r['dense_matrix_gib']:.1f} GiB |")
    if args.no_doc:
        print("\n".join(lines))
    else:
        print(f"wrote {write_section('neighbors', chr(10).join(lines))}")


if __name__ == "__main__":
    main()
