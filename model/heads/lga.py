"""LGA (Language-Guided Action Anatomy, ICCV 2025, arXiv 2507.16287): atomic stages of text and video, fused and matched.

Stage 1 decomposes every action name into three stages (onset, progression, completion), each a subject-motion-object
triplet and a sentence; their MiniLM embeddings arrive as ``text["stages"]`` (or ``triplets`` / ``sentences``)
[E, N, 3, Dt]. This head follows the seed's three modules:

- **Visual anatomy**: each clip's frames [T, D] are split into 3 contiguous stages by CLUSTER-segment (adjacent
  frames merged by the cosine of their cluster means until 3 clusters remain, ``fsar.model.segment``), widened by
  ``overlap`` frames into each neighbour; a stage's feature is the mean of its frames. ``segment="uniform"`` is the
  paper's HARD baseline (equal thirds).
- **Fine-grained fusion**: for stage i, multi-head cross-attention with query t_i + f_i (projected stage text plus
  visual stage) and keys / values all three visual stages; the prototype is the concatenation of the three fused
  stages (a [3, D] sequence, averaged over the K support videos).
- **Multimodal matching**: video-video by AB-MHM between the fused stages of query and prototype; video-text by the
  cosine of each pooled query stage with the class's same-stage text, averaged over stages; at evaluation the class
  probabilities are fused by the weighted geometric mean p = p_vv^alpha * p_vt^(1 - alpha), returned as its log.
- **Training**, as the paper says: the classification logits are the video-video ones only, plus a contrastive loss
  (an auxiliary loss); the full multimodal matching is used at evaluation (``self.training`` is False).

Where the seed is silent, our choices (each an option, so ``--opt`` switches it and checkpoints record it):

- ``query_text``: a query video has no label, so how does it meet the class text in the fusion? "class" (default,
  as DiST): the query is fused once per candidate class with that class's stage texts and compared with that class's
  prototype ("does this video, read as class n's stages, look like class n's support?"); "episode": the query is fused
  once with the mean of the episode's class texts. Only the query-side attention and output projection depend on the
  class: the clip's query part, keys and values are projected once (W_q is linear, so W_q(t + f) = W_q t + W_q f).
- the fused stage is the visual stage plus the attention output (residual on the visual stage, not on t_i + f_i), so
  fused prototypes stay in the visual feature space and a query fused with class n's text does not share an additive
  text vector with class n's prototype; the text steers which stages each stage reads. No MLP after the attention.
- ``overlap``: 1 frame into each neighbour by default (0 = none).
- AB-MHM (``ab_mhm_distance``): the seed names it, without a formula. Ours: Bi-MHM (each stage matched to its nearest
  stage of the other video, both directions, averaged) with matches allowed only between stages at most ``window``
  apart (default 1); window 0 compares stage i with stage i only, window >= 2 is plain Bi-MHM over the 3 stages.
- the contrastive loss (``contrastive`` weight, ``contrastive_form``): InfoNCE of every labelled video of the
  episode (queries and supports) against the episode's N class texts with the video-text logits, "video" (the
  logits used at evaluation, stage cosines averaged) or "stage" (each stage against every class's same-stage text).
  It is what trains the text projection that video-text matching needs at evaluation.
- the fusion adds a learned stage embedding to each visual stage (keys then carry their order); alpha 0.5; both
  logit scales start at 10 and are learned;
- text is projected to the visual width by one linear layer + layer norm, shared by fusion and video-text matching;
  CLUSTER-segment runs on L2-normalised frames (no frame outweighs the others by its norm); padded stage texts
  (a class whose LLM answer lacked a stage) are replaced by the class-name embedding.

Ablation switches (the paper's table): ``segment`` cluster|uniform (visual anatomy on/off), ``knowledge``
llm|name|none (llm = textual anatomy; name = textual anatomy off, the class-name prompt stands for every stage;
none = no text, the fusion queries are the visual stages alone and only video-video matching exists), ``match``
both|vv|vt (default both, or vv with knowledge=none), ``alpha`` the fusion weight. The number of stages is 3, fixed by the ``lga`` knowledge schema.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import Tensor, nn

from fsar.model.batch import EpisodeBatch
from fsar.model.matching import bimhm_distance
from fsar.model.registry import Head, HeadOutput, heads_for, knowledge_need, register_method, scale_parameter
from fsar.model.segment import cluster_segment, pool_stages, stage_weights, uniform_segment

STAGES = 3  # onset, progression, completion: fixed by the lga knowledge schema
KNOWLEDGE = ("llm", "name", "none")
SEGMENT = ("cluster", "uniform")
MATCH = ("both", "vv", "vt")
QUERY_TEXT = ("class", "episode")
CONTRASTIVE_FORM = ("video", "stage")
TEXT_ITEMS = ("stages", "triplets", "sentences")
GEN_HINT = "fsar-knowledge generate --dataset DATASET --kind lga"


def ab_mhm_distance(dist: Tensor, window: int = 1) -> Tensor:
    """Aligned bidirectional mean Hausdorff: stage distances [..., L, M] -> [...].

    Bi-MHM (mean of each direction's nearest-match distances, ``fsar.model.matching.bimhm_distance``) where stage i
    of one video may only match stages j with |i - j| <= ``window`` of the other: order matters (a reversed video is
    far from the original) while a stage boundary found one stage off is still tolerated (window 1).
    """
    if window < 0:
        raise ValueError(f"AB-MHM window must be >= 0 stages, got {window}")
    rows, cols = dist.shape[-2:]
    i = torch.arange(rows, device=dist.device)[:, None]
    j = torch.arange(cols, device=dist.device)[None, :]
    return bimhm_distance(dist.masked_fill((i - j).abs() > window, float("inf")))



class StageFusion(nn.Module):
    """Cross-attention of each stage (query: stage text + visual stage) over all visual stages of the clip.

    Split in two so that the text-independent part runs once per clip: ``visual`` gives the clip's query part,
    keys and values; ``fuse`` adds a text's query part (W_q is linear, so W_q(t + f) = W_q t + W_q f) and attends.
    fused_i = f_i + W_o(attention).
    """

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.pos = nn.Parameter(torch.randn(STAGES, dim) * 0.02)  # which stage a feature is (keys carry their order)
        self.norm_q, self.norm_kv = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.drop = nn.Dropout(dropout)

    def text_query(self, text: Tensor) -> Tensor:
        """Projected stage texts [..., L, D] -> their part of the attention query [..., H, L, d]."""
        return rearrange(F.linear(text, self.q.weight), "... l (h d) -> ... h l d", h=self.heads)

    def visual(self, stages: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """stages [..., L, D] -> query part, keys, values, each [..., H, L, d]."""
        x = stages + self.pos
        kv = self.norm_kv(x)
        split = lambda y: rearrange(y, "... l (h d) -> ... h l d", h=self.heads)  # noqa: E731
        return split(self.q(self.norm_q(x))), split(self.k(kv)), split(self.v(kv))

    def fuse(self, stages: Tensor, parts: tuple[Tensor, Tensor, Tensor], text_q: Tensor | None) -> Tensor:
        """Fused stages: stages [A, L, D] with ``visual`` parts [A, H, L, d]; text_q (None = no text) [A, H, L, d]
        or with class axes, e.g. [A, N, H, L, d] -> [A, N, L, D]."""
        q, k, v = parts
        if text_q is not None:
            extra = text_q.dim() - q.dim()  # the text brings class axes: the clip's tensors get singleton axes there
            if extra:
                q, k, v, stages = (x.reshape(x.shape[:1] + (1,) * extra + x.shape[1:]) for x in (q, k, v, stages))
            q = q + text_q
        attn = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(dim=-1)  # [..., H, L, L]
        out = rearrange(attn @ v, "... h l d -> ... l (h d)")
        return stages + self.drop(self.o(out))


@register_method("lga")
class LGAHead(Head):
    """Train: logits = video-video (-scale * AB-MHM); eval: log(p_vv^alpha * p_vt^(1 - alpha)). Aux: contrastive."""

    needs_text = "lga"

    def __init__(
        self,
        dim: int,
        num_frames: int,
        text_dim: int | None = None,
        knowledge: str = "llm",
        segment: str = "cluster",
        match: str | None = None,
        alpha: float = 0.5,
        overlap: int = 1,
        window: int = 1,
        query_text: str = "class",
        text_item: str = "stages",
        contrastive: float = 1.0,
        contrastive_form: str = "video",
        heads: int = 8,
        dropout: float = 0.1,
        scale: float = 10.0,
        text_scale: float = 10.0,
    ):
        super().__init__(dim, num_frames, text_dim)
        if match is None:  # our choice: no text leaves video-video matching only, so knowledge=none implies vv
            match = "vv" if knowledge == "none" else "both"
        for name, value, choices in (("knowledge", knowledge, KNOWLEDGE), ("segment", segment, SEGMENT), ("match", match, MATCH),
                                     ("query_text", query_text, QUERY_TEXT), ("contrastive_form", contrastive_form, CONTRASTIVE_FORM),
                                     ("text_item", text_item, TEXT_ITEMS)):
            if value not in choices:
                raise ValueError(f"LGA option {name} must be one of {', '.join(choices)}, got '{value}'")
        if knowledge == "none" and match != "vv":
            raise ValueError(f"LGA with knowledge='none' has no text for video-text matching; use match=vv (got match={match})")
        if knowledge != "none" and text_dim is None:
            raise ValueError(f"LGA with knowledge='{knowledge}' needs text embeddings (text_dim is None); use knowledge=none for no text")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"LGA option alpha must lie in [0, 1], got {alpha}")
        if num_frames < STAGES:
            raise ValueError(f"LGA splits clips into {STAGES} stages and needs at least {STAGES} frames, got {num_frames}")
        if overlap < 0 or window < 0 or contrastive < 0:
            raise ValueError(f"LGA options overlap, window and contrastive must be >= 0, got {overlap}, {window}, {contrastive}")
        self.knowledge, self.segment, self.match, self.alpha = knowledge, segment, match, float(alpha)
        self.overlap, self.window, self.query_text, self.text_item = int(overlap), int(window), query_text, text_item
        self.contrastive, self.contrastive_form = float(contrastive), contrastive_form
        self.fusion = StageFusion(dim, heads_for(dim, heads), dropout)
        self.text_proj = nn.Sequential(nn.Linear(text_dim, dim), nn.LayerNorm(dim)) if knowledge != "none" else None
        self.log_scale = scale_parameter(scale)
        self.log_text_scale = scale_parameter(text_scale) if knowledge != "none" else None

    @classmethod
    def text_need(cls, options: dict) -> str | None:
        """llm -> the ``lga`` knowledge kind, name -> class names only, none -> no text."""
        return knowledge_need(options, "lga")

    # ------------------------------------------------------------------ anatomy

    def stages(self, frames: Tensor) -> Tensor:
        """Frame features [..., T, D] -> stage features [..., 3, D] (CLUSTER-segment or uniform, with overlap)."""
        t = frames.shape[-2]
        if self.segment == "cluster":
            bounds = cluster_segment(F.normalize(frames.detach(), dim=-1), STAGES)
        else:
            bounds = uniform_segment(t, STAGES, device=frames.device)
        return pool_stages(frames, stage_weights(bounds, t, self.overlap))

    def class_text(self, text: dict[str, Tensor] | None) -> Tensor | None:
        """The episode classes' stage texts projected to the visual width [E, N, 3, D]; None without knowledge."""
        if self.knowledge == "none":
            return None
        if text is None or "names" not in text:
            raise ValueError(f"LGA with knowledge='{self.knowledge}' needs text['names']; the trainer passes it when text_need is set")
        names = text["names"]  # [E, N, Dt]
        if self.knowledge == "name":
            raw = names[:, :, None].expand(-1, -1, STAGES, -1)
        else:
            if self.text_item not in text:
                raise ValueError(f"LGA with knowledge='llm' needs the 'lga' knowledge embeddings (text['{self.text_item}']); "
                                 f"make them with: {GEN_HINT} (or pass knowledge=name|none)")
            raw = text[self.text_item]
            if raw.shape[-2] != STAGES:
                raise ValueError(f"LGA needs {STAGES} stage texts per class, got text['{self.text_item}'] of shape {tuple(raw.shape)}")
            mask = text.get(f"{self.text_item}_mask")
            if mask is not None:  # a stage the LLM did not give: the class name stands in
                raw = torch.where(mask.bool()[..., None], raw, names[:, :, None])
        return self.text_proj(raw)

    # ------------------------------------------------------------------ matching

    def video_video(self, s_stages: Tensor, q_stages: Tensor, texts: Tensor | None) -> Tensor:
        """Fused stages of queries and of each class's prototype -> logits -scale * AB-MHM [E, Q, N]."""
        e, n, k = s_stages.shape[:3]
        qn = q_stages.shape[1]
        s_flat = rearrange(s_stages, "e n k l d -> (e n) k l d")
        q_flat = rearrange(q_stages, "e q l d -> (e q) l d")
        s_parts, q_parts = self.fusion.visual(s_flat), self.fusion.visual(q_flat)
        if texts is None:
            s_fused = self.fusion.fuse(s_flat, s_parts, None)  # [(E N), K, L, D]
            q_fused = rearrange(self.fusion.fuse(q_flat, q_parts, None), "(e q) l d -> e q 1 l d", e=e)
        else:
            t_q = self.fusion.text_query(texts)  # [E, N, H, L, d]
            s_fused = self.fusion.fuse(s_flat, s_parts, rearrange(t_q, "e n h l d -> (e n) 1 h l d"))  # own class's text
            if self.query_text == "class":  # every query read with every candidate class's stages
                q_txt = rearrange(t_q, "e n h l d -> e 1 n h l d").expand(-1, qn, -1, -1, -1, -1)
                q_fused = rearrange(self.fusion.fuse(q_flat, q_parts, rearrange(q_txt, "e q n h l d -> (e q) n h l d")),
                                    "(e q) n l d -> e q n l d", e=e)
            else:  # "episode": one reading with the mean of the episode's class texts
                q_txt = reduce(t_q, "e n h l d -> e 1 h l d", "mean").expand(-1, qn, -1, -1, -1)
                q_fused = rearrange(self.fusion.fuse(q_flat, q_parts, rearrange(q_txt, "e q h l d -> (e q) h l d")),
                                    "(e q) l d -> e q 1 l d", e=e)
        proto = F.normalize(reduce(s_fused, "(e n) k l d -> e n l d", "mean", e=e), dim=-1)
        q_fused = F.normalize(q_fused, dim=-1)
        if q_fused.shape[2] == 1:  # one query reading serves every class
            dist = 1.0 - torch.einsum("eqid,enjd->eqnij", q_fused[:, :, 0], proto)
        else:
            dist = 1.0 - torch.einsum("eqnid,enjd->eqnij", q_fused, proto)
        return -ab_mhm_distance(dist, self.window) * self.log_scale.exp()

    def video_text_stage(self, stages: Tensor, texts: Tensor) -> Tensor:
        """Per-stage video-text logits: pooled stages [E, A, 3, D] against class texts [E, N, 3, D] -> [E, A, N, 3]."""
        sim = torch.einsum("eald,enld->eanl", F.normalize(stages, dim=-1), F.normalize(texts, dim=-1))
        return sim * self.log_text_scale.exp()

    def video_text(self, stages: Tensor, texts: Tensor) -> Tensor:
        """Video-text logits [E, A, N]: each pooled stage against the class's same-stage text, averaged over stages."""
        return self.video_text_stage(stages, texts).mean(dim=-1)

    def contrastive_loss(self, s_stages: Tensor, q_stages: Tensor, texts: Tensor, query_labels: Tensor) -> Tensor:
        """InfoNCE of every labelled video of the episode (supports and queries) against the N class texts."""
        e, n, k = s_stages.shape[:3]
        videos = torch.cat([rearrange(s_stages, "e n k l d -> e (n k) l d"), q_stages], dim=1)  # [E, A, 3, D]
        own = torch.arange(n, device=videos.device).repeat_interleave(k).expand(e, -1)
        labels = torch.cat([own, query_labels.to(videos.device)], dim=1)  # [E, A]
        if self.contrastive_form == "video":
            return F.cross_entropy(rearrange(self.video_text(videos, texts), "e a n -> (e a) n"), labels.flatten())
        per_stage = rearrange(self.video_text_stage(videos, texts), "e a n l -> (e a l) n")
        return F.cross_entropy(per_stage, labels.repeat_interleave(STAGES, dim=-1).flatten())

    def scores(self, support: Tensor, query: Tensor, text: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """The parts of the decision: stages of both sides, projected texts, and the V-V / V-T logits the match uses."""
        s_stages, q_stages = self.stages(support), self.stages(query)
        texts = self.class_text(text)
        out = {"support_stages": s_stages, "query_stages": q_stages, "texts": texts}
        if self.match != "vt":
            out["vv"] = self.video_video(s_stages, q_stages, texts)
        if self.match == "vt" or (self.match == "both" and not self.training):  # training "both" classifies with V-V
            out["vt"] = self.video_text(q_stages, texts)
        return out

    def forward(self, batch: EpisodeBatch) -> HeadOutput:
        """Training: the V-V logits the paper's classification loss reads (with ``match=both``) plus the contrastive
        loss; evaluation: the decision of the configured match. The loss is the default one (``Head.loss``)."""
        support, query, text, query_labels = batch.support, batch.query, batch.text, batch.query_labels
        if support.dim() != 5 or query.dim() != 4:
            raise ValueError(f"LGA needs frame features [E, N, K, T, D] and [E, Q, T, D], got {tuple(support.shape)} and {tuple(query.shape)}")
        if support.shape[-2] < STAGES:
            raise ValueError(f"LGA splits clips into {STAGES} stages and needs at least {STAGES} frames, got {support.shape[-2]}")
        parts = self.scores(support, query, text)
        aux: dict[str, Tensor] = {}
        if self.training and query_labels is not None and parts["texts"] is not None and self.contrastive > 0:
            aux["contrastive"] = self.contrastive * self.contrastive_loss(
                parts["support_stages"], parts["query_stages"], parts["texts"], query_labels)
        if self.match == "vv":
            logits = parts["vv"]
        elif self.match == "vt":
            logits = parts["vt"]
        elif self.training:  # the paper trains classification on video-video matching only
            logits = parts["vv"]
        else:  # log of p_vv^alpha * p_vt^(1 - alpha), left unnormalised (a softmax renormalises it)
            logits = self.alpha * parts["vv"].log_softmax(dim=-1) + (1.0 - self.alpha) * parts["vt"].log_softmax(dim=-1)
        return HeadOutput(logits, aux)
