"""The bad inputs SpiceClustering handles, each with the error it raises.

Every case is run here and must raise the listed error type with a message that
names the offending parameter, value or file. The table in ``docs/bad_inputs.md``
is generated from these cases (``python tests/test_bad_inputs.py`` rewrites it),
and ``test_table_is_up_to_date`` fails when it no longer matches.
"""

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _images import random_pixels

from spice_learn import ImageStream, SpiceClustering

DOC = Path(__file__).resolve().parents[1] / "docs" / "bad_inputs.md"
FAST = dict(n_heads=2, max_epochs=1, n_weak_views=1, n_strong_views=1, semi_steps=5,
            random_state=0)


def _blobs(n=20, d=4):
    return np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)


def _images(n=6, size=8):
    return random_pixels(n, size)


def _fit(X, **params):
    def run(tmp_path):
        params.setdefault("n_clusters", 2)
        SpiceClustering(**{**FAST, **params}).fit(X(tmp_path) if callable(X) else X)
    return run


def _corrupt_file(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"not a png at all")
    return [str(path)]


def _empty_dir(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir(exist_ok=True)
    (folder / "notes.txt").write_text("no images here")
    return str(folder)


def _predict_other_width(tmp_path):
    est = SpiceClustering(2, backbone="precomputed", **FAST).fit(_blobs())
    est.predict(_blobs(d=5))


def _predict_unfitted(tmp_path):
    SpiceClustering(2).predict(_blobs())


def _weights_file_without_tensors(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"epoch": 3}, path)
    SpiceClustering(2, backbone="resnet10t", weights=str(path), **FAST).fit(_images(size=32))


def _cache_dir_under_a_file(tmp_path):
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    _fit(_images(), backbone=torch.nn.Conv2d(3, 4, 3),
         cache_dir=tmp_path / "notes.txt" / "cache")(tmp_path)


class _Records(torch.utils.data.Dataset):
    """A dataset of records that are not images."""

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return {"id": i}


def _stream_of_a_broken_file(tmp_path):
    from PIL import Image

    Image.fromarray(_images(n=1)[0]).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"not a png at all")
    _fit(ImageStream(tmp_path), backbone=torch.nn.Conv2d(3, 4, 3))(tmp_path)


