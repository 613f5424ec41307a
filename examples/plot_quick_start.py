"""
Quick start: clustering scikit-learn's digits
=============================================

The default :class:`~spice_learn.SpiceClustering` learns its own representation
from the images (stage 1, SimCLR on a small conv net), trains ten SPICE-Self
heads on cached views and keeps the one with the lowest label-free loss, then
refines it with SPICE-Semi on the reliable samples. The labels of the digits are
used only to draw the confusion matrix.
"""

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits

from spice_learn import SpiceClustering
from spice_learn.metrics import clustering_scores
from spice_learn.plotting import (
    plot_cluster_grid,
    plot_confusion_matrix,
    plot_embedding_map,
    plot_head_losses,
    plot_pretraining_loss,
)

OUT = Path(os.environ.get("SPICE_LEARN_FIGURES", "figures"))
OUT.mkdir(parents=True, exist_ok=True)
digits = load_digits()
X = np.rint(digits.images * (255 / 16)).astype(np.uint8)  # 0-16 -> 0-255 images
EPOCHS = int(os.environ.get("SPICE_LEARN_EXAMPLE_EPOCHS", 100))  # the default is 100

# %%
# Fit with the defaults (one to three minutes on 2 CPU cores)
model = SpiceClustering(n_clusters=10, pretrain_epochs=EPOCHS, random_state=0)
labels = model.fit_predict(X)
print("SPICE-Self:", clustering_scores(digits.target, model.self_labels_))
print("SPICE-Semi:", clustering_scores(digits.target, labels))

# %%
# The most confident images of each cluster
confidence = model.predict_proba(X).max(axis=1)
plot_cluster_grid(X, labels, confidence).savefig(OUT / "quick_start_clusters.png")

# %%
# Clusters against the true digits (after Hungarian matching)
plot_confusion_matrix(digits.target, labels).savefig(OUT / "quick_start_confusion.png")

# %%
# The learned embedding, reliable samples as dots
plot_embedding_map(model.transform(X), labels, reliable=model.reliable_mask_,
                   method="tsne").savefig(OUT / "quick_start_map.png")

# %%
# Label-free head selection and the pretraining loss
plot_head_losses(model).savefig(OUT / "quick_start_heads.png")
plot_pretraining_loss(model).savefig(OUT / "quick_start_pretraining.png")
plt.show()
