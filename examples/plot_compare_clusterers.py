"""
SPICE against KMeans, spectral and agglomerative clustering
===========================================================

All methods see the same images: the classical clusterers run on the pixels and
on the embedding SPICE learned in stage 1; SPICE runs end to end. Labels are
used only to score (Hungarian-matched accuracy and NMI).
"""

# %%
import os
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from sklearn.cluster import AgglomerativeClustering, KMeans, SpectralClustering
from sklearn.datasets import load_digits

from spice_learn import SpiceClustering
from spice_learn.metrics import clustering_scores

OUT = Path(os.environ.get("SPICE_LEARN_FIGURES", "figures"))
OUT.mkdir(parents=True, exist_ok=True)
digits = load_digits()
X, y = np.rint(digits.images * (255 / 16)).astype(np.uint8), digits.target
EPOCHS = int(os.environ.get("SPICE_LEARN_EXAMPLE_EPOCHS", 100))

start = time.perf_counter()
spice = SpiceClustering(10, pretrain_epochs=EPOCHS, random_state=0).fit(X)
rows = {"SPICE": (clustering_scores(y, spice.labels_), time.perf_counter() - start)}
inputs = {"pixels": X.reshape(len(X), -1).astype(float), "SPICE embedding": spice.transform(X)}
others = {
    "KMeans": lambda: KMeans(10, n_init=10, random_state=0),
    "spectral": lambda: SpectralClustering(10, affinity="nearest_neighbors", random_state=0),
    "agglomerative": lambda: AgglomerativeClustering(10, linkage="ward"),
}
for input_name, data in inputs.items():
    for name, make in others.items():
        start = time.perf_counter()
        labels = make().fit_predict(data)
        rows[f"{name}\n({input_name})"] = (clustering_scores(y, labels),
                                           time.perf_counter() - start)
for name, (scores, seconds) in rows.items():
    print(f"{name.replace(chr(10), ' '):36s} ACC {scores['acc']:.3f} NMI {scores['nmi']:.3f} "
          f"{seconds:6.1f} s")

# %%
fig, ax = plt.subplots(figsize=(10, 4))
pos = np.arange(len(rows))
ax.bar(pos - 0.2, [s["acc"] for s, _ in rows.values()], 0.4, label="ACC")
ax.bar(pos + 0.2, [s["nmi"] for s, _ in rows.values()], 0.4, label="NMI")
ax.set_xticks(pos, list(rows), fontsize=8)
ax.set_ylabel("score (labels used only here)")
ax.set_xlabel("clusterer (input)")
ax.set_ylim(0, 1)
ax.set_title("scikit-learn digits: SPICE and classical clusterers on the same images")
ax.legend()
fig.tight_layout()
fig.savefig(OUT / "compare_clusterers.png")
plt.show()
