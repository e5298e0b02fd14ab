"""Prototype baseline: mean-pooled frame features, class prototype = mean of its support videos, cosine logits."""
from __future__ import annotations

import torch.nn.functional as F
from einops import reduce
from fsar.model.batch import EpisodeBatch
from fsar.model.registry import Head, HeadOutput, register_method, scale_parameter


@register_method("prototype")
class PrototypeHead(Head):
    """Order-blind reference: two videos with the same frames in reverse order get the same score."""

    def __init__(self, dim: int, num_frames: int, text_dim: int | None = None, scale: float = 10.0):
        super().__init__(dim, num_frames, text_dim)
        self.log_scale = scale_parameter(scale)

    def forward(self, batch: EpisodeBatch) -> HeadOutput:
        protos = F.normalize(reduce(batch.support, "e n k t d -> e n d", "mean"), dim=-1)
        q = F.normalize(reduce(batch.query, "e q t d -> e q d", "mean"), dim=-1)
        logits = q @ protos.transpose(-1, -2)  # [E, Q, N]
        return HeadOutput(logits * self.log_scale.exp())