# (what the user did, the call, error type, a regex the message must match)
CASES = [
    ("n_clusters below 1", _fit(_blobs(), backbone="precomputed", n_clusters=0),
     ValueError, r"n_clusters must be >= 1"),
    ("n_clusters not an integer", _fit(_blobs(), backbone="precomputed", n_clusters=2.5),
     TypeError, r"n_clusters must be an int"),
    ("more clusters than samples", _fit(_blobs(n=5), backbone="precomputed", n_clusters=6),
     ValueError, r"n_clusters=6 must be <= n_samples=5"),
    ("an empty range of candidate n_clusters",
     _fit(_blobs(), backbone="precomputed", n_clusters=range(5, 2)),
     ValueError, r"n_clusters is an empty range"),
    ("a candidate n_clusters below 2", _fit(_blobs(), backbone="precomputed", n_clusters=[1, 3]),
     ValueError, r"n_clusters candidates must be >= 2.*got 1"),
    ("candidates beyond the number of samples",
     _fit(_blobs(n=10), backbone="precomputed", n_clusters=range(2, 8)),
     ValueError, r"n_clusters candidate 7 is too large for 10 samples"),
    ("n_clusters neither an int, 'auto' nor candidates",
     _fit(_blobs(), backbone="precomputed", n_clusters="many"),
     ValueError, r"n_clusters must be an int or 'auto'; got 'many'"),
    ("a single sample", _fit(_blobs(n=1), backbone="precomputed", n_clusters=1),
     ValueError, r"at least 2 samples.*n_samples=1"),
    ("unknown head_objective", _fit(_blobs(), backbone="precomputed", head_objective="kmeans"),
     ValueError, r"head_objective must be 'scan' or 'spice'; got 'kmeans'"),
    ("pretrain_epochs neither an int nor 'auto'",
     _fit(_images(), pretrain_epochs="many"), ValueError, r"pretrain_epochs"),
    ("temperature not positive", _fit(_images(), temperature=0.0),
     ValueError, r"temperature"),
    ("NaN in features", _fit(np.where(np.eye(20, 4) > 0, np.nan, _blobs()),
                             backbone="precomputed"), ValueError, r"NaN"),
    ("1-D feature array", _fit(np.arange(10.0), backbone="precomputed"),
     ValueError, r"Expected 2D array"),
    ("string array", _fit(np.array([["a", "b"], ["c", "d"]]), backbone="precomputed"),
     TypeError, r"numbers|real"),
    ("float images outside [0, 1] and [0, 255]",
     _fit(np.full((4, 8, 8), 300.0), backbone=torch.nn.Conv2d(3, 4, 3)),
     ValueError, r"\[0, 1\] or \[0, 255\]"),
    ("a missing image file", _fit(["/no/such/image.png"], backbone=torch.nn.Conv2d(3, 4, 3)),
     ValueError, r"Image file not found: '/no/such/image.png'"),
    ("a corrupt image file", _fit(_corrupt_file, backbone=torch.nn.Conv2d(3, 4, 3)),
     ValueError, r"Cannot read image file '.*broken.png'"),
    ("a directory without images", _fit(_empty_dir, backbone=torch.nn.Conv2d(3, 4, 3)),
     ValueError, r"no image files"),
    ("an unknown timm model name", _fit(_images(), backbone="resnet_18"),
     ValueError, r"Unknown backbone 'resnet_18'.*resnet18"),
    ("a missing weights file", _fit(_images(), backbone="resnet10t", weights="/no/w.pth"),
     ValueError, r"weights.*'/no/w.pth'"),
    ("a weights file that is not a state dict", _weights_file_without_tensors,
     ValueError, r"does not hold a state dict"),
    ("weights given with an nn.Module backbone",
     _fit(_images(), backbone=torch.nn.Conv2d(3, 4, 3), weights="w.pth"),
     ValueError, r"weights must be None with backbone="),
    ("an unknown device", _fit(_blobs(), backbone="precomputed", device="tpu"),
     ValueError, r"device must be"),
    ("a negative learning rate", _fit(_blobs(), backbone="precomputed", learning_rate=-1.0),
     ValueError, r"learning_rate"),
    ("NaN as a parameter", _fit(_blobs(), backbone="precomputed",
                                confidence_ratio=float("nan")),
     ValueError, r"confidence_ratio must be finite"),
    ("semi_rounds below 1", _fit(_blobs(), backbone="precomputed", semi_rounds=0),
     ValueError, r"semi_rounds"),
    ("n_neighbors that is not a count", _fit(_blobs(), backbone="precomputed",
                                             n_neighbors="many"),
     ValueError, r"n_neighbors"),
    ("a dataset whose items are not images", _fit(_Records(), backbone=torch.nn.Conv2d(3, 4, 3)),
     TypeError, r"item 0 of the dataset is a dict"),
    ("an ImageStream size that is not a size", lambda tmp_path: ImageStream(_images(), size=0),
     ValueError, r"size must be a positive int"),
    ("a streamed directory with a corrupt file", _stream_of_a_broken_file,
     ValueError, r"Cannot read image file .*b.png"),
    ("an unknown semi mode", _fit(_blobs(), backbone="precomputed", semi="full"),
     ValueError, r"semi must be None, 'auto', 'head' or 'finetune'"),
    ("semi='finetune' without images", _fit(_blobs(), backbone="precomputed", semi="finetune"),
     ValueError, r"semi='finetune' needs images"),
    ("random_state that is not a seed", _fit(_blobs(), backbone="precomputed",
                                             random_state="seed"),
     ValueError, r"random_state must be None, an int"),
    ("cache_dir that is not a path", _fit(_images(), backbone=torch.nn.Conv2d(3, 4, 3),
                                          cache_dir=3),
     TypeError, r"cache_dir must be None or a folder path; got int"),
    ("cache_dir where a file is in the way", _cache_dir_under_a_file,
     ValueError, r"cache_dir=.*notes.txt/cache.* is a file"),
    ("predict with another number of features", _predict_other_width,
     ValueError, r"X has 5 features, but SpiceClustering is expecting 4"),
    ("predict before fit", _predict_unfitted, Exception, r"not fitted"),
]
if not torch.cuda.is_available():
    CASES.append(("device='cuda' on a machine without CUDA",
                  _fit(_blobs(), backbone="precomputed", device="cuda"),
                  ValueError, r"CUDA is not available"))


def _message(case, tmp_path):
    _, call, error, _ = case
    with pytest.raises(error) as info:
        call(tmp_path)
    return info


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_raises_a_clear_error(case, tmp_path):
    info = _message(case, tmp_path)
    assert re.search(case[3], str(info.value)), str(info.value)


def table(tmp_path):
    lines = ["# Bad inputs and their errors", "",
             "Generated by `python tests/test_bad_inputs.py` from the cases that "
             "`tests/test_bad_inputs.py` runs (paths of temporary files shortened). A "
             "failed `fit` leaves the estimator as it was.", "",
             "| input | error | message |", "|---|---|---|"]
    for case in CASES:
        info = _message(case, tmp_path)
        text = str(info.value).replace(str(tmp_path), "<tmp>").replace("|", "\\|")
        text = " ".join(text.split())
        lines.append(f"| {case[0]} | `{type(info.value).__name__}` | {text} |")
    return "\n".join(lines) + "\n"


def test_table_is_up_to_date(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("the table is written on a machine without CUDA")
    assert DOC.read_text() == table(tmp_path), "rerun: python tests/test_bad_inputs.py"


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        DOC.write_text(table(Path(tmp)))
    print(f"wrote {DOC} ({len(CASES)} cases)")
    sys.exit(0)
