"""Matching functions and heads against plain, loop-based transcriptions of the reference definitions.

The references are the code every published number was computed with (see /work/shared/reference/protocol.md):
OTAM_cum_dist and CNN_OTAM / CNN_TRX of tobyperrett/few-shot-action-recognition, CLIP-FSAR's OTAM with lambda 0.5,
and HyRSM's Bi-MHM. The transcriptions below are written from those definitions, cell by cell and tuple by tuple in
float64 Python, so they are slow but easy to check by eye; the project's vectorised float32 code must agree with them
to 1e-5 on random inputs.
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from fsar.model import matching as M
from fsar.model.batch import EpisodeBatch
from fsar.model.registry import build_method


@pytest.fixture(autouse=True)
def _one_thread():
    """Small ops on 2 shared, busy cores run faster on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------- transcriptions


def ref_otam(d: torch.Tensor, lam: float) -> float:
    """OTAM in one direction, cell by cell: rows = frames aligned, columns = frames aligned to (d [L, M]).

    One zero column pads each side. Row 0 is a plain running sum. In later rows: the first padding column stays 0;
    the first real column takes the soft-min of (diagonal, above, left); middle columns of (diagonal, left); the last
    padding column of (diagonal, above, left). The answer is the bottom-right cell.
    """

    def smin(*v: float) -> float:  # -lam * log(sum(exp(-v / lam))), shifted by the minimum so it never underflows
        low = min(v)
        return low - lam * math.log(sum(math.exp(-(x - low) / lam) for x in v))

    rows = [[0.0] + [float(x) for x in row] + [0.0] for row in d.tolist()]
    width = len(rows[0])
    c = [[0.0] * width for _ in rows]
    for m in range(1, width):
        c[0][m] = c[0][m - 1] + rows[0][m]
    for r in range(1, len(rows)):
        c[r][1] = rows[r][1] + smin(c[r - 1][0], c[r - 1][1], c[r][0])
        for m in range(2, width - 1):
            c[r][m] = rows[r][m] + smin(c[r - 1][m - 1], c[r][m - 1])
        c[r][width - 1] = smin(c[r - 1][width - 2], c[r - 1][width - 1], c[r][width - 2])
    return c[-1][-1]


def ref_cosine_distance(a: torch.Tensor, b: torch.Tensor) -> list[list[float]]:
    """1 - cos of every frame of a [L, D] with every frame of b [M, D], as nested lists (float64)."""
    a, b = a.double(), b.double()
    return [[1.0 - float(x @ y) / float(x.norm() * y.norm()) for y in b] for x in a]


def ref_bimhm(d: list[list[float]]) -> float:
    """HyRSM's Bi-MHM: sum over rows of each row's minimum + sum over columns of each column's minimum."""
    return sum(min(row) for row in d) + sum(min(col) for col in zip(*d))


def ref_otam_class(query: torch.Tensor, videos: list[torch.Tensor], lam: float) -> float:
    """Reference class distance: mean over support videos of OTAM(d) + OTAM(d^T) on cosine frame distances."""
    total = 0.0
    for s in videos:
        d = torch.tensor(ref_cosine_distance(query, s), dtype=torch.float64)
        total += ref_otam(d, lam) + ref_otam(d.T, lam)
    return total / len(videos)


# ------------------------------------------------------------------------------------------------------ OTAM


def _random_distances(g: torch.Generator, shape: tuple[int, ...], kind: str) -> torch.Tensor:
    if kind == "uniform":
        return torch.rand(*shape, generator=g)
    feats_a = torch.randn(*shape[:-1], 16, generator=g)
    feats_b = torch.randn(*shape[:-2], shape[-1], 16, generator=g)
    return M.cosine_distance(feats_a, feats_b)  # values in [0, 2]


@pytest.mark.parametrize("lam", [0.1, 0.5, 0.03])
@pytest.mark.parametrize("kind", ["uniform", "cosine"])
def test_otam_equals_reference_on_random_inputs(lam, kind):
    g = torch.Generator().manual_seed(0)
    for rows, cols in [(8, 8), (5, 8), (8, 5), (1, 6), (6, 1), (2, 2), (3, 1)]:
        d = _random_distances(g, (12, rows, cols), kind)
        ours = M.otam_distance(d, lam)
        ref = torch.tensor([ref_otam(x, lam) for x in d], dtype=torch.float64)
        assert ours.dtype == torch.float32 and ours.shape == (12,)
        assert torch.allclose(ours.double(), ref, atol=1e-5, rtol=0), (rows, cols, (ours.double() - ref).abs().max())


