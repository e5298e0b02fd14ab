"""A few-shot model = backbone + head, and the class text a head reads.

The text is the stage-1 contract's ``fsar.knowledge.contract.TextEmbeddings`` itself, one row per class of the data
set: class-name embeddings alone (``class_name_text``) or names plus a knowledge kind's items and masks
(``knowledge_text``), gathered per episode by ``fsar.model.source``.
"""
from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from fsar.model.adapter import FrameAdapter, pool_grid
from fsar.model.backbones import Backbone
from fsar.model.batch import EpisodeBatch
from fsar.model.registry import Head, HeadOutput

if TYPE_CHECKING:  # the contract imports datasets (slow); stage 2 needs its type only for hints
    from fsar.knowledge.contract import TextEmbeddings


class FewShotModel(nn.Module):
    """Encodes clips with the backbone (frame by frame) and scores episodes with the head.

    With ``num_classes`` > 0 the model also carries a linear classifier over the training classes, used only during
    training: cross-entropy of every episode video's pooled feature against its global class, weighted by
    ``class_loss``, is added to the head's losses. This is what the field's code bases (CLIP-FSAR, HyRSM, MoLo) do
    beside the episodic loss, and it is what keeps the features from collapsing: an episode's five-way loss can be
    lowered to ln N by mapping every clip to one direction, a 60-way classification loss cannot.
    """

    def __init__(self, backbone: Backbone, head: Head, num_classes: int = 0, class_loss: float = 0.0,
                 adapter: FrameAdapter | None = None):
        super().__init__()
        self.backbone = backbone
        self.adapter = adapter
        self.head = head
        self.class_loss = class_loss
        # cosine classifier (normalised features and weights, fixed temperature 16): our choice, so that the
        # auxiliary loss shapes directions, which is what every head's metric compares
        self.classifier = nn.Linear(head.dim, num_classes, bias=False) if num_classes > 0 and class_loss > 0 else None

    @property
    def feature_kind(self) -> str:
        """What ``encode`` returns (and the feature cache stores): tokens, a pooled patch grid, or pooled frames."""
        if self.adapter is not None:
            return f"grid{self.adapter.grid}"
        return "tokens" if self.head.needs_tokens else "pooled"

    def encode(self, clips: Tensor) -> Tensor:
        """Normalised clips [B, T, 3, H, W] -> backbone features: [B, T, D] pooled frames, or [B, T, 1 + P, D] tokens
        when the head needs them, or [B, T, 1 + grid², D] when an adapter follows (the patch map pooled to its grid)."""
        b = clips.shape[0]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.backbone.frozen):
            tokens = self.backbone(rearrange(clips, "b t c h w -> (b t) c h w"))
        if self.adapter is not None:
            tokens = pool_grid(tokens, self.adapter.grid)
        tokens = rearrange(tokens, "(b t) p d -> b t p d", b=b)
        return tokens if (self.head.needs_tokens or self.adapter is not None) else tokens[:, :, 0]

    def adapt(self, feats: Tensor) -> Tensor:
        """Backbone features -> what the head reads (the adapter's output; unchanged without an adapter)."""
        return self.adapter(feats) if self.adapter is not None else feats

    def forward(self, batch: EpisodeBatch, features: bool = False, adapted: bool = False) -> HeadOutput:
        """Score a batch of episodes: the head's output, plus the weighted class loss (``aux_losses["class"]``) when
        the model has a classifier and the batch carries training-class labels.

        ``batch.support`` [E, N, K, T, ...] and ``batch.query`` [E, Q, T, ...] are clips [.., 3, H, W] or, with
        ``features=True``, already encoded features (the cached path); ``adapted=True``: the features already went
        through ``adapt`` (evaluation adapts every video once instead of once per episode)."""
        support, query = batch.support, batch.query
        if not features:
            e, n, k = support.shape[:3]
            q = query.shape[1]
            feats = self.encode(torch.cat([support.flatten(0, 2), query.flatten(0, 1)]))
            support = feats[: e * n * k].unflatten(0, (e, n, k))
            query = feats[e * n * k :].unflatten(0, (e, q))
        if not adapted:
            support, query = self.adapt(support), self.adapt(query)
        out = self.head(batch.with_features(support.float(), query.float()))
        if self.classifier is not None and batch.class_labels is not None:
            out.aux_losses["class"] = self.class_loss * self.classification_loss(support, query, *batch.class_labels)
        return out

    def loss(self, out: HeadOutput, batch: EpisodeBatch) -> Tensor:
        """What training minimises: the head's own loss (``Head.loss``) plus the class loss the model added."""
        head_out = HeadOutput(out.logits, {k: v for k, v in out.aux_losses.items() if k != "class"})
        loss = self.head.loss(head_out, batch)
        if "class" in out.aux_losses:
            loss = loss + out.aux_losses["class"].float()
        return loss

    def classification_loss(self, support: Tensor, query: Tensor, support_labels: Tensor, query_labels: Tensor) -> Tensor:
        """Cross-entropy over the training classes of each video's frame-averaged global feature."""
        def pooled(x: Tensor, lead: int) -> Tensor:
            x = x.float().flatten(0, lead - 1)  # [B, T, D] or [B, T, 1 + P, D]
            x = x[:, :, 0] if x.dim() == 4 else x
            return x.mean(dim=1)

        feats = torch.cat([pooled(support, 3), pooled(query, 2)])
        labels = torch.cat([support_labels.flatten(), query_labels.flatten()])
        logits = 16.0 * F.normalize(feats, dim=-1) @ F.normalize(self.classifier.weight, dim=-1).T
        return F.cross_entropy(logits, labels)


