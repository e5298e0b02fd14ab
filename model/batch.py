"""The one typed input of a few-shot head: a batch of E episodes, built by one source (``fsar.model.source``) for
training and evaluation.

Shapes (E episodes, N way, K shot, Q queries, T frames, D features, P patch tokens):

- ``support``: [E, N, K, T, D] pooled frame features, or [E, N, K, T, 1 + P, D] tokens when the head needs tokens;
  ``support[e, n]`` are the K videos of the episode's n-th class.
- ``query``: [E, Q, T, D] or [E, Q, T, 1 + P, D].
- ``query_labels``: [E, Q] in 0..N-1; given at training (for losses), None at evaluation (never scored with).
- ``text``: None unless the head needs text; then {key: [E, N, ...]} in episode class order (``names`` [E, N, Dt]
  always; a knowledge kind's items and their ``<item>_mask``).
- ``support_masks`` / ``query_masks``: None unless training a head that needs masks (``Head.needs_masks``); then
  [E, N, K, T, h, w] / [E, Q, T, h, w] in 0..1, on the same frames and crops as the clips. ``*_has_mask``
  [E, N, K] / [E, Q] bool says which videos have a mask file (a video without one contributes no mask loss).
- ``class_labels``: (support [E, N, K], query [E, Q]) global training-class indices, training only.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor


@dataclass
class EpisodeBatch:
    support: Tensor
    query: Tensor
    query_labels: Tensor | None = None
    text: dict[str, Tensor] | None = None
    support_masks: Tensor | None = None
    query_masks: Tensor | None = None
    support_has_mask: Tensor | None = None
    query_has_mask: Tensor | None = None
    class_labels: tuple[Tensor, Tensor] | None = None

    @property
    def episodes(self) -> int:
        return int(self.support.shape[0])

    @property
    def way(self) -> int:
        return int(self.support.shape[1])

    @property
    def shot(self) -> int:
        return int(self.support.shape[2])

    def to(self, device: torch.device | str) -> "EpisodeBatch":
        """The same batch with every tensor on ``device``."""
        def move(v):
            if isinstance(v, Tensor):
                return v.to(device)
            if isinstance(v, dict):
                return {k: t.to(device) for k, t in v.items()}
            if isinstance(v, tuple):
                return tuple(t.to(device) for t in v)
            return v

        return EpisodeBatch(**{f.name: move(getattr(self, f.name)) for f in fields(self)})

    def with_features(self, support: Tensor, query: Tensor) -> "EpisodeBatch":
        """The same batch with support and query replaced (clips -> features, features -> adapted features)."""
        return replace(self, support=support, query=query)
