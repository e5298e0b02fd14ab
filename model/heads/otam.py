"""OTAM baseline (Cao et al., CVPR 2020): soft monotonic alignment of query and support frames, both directions."""
from __future__ import annotations

from fsar.model.batch import EpisodeBatch
from fsar.model.matching import episode_frame_distance, otam_bidirectional
from fsar.model.registry import Head, HeadOutput, register_method, scale_parameter


@register_method("otam")
class OTAMHead(Head):
    """Logits = -scale * class distance, the class distance being the reference's (tobyperrett's CNN_OTAM).

    Each query is aligned to each support video in both directions, OTAM(d) + OTAM(d^T) on the cosine frame
    distances, and a class's distance is the mean over its K support videos. At the initial scale 1 the logits
    are the reference's; the scale is learnable (the project's addition; a positive factor, so it never changes
    which class is nearest).
    """

    def __init__(self, dim: int, num_frames: int, text_dim: int | None = None, lam: float = 0.1, scale: float = 1.0):
        super().__init__(dim, num_frames, text_dim)
        self.lam = lam
        self.log_scale = scale_parameter(scale)

    def forward(self, batch: EpisodeBatch) -> HeadOutput:
        frame_dist = episode_frame_distance(batch.query, batch.support)  # [E, Q, N, K, T, T]
        dist = otam_bidirectional(frame_dist, self.lam, reduction="sum").mean(dim=-1)  # [E, Q, N]
        return HeadOutput(-dist * self.log_scale.exp())
