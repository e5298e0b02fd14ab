"""Where episode batches come from: seeded episodes of a split, turned into the ``EpisodeBatch`` every head takes.

One place for training and evaluation alike, so a new input (text, masks, ...) is added here and nowhere else:

- ``sample_episodes`` / ``make_sampler``: the data area's seeded sampler, as index arrays into a list of records
  (``Episodes``: support sorted by the episode's class order).
- ``EpisodeSource``: evaluation. Cached features [V, T, ...] (row = record) -> batches of E episodes with the text of
  each episode's classes; no labels (a head never scores with them) and no masks (no head reads them to score).
- ``TrainingSource``: one rank's training episodes of the global seeded stream -> a batch with query labels, the
  global training-class labels (for the model's classification loss), text, and masks when the head needs them.
  The videos are augmented clips while the backbone is tuned, or cached features of fixed views while it is frozen
  (each slot's view drawn from (seed, episode, slot) alone).
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from fsar.model.batch import EpisodeBatch
from fsar.model.features import ClipLoader, derived_seed

if TYPE_CHECKING:  # the contract imports datasets (slow); stage 2 needs its type only for hints
    from fsar.knowledge.contract import TextEmbeddings


@dataclass
class Episodes:
    """Episodes as index arrays into a list of records; support sorted by the episode's class order."""

    support: Tensor  # [E, N, K] record indices
    query: Tensor  # [E, Q] record indices
    query_labels: Tensor  # [E, Q] in 0..N-1
    classes: Tensor  # [E, N] record labels of the episode's classes
    first: int = 0  # index of the first episode (for training shards)

    def __len__(self) -> int:
        return int(self.support.shape[0])

    def slice(self, start: int, stop: int) -> "Episodes":
        return Episodes(self.support[start:stop], self.query[start:stop], self.query_labels[start:stop],
                        self.classes[start:stop], self.first + start)


def make_sampler(labels: Sequence[int], way: int, shot: int, query: int, seed: int, num_episodes: int,
                 rank: int = 0, world_size: int = 1):
    """The data area's seeded EpisodeSampler over these labels."""
    from fsar.data.episodes import EpisodeSampler

    return EpisodeSampler(list(labels), way=way, shot=shot, query=query, seed=seed, num_episodes=num_episodes,
                          rank=rank, world_size=world_size)


