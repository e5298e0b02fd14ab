"""OTAM baseline (Cao et al., CVPR 2020): soft monotonic alignment of query and prototype frames, both directions."""
from __future__ import annotations

from einops import reduce
from torch import Tensor

from fsar.model.matching import episode_frame_distance, otam_bidirectional
from fsar.model.registry import Head, HeadOutput, register_method, scale_parameter


@register_method("otam")
class OTAMHead(Head):
    """Logits = -scale * OTAM distance; with K > 1 the support videos are averaged frame by frame into a prototype."""

    def __init__(self, dim: int, num_frames: int, text_dim: int | None = None, lam: float = 0.1, scale: float = 1.0):
        super().__init__(dim, num_frames, text_dim)
        self.lam = lam
        self.log_scale = scale_parameter(scale)

    def forward(self, support: Tensor, query: Tensor, text=None, query_labels=None) -> HeadOutput:
        protos = reduce(support, "e n k t d -> e n t d", "mean")
        dist = otam_bidirectional(episode_frame_distance(query, protos), self.lam)  # [E, Q, N]
        return HeadOutput(-dist * self.log_scale.exp())
