"""Bi-MHM baseline (HyRSM, Wang et al., CVPR 2022): temporal transformer, then bidirectional mean Hausdorff."""
from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from fsar.model.matching import bimhm_distance, episode_frame_distance
from fsar.model.registry import Head, HeadOutput, register_method, scale_parameter


def temporal_transformer(dim: int, layers: int, dropout: float) -> nn.TransformerEncoder:
    """A small pre-norm transformer over the frames of a clip (heads: the largest of 8, 4, 2, 1 dividing dim)."""
    heads = next(h for h in (8, 4, 2, 1) if dim % h == 0)
    layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=dropout, batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


@register_method("bimhm")
class BiMHMHead(Head):
    """Frames mix with their neighbours in time (learned positions), so the set metric becomes order-aware.

    Bi-MHM itself ignores frame order; HyRSM makes it work on actions through its temporal relation module, which
    this head keeps as a one-layer transformer with learned frame positions. With K > 1 each support video is
    matched on its own and the distances are averaged.
    """

    def __init__(
        self, dim: int, num_frames: int, text_dim: int | None = None, layers: int = 1, dropout: float = 0.1, scale: float = 10.0
    ):
        super().__init__(dim, num_frames, text_dim)
        self.pos = nn.Parameter(torch.randn(num_frames, dim) * 0.02)
        self.temporal = temporal_transformer(dim, layers, dropout)
        self.log_scale = scale_parameter(scale)

    def encode(self, x: Tensor) -> Tensor:
        """x [B, T, D] -> [B, T, D] with temporal context."""
        return self.temporal(x + self.pos)

    def forward(self, support: Tensor, query: Tensor, text=None, query_labels=None) -> HeadOutput:
        e, n, k = support.shape[:3]
        s = rearrange(self.encode(rearrange(support, "e n k t d -> (e n k) t d")), "(e n k) t d -> e n k t d", e=e, n=n)
        q = rearrange(self.encode(rearrange(query, "e q t d -> (e q) t d")), "(e q) t d -> e q t d", e=e)
        dist = bimhm_distance(episode_frame_distance(q, s)).mean(dim=-1)  # [E, Q, N, K] -> [E, Q, N]
        return HeadOutput(-dist * self.log_scale.exp())