def test_otam_move_rules_hand_cases():
    """The alignment the reference allows, at a small lam (where the distance is the best path's cost)."""
    lam = 1e-3
    # free start: the path may enter the first real column at any row (from the zero padding column)
    assert M.otam_distance(torch.tensor([[5.0, 5.0], [0.0, 0.0]]), lam).item() == pytest.approx(0.0, abs=0.01)
    # free end: moves down the last padding column, so later rows may go unmatched
    assert M.otam_distance(torch.tensor([[0.0, 0.0], [5.0, 5.0], [5.0, 5.0]]), lam).item() == pytest.approx(0.0, abs=0.01)
    # between consecutive real columns the row advances by 0 or 1: the zeros at rows 0 and 2 cannot both be used
    d = torch.tensor([[0.0, 9.0], [9.0, 9.0], [9.0, 0.0]])
    assert M.otam_distance(d, lam).item() == pytest.approx(9.0, abs=0.01)
    # the same with three columns: their zeros lie at row 0, rows 1 or 2, and row 3; no path with steps of 0 or 1
    # row joins them, so one 9 must be paid
    d = torch.tensor([[0.0, 9.0, 9.0], [9.0, 0.0, 9.0], [9.0, 0.0, 9.0], [9.0, 9.0, 0.0]])
    assert M.otam_distance(d, lam).item() == pytest.approx(9.0, abs=0.01)
    for x in (d, d.T):
        assert M.otam_distance(x, lam).item() == pytest.approx(ref_otam(x, lam), abs=1e-4)
    # row 0 is a plain running sum along the padded row, with no soft-min: one row costs exactly its sum
    assert M.otam_distance(torch.tensor([[0.3, 0.5, 0.2]]), 0.5).item() == pytest.approx(1.0, abs=1e-6)


def test_otam_bidirectional_sum_is_reference_class_distance_and_mean_is_half():
    g = torch.Generator().manual_seed(1)
    for rows, cols in [(8, 8), (4, 7)]:
        d = torch.rand(6, rows, cols, generator=g)
        ref = torch.tensor([ref_otam(x, 0.1) + ref_otam(x.T, 0.1) for x in d], dtype=torch.float64)
        assert torch.allclose(M.otam_bidirectional(d, 0.1, reduction="sum").double(), ref, atol=1e-5, rtol=0)
        assert torch.allclose(M.otam_bidirectional(d, 0.1).double(), ref / 2, atol=1e-5, rtol=0)


def test_otam_gradient_is_exact_and_finite_far_beyond_the_reference_underflow():
    g = torch.Generator().manual_seed(2)
    d = torch.rand(2, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: M.otam_distance(x, 0.1), (d,))
    # costs of ~30 at lam 0.1: exp(-300) underflows in float32, where the reference returns inf
    big = torch.full((8, 8), 4.0, requires_grad=True)
    out = M.otam_distance(big, 0.1)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(big.grad).all()
    assert out.item() == pytest.approx(ref_otam(big.detach(), 0.1), abs=1e-4)


def test_mean_reductions_keep_the_ranking_of_classes():
    """The project's means (DiST's scale) differ from the references' sums by a positive factor only."""
    g = torch.Generator().manual_seed(3)
    d = M.cosine_distance(torch.randn(50, 5, 8, 16, generator=g), torch.randn(50, 5, 8, 16, generator=g))  # [Q, N, 8, 8]
    for fn in (lambda x, r: M.otam_bidirectional(x, 0.1, reduction=r), lambda x, r: M.bimhm_distance(x, reduction=r)):
        mean, total = fn(d, "mean"), fn(d, "sum")
        assert torch.equal(mean.argmin(dim=-1), total.argmin(dim=-1))
        assert torch.equal(mean.argsort(dim=-1), total.argsort(dim=-1))


def test_bimhm_sum_equals_reference():
    g = torch.Generator().manual_seed(4)
    for rows, cols in [(8, 8), (3, 6)]:
        a, b = torch.randn(5, rows, 12, generator=g), torch.randn(5, cols, 12, generator=g)
        ours = M.bimhm_distance(M.cosine_distance(a, b), reduction="sum")
        ref = torch.tensor([ref_bimhm(ref_cosine_distance(x, y)) for x, y in zip(a, b)], dtype=torch.float64)
        assert torch.allclose(ours.double(), ref, atol=1e-5, rtol=0)


def test_bad_input_gets_one_line_errors():
    with pytest.raises(ValueError, match="lam must be > 0, got 0"):
        M.otam_distance(torch.rand(3, 3), 0.0)
    with pytest.raises(ValueError, match=r"needs frame distances \[..., L, M\], got shape \(3,\)"):
        M.otam_distance(torch.rand(3))
    with pytest.raises(ValueError, match="reduction must be 'sum' or 'mean', got 'max'"):
        M.otam_bidirectional(torch.rand(3, 3), reduction="max")
    with pytest.raises(ValueError, match="reduction must be 'sum' or 'mean', got 'max'"):
        M.bimhm_distance(torch.rand(3, 3), reduction="max")


# ------------------------------------------------------------------------------------------------------ heads


