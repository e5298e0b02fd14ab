"""Bi-MHM baseline (HyRSM, Wang et al., CVPR 2022): temporal transformer, then bidirectional mean Hausdorff."""
from __future__ import annotations

import torch
from einops import rearrange, reduce
from torch import Tensor, nn

from fsar.model.batch import EpisodeBatch
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
    this head keeps as a one-layer transformer with learned frame positions (HyRSM's cross-video relation is not
    kept). The distance is HyRSM's: sum over query frames of their nearest support-frame cosine distance plus sum
    over support frames of their nearest query frame; with K > 1 the support videos' encoded frames are first
    averaged frame by frame into a class prototype, as HyRSM's 5-shot model does. Logits = -scale * distance: at
    the initial scale 1 they are HyRSM's; the scale is learnable (the project's addition, a positive factor that
    never changes which class is nearest).
    """

    def __init__(
        self, dim: int, num_frames: int, text_dim: int | None = None, layers: int = 1, dropout: float = 0.1, scale: float = 1.0
    ):
        super().__init__(dim, num_frames, text_dim)
        self.pos = nn.Parameter(torch.randn(num_frames, dim) * 0.02)
        self.temporal = temporal_transformer(dim, layers, dropout)
        self.log_scale = scale_parameter(scale)

    def encode(self, x: Tensor) -> Tensor:
        """x [B, T, D] -> [B, T, D] with temporal context."""
        return self.temporal(x + self.pos)

    def forward(self, batch: EpisodeBatch) -> HeadOutput:
        support, query = batch.support, batch.query
        e, n = support.shape[:2]
        s = reduce(self.encode(rearrange(support, "e n k t d -> (e n k) t d")), "(e n k) t d -> e n t d", "mean", e=e, n=n)
        q = rearrange(self.encode(rearrange(query, "e q t d -> (e q) t d")), "(e q) t d -> e q t d", e=e)
        dist = bimhm_distance(episode_frame_distance(q, s), reduction="sum")  # [E, Q, N]
        return HeadOutput(-dist * self.log_scale.exp())
