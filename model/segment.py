"""Splitting a clip's frames into a few contiguous stages (LGA's visual anatomy), as pure tensor functions.

A split is given by its boundaries ``bounds`` [..., L + 1], integers 0 = b_0 < b_1 < ... < b_L = T: stage i holds
frames b_i .. b_{i+1} - 1. Two ways to make one:

- ``cluster_segment`` (LGA's CLUSTER-segment): every frame starts as its own cluster; the adjacent pair of clusters
  whose means are the most cosine-similar is merged, again and again, until L clusters remain. Stages then follow
  the video (a long, still onset stays one stage) instead of the clock.
- ``uniform_segment`` (the paper's HARD baseline): L stages of (nearly) equal length, the same for every video.

``stage_weights`` turns boundaries into frame-membership weights [..., L, T], optionally widened by ``overlap``
frames into each neighbour (LGA adds overlap frames between adjacent stages), and ``pool_stages`` averages the
frames of each stage. Segmentation itself picks indices, so it carries no gradient; pooling does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def cluster_segment(frames: Tensor, segments: int = 3, tol: float = 1e-6) -> Tensor:
    """CLUSTER-segment: frames [..., T, D] -> boundaries [..., segments + 1] (long), one split per clip.

    Every merge step removes exactly one cluster from every clip, so all clips of the batch hold the same number of
    clusters at each step and the T - L steps run vectorised over the whole batch. The cosine of two cluster means
    equals the cosine of their sums, and the sums' dot products are sums of the frames' Gram matrix, so each step
    works on [B, c, c] matrices whatever the feature width. Ties: among the adjacent pairs whose similarity is
    within ``tol`` of the best, the earliest (leftmost) pair merges, so equal sequences always split the same way.
    """
    if frames.dim() < 2:
        raise ValueError(f"cluster_segment needs frame features [..., T, D], got shape {tuple(frames.shape)}")
    t = frames.shape[-2]
    if not 1 <= segments <= t:
        raise ValueError(f"cannot split {t} frames into {segments} segments; need 1 <= segments <= frames")
    lead = frames.shape[:-2]
    x = frames.detach().reshape(-1, t, frames.shape[-1]).float()
    gram = x @ x.transpose(-1, -2)  # [B, c, c]: dot products of the cluster sums (c = T at first)
    starts = torch.arange(t, device=frames.device).expand(x.shape[0], t)  # [B, c] first frame of each cluster
    for c in range(t, segments, -1):
        diag = gram.diagonal(dim1=-2, dim2=-1).clamp(min=1e-12)  # squared norms of the sums
        sim = gram.diagonal(offset=1, dim1=-2, dim2=-1) / (diag[:, :-1] * diag[:, 1:]).sqrt()  # [B, c - 1] cosines
        best = sim.max(dim=-1, keepdim=True).values
        j = (sim >= best - tol).int().argmax(dim=-1, keepdim=True)  # first pair within tol of the best: [B, 1]
        # new cluster i is old cluster i left of the merge, old i + 1 right of it; the merged one is j plus j + 1
        pos = torch.arange(c - 1, device=frames.device).expand(x.shape[0], c - 1)
        src = pos + (pos > j).long()
        merge = F.one_hot(src, c).float()  # [B, c - 1, c]
        merge[:, :, 1:] += F.one_hot(j.expand(-1, c - 1), c - 1).float() * (pos == j).unsqueeze(-1)
        gram = merge @ gram @ merge.transpose(-1, -2)
        starts = starts.gather(1, src)
    end = torch.full_like(starts[:, :1], t)
    return torch.cat([starts, end], dim=1).reshape(*lead, segments + 1)


def uniform_segment(num_frames: int, segments: int = 3, device: torch.device | str = "cpu") -> Tensor:
    """The HARD split: boundaries [segments + 1] floor(i * T / L); e.g. 8 frames into 3 -> 0, 2, 5, 8."""
    if not 1 <= segments <= num_frames:
        raise ValueError(f"cannot split {num_frames} frames into {segments} segments; need 1 <= segments <= frames")
    return torch.div(torch.arange(segments + 1, device=device) * num_frames, segments, rounding_mode="floor")


def stage_weights(bounds: Tensor, num_frames: int, overlap: int = 0) -> Tensor:
    """Boundaries [..., L + 1] -> frame membership [..., L, T] (float 0/1).

    ``overlap`` > 0 widens every stage by that many frames into each neighbouring stage (never past the clip's
    ends), so adjacent stages share the frames around their boundary.
    """
    if overlap < 0:
        raise ValueError(f"overlap must be >= 0 frames, got {overlap}")
    frame = torch.arange(num_frames, device=bounds.device)
    lo = (bounds[..., :-1] - overlap).unsqueeze(-1)  # [..., L, 1]
    hi = (bounds[..., 1:] + overlap).unsqueeze(-1)
    return ((frame >= lo) & (frame < hi)).float()


def pool_stages(frames: Tensor, weights: Tensor) -> Tensor:
    """Mean frame of each stage: frames [..., T, D], weights [..., L, T] (or [L, T], shared) -> [..., L, D]."""
    return (weights @ frames) / weights.sum(dim=-1, keepdim=True).clamp(min=1e-6)


__all__ = ["cluster_segment", "uniform_segment", "stage_weights", "pool_stages"]
