"""Tests of spice_learn.neighbors (cosine neighbours with torch or faiss, reliability scores,
neighbour agreement)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.neighbors import NearestNeighbors

from spice_learn import neighbors as neighbors_module
from spice_learn.neighbors import nearest_neighbors, neighbour_agreement, reliability_scores


def brute_force(X, k):
    """scikit-learn's exact cosine search, dropping each sample itself."""
    idx = NearestNeighbors(n_neighbors=k + 1, metric="cosine", algorithm="brute").fit(X)
    idx = idx.kneighbors(X, return_distance=False)
    return np.stack([row[row != i][:k] for i, row in enumerate(idx)])


@pytest.fixture(params=["torch", "faiss"])
def backend(request):
    """Both backends; faiss is skipped when it is not installed."""
    if request.param == "faiss":
        pytest.importorskip("faiss")
    return request.param


@pytest.mark.parametrize("block_bytes", [1, 4 * 50 * 7, 64 << 20])
@pytest.mark.parametrize("n,d,k", [(50, 5, 1), (120, 16, 10), (97, 3, 96)])
def test_equals_brute_force_reference(n, d, k, block_bytes, backend):
    if backend == "faiss" and block_bytes != 64 << 20:
        pytest.skip("block_bytes is a torch setting")
    X = np.random.default_rng(n + d).normal(size=(n, d)).astype(np.float32)
    got = nearest_neighbors(X, k, block_bytes=block_bytes, backend=backend)
    assert got.shape == (n, k) and got.dtype == torch.int64
    ref = brute_force(X.astype(np.float64), k)
    # Compare the neighbour sets (the order of near-ties may differ in float32).
    for i in range(n):
        assert set(got[i].tolist()) == set(ref[i].tolist()), f"row {i}"


def test_neighbours_sorted_by_decreasing_similarity(backend):
    X = torch.randn(80, 6, generator=torch.Generator().manual_seed(0))
    idx = nearest_neighbors(X, 15, block_bytes=4 * 80 * 9, backend=backend)
    x = torch.nn.functional.normalize(X, dim=1)
    sims = (x[:, None, :] * x[idx]).sum(-1)
    assert torch.all(sims[:, :-1] >= sims[:, 1:] - 1e-6)


def test_self_is_excluded_even_with_duplicates(backend):
    X = np.repeat(np.eye(3, dtype=np.float32), 2, axis=0)  # every row has one twin
    idx = nearest_neighbors(X, 1, backend=backend).numpy()[:, 0]
    np.testing.assert_array_equal(idx, [1, 0, 3, 2, 5, 4])


def test_scale_does_not_matter(backend):
    X = np.random.default_rng(1).normal(size=(40, 4))
    scaled = X * np.random.default_rng(2).uniform(0.1, 10, size=(40, 1))
    assert torch.equal(nearest_neighbors(X, 5, backend=backend),
                       nearest_neighbors(scaled, 5, backend=backend))


def test_input_is_not_modified(backend):
    X = np.random.default_rng(3).normal(size=(30, 4)).astype(np.float32)
    before = X.copy()
    nearest_neighbors(X, 3, backend=backend)
    np.testing.assert_array_equal(X, before)


@pytest.mark.parametrize("k", [0, 10, 11])
def test_bad_n_neighbors(k, backend):
    with pytest.raises(ValueError, match="n_neighbors"):
        nearest_neighbors(np.ones((10, 2)), k, backend=backend)


def test_bad_shape(backend):
    with pytest.raises(ValueError, match="2-D"):
        nearest_neighbors(np.ones(10), 2, backend=backend)


def numpy_reference(X, k):
    """Brute force in float64 numpy: full cosine matrix, diagonal masked, stable argsort."""
    x = X.astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    return np.argsort(-sim, axis=1, kind="stable")[:, :k]


def top_gap(X, k):
    """Smallest gap between a row's k + 1 largest cosine similarities to the others."""
    x = X.astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    top = -np.sort(-sim, axis=1)[:, : k + 1]
    return np.diff(-top, axis=1).min() if k + 1 < len(X) else np.diff(-top[:, :k], axis=1).min()


