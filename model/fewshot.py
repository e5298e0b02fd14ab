"""A few-shot model = backbone + head, and the text bank that hands a head its episode's class texts."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch
from einops import rearrange
from torch import Tensor, nn

from fsar.model.backbones import Backbone
from fsar.model.registry import Head, HeadOutput


class FewShotModel(nn.Module):
    """Encodes clips with the backbone (frame by frame) and scores episodes with the head."""

    def __init__(self, backbone: Backbone, head: Head):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def encode(self, clips: Tensor) -> Tensor:
        """Normalised clips [B, T, 3, H, W] -> features [B, T, D], or tokens [B, T, 1 + P, D] if the head needs them."""
        b = clips.shape[0]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.backbone.frozen):
            tokens = self.backbone(rearrange(clips, "b t c h w -> (b t) c h w"))
        tokens = rearrange(tokens, "(b t) p d -> b t p d", b=b)
        return tokens if self.head.needs_tokens else tokens[:, :, 0]

    def forward(
        self,
        support: Tensor,
        query: Tensor,
        text: dict[str, Tensor] | None = None,
        query_labels: Tensor | None = None,
        features: bool = False,
    ) -> HeadOutput:
        """Score episodes. support [E, N, K, T, ...], query [E, Q, T, ...]: clips [.., 3, H, W] or, with
        ``features=True``, already encoded features (the cached path). Returns the head's HeadOutput."""
        if not features:
            e, n, k = support.shape[:3]
            q = query.shape[1]
            feats = self.encode(torch.cat([support.flatten(0, 2), query.flatten(0, 1)]))
            support = feats[: e * n * k].unflatten(0, (e, n, k))
            query = feats[e * n * k :].unflatten(0, (e, q))
        return self.head(support.float(), query.float(), text, query_labels)


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
