"""
Choosing ``n_clusters`` without labels
======================================

:meth:`SpiceClustering.score <spice_learn.SpiceClustering.score>` rescales the
label-free DS-CE loss so that models with different numbers of clusters can be
compared: 1 means every pseudo-labelled sample gets a one-hot prediction of its
pseudo-label on a strong view, 0 means uniform predictions. Here the backbone is
pretrained once with :class:`~spice_learn.ImageEmbedder` and reused for every
``k`` (``backbone=embedder.backbone_``), and each model is scored on held-out
digits. The true number of digit classes (10) is shown only for reference.

The score is a guide, not an oracle: fewer, larger clusters are easier to
predict confidently, so the curve tends to fall as ``k`` grows (with a weak
backbone, e.g. few pretraining epochs, it may simply fall). Look for a knee or a
plateau rather than the maximum, and look at the cluster grids of the
candidates before choosing.
"""

# %%
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from spice_learn import ImageEmbedder, SpiceClustering

OUT = Path(os.environ.get("SPICE_LEARN_FIGURES", "figures"))
OUT.mkdir(parents=True, exist_ok=True)
digits = load_digits()
X = np.rint(digits.images * (255 / 16)).astype(np.uint8)
X_fit, X_held = train_test_split(X, test_size=0.3, random_state=0)
EPOCHS = int(os.environ.get("SPICE_LEARN_EXAMPLE_EPOCHS", 60))

embedder = ImageEmbedder(pretrain_epochs=EPOCHS, random_state=0).fit(X_fit)

# %%
ks = [6, 8, 10, 12, 14]
scores = []
for k in ks:
    # SPICE-Self only and the paper's 2 weak / 4 strong views keep the sweep quick.
    model = SpiceClustering(k, backbone=embedder.backbone_, max_epochs=50, semi=None,
                            n_weak_views=2, n_strong_views=4, random_state=0)
    scores.append(model.fit(X_fit).score(X_held))
    print(f"k={k:2d}: label-free score {scores[-1]:.3f}")

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(ks, scores, marker="o")
ax.axvline(10, color="gray", linestyle=":", label="true number of digits (reference)")
ax.set_xlabel("n_clusters")
ax.set_ylabel("label-free score on held-out images")
ax.set_title("Choosing n_clusters without labels")
ax.legend()
fig.tight_layout()
fig.savefig(OUT / "choose_n_clusters.png")
plt.show()