@pytest.mark.parametrize("n,d,k", [(50, 5, 1), (120, 16, 10), (97, 3, 96), (300, 32, 5), (40, 8, 39)])
def test_faiss_equals_torch_and_numpy_reference(n, d, k):
    pytest.importorskip("faiss")
    X = np.random.default_rng(10 * n + d).normal(size=(n, d)).astype(np.float32)
    assert top_gap(X, k) > 5e-6  # no near-ties: the order and the k-th neighbour are defined
    got = nearest_neighbors(X, k, backend="faiss")
    assert got.shape == (n, k) and got.dtype == torch.int64 and got.device.type == "cpu"
    torch.testing.assert_close(got, nearest_neighbors(X, k, backend="torch"), rtol=0, atol=0)
    np.testing.assert_array_equal(got.numpy(), numpy_reference(X, k))


def test_accepts_float64_tensors_and_leaves_them_alone(backend):
    X = torch.randn(60, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    before = X.clone()
    got = nearest_neighbors(X, 4, backend=backend)
    torch.testing.assert_close(X, before, rtol=0, atol=0)
    np.testing.assert_array_equal(got.numpy(), numpy_reference(X.numpy(), 4))


@pytest.mark.parametrize("k", [1, 2, 5, 9])
def test_self_is_excluded_among_many_duplicates(k, backend):
    # Ten copies of each of two points: with k + 1 < 10 faiss's k + 1 results
    # may leave the row itself out (its twins tie with it).
    X = np.repeat(np.array([[1.0, 0.0], [0.0, 2.0]], dtype=np.float32), 10, axis=0)
    idx = nearest_neighbors(X, k, backend=backend).numpy()
    assert idx.shape == (20, k)
    for i, row in enumerate(idx):
        assert i not in row, f"row {i} is its own neighbour"
        assert len(set(row)) == k
        assert np.all(row // 10 == i // 10), f"row {i} has a neighbour outside its copies"


FAISS_THREADS_SCRIPT = """
import faiss  # first: faiss then has its own OpenMP runtime, apart from torch's
import numpy as np
import torch

from spice_learn.neighbors import nearest_neighbors

seen = []


knn = faiss.knn


def recording(*args, **kwargs):
    seen.append(faiss.omp_get_max_threads())
    return knn(*args, **kwargs)


faiss.knn = recording
faiss.omp_set_num_threads(2)
torch.set_num_threads(1)
before = faiss.omp_get_max_threads()
nearest_neighbors(np.random.default_rng(7).normal(size=(30, 4)), 3, backend="faiss")
print(seen, before, faiss.omp_get_max_threads())
"""


def test_faiss_uses_torch_thread_count():
    # Imported before torch, faiss keeps its own OpenMP thread count; the search
    # must still use torch's (n_jobs) and leave faiss's setting as it was.
    pytest.importorskip("faiss")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(root), *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run([sys.executable, "-c", FAISS_THREADS_SCRIPT], env=env, check=False,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    seen, before, after = done.stdout.strip().rsplit(" ", 2)
    assert seen == "[1]" and after == before, done.stdout


def test_faiss_missing_raises_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss now raises ImportError
    with pytest.raises(ImportError, match=r"pip install faiss-cpu.*spice-learn\[faiss\]"):
        nearest_neighbors(np.eye(5), 2, backend="faiss")


@pytest.mark.parametrize("backend", ["Faiss", "sklearn", None, ""])
def test_bad_backend(backend):
    with pytest.raises(ValueError, match="backend"):
        nearest_neighbors(np.eye(5), 2, backend=backend)


def _spy(monkeypatch):
    """Record which backend function nearest_neighbors calls."""
    calls = []
    for name in ("_faiss_neighbors", "_torch_neighbors"):
        real = getattr(neighbors_module, name)

        def wrapper(*args, _real=real, _name=name):
            calls.append(_name)
            return _real(*args)

        monkeypatch.setattr(neighbors_module, name, wrapper)
    return calls


def test_auto_picks_faiss_when_importable(monkeypatch):
    pytest.importorskip("faiss")
    calls = _spy(monkeypatch)
    X = np.random.default_rng(6).normal(size=(40, 6)).astype(np.float32)
    got = nearest_neighbors(X, 3)
    assert calls == ["_faiss_neighbors"]
    np.testing.assert_array_equal(got.numpy(), numpy_reference(X, 3))
    calls.clear()
    nearest_neighbors(X, 3, backend="torch")
    assert calls == ["_torch_neighbors"]


def test_auto_falls_back_to_torch_without_faiss(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    calls = _spy(monkeypatch)
    X = np.random.default_rng(5).normal(size=(40, 6)).astype(np.float32)
    np.testing.assert_array_equal(nearest_neighbors(X, 3).numpy(), numpy_reference(X, 3))
    assert calls == ["_torch_neighbors"]


@pytest.mark.parametrize("has_gpu", [False, True])
def test_auto_on_cuda_needs_faiss_gpu_support(monkeypatch, has_gpu):
    # A stand-in faiss module: "auto" on a CUDA device takes faiss only when
    # faiss has GPU support (no GPU needed: the backends are replaced).
    fake = type(sys)("faiss")
    fake.get_num_gpus = lambda: 1
    if has_gpu:
        fake.StandardGpuResources = object
    monkeypatch.setitem(sys.modules, "faiss", fake)
    chosen = []
    monkeypatch.setattr(neighbors_module, "_faiss_neighbors",
                        lambda *a: chosen.append("faiss") or "faiss")
    monkeypatch.setattr(neighbors_module, "_torch_neighbors",
                        lambda *a: chosen.append("torch") or "torch")
    nearest_neighbors(np.eye(5), 2, device="cuda")
    nearest_neighbors(np.eye(5), 2, device="cpu")
    assert chosen == ["faiss" if has_gpu else "torch", "faiss"]


def test_reliability_scores_hand_made_example():
    # Points 0-3 on a line; labels 0, 0, 0, 1; two neighbours each.
    neighbors = np.array([[1, 2], [0, 2], [1, 3], [2, 1]])
    labels = np.array([0, 0, 0, 1])
    # 0: {1, 2} both label 0 -> 1; 1: {0, 2} -> 1; 2: {1, 3} -> 1/2; 3: {2, 1} -> 0.
    np.testing.assert_allclose(reliability_scores(neighbors, labels), [1.0, 1.0, 0.5, 0.0])


def test_reliability_from_search_on_two_blobs():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(0, 0.1, (20, 2)) + [5, 0], rng.normal(0, 0.1, (20, 2)) + [0, 5]])
    labels = np.repeat([0, 1], 20)
    labels[0] = 1  # one sample in the wrong cluster
    scores = reliability_scores(nearest_neighbors(X, 5), labels)
    assert scores[0] == 0.0
    assert np.all(scores[20:] == 1.0)


def test_faiss_blocks_of_queries_give_the_same_neighbours(monkeypatch):
    pytest.importorskip("faiss")
    import spice_learn.neighbors as neighbors

    X = np.random.default_rng(3).normal(size=(50, 6))
    whole = nearest_neighbors(X, 5, backend="faiss")
    monkeypatch.setattr(neighbors, "FAISS_QUERY_ROWS", 7)  # 8 blocks, the last of 1 row
    assert torch.equal(nearest_neighbors(X, 5, backend="faiss"), whole)
    assert torch.equal(nearest_neighbors(X, 5, backend="torch"), whole)


def test_neighbour_agreement_counts_pairs_in_the_same_cluster():
    neighbors = np.array([[1, 2], [0, 2], [3, 0], [2, 1]])
    labels = np.array([0, 0, 1, 1])
    assert neighbour_agreement(labels, neighbors, n_neighbors=1) == 1.0
    assert neighbour_agreement(labels, neighbors, n_neighbors=2) == 0.5  # second column: none
    assert neighbour_agreement(np.array([0, 1, 1, 1]), neighbors, n_neighbors=1) == 0.5
    assert neighbour_agreement(labels, torch.as_tensor(neighbors), n_neighbors=5) == 0.5
