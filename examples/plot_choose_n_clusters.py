"""
Choosing ``n_clusters`` without labels
======================================

``SpiceClustering(n_clusters="auto")`` pretrains the backbone and embeds the
cached views once, then trains quick cluster heads for every candidate ``k``
from 2 to 20 and scores each candidate's clustering by its **silhouette** in the
learned embedding (how much closer each image is to its own cluster than to the
nearest other one). The highest score wins; the final heads and SPICE-Semi then
run at that ``k``. ``n_clusters_`` is the choice and ``n_clusters_scores_`` the
whole curve. An explicit range works too: ``n_clusters=range(5, 16)``.

The criterion is a guide, not an oracle. Here the data are the digits 0-4 of
scikit-learn's digits (5 classes, shown only for reference). Look at the curve
and at the clusters of the chosen ``k`` and of its neighbours before trusting it.
"""

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits

from spice_learn import SpiceClustering
from spice_learn.metrics import cluster_accuracy
from spice_learn.plotting import plot_cluster_grid

OUT = Path(os.environ.get("SPICE_LEARN_FIGURES", "figures"))
OUT.mkdir(parents=True, exist_ok=True)
digits = load_digits()
keep = digits.target < 5
X = np.rint(digits.images[keep] * (255 / 16)).astype(np.uint8)
y = digits.target[keep]  # only to score
EPOCHS = os.environ.get("SPICE_LEARN_EXAMPLE_EPOCHS", "auto")
EPOCHS = EPOCHS if EPOCHS == "auto" else int(EPOCHS)

model = SpiceClustering("auto", pretrain_epochs=EPOCHS, random_state=0).fit(X)
k = model.n_clusters_
print(f"chose n_clusters={k} (5 classes); ACC {cluster_accuracy(y, model.labels_):.3f}")

# %%
# The criterion curve.
ks = list(model.n_clusters_scores_)
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(ks, list(model.n_clusters_scores_.values()), marker="o")
ax.axvline(k, color="C1", label=f"chosen: {k}")
ax.axvline(5, color="gray", linestyle=":", label="classes (reference)")
ax.set_xlabel("n_clusters")
ax.set_ylabel("silhouette of the clustering")
ax.set_title('n_clusters="auto" on digits 0-4')
ax.legend()
fig.tight_layout()
fig.savefig(OUT / "choose_n_clusters.png")

# %%
# The clusters of the chosen ``k`` and of its neighbours. The neighbours reuse the
# fitted backbone (``backbone=model.backbone_``), so only the heads are trained again.
for kk in (k - 1, k, k + 1):
    if kk < 2:
        continue
    m = model if kk == k else SpiceClustering(kk, backbone=model.backbone_,
                                              random_state=0).fit(X)
    confidence = m.predict_proba(X).max(axis=1)
    fig = plot_cluster_grid(X, m.labels_, confidence, n_clusters=kk,
                            title=f"n_clusters={kk}" + (" (chosen)" if kk == k else ""))
    fig.savefig(OUT / f"choose_n_clusters_k{kk}.png")
plt.show()
