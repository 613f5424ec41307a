"""Tests of spice_learn.pseudo_labels (paper Eqs. 1-3, Fig. 2c)."""

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from spice_learn.pseudo_labels import assign_pseudo_labels, cluster_prototypes

# --------------------------------------------------------------------------
# A hand-checked example in the spirit of the paper's Fig. 2c.
#
# M = 8 unit vectors in 2-D, k = 2 clusters, r = 0.5:
#   n_t = r * M / k = 2 samples per prototype, M / k = 4 pseudo-labels per cluster.
#
#   sample  feature        P[:, 0]  P[:, 1]
#     0     ( 1.0,  0.0)    0.90     0.10     <- top-2 of cluster 0
#     1     ( 0.8,  0.6)    0.80     0.20     <- top-2 of cluster 0
#     2     ( 0.6,  0.8)    0.60     0.40
#     3     ( 0.0,  1.0)    0.50     0.50
#     4     (-0.6,  0.8)    0.40     0.60
#     5     (-0.8,  0.6)    0.20     0.80     <- top-2 of cluster 1
#     6     (-1.0,  0.0)    0.10     0.90     <- top-2 of cluster 1
#     7     ( 0.0, -1.0)    0.55     0.45     (fairly confident, but far from both)
#
# Prototypes (Eq. 2): gamma_0 = mean(x0, x1) = (0.9, 0.3); gamma_1 = mean(x5, x6) = (-0.9, 0.3).
# Cosine similarity is proportional to the dot product with (3, 1) and (-3, 1):
#   sample:        0     1     2     3     4     5     6     7
#   with (3, 1):   3.0   3.0   2.6   1.0  -1.0  -1.8  -3.0  -1.0  -> top-4: {0, 1, 2, 3}
#   with (-3, 1): -3.0  -1.8  -1.0   1.0   2.6   3.0   3.0  -1.0  -> top-4: {3, 4, 5, 6}
# Sample 3 is picked by both clusters (overlap assignment), sample 7 by none.
# --------------------------------------------------------------------------
FEATURES = torch.tensor(
    [[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0],
     [-0.6, 0.8], [-0.8, 0.6], [-1.0, 0.0], [0.0, -1.0]],
    dtype=torch.float64,
)
P0 = torch.tensor([0.90, 0.80, 0.60, 0.50, 0.40, 0.20, 0.10, 0.55], dtype=torch.float64)
PROBS = torch.stack([P0, 1 - P0], dim=1)[None]  # (1, 8, 2)
EXPECTED_PROTOTYPES = [[[0.9, 0.3], [-0.9, 0.3]]]
EXPECTED_CLUSTER_MEMBERS = [[0, 1, 2, 3], [3, 4, 5, 6]]
EXPECTED_LABELS = [0, 0, 0, 0, 1, 1, 1, 1]


def _members(indices, labels, k):
    """Sorted picked indices of every cluster (order inside a cluster is free)."""
    return [sorted(indices[labels == c].tolist()) for c in range(k)]


def test_hand_checked_prototypes():
    protos = cluster_prototypes(FEATURES, PROBS, n_top=2)
    assert protos.shape == (1, 2, 2)
    torch.testing.assert_close(
        protos, torch.tensor(EXPECTED_PROTOTYPES, dtype=torch.float64), rtol=0, atol=1e-12
    )


def test_hand_checked_pseudo_labels():
    indices, labels = assign_pseudo_labels(FEATURES, PROBS, 0.5)
    assert indices.shape == labels.shape == (1, 8)
    assert indices.dtype == labels.dtype == torch.long
    # Results come cluster by cluster.
    assert labels[0].tolist() == EXPECTED_LABELS
    assert _members(indices[0], labels[0], 2) == EXPECTED_CLUSTER_MEMBERS
    assert sorted(indices[0, :4].tolist()) == [0, 1, 2, 3]
    assert sorted(indices[0, 4:].tolist()) == [3, 4, 5, 6]


def test_overlap_assignment_and_unpicked_sample():
    indices, labels = assign_pseudo_labels(FEATURES, PROBS, 0.5)
    picked_by = {i: sorted(labels[0][indices[0] == i].tolist()) for i in range(8)}
    assert picked_by[3] == [0, 1]  # picked by two clusters
    assert picked_by[7] == []  # confident-ish but far from both prototypes: not picked
    assert picked_by[0] == [0] and picked_by[6] == [1]


def test_float32_features_give_the_same_picks():
    indices, labels = assign_pseudo_labels(FEATURES.float(), PROBS.float(), 0.5)
    assert labels[0].tolist() == EXPECTED_LABELS
    assert _members(indices[0], labels[0], 2) == EXPECTED_CLUSTER_MEMBERS


def test_confidence_ratio_one_uses_all_m_over_k():
    # r = 1: n_t = 4, prototype 0 = mean(x0, x1, x2, x7) = (0.6, 0.1),
    # prototype 1 = mean(x3, x4, x5, x6) = (-0.6, 0.6) (top-4 of P[:, 0]: 0, 1, 2, 7;
    # of P[:, 1]: 6, 5, 4, 3).
    protos = cluster_prototypes(FEATURES, PROBS, n_top=4)
    assert protos[0, 0].tolist() == [pytest.approx(0.6), pytest.approx(0.1)]
    assert protos[0, 1].tolist() == [pytest.approx(-0.6), pytest.approx(0.6)]
    # Dot products with (6, 1):  6, 5.4, 4.4, 1, -2.8, -4.2, -6, -1  -> {0, 1, 2, 3}
    # Dot products with (-1, 1): -1, -0.2, 0.2, 1, 1.4, 1.4, 1, -1  -> {2, 3, 4, 5, 6} has a
    # tie (3 and 6 at 1.0) for the 4th place, so only the sure three are checked.
    indices, labels = assign_pseudo_labels(FEATURES, PROBS, 1.0)
    members = _members(indices[0], labels[0], 2)
    assert members[0] == [0, 1, 2, 3]
    assert {4, 5}.issubset(members[1]) and 2 not in members[1] and 0 not in members[1]


