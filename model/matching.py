"""Frame-level matching functions shared by the heads: similarities, OTAM, Bi-MHM, TRX tuples.

Everything here is a pure function of tensors with arbitrary leading batch dimensions ``...``, so one call scores
every (episode, query, class) pair at once. Distances are small for similar videos; heads turn them into logits
with a minus sign and a scale.
"""
from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor


def cosine_similarity(a: Tensor, b: Tensor) -> Tensor:
    """All-pairs cosine similarity: a [..., L, D], b [..., M, D] -> [..., L, M]."""
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).transpose(-1, -2)


def cosine_distance(a: Tensor, b: Tensor) -> Tensor:
    """All-pairs cosine distance 1 - cos: a [..., L, D], b [..., M, D] -> [..., L, M], values in [0, 2]."""
    return 1.0 - cosine_similarity(a, b)


def episode_frame_distance(query: Tensor, support: Tensor) -> Tensor:
    """Cosine frame distances of every query to every support sequence of its episode.

    query [E, Q, L, D], support [E, N, M, D] -> [E, Q, N, L, M] (support may carry more axes after N, e.g.
    [E, N, K, M, D] -> [E, Q, N, K, L, M]).
    """
    q = F.normalize(query, dim=-1)
    s = F.normalize(support, dim=-1)
    if s.dim() == 4:
        return 1.0 - torch.einsum("eqld,enmd->eqnlm", q, s)
    return 1.0 - torch.einsum("eqld,enkmd->eqnklm", q, s)


def softmin(values: list[Tensor], lam: float) -> Tensor:
    """Smooth minimum -lam * log(sum(exp(-v / lam))) of same-shaped tensors; tends to the minimum as lam -> 0."""
    stacked = torch.stack(values, dim=0)
    return -lam * torch.logsumexp(-stacked / lam, dim=0)


def otam_distance(dist: Tensor, lam: float = 0.1) -> Tensor:
    """OTAM (Cao et al., CVPR 2020): soft monotonic temporal alignment cost of one direction.

    dist [..., L, M]: frame distances, rows the frames of the video being aligned (L), columns the frames of the
    video aligned to (M). Two zero columns pad the columns at both ends, so the path may start and end anywhere
    along the rows (free start and end). Inside the real columns the path moves right or diagonally down-right, so
    every column frame is matched to exactly one row frame and the matched rows never go back in time; in the
    padding columns it may also move down (skipping rows). The soft-min with temperature ``lam`` makes the cost
    differentiable; as lam -> 0 it is the cost of the best monotonic alignment. Returns [...].
    """
    rows, cols = dist.shape[-2], dist.shape[-1]
    d = F.pad(dist, (1, 1))  # [..., L, M + 2]
    width = cols + 2
    prev = torch.cumsum(d[..., 0, :], dim=-1).unbind(-1)  # row 0: only moves to the right
    for r in range(1, rows):
        row = [prev[0] + d[..., r, 0]]  # first padding column: arrive from above
        for c in range(1, width):
            options = [prev[c - 1], row[c - 1]]  # diagonal, from the left
            if c == width - 1:
                options.append(prev[c])  # last padding column: also from above
            row.append(d[..., r, c] + softmin(options, lam))
        prev = row
    return prev[-1]


def otam_bidirectional(dist: Tensor, lam: float = 0.1) -> Tensor:
    """OTAM in both directions, averaged: dist [..., L, M] -> [...], symmetric in the two videos."""
    return 0.5 * (otam_distance(dist, lam) + otam_distance(dist.transpose(-1, -2), lam))


def bimhm_distance(dist: Tensor) -> Tensor:
    """Bidirectional mean Hausdorff metric (HyRSM, Wang et al., CVPR 2022): dist [..., L, M] -> [...].

    Each frame of one video is matched to its nearest frame of the other, in both directions, and the two mean
    distances are added. It ignores frame order: it is order-aware only through features that encode time
    (the Bi-MHM head runs a temporal transformer with positional embeddings first).
    """
    return dist.min(dim=-1).values.mean(dim=-1) + dist.min(dim=-2).values.mean(dim=-1)


def tuple_indices(num_frames: int, size: int) -> Tensor:
    """Ordered frame tuples (i < j < ...) of a clip: LongTensor [n_tuples, size], e.g. 28 pairs of 8 frames."""
    return torch.tensor(list(itertools.combinations(range(num_frames), size)), dtype=torch.long)


def frame_tuples(x: Tensor, size: int) -> Tensor:
    """Concatenate the frames of every ordered tuple (TRX): x [..., T, D] -> [..., n_tuples, size * D]."""
    idx = tuple_indices(x.shape[-2], size).to(x.device)
    return rearrange(x[..., idx, :], "... n s d -> ... n (s d)")


def sinusoidal_positions(num_frames: int, dim: int) -> Tensor:
    """Fixed sinusoidal position encodings [T, D] (Vaswani et al.), so features carry their frame's time."""
    pos = torch.arange(num_frames, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(num_frames, dim)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return pe


def tuple_prototype_distance(q_keys: Tensor, q_values: Tensor, s_keys: Tensor, s_values: Tensor) -> Tensor:
    """TRX (Perrett et al., CVPR 2021): distance of each query to a prototype built for it from a class's tuples.

    q_keys [E, Q, n, dk], q_values [E, Q, n, dv]: the query's tuples; s_keys [E, N, m, dk], s_values [E, N, m, dv]:
    all tuples of all support videos of each class (m = K * n). Each query tuple attends over the class's support
    tuples (scaled dot product, softmax over m); the attended values form the query-specific prototype, and the
    distance is the squared L2 distance between the query's values and it, summed over tuples and divided by n.
    Returns [E, Q, N].
    """
    scale = q_keys.shape[-1] ** -0.5
    attn = torch.einsum("eqid,enjd->eqnij", q_keys, s_keys).mul(scale).softmax(dim=-1)
    proto = torch.einsum("eqnij,enjd->eqnid", attn, s_values)
    diff = q_values[:, :, None] - proto
    return diff.pow(2).sum(dim=(-1, -2)) / q_values.shape[-2]
