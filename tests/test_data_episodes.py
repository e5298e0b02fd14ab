"""The seeded episodic sampler: same episodes in every process, disjoint ranks, disjoint support and query."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from fsar.data.episodes import EpisodeSampler

# 12 classes with 6 videos each (labels 100.., interleaved like a real record list) and one class with only 2
LABELS = [100 + (i % 12) for i in range(72)] + [500, 500]


def _dump(sampler: EpisodeSampler, indices) -> list:
    return [[e.classes, e.support, e.query] for e in (sampler.episode(i) for i in indices)]


def test_episode_structure():
    s = EpisodeSampler(LABELS, way=5, shot=2, query=3, seed=1, num_episodes=20)
    for e in s:
        assert len(set(e.classes)) == 5 and 500 not in e.classes
        assert len(e.support) == 10 and len(e.query) == 15 and not set(e.support) & set(e.query)
        assert [LABELS[i] for i in e.support] == [c for c in e.classes for _ in range(2)]  # class-major
        assert [LABELS[i] for i in e.query] == [c for c in e.classes for _ in range(3)]
        assert e.support_labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
        assert e.query_labels.dtype == torch.long and e.query_labels.tolist() == [c for c in range(5) for _ in range(3)]
    assert _dump(s, range(20)) != _dump(EpisodeSampler(LABELS, 5, 2, 3, seed=2, num_episodes=20), range(20))


def test_same_episodes_in_another_process():
    code = ("import json; from fsar.data.episodes import EpisodeSampler; "
            f"s = EpisodeSampler({LABELS}, 5, 1, 2, seed=7, num_episodes=50); "
            "print(json.dumps([[e.classes, e.support, e.query] for e in s]))")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    torch.manual_seed(123)  # the global RNG state must not matter
    here = _dump(EpisodeSampler(LABELS, 5, 1, 2, seed=7, num_episodes=50), range(50))
    assert json.loads(other.stdout) == here


def test_ranks_take_disjoint_episodes_that_cover_all():
    whole = EpisodeSampler(LABELS, 5, 1, 1, seed=3, num_episodes=10)
    shards = [EpisodeSampler(LABELS, 5, 1, 1, seed=3, num_episodes=10, rank=r, world_size=3) for r in range(3)]
    assert [len(s) for s in shards] == [4, 3, 3]
    seen = sorted(e.index for s in shards for e in s)
    assert seen == list(range(10))
    by_index = {e.index: [e.classes, e.support, e.query] for s in shards for e in s}
    assert [by_index[i] for i in range(10)] == _dump(whole, range(10))  # random access == sharded iteration


def test_small_classes_warn_and_too_few_classes_fail():
    with pytest.warns(UserWarning, match="left out 1 of 13 classes"):
        s = EpisodeSampler(LABELS, 5, 1, 2, seed=0, num_episodes=5)
    assert 500 not in s.class_ids
    with pytest.raises(ValueError, match="only 12 classes have >= 3 videos, fewer than way=13"):
        EpisodeSampler(LABELS, 13, 1, 2, seed=0, num_episodes=5)
    with pytest.raises(IndexError):
        s.episode(5)