def episode_arrays(ep, shot: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One sampler Episode -> (support [N, K], query [Q], query_labels [Q], classes [N]) with support sorted by class."""
    classes = torch.as_tensor(list(ep.classes), dtype=torch.long)
    support = torch.as_tensor(list(ep.support), dtype=torch.long)
    s_labels = torch.as_tensor(list(ep.support_labels), dtype=torch.long)
    q_labels = torch.as_tensor(list(ep.query_labels), dtype=torch.long)
    n = len(classes)  # labels are episode-local (0..N-1), support class-major; the sort makes sure of the order
    order = torch.sort(s_labels, stable=True).indices  # class 0's K videos first, then class 1's ...
    return support[order].view(n, shot), torch.as_tensor(list(ep.query), dtype=torch.long), q_labels, classes


def sample_episodes(labels: Sequence[int], way: int, shot: int, query: int, seed: int, num_episodes: int,
                    rank: int = 0, world_size: int = 1, start: int = 0, stop: int | None = None) -> Episodes:
    """Episodes ``start..stop`` of the seeded sampler as index arrays (indices point into ``labels``' records)."""
    sampler = make_sampler(labels, way, shot, query, seed, num_episodes, rank, world_size)
    stop = num_episodes if stop is None else stop
    parts = [episode_arrays(sampler.episode(i), shot) for i in range(start, stop)]
    support, q, ql, cls = (torch.stack(x) for x in zip(*parts))
    return Episodes(support, q, ql, cls, first=start)


def label_lut(bank: TextEmbeddings, records: Sequence) -> Tensor:
    """Lookup table record label -> row of the text bank (-1 for labels not in ``records``)."""
    key_of = {r.label: r.class_key for r in records}
    labels = sorted(key_of)
    lut = torch.full((max(labels) + 1,), -1, dtype=torch.long)
    lut[torch.tensor(labels)] = bank.rows([key_of[label] for label in labels])
    return lut


class EpisodeSource:
    """Episodes of one split's records -> EpisodeBatch on ``device``; evaluation reads cached features."""

    def __init__(self, records: Sequence | None, bank: TextEmbeddings | None = None, device: torch.device | str = "cpu"):
        self.records, self.bank, self.device = list(records or []), bank, torch.device(device)
        self.text_lut = label_lut(bank, self.records) if bank is not None else None

    def text(self, classes: Tensor) -> dict[str, Tensor] | None:
        """classes [E, N] record labels -> {key: [E, N, ...]} in episode class order, or None without a text bank."""
        return None if self.bank is None else self.bank.gather(self.text_lut[classes], self.device)

    def from_features(self, feats: Tensor, eps: Episodes) -> EpisodeBatch:
        """Evaluation: features [V, T, ...] (row = record index) -> support [E, N, K, T, ...], query [E, Q, T, ...]."""
        return EpisodeBatch(feats[eps.support].to(self.device), feats[eps.query].to(self.device), text=self.text(eps.classes))


class TrainingSource(EpisodeSource):
    """One rank's training episodes: global episode g of the seeded stream, the rank taking every world-th one.

    ``views`` (set by the trainer once a frozen backbone's features are cached): [views, videos, T, ...] features
    of fixed views of every training video (view 0 the test-style clip); None = load and augment clips.
    ``masks``: add each video's masks on exactly the frames and crops the head sees (``ClipLoader``'s mask API).
    """

    def __init__(self, records: Sequence, bank: TextEmbeddings | None, device: torch.device | str, loader: ClipLoader,
                 sampler, shot: int, seed: int, rank: int = 0, world: int = 1, masks: bool = False):
        super().__init__(records, bank, device)
        self.loader, self.sampler, self.shot, self.seed = loader, sampler, shot, seed
        self.rank, self.world, self.masks = rank, world, masks
        self.views: Tensor | None = None
        self.unmasked: set[int] = set()  # training videos met without a mask file (the trainer reports how many)
        self._view_mask_memo: dict[tuple[int, int], tuple[Tensor, bool]] = {}  # (view, record) -> fixed view's masks
        labels = sorted({r.label for r in self.records})
        self.class_lut = torch.full((max(labels) + 1,), -1, dtype=torch.long)  # record label -> training class
        self.class_lut[torch.tensor(labels)] = torch.arange(len(labels))
        if masks and rank == 0 and not loader.mask_available():
            warnings.warn("the head reads masks but no training video has a mask file; it trains without its mask "
                          "loss (make masks with: fsar-data masks)", stacklevel=2)

    def episodes(self, first: int, count: int) -> list[Episodes]:
        """This rank's episodes among global episodes [first, first + count), each as a 1-episode Episodes."""
        out = []
        for g in range(first, first + count):
            if g % self.world == self.rank:
                support, query, labels, classes = episode_arrays(self.sampler.episode(g), self.shot)
                out.append(Episodes(support[None], query[None], labels[None], classes[None], first=g))
        return out

    def batch(self, eps: list[Episodes]) -> EpisodeBatch:
        """A list of 1-episode Episodes -> one EpisodeBatch of E = len(eps) episodes on the device."""
        sup = torch.cat([e.support for e in eps])  # [E, N, K] record indices
        qry = torch.cat([e.query for e in eps])  # [E, Q]
        labels = torch.cat([e.query_labels for e in eps])
        classes = torch.cat([e.classes for e in eps])  # [E, N] record labels
        n_s = sup[0].numel()
        masks = None  # ([E, N*K + Q, T, S, S], [E, N*K + Q]) when the head needs masks
        if self.views is not None:  # frozen backbone: cached features of the view each slot draws
            slot_views = self._slot_views(eps)  # [E, N*K + Q]
            support = self.views[slot_views[:, :n_s].reshape(sup.shape), sup].float()
            query = self.views[slot_views[:, n_s:].reshape(qry.shape), qry].float()
            if self.masks:
                masks = self._view_masks(eps, slot_views)
        else:  # augmented clips [N*K + Q, T, 3, H, W] per episode (with their masks, drawn together)
            if self.masks:
                clips, m, h = zip(*(self.loader.train_clips(self._slots(e), episode=e.first, with_masks=True) for e in eps))
                masks = torch.stack(m), torch.stack(h)
            else:
                clips = [self.loader.train_clips(self._slots(e), episode=e.first) for e in eps]
            support = torch.stack([c[:n_s] for c in clips]).unflatten(1, tuple(sup.shape[1:]))
            query = torch.stack([c[n_s:] for c in clips])
        text = self.text(classes)
        glob = self.class_lut[classes]  # [E, N] global training classes
        class_labels = (glob[:, :, None].expand(*sup.shape).to(self.device), torch.gather(glob, 1, labels).to(self.device))
        batch = EpisodeBatch(support.to(self.device), query.to(self.device), labels.to(self.device), text,
                             class_labels=class_labels)
        if masks is not None:
            slots = torch.cat([sup.flatten(1), qry], dim=1)  # [E, N*K + Q] record indices
            self.unmasked.update(slots[~masks[1].bool()].tolist())
            m, h = masks[0].float().to(self.device), masks[1].bool().to(self.device)
            batch = replace(batch, support_masks=m[:, :n_s].unflatten(1, tuple(sup.shape[1:])), query_masks=m[:, n_s:],
                            support_has_mask=h[:, :n_s].unflatten(1, tuple(sup.shape[1:])), query_has_mask=h[:, n_s:])
        return batch

    def _slots(self, e: Episodes) -> list[int]:
        """An episode's record indices in slot order: its N*K support videos, then its Q queries."""
        return e.support.flatten().tolist() + e.query.flatten().tolist()

    def _slot_views(self, eps: list[Episodes]) -> Tensor:
        """Which cached view each slot of each episode reads: [E, N*K + Q], from (seed, episode, slot) only."""
        views = []
        for e in eps:
            g = torch.Generator().manual_seed(derived_seed(self.seed, 15485863, e.first))
            views.append(torch.randint(len(self.views), (e.support.numel() + e.query.numel(),), generator=g))
        return torch.stack(views)

    def _view_masks(self, eps: list[Episodes], slot_views: Tensor) -> tuple[Tensor, Tensor]:
        """Masks [E, N*K + Q, T, S, S] and has-mask [E, N*K + Q] of the cached view each slot reads.

        A view is fixed, so are its masks: each (view, video) is read once through ``ClipLoader.view_masks`` and
        kept (our choice: 32 kB per video and view at the default sizes, instead of decoding every video again in
        every episode)."""
        masks, has = [], []
        for e, views in zip(eps, slot_views):
            pairs = list(zip(views.tolist(), self._slots(e)))
            for v in sorted({v for v, _ in pairs}):
                todo = sorted({i for w, i in pairs if w == v and (v, i) not in self._view_mask_memo})
                if todo:
                    vm, vh = self.loader.view_masks(todo, v)
                    self._view_mask_memo.update({(v, i): (m, bool(h)) for i, m, h in zip(todo, vm, vh)})
            got = [self._view_mask_memo[p] for p in pairs]
            masks.append(torch.stack([m for m, _ in got]))
            has.append(torch.tensor([h for _, h in got], dtype=torch.bool))
        return torch.stack(masks), torch.stack(has)
