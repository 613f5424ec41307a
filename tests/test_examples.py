"""Run every gallery script in ``examples/`` to completion (slow: ``pytest -m slow``).

The scripts run offline in a subprocess with the Agg backend, with fewer
pretraining epochs than their defaults (``SPICE_LEARN_EXAMPLE_EPOCHS``) so that
CI stays within minutes; every figure a script saves must exist and be non-empty.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("plot_*.py"))
FIGURES = {
    "plot_quick_start.py": ["quick_start_clusters.png", "quick_start_confusion.png",
                            "quick_start_map.png", "quick_start_heads.png",
                            "quick_start_pretraining.png"],
    "plot_choose_n_clusters.py": ["choose_n_clusters.png"],
    "plot_self_vs_semi.py": ["self_vs_semi.png"],
    "plot_cluster_folder.py": ["cluster_folder/overview.png", "cluster_folder/clusters.csv"],
    "plot_own_backbone.py": ["own_backbone.png"],
    "plot_compare_clusterers.py": ["compare_clusterers.png"],
    "plot_grid_search.py": ["grid_search.png"],
}


def test_every_example_is_listed():
    assert sorted(p.name for p in EXAMPLES) == sorted(FIGURES)


@pytest.mark.slow
@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs_and_saves_its_figures(script, tmp_path):
    env = {**os.environ, "MPLBACKEND": "Agg", "SPICE_LEARN_FIGURES": str(tmp_path),
           "SPICE_LEARN_EXAMPLE_EPOCHS": "5", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in FIGURES[script.name]:
        assert (tmp_path / name).stat().st_size > 1000, name