def _episode(e: int, n: int, k: int, q: int, t: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(e, n, k, t, d, generator=g), torch.randn(e, q, t, d, generator=g)


@pytest.mark.parametrize("shot", [1, 3])
def test_otam_head_logits_are_the_reference_cnn_otam(shot):
    support, query = _episode(2, 3, shot, 2, 6, 16, seed=5)
    head = build_method("otam", dim=16, num_frames=6).eval()
    with torch.no_grad():
        logits = head(EpisodeBatch(support, query)).logits
    ref = torch.tensor(
        [[[-ref_otam_class(query[e, q], list(support[e, n]), 0.1) for n in range(3)] for q in range(2)] for e in range(2)],
        dtype=torch.float64,
    )
    assert logits.shape == (2, 2, 3)
    assert torch.allclose(logits.double(), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("shot", [1, 3])
def test_bimhm_head_logits_are_hyrsm_on_its_encoded_frames(shot):
    support, query = _episode(2, 3, shot, 2, 8, 16, seed=6)
    head = build_method("bimhm", dim=16, num_frames=8).eval()
    with torch.no_grad():
        logits = head(EpisodeBatch(support, query)).logits
        s_enc = head.encode(support.flatten(0, 2)).reshape(support.shape)
        q_enc = head.encode(query.flatten(0, 1)).reshape(query.shape)
    ref = torch.zeros(2, 2, 3, dtype=torch.float64)
    for e, q, n in itertools.product(range(2), range(2), range(3)):
        proto = s_enc[e, n].mean(dim=0)  # HyRSM's 5-shot prototype: frame-wise mean of the encoded videos
        ref[e, q, n] = -ref_bimhm(ref_cosine_distance(q_enc[e, q], proto))
    assert torch.allclose(logits.double(), ref, atol=1e-5, rtol=0)


def _ref_trx(head, support: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """TRX's logits tuple by tuple with the head's own layers: [E, Q, N]."""
    e_, n_, k_, t, _ = support.shape
    q_ = query.shape[1]
    logits = torch.zeros(e_, q_, n_, dtype=torch.float64)
    for card in head.cards:
        tuples = list(itertools.combinations(range(t), card.size))

        def keys_values(video: torch.Tensor):
            x = video + head.pe
            flat = [torch.cat([x[i] for i in tup]) for tup in tuples]
            return [card.norm(card.key(f)).double() for f in flat], [card.value(f).double() for f in flat]

        for e, q, n in itertools.product(range(e_), range(q_), range(n_)):
            qk, qv = keys_values(query[e, q])
            sk, sv = [], []
            for k in range(k_):  # every tuple of every support video of the class
                ks, vs = keys_values(support[e, n, k])
                sk += ks
                sv += vs
            total = 0.0
            for key, value in zip(qk, qv):
                scores = torch.stack([key @ other for other in sk]) / math.sqrt(len(key))
                weights = scores.softmax(dim=0)
                proto = sum(w * v for w, v in zip(weights, sv))
                total += float(((value - proto) ** 2).sum())
            logits[e, q, n] -= total / len(tuples) / len(head.cards)
    return logits


@pytest.mark.parametrize("shot, key_dim", [(1, 1152), (2, 32)])
def test_trx_head_logits_are_the_reference_temporal_cross_transformer(shot, key_dim):
    support, query = _episode(1, 3, shot, 2, 5, 8, seed=7)
    torch.manual_seed(0)
    head = build_method("trx", dim=8, num_frames=5, key_dim=key_dim).eval()
    with torch.no_grad():
        logits = head(EpisodeBatch(support, query)).logits
        ref = _ref_trx(head, support, query)
    assert logits.shape == (1, 2, 3)
    assert torch.allclose(logits.double(), ref, atol=1e-5 * max(1.0, ref.abs().max().item()), rtol=0)


def test_clipfsar_head_visual_logits_are_clipfsar_otam_with_lambda_half():
    support, query = _episode(1, 3, 2, 2, 6, 16, seed=8)
    text = {"names": torch.randn(1, 3, 12, generator=torch.Generator().manual_seed(9))}
    head = build_method("clipfsar", dim=16, num_frames=6, text_dim=12).eval()
    assert head.lam == 0.5
    with torch.no_grad():
        logits = head(EpisodeBatch(support, query, text=text)).logits
        names = head.text_proj(text["names"][0])  # [N, D]
        protos = head.modulate(names, support[0].mean(dim=1))  # [N, T, D]: K videos averaged, then text-modulated
        queries = head.modulate(query[0].mean(dim=1), query[0])  # [Q, T, D]
    ref = torch.tensor([[-ref_otam_class(queries[q], [protos[n]], 0.5) for n in range(3)] for q in range(2)], dtype=torch.float64)
    assert torch.allclose(logits[0].double(), ref, atol=1e-5, rtol=0)
