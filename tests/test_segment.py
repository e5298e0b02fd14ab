"""CLUSTER-segment and the uniform split (fsar.model.segment): hand-made sequences, ties, contiguity, pooling."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fsar.model.segment import cluster_segment, pool_stages, stage_weights, uniform_segment


def _blocks(lengths: tuple[int, ...], dim: int = 6, noise: float = 0.0, seed: int = 0) -> torch.Tensor:
    """Constant blocks of random directions (one per block), with optional noise: [sum(lengths), dim]."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(len(lengths), dim, generator=g)
    frames = torch.cat([dirs[i].expand(n, dim) for i, n in enumerate(lengths)])
    return frames + noise * torch.randn(frames.shape, generator=g)


def _reference(frames: torch.Tensor, segments: int) -> list[int]:
    """The definition, literally: a list of clusters (frame lists), merge the adjacent pair with the most similar
    means (first such pair on ties) until ``segments`` remain. Returns the boundaries."""
    clusters = [[i] for i in range(frames.shape[0])]
    while len(clusters) > segments:
        means = [frames[c].mean(dim=0) for c in clusters]
        sims = [float(F.cosine_similarity(means[i], means[i + 1], dim=0)) for i in range(len(clusters) - 1)]
        best = max(sims)
        j = next(i for i, s in enumerate(sims) if s >= best - 1e-6)
        clusters[j : j + 2] = [clusters[j] + clusters[j + 1]]
    return [c[0] for c in clusters] + [frames.shape[0]]


@pytest.mark.parametrize("lengths", [(1, 5, 2), (4, 1, 3), (2, 2, 4), (3, 3, 2), (6, 1, 1), (1, 1, 6), (2, 7, 3)])
def test_three_constant_blocks_are_recovered_exactly(lengths):
    frames = _blocks(lengths)
    expected = [0, lengths[0], lengths[0] + lengths[1], sum(lengths)]
    assert cluster_segment(frames, 3).tolist() == expected
    # with a little noise on every frame the blocks are still found
    assert cluster_segment(_blocks(lengths, noise=0.05, seed=1), 3).tolist() == expected
    # uniform thirds do not follow the blocks (unless they happen to be thirds)
    if expected != uniform_segment(sum(lengths), 3).tolist():
        assert cluster_segment(frames, 3).tolist() != uniform_segment(sum(lengths), 3).tolist()


def test_batch_is_segmented_clip_by_clip_and_matches_the_definition():
    """The vectorised merge gives every clip of a batch what the literal definition gives it alone."""
    g = torch.Generator().manual_seed(3)
    frames = torch.randn(4, 5, 8, 16, generator=g)  # any leading batch shape
    blocks = torch.stack([_blocks((1, 5, 2)), _blocks((4, 1, 3)), _blocks((2, 2, 4))])  # [3, 8, 6]
    bounds = cluster_segment(frames, 3)
    assert bounds.shape == (4, 5, 4) and bounds.dtype == torch.long
    for a in range(4):
        for b in range(5):
            assert bounds[a, b].tolist() == _reference(frames[a, b], 3)
    assert cluster_segment(blocks, 3).tolist() == [[0, 1, 6, 8], [0, 4, 5, 8], [0, 2, 4, 8]]
    for segments in (1, 2, 4, 8):
        assert cluster_segment(frames[0], segments).tolist() == [_reference(f, segments) for f in frames[0]]


def test_ties_break_to_the_leftmost_pair_deterministically():
    # every frame equal: every adjacent pair ties at cosine 1, so the leftmost pair merges each time
    same = torch.ones(8, 4)
    assert cluster_segment(same, 3).tolist() == [0, 6, 7, 8]
    # two exact ties (a a b c c): (0, 1) and (3, 4) both have cosine 1; the left one merges first
    a, b, c = torch.eye(3)
    seq = torch.stack([a, a, b, c, c])
    assert cluster_segment(seq, 4).tolist() == [0, 2, 3, 4, 5]
    assert cluster_segment(seq, 3).tolist() == [0, 2, 3, 5]
    # ties up to rounding (scaled copies of one direction) count as ties too, and the result does not depend on
    # where in the batch the clip sits or on being run again
    scaled = torch.stack([a, 3.0 * a, b, 0.1 * c, 7.0 * c])
    assert cluster_segment(scaled, 4).tolist() == [0, 2, 3, 4, 5]
    batch = torch.stack([torch.randn(5, 3), scaled, torch.randn(5, 3)])
    assert cluster_segment(batch, 4)[1].tolist() == [0, 2, 3, 4, 5]
    assert torch.equal(cluster_segment(batch, 4), cluster_segment(batch, 4))


def test_segments_are_contiguous_ordered_and_cover_the_clip():
    g = torch.Generator().manual_seed(0)
    for t in (3, 4, 8, 16):
        frames = torch.randn(200, t, 32, generator=g)
        for segments in range(1, min(t, 5) + 1):
            bounds = cluster_segment(frames, segments)
            assert (bounds[:, 0] == 0).all() and (bounds[:, -1] == t).all()
            assert (bounds.diff(dim=-1) >= 1).all()  # strictly increasing: ordered, non-empty stages
            weights = stage_weights(bounds, t)
            assert torch.equal(weights.sum(dim=-2), torch.ones(200, t))  # without overlap every frame in exactly one stage
    assert cluster_segment(torch.randn(3, 8), 3).tolist() == [0, 1, 2, 3]  # T == L: one frame each


def test_uniform_split_and_overlap_weights():
    assert uniform_segment(8, 3).tolist() == [0, 2, 5, 8]
    assert uniform_segment(9, 3).tolist() == [0, 3, 6, 9]
    assert uniform_segment(3, 3).tolist() == [0, 1, 2, 3]
    w = stage_weights(uniform_segment(8, 3), 8, overlap=1)
    assert w.tolist() == [[1, 1, 1, 0, 0, 0, 0, 0], [0, 1, 1, 1, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1, 1, 1]]
    w2 = stage_weights(torch.tensor([[0, 1, 6, 8]]), 8, overlap=2)
    assert w2.tolist() == [[[1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1, 1, 1]]]


def test_pooling_is_the_mean_of_each_stage_and_carries_gradients():
    frames = torch.randn(2, 8, 5, requires_grad=True)
    bounds = torch.tensor([[0, 1, 6, 8], [0, 3, 4, 8]])
    pooled = pool_stages(frames, stage_weights(bounds, 8))
    assert pooled.shape == (2, 3, 5)
    assert torch.allclose(pooled[0, 1], frames[0, 1:6].mean(dim=0)) and torch.allclose(pooled[1, 2], frames[1, 4:].mean(dim=0))
    shared = pool_stages(frames, stage_weights(uniform_segment(8, 3), 8, overlap=1))  # one split for the whole batch
    assert torch.allclose(shared[1, 0], frames[1, :3].mean(dim=0))
    pooled.sum().backward()
    assert frames.grad is not None and (frames.grad.abs() > 0).all()


def test_bad_requests_are_one_line_errors():
    with pytest.raises(ValueError, match="cannot split 2 frames into 3 segments"):
        cluster_segment(torch.randn(2, 4), 3)
    with pytest.raises(ValueError, match=r"frame features \[..., T, D\]"):
        cluster_segment(torch.randn(4), 3)
    with pytest.raises(ValueError, match="cannot split 2 frames"):
        uniform_segment(2, 3)
    with pytest.raises(ValueError, match="overlap must be >= 0"):
        stage_weights(uniform_segment(8, 3), 8, overlap=-1)
