"""
Using your own backbone or local weights
========================================

Three ways to bring a representation instead of pretraining one:

* ``backbone=<torch.nn.Module>``: any module mapping normalised ``(B, 3, H, W)``
  images to ``(B, D)`` features or ``(B, C, h, w)`` maps (average-pooled);
* ``backbone=<timm name>, weights="path/to/state_dict.pth"``: a local timm or
  torchvision state dict, read with ``torch.load(..., weights_only=True)``;
* ``backbone=fitted.backbone_``: the backbone a previous fit learned.

``weights="pretrained"`` downloads timm's ImageNet weights when a network is
available and fails within a second, with instructions, when it is not.
"""

# %%
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.datasets import load_digits

from spice_learn import SpiceClustering
from spice_learn.metrics import cluster_accuracy

OUT = Path(os.environ.get("SPICE_LEARN_FIGURES", "figures"))
OUT.mkdir(parents=True, exist_ok=True)
digits = load_digits()
X, y = np.rint(digits.images * (255 / 16)).astype(np.uint8), digits.target
EPOCHS = int(os.environ.get("SPICE_LEARN_EXAMPLE_EPOCHS", 60))
results = {}

# %%
# 1. A module of your own (here an untrained random conv net, no pretraining).
net = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.ReLU(),
                          torch.nn.Conv2d(64, 128, 3, padding=1), torch.nn.ReLU())
m1 = SpiceClustering(10, backbone=net, random_state=0).fit(X)
results["random conv net\n(your module)"] = cluster_accuracy(y, m1.labels_)

# %%
# 2. Pretrain once, save the weights to a file, and load them by name + path.
m2 = SpiceClustering(10, pretrain_epochs=EPOCHS, random_state=0).fit(X)
results["pretrained here\n(default)"] = cluster_accuracy(y, m2.labels_)
path = Path(tempfile.mkdtemp()) / "convnet4.pth"
torch.save(m2.backbone_.module.state_dict(), path)
m3 = SpiceClustering(10, backbone="spice_convnet4", weights=path, random_state=0).fit(X)
results["same weights from\na local file"] = cluster_accuracy(y, m3.labels_)

# %%
# 3. Reuse the fitted backbone with other head settings (no pretraining again).
m4 = SpiceClustering(10, backbone=m2.backbone_, n_heads=5, semi=None, random_state=0).fit(X)
results["fitted backbone_,\n5 heads, no Semi"] = cluster_accuracy(y, m4.labels_)

# %%
fig, ax = plt.subplots(figsize=(7, 3.5))
ax.bar(range(len(results)), list(results.values()), color="tab:purple")
ax.set_xticks(range(len(results)), list(results))
ax.set_ylabel("ACC on digits (labels used only here)")
ax.set_ylim(0, 1)
ax.set_title("Where the representation comes from")
fig.tight_layout()
fig.savefig(OUT / "own_backbone.png")
plt.show()
