"""Frame-level matching functions against small hand-computed cases."""
from __future__ import annotations

import math

import pytest
import torch

from fsar.model import matching as M


def test_cosine_distance_of_identical_and_opposite_frames():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    d = M.cosine_distance(a, torch.stack([a[0], -a[1]]))
    assert torch.allclose(d, torch.tensor([[0.0, 1.0], [1.0, 2.0]]))


def test_softmin_of_ties_and_limit():
    a = torch.tensor(0.7)
    assert torch.allclose(M.softmin([a, a], 0.1), a - 0.1 * math.log(2))
    assert torch.allclose(M.softmin([torch.tensor(1.0), torch.tensor(3.0)], 1e-3), torch.tensor(1.0))


def test_otam_single_row_sums_the_row():
    """One row frame: every column frame must match it, so the cost is the plain sum."""
    d = torch.tensor([[0.3, 0.5, 0.2]])
    assert torch.allclose(M.otam_distance(d), torch.tensor(1.0))


def test_otam_two_rows_one_column_hand_computed():
    a, b, lam = 0.4, 0.9, 0.1
    d = torch.tensor([[a], [b]])
    sm = lambda *v: -lam * math.log(sum(math.exp(-x / lam) for x in v))  # noqa: E731
    c11 = b + sm(0.0, a, 0.0)  # first real column: diagonal and left come from padding (0), above from row 0
    expected = sm(a, a, c11)  # last padding column: diagonal, above (row 0 ends at a), left
    assert M.otam_distance(d, lam).item() == pytest.approx(expected, abs=1e-6)
    # as lam -> 0 the single column frame picks the nearer row frame
    assert M.otam_distance(d, 1e-4).item() == pytest.approx(a, abs=1e-3)


def test_otam_ties_hand_computed():
    """All distances equal c: every path costs 2c, the soft-min adds the log of the path multiplicities."""
    c, lam = 0.5, 0.2
    d = torch.full((2, 2), c)
    sm = lambda *v: -lam * math.log(sum(math.exp(-x / lam) for x in v))  # noqa: E731
    c0 = [0.0, c, 2 * c, 2 * c]  # row 0: running sum of the padded row [0, c, c, 0]
    c1_1 = c + sm(0.0, c0[1], 0.0)  # diagonal, above, left
    c1_2 = c + sm(c0[1], c1_1)  # diagonal, left
    expected = sm(c0[2], c0[3], c1_2)  # diagonal, above, left
    assert M.otam_distance(d, lam).item() == pytest.approx(expected, abs=1e-6)
    assert M.otam_distance(d, 1e-4).item() == pytest.approx(2 * c, abs=1e-3)


def test_otam_identity_alignment_is_free_and_reversal_is_not():
    t = 5
    identity = 1.0 - torch.eye(t)  # zero cost on the diagonal
    reversed_ = identity.flip(-1)  # zero cost on the anti-diagonal
    assert M.otam_distance(identity, 0.01).item() == pytest.approx(0.0, abs=0.1)
    # a monotonic path can use only one anti-diagonal zero: best cost t - 1
    r = M.otam_distance(reversed_, 0.01).item()
    assert t - 1 - 0.1 < r <= t - 1 + 1e-6
    assert M.otam_bidirectional(reversed_, 0.01) > M.otam_bidirectional(identity, 0.01) + 3


def test_otam_batched_and_bidirectional_symmetric():
    g = torch.Generator().manual_seed(0)
    d = torch.rand(3, 4, 6, 8, generator=g)
    out = M.otam_distance(d)
    assert out.shape == (3, 4)
    assert torch.allclose(out[1, 2], M.otam_distance(d[1, 2]))
    assert torch.allclose(M.otam_bidirectional(d), M.otam_bidirectional(d.transpose(-1, -2)))


def test_otam_on_real_sequences_prefers_same_order():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(8, 16, generator=g)
    q = s + 0.05 * torch.randn(8, 16, generator=g)
    same = M.otam_bidirectional(M.cosine_distance(q, s))
    rev = M.otam_bidirectional(M.cosine_distance(q, s.flip(0)))
    assert same < rev


def test_bimhm_hand_computed_and_order_blind():
    d = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    assert M.bimhm_distance(d).item() == pytest.approx(1.0 + 0.5)  # row minima 0, 2; column minima 0, 1
    assert M.bimhm_distance(d, reduction="sum").item() == pytest.approx(2.0 + 1.0)  # HyRSM's sums
    s = torch.randn(6, 8)
    assert torch.allclose(M.bimhm_distance(M.cosine_distance(s, s.flip(0))), torch.tensor(0.0), atol=1e-5)


def test_tuples_and_positions():
    idx = M.tuple_indices(4, 2)
    assert idx.tolist() == [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]
    assert len(M.tuple_indices(8, 3)) == 56
    x = torch.arange(4.0)[:, None].repeat(1, 2)  # frame i has features (i, i)
    pairs = M.frame_tuples(x[None], 2)[0]
    assert pairs.shape == (6, 4) and pairs[2].tolist() == [0.0, 0.0, 3.0, 3.0]
    pe = M.sinusoidal_positions(8, 6)
    assert pe.shape == (8, 6) and pe[0].tolist() == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]


def test_tuple_prototype_distance_hand_computed():
    """One support tuple per class: the prototype is that tuple's value; distance = squared L2 / tuples."""
    qk = torch.zeros(1, 1, 1, 2)
    qv = torch.tensor([[[[1.0, 2.0]]]])
    sk = torch.zeros(1, 2, 1, 2)
    sv = torch.tensor([[[[1.0, 2.0]], [[4.0, 6.0]]]])
    d = M.tuple_prototype_distance(qk, qv, sk, sv)
    assert d.shape == (1, 1, 2) and d.flatten().tolist() == [0.0, 25.0]
    # two equally attended support tuples: the prototype is their mean
    sk2, sv2 = torch.zeros(1, 1, 2, 2), torch.tensor([[[[0.0, 0.0], [2.0, 4.0]]]])
    assert M.tuple_prototype_distance(qk, qv, sk2, sv2).item() == pytest.approx(0.0)


def test_episode_frame_distance_matches_pairwise():
    g = torch.Generator().manual_seed(2)
    q, s = torch.randn(2, 3, 4, 5, generator=g), torch.randn(2, 5, 4, 5, generator=g)
    d = M.episode_frame_distance(q, s)
    assert d.shape == (2, 3, 5, 4, 4)
    assert torch.allclose(d[1, 2, 3], M.cosine_distance(q[1, 2], s[1, 3]), atol=1e-6)
    sk = torch.randn(2, 5, 3, 4, 5, generator=g)
    assert M.episode_frame_distance(q, sk).shape == (2, 3, 5, 3, 4, 4)
