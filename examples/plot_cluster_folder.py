"""
Clustering a folder of image files
==================================

``spice-learn cluster DIR --n-clusters K --out OUT`` clusters every image under a
folder and writes ``OUT/clusters.csv`` (path, cluster, confidence, reliable),
``OUT/overview.png`` and, with ``--copy``/``--link``, one folder per cluster.
Unreadable files are reported and skipped. Here we generate a small folder of
coloured shapes (plus a corrupt file) and run the command from Python; in a
shell it is the same line.
"""

# %%
import csv
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from PIL import Image, ImageDraw

from spice_learn.cli import main

OUT = Path(os.environ.get("SPICE_LEARN_FIGURES", "figures"))
OUT.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
folder = Path(tempfile.mkdtemp()) / "shapes"
folder.mkdir()
for i in range(90):
    img = Image.new("RGB", (32, 32), tuple(int(v) for v in rng.integers(0, 60, 3)))
    draw = ImageDraw.Draw(img)
    x, y, r = (int(v) for v in (*rng.integers(10, 22, 2), rng.integers(6, 10)))
    kind = i % 3
    color = [(230, 60, 60), (60, 200, 60), (70, 90, 240)][kind]
    if kind == 0:
        draw.ellipse([x - r, y - r, x + r, y + r], fill=color)
    elif kind == 1:
        draw.rectangle([x - r, y - r, x + r, y + r], fill=color)
    else:
        draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=color)
    img.save(folder / f"shape_{i:03d}.png")
(folder / "corrupt.jpg").write_bytes(b"this is not a JPEG")

# %%
out = OUT / "cluster_folder"
EPOCHS = os.environ.get("SPICE_LEARN_EXAMPLE_EPOCHS", "20")
main(["cluster", str(folder), "--n-clusters", "3", "--out", str(out), "--copy",
      "--pretrain-epochs", EPOCHS])

# %%
with open(out / "clusters.csv") as f:
    rows = list(csv.DictReader(f))
print(rows[:3])
image = plt.imread(out / "overview.png")
fig, ax = plt.subplots(figsize=(8, 3.5))
ax.imshow(image)
ax.set_axis_off()
ax.set_title("overview.png written by spice-learn cluster")
plt.show()
