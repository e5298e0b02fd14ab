"""A few-shot model = backbone + head, and the text bank that hands a head its episode's class texts.

``TextBank`` is the run-side view of the stage-1 contract's ``fsar.knowledge.contract.TextEmbeddings``: the same
tensors with one row per class of the data set (class-name embeddings alone, or names plus a knowledge kind's
items and masks), gathered per episode by ``fsar.model.source``.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from fsar.model.adapter import FrameAdapter, pool_grid
from fsar.model.backbones import Backbone
from fsar.model.batch import EpisodeBatch
from fsar.model.registry import Head, HeadOutput


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


@dataclass
class TextBank:
    """Class text embeddings of a data set, one row per class, plus how to gather them for episodes.

    ``tensors``: {"names": [C, Dt], item: [C, ...], item + "_mask": [C, ...]}; ``class_keys[i]`` is row i.
    """

    tensors: dict[str, Tensor]
    class_keys: list[str]
    fingerprint: str
    info: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.tensors["names"].shape[-1])

    def rows(self, class_keys: list[str]) -> Tensor:
        """Row of each class key; a one-line error names the first class without text."""
        index = {k: i for i, k in enumerate(self.class_keys)}
        missing = [k for k in class_keys if k not in index]
        if missing:
            raise KeyError(f"no text embeddings for class '{missing[0]}' ({len(missing)} missing); re-run the embedding step")
        return torch.tensor([index[k] for k in class_keys], dtype=torch.long)

    def gather(self, rows: Tensor, device: torch.device | str = "cpu") -> dict[str, Tensor]:
        """rows [E, N] -> {key: [E, N, ...]} in episode class order."""
        return {k: v[rows].to(device) for k, v in self.tensors.items()}


def class_name_bank(dataset: str, encoder: str | None = None) -> TextBank:
    """Class-name prompt embeddings for every class of a data set (registry order), via the stage-1 contract."""
    from fsar.data.registry import get_dataset
    from fsar.knowledge.contract import encode_class_names

    classes = get_dataset(dataset).split("all")
    names = encode_class_names([c.name for c in classes], encoder=encoder)
    h = hashlib.sha256(names.numpy().tobytes()).hexdigest()[:16]
    return TextBank({"names": names.float()}, [c.key for c in classes], fingerprint=f"names-{h}",
                    info={"kind": "names", "encoder": encoder or "default"})


def knowledge_bank(dataset: str, kind: str, encoder: str | None = None, create: bool = False) -> TextBank:
    """Names plus every item (and mask) of one knowledge kind, from ``fsar.knowledge.contract.load_text_embeddings``."""
    from fsar.knowledge.contract import load_text_embeddings

    # when creating, a class the LLM kept failing on gets its name vector (recorded in info["missing"], warned
    # about) rather than stopping the run; without create, a missing class is an error naming it
    emb = load_text_embeddings(dataset, kind, encoder=encoder, split="all", create=create, allow_missing=create)
    if emb.info.get("missing"):
        import warnings

        warnings.warn(f"{len(emb.info['missing'])} {dataset} classes have no valid '{kind}' knowledge and use their "
                      f"name embedding instead: {', '.join(map(str, emb.info['missing']))}", stacklevel=2)
    tensors = {"names": emb.names.float()}
    for key, value in emb.items.items():
        tensors[key] = value.float()
    for key, mask in (emb.masks or {}).items():
        tensors[f"{key}_mask"] = mask.bool()
    return TextBank(tensors, list(emb.class_keys), fingerprint=emb.fingerprint, info={"kind": kind, **dict(emb.info)})


def text_bank_for(need: str | None, dataset: str, encoder: str | None = None, create: bool = False) -> TextBank | None:
    """The text a head asks for (``Head.text_need``): None, class names only ("names"), or a knowledge kind."""
    if not need:
        return None
    if need == "names":
        return class_name_bank(dataset, encoder)
    return knowledge_bank(dataset, need, encoder, create=create)
