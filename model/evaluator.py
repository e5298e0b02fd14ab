"""Episodic evaluation: seeded episodes, deterministic frames, features computed once, episodes run in batches.

``evaluate_cached`` encodes each video once and scores all episodes from those features, ``evaluate_per_episode``
re-encodes the videos of every episode (what public code bases do); for the same seed both give the same episodes
and the same per-episode accuracies (a test checks it), the first one many times faster.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from fsar.model.batch import EpisodeBatch
from fsar.model.features import ClipLoader, cached_features
from fsar.model.fewshot import FewShotModel
from fsar.model.results import summarize
from fsar.model.source import (  # noqa: F401 (Episodes, label_lut, sample_episodes: importable from here too)
    Episodes,
    EpisodeSource,
    episode_arrays,
    label_lut,
    make_sampler,
    sample_episodes,
)

if TYPE_CHECKING:  # the contract imports datasets (slow); stage 2 needs its type only for hints
    from fsar.knowledge.contract import TextEmbeddings


@dataclass
class EvalResult:
    accuracies: Tensor  # [E] per-episode accuracy in 0..1
    mean: float  # %
    ci95: float  # % (1.96 * std / sqrt(E))
    episodes: int
    seconds: float = 0.0


@torch.no_grad()
def run_episodes(model: FewShotModel, feats: Tensor, episodes: Episodes, bank: TextEmbeddings | None = None,
                 records: Sequence | None = None, batch: int = 64, device: torch.device | str = "cpu",
                 amp: bool = False) -> Tensor:
    """Per-episode accuracies [E] from cached features [V, T, ...] (rows of ``feats`` = record indices)."""
    model.eval()
    source = EpisodeSource(records, bank, device)
    if model.adapter is not None:  # adapt every video once, not once per episode it appears in
        feats = torch.cat([model.adapt(feats[s : s + 256].to(device)).cpu() for s in range(0, len(feats), 256)])
    accs = []
    for s in range(0, len(episodes), batch):
        ep = episodes.slice(s, s + batch)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and torch.device(device).type == "cuda"):
            out = model(source.from_features(feats, ep), features=True, adapted=True)
        pred = out.logits.float().argmax(dim=-1).cpu()
        accs.append((pred == ep.query_labels).float().mean(dim=-1))
    return torch.cat(accs)


def evaluate_cached(model: FewShotModel, records: Sequence, way: int, shot: int, episodes: int, seed: int,
                    num_frames: int, size: int, bank: TextEmbeddings | None = None, query: int = 1, batch: int = 64,
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
                         num_frames: int, size: int, bank: TextEmbeddings | None = None, query: int = 1,
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
    source = EpisodeSource(records, bank, device)
    accs = []
    for i in track(range(episodes), "per-episode eval", enabled=progress):
        support, q, ql, classes = episode_arrays(sampler.episode(i), shot)
        s_clips = loader.test_clips(support.flatten().tolist()).unflatten(0, tuple(support.shape))
        q_clips = loader.test_clips(q.tolist())
        out = model(EpisodeBatch(s_clips[None].to(device), q_clips[None].to(device), text=source.text(classes[None])))
        accs.append((out.logits[0].argmax(dim=-1).cpu() == ql).float().mean())
    accs = torch.stack(accs)
    mean, ci = summarize(accs)
    return EvalResult(accs, mean, ci, len(accs), time.perf_counter() - start)
