"""CLIP-FSAR-style head (Wang et al., IJCV 2023): class-name text fused into the visual prototypes, OTAM matching.

Prototype modulation: the projected class-name embedding joins the support prototype's frames as an extra token of a
temporal transformer, so the prototype's frames are rewritten with the class's text. Queries have no label, so they
run through the same transformer with their own mean frame standing in for the text token (our choice: it keeps the
two sequences the same length and the same transformer; the paper only describes the support side). A video-text
loss (cross-entropy of query videos against the episode's class texts) trains the text projection, as in the paper.
The metric is CLIP-FSAR's (alibaba-mmai-research/CLIP-FSAR, CNN_OTAM_CLIPFSAR): the K modulated support videos
are averaged frame by frame into a prototype, and the class distance is OTAM(d) + OTAM(d^T) with lambda 0.5.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import Tensor, nn

from fsar.model.batch import EpisodeBatch
from fsar.model.heads.bimhm import temporal_transformer
from fsar.model.matching import episode_frame_distance, otam_bidirectional
from fsar.model.registry import Head, HeadOutput, register_method, scale_parameter


@register_method("clipfsar")
class CLIPFSARHead(Head):
    """Logits = -scale * OTAM(query, text-modulated prototype) (+ text_logit_weight * video-text logits).

    With the initial scale 1 and text_logit_weight 0 the visual logits are CLIP-FSAR's; the scale is learnable (the
    project's addition, a positive factor that never changes which class is nearest).
    """

    needs_text = "names"

    def __init__(
        self,
        dim: int,
        num_frames: int,
        text_dim: int | None = None,
        lam: float = 0.5,
        layers: int = 1,
        dropout: float = 0.1,
        scale: float = 1.0,
        text_loss_weight: float = 1.0,
        text_logit_weight: float = 0.0,
    ):
        super().__init__(dim, num_frames, text_dim)
        self.lam, self.text_loss_weight, self.text_logit_weight = lam, text_loss_weight, text_logit_weight
        self.text_proj = nn.Linear(text_dim, dim)
        self.pos = nn.Parameter(torch.randn(num_frames + 1, dim) * 0.02)
        self.temporal = temporal_transformer(dim, layers, dropout)
        self.log_scale = scale_parameter(scale)
        self.log_text_scale = scale_parameter(10.0)

    def modulate(self, token: Tensor, frames: Tensor) -> Tensor:
        """token [B, D], frames [B, T, D] -> frames [B, T, D] rewritten by a transformer that also sees the token."""
        x = torch.cat([token[:, None], frames], dim=1) + self.pos
        return self.temporal(x)[:, 1:]

    def forward(self, batch: EpisodeBatch) -> HeadOutput:
        support, query, query_labels = batch.support, batch.query, batch.query_labels
        e, n = support.shape[:2]
        names = self.text_proj(batch.text["names"])  # [E, N, D]
        protos = reduce(support, "e n k t d -> (e n) t d", "mean")
        s = rearrange(self.modulate(rearrange(names, "e n d -> (e n) d"), protos), "(e n) t d -> e n t d", e=e)
        q_frames = rearrange(query, "e q t d -> (e q) t d")
        q = rearrange(self.modulate(q_frames.mean(dim=1), q_frames), "(e q) t d -> e q t d", e=e)
        logits = -otam_bidirectional(episode_frame_distance(q, s), self.lam, reduction="sum") * self.log_scale.exp()
        # video-text logits: mean query frame against each class text of the episode
        vt = F.normalize(query.mean(dim=2), dim=-1) @ F.normalize(names, dim=-1).transpose(-1, -2)
        vt = vt * self.log_text_scale.exp()  # [E, Q, N]
        aux = {}
        if query_labels is not None and self.text_loss_weight > 0:
            aux["video_text"] = self.text_loss_weight * F.cross_entropy(rearrange(vt, "e q n -> (e q) n"), query_labels.reshape(-1))
        if self.text_logit_weight:
            logits = logits + self.text_logit_weight * vt
        return HeadOutput(logits, aux)
