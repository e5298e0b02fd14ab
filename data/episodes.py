"""Seeded N-way K-shot episodes: episode i depends only on (seed, i), so every process draws the same ones.

Each episode has its own ``torch.Generator`` seeded from a hash of (seed, i): two runs, two processes, cached and
uncached evaluation and any number of distributed ranks see identical episodes; rank r of w takes episodes
r, r + w, r + 2w, ... (disjoint across ranks). Python's ``random`` is never used.
"""
from __future__ import annotations

import hashlib
import warnings
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch


@dataclass
class Episode:
    """One task. classes: the N registry labels in episode order; support / query: indices into the record
    list, class-major (support[c * shot + k], query[c * query + q]); *_labels: episode-local labels 0..N-1."""
    index: int
    classes: list[int]
    support: list[int]
    query: list[int]
    support_labels: torch.Tensor
    query_labels: torch.Tensor


def episode_seed(seed: int, index: int) -> int:
    """A 63-bit generator seed from (seed, episode index), stable across processes and platforms."""
    digest = hashlib.sha256(f"fsar-episode:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class EpisodeSampler:
    """N-way K-shot episodes with Q queries per class from the records whose labels are given.

    labels: the label of each record (e.g. ``[r.label for r in records]``); classes with fewer than shot + query
    videos are left out with a warning; fewer than ``way`` usable classes is an error. ``len()`` and iteration
    cover this rank's share; ``episode(i)`` gives any global episode 0 <= i < num_episodes.
    """

    def __init__(self, labels: Sequence[int], way: int, shot: int, query: int, seed: int, num_episodes: int,
                 rank: int = 0, world_size: int = 1):
        if min(way, shot, num_episodes) < 1 or query < 0:
            raise ValueError(f"need way, shot, num_episodes >= 1 and query >= 0; got way={way} shot={shot} "
                             f"query={query} episodes={num_episodes}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        by_class: dict[int, list[int]] = defaultdict(list)
        for i, label in enumerate(labels):
            by_class[int(label)].append(i)
        need = shot + query
        small = sorted(c for c, idx in by_class.items() if len(idx) < need)
        if small:
            warnings.warn(f"left out {len(small)} of {len(by_class)} classes with fewer than shot+query={need} "
                          f"videos (e.g. label {small[0]} has {len(by_class[small[0]])})", stacklevel=2)
        self.class_ids = sorted(c for c, idx in by_class.items() if len(idx) >= need)
        if len(self.class_ids) < way:
            raise ValueError(f"only {len(self.class_ids)} classes have >= {need} videos, fewer than way={way}; "
                             "lower --way/--shot/--query or use a split with more classes")
        self.by_class = {c: by_class[c] for c in self.class_ids}
        self.way, self.shot, self.query, self.seed = way, shot, query, seed
        self.num_episodes, self.rank, self.world_size = num_episodes, rank, world_size

    def indices(self) -> range:
        """The global episode indices this rank takes."""
        return range(self.rank, self.num_episodes, self.world_size)

    def __len__(self) -> int:
        return len(self.indices())

    def __iter__(self) -> Iterator[Episode]:
        for i in self.indices():
            yield self.episode(i)

    def episode(self, i: int) -> Episode:
        """Episode number ``i`` (global): a function of (seed, i) and the label list only."""
        if not 0 <= i < self.num_episodes:
            raise IndexError(f"episode {i} is outside 0..{self.num_episodes - 1}")
        g = torch.Generator().manual_seed(episode_seed(self.seed, i))
        picks = torch.randperm(len(self.class_ids), generator=g)[: self.way].tolist()
        classes = [self.class_ids[p] for p in picks]
        support, query = [], []
        for c in classes:
            members = self.by_class[c]
            order = torch.randperm(len(members), generator=g)[: self.shot + self.query].tolist()
            support += [members[j] for j in order[: self.shot]]
            query += [members[j] for j in order[self.shot:]]
        return Episode(index=i, classes=classes, support=support, query=query,
                       support_labels=torch.arange(self.way).repeat_interleave(self.shot),
                       query_labels=torch.arange(self.way).repeat_interleave(self.query))

    def config(self) -> dict:
        """What results should record to make their episodes reproducible."""
        return dict(way=self.way, shot=self.shot, query=self.query, seed=self.seed, num_episodes=self.num_episodes,
                    classes=len(self.class_ids))
