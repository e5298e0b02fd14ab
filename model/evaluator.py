"""Episodic evaluation: seeded episodes, deterministic frames, features computed once, episodes run in batches.

``evaluate_cached`` encodes each video once and scores all episodes from those features, ``evaluate_per_episode``
re-encodes the videos of every episode (what public code bases do); for the same seed both give the same episodes
and the same per-episode accuracies (a test checks it), the first one many times faster.
"""
from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Sequence

import torch
from torch import Tensor

from fsar.model.features import ClipLoader, cached_features
from fsar.model.fewshot import FewShotModel, TextBank
from fsar.model.results import summarize


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


def label_lut(bank: TextBank, records: Sequence) -> Tensor:
    """Lookup table record label -> row of the text bank (-1 for labels not in ``records``)."""
    key_of = {r.label: r.class_key for r in records}
    labels = sorted(key_of)
    lut = torch.full((max(labels) + 1,), -1, dtype=torch.long)
    lut[torch.tensor(labels)] = bank.rows([key_of[label] for label in labels])
    return lut


def text_rows(bank: TextBank | None, records: Sequence, classes: Tensor) -> Tensor | None:
    """Rows of the text bank for each episode class: classes [E, N] of record labels -> [E, N]."""
    if bank is None:
        return None
    return label_lut(bank, records)[classes]


@dataclass
class EvalResult:
    accuracies: Tensor  # [E] per-episode accuracy in 0..1
    mean: float  # %
    ci95: float  # % (1.96 * std / sqrt(E))
    episodes: int
    seconds: float = 0.0


@torch.no_grad()
def run_episodes(model: FewShotModel, feats: Tensor, episodes: Episodes, bank: TextBank | None = None,
                 records: Sequence | None = None, batch: int = 64, device: torch.device | str = "cpu",
                 amp: bool = False) -> Tensor:
    """Per-episode accuracies [E] from cached features [V, T, ...] (rows of ``feats`` = record indices)."""
    model.eval()
    rows = text_rows(bank, records, episodes.classes) if bank is not None else None
    if model.adapter is not None:  # adapt every video once, not once per episode it appears in
        feats = torch.cat([model.adapt(feats[s : s + 256].to(device)).cpu() for s in range(0, len(feats), 256)])
    accs = []
    for s in range(0, len(episodes), batch):
        ep = episodes.slice(s, s + batch)
        support = feats[ep.support].to(device)
        query = feats[ep.query].to(device)
        text = bank.gather(rows[s : s + batch], device) if rows is not None else None
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and torch.device(device).type == "cuda"):
            out = model(support, query, text, features=True, adapted=True)
        pred = out.logits.float().argmax(dim=-1).cpu()
        accs.append((pred == ep.query_labels).float().mean(dim=-1))
    return torch.cat(accs)


def evaluate_cached(model: FewShotModel, records: Sequence, way: int, shot: int, episodes: int, seed: int,
                    num_frames: int, size: int, bank: TextBank | None = None, query: int = 1, batch: int = 64,
                    device: torch.device | str = "cpu", progress: bool = False, cache_dir=None,
                    description: str = "test features", amp: bool = False, frame_cache: bool = True) -> EvalResult:
    """Encode each video once (deterministic frames), then run all seeded episodes on the cached features."""
    import time

    start = time.perf_counter()
    loader = ClipLoader(records, num_frames, size, model.backbone.norm, frame_cache=frame_cache, progress=progress)
    feats, kept = cached_features(model, loader, cache_dir, device=device, progress=progress,
                                  description=description, amp=amp)
    kept_records = [records[i] for i in kept]
    eps = sample_episodes([r.label for r in kept_records], way, shot, query, seed, episodes)
    accs = run_episodes(model, feats, eps, bank, kept_records, batch, device, amp)
    mean, ci = summarize(accs)
    return EvalResult(accs, mean, ci, len(accs), time.perf_counter() - start)


@torch.no_grad()
def evaluate_per_episode(model: FewShotModel, records: Sequence, way: int, shot: int, episodes: int, seed: int,
                         num_frames: int, size: int, bank: TextBank | None = None, query: int = 1,
                         device: torch.device | str = "cpu", progress: bool = False,
                         frame_cache: bool = False) -> EvalResult:
    """The slow reference: load and encode every video of every episode again (same seeded episodes); by default it
    also decodes every clip again, as public code bases do."""
    import time

    from fsar.data.progress import track

    start = time.perf_counter()
    model.eval()
    loader = ClipLoader(records, num_frames, size, model.backbone.norm, frame_cache=frame_cache)
    sampler = make_sampler([r.label for r in records], way, shot, query, seed, episodes)
    accs = []
    for i in track(range(episodes), "per-episode eval", enabled=progress):
        support, q, ql, classes = episode_arrays(sampler.episode(i), shot)
        s_clips = loader.test_clips(support.flatten().tolist()).unflatten(0, tuple(support.shape))
        q_clips = loader.test_clips(q.tolist())
        text = None
        if bank is not None:
            text = bank.gather(text_rows(bank, records, classes[None]), device)
        out = model(s_clips[None].to(device), q_clips[None].to(device), text)
        accs.append((out.logits[0].argmax(dim=-1).cpu() == ql).float().mean())
    accs = torch.stack(accs)
    mean, ci = summarize(accs)
    return EvalResult(accs, mean, ci, len(accs), time.perf_counter() - start)
