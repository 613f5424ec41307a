"""Write one benchmark's section of ``docs/benchmarks.md`` and keep the others."""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
HEADER = (
    "# Benchmarks\n\n"
    "Every section below is written by the script it names; rerun the script to "
    "refresh it. Labels are used only to score.\n"
)


def cpu_model():
    """The processor's name, its family and model numbers where /proc/cpuinfo gives them
    (a virtual machine may name only "AMD EPYC", and two generations under that name
    differ by 1.7 times in SimCLR views per second), and whether it has fast bfloat16
    (which the CPU plan uses when present, and which makes a fit about five times faster)."""
    from spice_learn.runtime import autocast_dtype

    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            fields = {}
            for line in info:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
        name = fields.get("model name", name)
        if "cpu family" in fields and "model" in fields:
            name += f", family {fields['cpu family']} model {fields['model']}"
    except OSError:
        pass
    fast = autocast_dtype(torch.device("cpu")) is not None
    return f"{name} ({'bfloat16' if fast else 'float32: no fast bfloat16'})"


def machine():
    """One line describing where the numbers were measured."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.machine()}, {cpu_model()}, {torch.get_num_threads()} torch threads, "
            f"{gpu}; python {platform.python_version()}, torch {torch.__version__}")


def commit():
    """The repository's commit (short hash; "+" when spice_learn/ has changes), or None."""
    root = DOC.parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, check=True,
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "spice_learn"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+" if dirty else "")


def write_section(key, markdown):
    """Replace (or append) the block between ``<!-- key:begin -->`` and ``<!-- key:end -->``."""
    text = DOC.read_text() if DOC.exists() else HEADER
    block = f"<!-- {key}:begin -->\n{markdown.strip()}\n<!-- {key}:end -->"
    pattern = re.compile(rf"<!-- {re.escape(key)}:begin -->.*?<!-- {re.escape(key)}:end -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)
    return DOC


def run_benchmark(argv, *, script, doc, loaders, default_seeds, results_file, section, table,
                  worker, summary, own_rows=None):
    """The command line every ``run_*.py`` over data sets and seeds shares.

    Each (data set, seed) runs ``script --worker NAME --seeds SEED`` in a fresh process,
    one after another, and prints the load average first. A worker prints one
    ``RESULT {json}`` line; results are merged into ``results_file`` (keyed by data set
    and seed) and ``table(results)`` is written to the ``section`` of
    docs/benchmarks.md after each run. ``summary(info)`` is the one line printed.

    ``own_rows`` (the names of the rows that depend on this repository) adds
    ``--reuse-peers``: workers are called as ``worker(name, seed, peers=False)`` and
    fit only those rows, and the other rows (the peers: scikit-learn, UMAP, ClustPy,
    which do not change with this code) are copied from the stored result of the same
    data set and seed, whose commit is kept as ``peers_commit``. A (data set, seed)
    without a stored result runs everything; one whose stored result has another
    ``n`` or ``k`` stops with an error.
    """
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(loaders), choices=list(loaders))
    parser.add_argument("--seeds", type=int, nargs="+", default=default_seeds)
    parser.add_argument("--table-only", action="store_true",
                        help="rewrite the docs/benchmarks.md section from the stored results")
    if own_rows is not None:
        parser.add_argument("--reuse-peers", action="store_true",
                            help="fit only SpiceClustering; copy the other methods' rows from "
                                 "the stored result of the same data set and seed")
        parser.add_argument("--own-only", action="store_true",
                            help="fit only SpiceClustering, without the other methods' rows")
    parser.add_argument("--tag", default=None,
                        help="keep these results apart (their own results file and section "
                             "of docs/benchmarks.md, headed with the tag), e.g. for another "
                             "machine")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.tag:
        results_file = results_file.with_name(f"{results_file.stem}-{args.tag}.json")
        section, plain_table = f"{section}-{args.tag}", table

        def table(results):
            heading, _, rest = plain_table(results).partition("\n")
            return f"{heading} ({args.tag})\n{rest}"
    reuse = getattr(args, "reuse_peers", False)
    own_only = getattr(args, "own_only", False)
    if args.worker:
        return worker(args.worker, args.seeds[0],
                      **({"peers": False} if reuse or own_only else {}))
    results = json.loads(results_file.read_text()) if results_file.exists() else []
    if args.table_only:
        print(f"wrote {write_section(section, table(results))}")
        return None
    print(f"machine: {machine()}", flush=True)
    for name in args.datasets:
        for seed in args.seeds:
            old = [r for r in results if (r["dataset"], r["seed"]) == (name, seed)]
            peers_from = old[0] if reuse and old else None
            print(f"{name}, seed {seed}: load average {os.getloadavg()[0]:.2f} ...", flush=True)
            out = subprocess.run([sys.executable, script, "--worker", name, "--seeds", str(seed)]
                                 + (["--reuse-peers"] if peers_from or own_only else []),
                                 capture_output=True, text=True)
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            if out.returncode != 0 or not line:
                print(out.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"{name} (seed {seed}) failed")
            info = json.loads(line[-1][len("RESULT "):])
            if peers_from is not None:
                if (peers_from.get("n"), peers_from.get("k")) != (info.get("n"), info.get("k")):
                    raise SystemExit(f"{name} (seed {seed}): the stored result has other data "
                                     "(n, k); run it again without --reuse-peers")
                info["rows"].update({m: v for m, v in peers_from["rows"].items()
                                     if m not in own_rows})
                info["peers_commit"] = peers_from.get("peers_commit", peers_from["commit"])
            print("  " + summary(info), flush=True)
            results = [r for r in results if (r["dataset"], r["seed"]) != (name, seed)] + [info]
            results_file.parent.mkdir(parents=True, exist_ok=True)
            results_file.write_text(json.dumps(results, indent=1))
            print(f"wrote {write_section(section, table(results))}", flush=True)
    return None
