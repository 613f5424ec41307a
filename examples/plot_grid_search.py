"""
Tuning SpiceClustering with GridSearchCV, with and without labels
=================================================================

``SpiceClustering.score`` is label-free: it rescales the double-softmax
cross-entropy that SPICE-Self already uses to pick its best head, so
``GridSearchCV`` can compare settings on data that has no labels at all. When
labels exist *for evaluation*, the scorers in :mod:`spice_learn.metrics`
(Hungarian-matched accuracy, NMI, ARI) can be passed as ``scoring=``.

Why prefer the label-free score in real work: a clustering task has no labels by
definition. Choosing hyperparameters by accuracy against ground truth quietly
turns the method into a supervised one and reports numbers nobody could get on
new, unlabelled data (several published clustering configurations pick heads or
epochs this way). Here we run both searches on scikit-learn's digits and show
how well the label-free choice agrees with the labelled one.

To keep this example fast, the 64 pixel values of each digit are used as
precomputed features (``backbone="precomputed"``; the views are then
feature-space augmentations). Replace them with images and a backbone for real
use.
"""

# %%
# Data and model
# --------------
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from spice_learn import SpiceClustering
from spice_learn.metrics import accuracy_scorer

X, y = load_digits(return_X_y=True)  # y is used only by the labelled search
model = make_pipeline(
    StandardScaler(),
    SpiceClustering(10, backbone="precomputed", max_epochs=20, n_heads=5, semi_steps=300,
                    n_weak_views=2, n_strong_views=4, random_state=0),
)
grid = {"spiceclustering__confidence_ratio": [0.2, 0.8],
        "spiceclustering__semi": [None, "head"]}

# %%
# Label-free search: ``score`` needs no ``y``
# -------------------------------------------
free = GridSearchCV(model, grid, cv=2).fit(X)
print("label-free choice:", free.best_params_)

# %%
# Search with labels (evaluation only): Hungarian-matched accuracy
# ----------------------------------------------------------------
labelled = GridSearchCV(model, grid, cv=2, scoring=accuracy_scorer).fit(X, y)
print("accuracy choice:  ", labelled.best_params_)

# %%
# How the two criteria rank the same settings
# -------------------------------------------
names = [f"r={p['spiceclustering__confidence_ratio']}\nsemi={p['spiceclustering__semi']}"
         for p in free.cv_results_["params"]]
fig, ax1 = plt.subplots(figsize=(8, 4.4))
pos = np.arange(len(names))
ax1.bar(pos - 0.2, free.cv_results_["mean_test_score"], 0.4, label="label-free score")
ax2 = ax1.twinx()
ax2.bar(pos + 0.2, labelled.cv_results_["mean_test_score"], 0.4, color="tab:orange",
        label="accuracy (uses labels)")
ax1.set_xticks(pos, names)
ax1.set_ylabel("label-free score (higher is better)")
ax2.set_ylabel("Hungarian accuracy")
ax1.set_xlabel("setting")
ax1.set_title("GridSearchCV on digits: label-free score vs accuracy, 2-fold means")
fig.legend(loc="lower center", ncol=2)  # below the axes: never over a bar or a tick label
fig.tight_layout(rect=(0, 0.07, 1, 1))
OUT = Path(os.environ.get("SPICE_LEARN_FIGURES", "figures"))
OUT.mkdir(parents=True, exist_ok=True)
fig.savefig(OUT / "grid_search.png")
plt.show()

# %%
# Accuracy of the label-free choice on all digits (labels used only to score):
best = free.best_estimator_
print(f"label-free pick: ACC {accuracy_scorer(best, X, y):.3f}; "
      f"accuracy pick: ACC {accuracy_scorer(labelled.best_estimator_, X, y):.3f}")