def class_name_text(dataset: str, encoder: str | None = None) -> TextEmbeddings:
    """Class-name prompt embeddings for every class of a data set (registry order), as a ``TextEmbeddings`` without
    items: what methods that use the names alone (CLIP-FSAR, STAR/LGA/DiST with knowledge=name) read."""
    from fsar.data.registry import get_dataset
    from fsar.knowledge.contract import TextEmbeddings, encode_class_names

    classes = get_dataset(dataset).split("all")
    names = encode_class_names([c.name for c in classes], encoder=encoder).float()
    h = hashlib.sha256(names.numpy().tobytes()).hexdigest()[:16]
    return TextEmbeddings(names=names, items={}, masks={}, class_keys=[c.key for c in classes],
                          class_names=[c.name for c in classes], has_knowledge=torch.zeros(len(classes), dtype=torch.bool),
                          fingerprint=f"names-{h}", info={"kind": "names", "encoder": encoder or "default"})


def knowledge_text(dataset: str, kind: str, encoder: str | None = None, allow_missing: bool = False) -> TextEmbeddings:
    """Names plus every item (and mask) of one knowledge kind, read through the stage-1 contract.

    ``allow_missing``: a class the LLM kept failing on gets its name vector (listed in info["missing"], warned about)
    rather than stopping the run; without it, a missing class is an error naming it.
    """
    from fsar.knowledge.contract import load_text_embeddings

    emb = load_text_embeddings(dataset, kind, encoder=encoder, split="all", allow_missing=allow_missing)
    if emb.info.get("missing"):
        import warnings

        warnings.warn(f"{len(emb.info['missing'])} {dataset} classes have no valid '{kind}' knowledge and use their "
                      f"name embedding instead: {', '.join(map(str, emb.info['missing']))}", stacklevel=2)
    return emb


def text_for(need: str | None, dataset: str, encoder: str | None = None, allow_missing: bool = False) -> TextEmbeddings | None:
    """The text a head asks for (``Head.text_need``): None, class names only ("names"), or a knowledge kind."""
    if not need:
        return None
    if need == "names":
        return class_name_text(dataset, encoder)
    return knowledge_text(dataset, need, encoder, allow_missing=allow_missing)
