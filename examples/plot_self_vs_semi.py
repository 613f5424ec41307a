"""
SPICE-Self versus SPICE-Semi
============================

One fit gives both results on the same features: ``self_labels_`` is the
selected SPICE-Self head, ``labels_`` the classifier retrained by SPICE-Semi on
the *reliable* samples (those whose nearest neighbours, about 30 here with
``n_neighbors="auto"``, at least 95 % share their cluster) with FixMatch
consistency, in two rounds. If a round would empty a cluster it is undone, and
SPICE-Semi then equals SPICE-Self (as can happen with few pretraining epochs). ``reliable_mask_`` tells which training
images the model is confident about, which is useful to clean a data set.
"""

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits

from spice_learn import SpiceClustering
from spice_learn.metrics import cluster_accuracy, clustering_scores

OUT = Path(os.environ.get("SPICE_LEARN_FIGURES", "figures"))
OUT.mkdir(parents=True, exist_ok=True)
digits = load_digits()
X, y = np.rint(digits.images * (255 / 16)).astype(np.uint8), digits.target
EPOCHS = int(os.environ.get("SPICE_LEARN_EXAMPLE_EPOCHS", 100))

model = SpiceClustering(10, pretrain_epochs=EPOCHS, random_state=0).fit(X)
self_scores = clustering_scores(y, model.self_labels_)
semi_scores = clustering_scores(y, model.labels_)
print("SPICE-Self", self_scores)
print("SPICE-Semi", semi_scores)
reliable = model.reliable_mask_
if 0 < reliable.sum() < len(reliable):
    print(f"{reliable.mean():.0%} reliable; SPICE-Self accuracy on them "
          f"{cluster_accuracy(y[reliable], model.self_labels_[reliable]):.3f}, on the rest "
          f"{cluster_accuracy(y[~reliable], model.self_labels_[~reliable]):.3f}")

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
names = ["ACC", "NMI", "ARI"]
pos = np.arange(3)
axes[0].bar(pos - 0.2, [self_scores[n.lower()] for n in names], 0.4, label="SPICE-Self")
axes[0].bar(pos + 0.2, [semi_scores[n.lower()] for n in names], 0.4, label="SPICE-Semi")
axes[0].set_xticks(pos, names)
axes[0].set_ylim(0.5, 1.0)
axes[0].set_ylabel("score (labels used only here)")
axes[0].set_title("Same features, same seed")
axes[0].legend()
axes[1].hist(model.reliability_, bins=20, color="tab:green")
axes[1].axvline(model.reliability_threshold, color="black", linestyle="--",
                label=f"tau_c = {model.reliability_threshold}")
axes[1].set_xlabel("share of its nearest neighbours in the same cluster")
axes[1].set_ylabel("images")
axes[1].set_title("Reliability of the SPICE-Self labels")
axes[1].legend()
fig.tight_layout()
fig.savefig(OUT / "self_vs_semi.png")
plt.show()