def test_three_clusters_hand_checked():
    # M = 9 unit vectors, k = 3, r = 0.5: n_t = int(1.5) = 1 (the single most confident
    # sample is the prototype), 3 pseudo-labels per cluster.
    feats = torch.tensor(
        [[1.0, 0.0], [0.8, 0.6], [0.8, -0.6],     # group near +x
         [-0.6, 0.8], [-0.8, 0.6], [0.0, 1.0],    # group near upper-left
         [-0.6, -0.8], [0.0, -1.0], [-1.0, 0.0]], # group near lower-left
        dtype=torch.float64,
    )
    probs = torch.full((1, 9, 3), 0.2, dtype=torch.float64)
    probs[0, 0, 0] = 0.6  # prototype of cluster 0: x0 = (1, 0)
    probs[0, 4, 1] = 0.6  # prototype of cluster 1: x4 = (-0.8, 0.6)
    probs[0, 6, 2] = 0.6  # prototype of cluster 2: x6 = (-0.6, -0.8)
    protos = cluster_prototypes(feats, probs, n_top=1)
    assert protos[0].tolist() == [[1.0, 0.0], [-0.8, 0.6], [-0.6, -0.8]]
    # with (1, 0):        1, .8, .8, -.6, -.8, 0, -.6, 0, -1           -> {0, 1, 2}
    # with (-.8, .6):  -.8, -.28, -1., .96, 1, .6, 0, -.6, .8          -> {3, 4, 8}
    # with (-.6, -.8): -.6, -.96, 0, -.28, -.0, -.8, 1, .8, .6         -> {6, 7, 8}
    indices, labels = assign_pseudo_labels(feats, probs, 0.5)
    assert indices.shape == (1, 9)
    assert labels[0].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert _members(indices[0], labels[0], 3) == [[0, 1, 2], [3, 4, 8], [6, 7, 8]]


def test_heads_are_independent():
    # Head 1 sees the columns swapped: its labels are swapped, its picks the same.
    probs = torch.cat([PROBS, PROBS.flip(2), torch.full_like(PROBS, 0.5)], dim=0)
    indices, labels = assign_pseudo_labels(FEATURES, probs, 0.5)
    assert indices.shape == labels.shape == (3, 8)
    assert _members(indices[0], labels[0], 2) == EXPECTED_CLUSTER_MEMBERS
    assert _members(indices[1], labels[1], 2) == EXPECTED_CLUSTER_MEMBERS[::-1]
    # Every head's result equals the result of that head alone.
    for h in range(3):
        alone_idx, alone_lab = assign_pseudo_labels(FEATURES, probs[h : h + 1], 0.5)
        assert torch.equal(alone_lab[0], labels[h])
        assert _members(alone_idx[0], alone_lab[0], 2) == _members(indices[h], labels[h], 2)


@pytest.mark.parametrize("m,k,heads", [(10, 3, 1), (12, 4, 2), (100, 10, 5), (7, 7, 3)])
def test_output_shapes(m, k, heads):
    gen = torch.Generator().manual_seed(m)
    feats = F.normalize(torch.randn(m, 5, generator=gen), dim=1)
    probs = torch.rand(heads, m, k, generator=gen).softmax(dim=2)
    indices, labels = assign_pseudo_labels(feats, probs, 0.5)
    assert indices.shape == labels.shape == (heads, k * (m // k))
    assert indices.dtype == labels.dtype == torch.long
    assert indices.min() >= 0 and indices.max() < m
    expected = torch.arange(k).repeat_interleave(m // k)
    for h in range(heads):
        assert torch.equal(labels[h], expected)
        # Within a cluster a sample is picked at most once.
        for c in range(k):
            block = indices[h, labels[h] == c]
            assert len(set(block.tolist())) == len(block)
    assert cluster_prototypes(feats, probs, 2).shape == (heads, k, 5)


class _OutputShapes(TorchFunctionMode):
    """Records the shape of every tensor a torch function, method or operator returns."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


def test_large_batch_never_builds_m_by_m():
    # Memory, not time: no intermediate of any op (matmul, @, mm, cdist, ...) has two
    # axes of length M, or more values than the (H, k, M) similarities of a d-dim input.
    m, d, heads, k = 5000, 8, 2, 10
    gen = torch.Generator().manual_seed(0)
    feats = F.normalize(torch.randn(m, d, generator=gen), dim=1)
    probs = torch.rand(heads, m, k, generator=gen).softmax(dim=2)
    with _OutputShapes() as spy:
        indices, labels = assign_pseudo_labels(feats, probs, 0.5)
    assert indices.shape == labels.shape == (heads, m)
    assert len(spy.shapes) > 5, "the spy saw too few ops"
    for shape in spy.shapes:
        assert sum(1 for s in shape if s >= m) <= 1, f"an M x M-sized intermediate {shape}"
        assert torch.Size(shape).numel() <= heads * k * m * d
