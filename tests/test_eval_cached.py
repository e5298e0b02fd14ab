"""Fast evaluation on cached features gives exactly the per-episode accuracies; the interval formula."""
from __future__ import annotations

import math

import pytest
import torch

from fsar.data.loaders import list_videos
from fsar.model.backbones import build_backbone
from fsar.model.evaluator import evaluate_cached, evaluate_per_episode, sample_episodes
from fsar.model.fewshot import FewShotModel
from fsar.model.registry import build_method
from fsar.model.results import summarize

from _model_helpers import SIZE, one_thread, synth_root  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def test_summarize_is_mean_and_196_std_over_sqrt_n():
    acc = torch.tensor([1.0, 0.0, 0.5, 0.5])
    mean, ci = summarize(acc)
    std = math.sqrt(((100 - 50) ** 2 + (0 - 50) ** 2) / 4)
    assert mean == 50.0 and abs(ci - 1.96 * std / 2) < 1e-9


def test_episodes_are_seeded_and_sorted_by_class(synth_root, fsar_cache):
    records = list_videos("synthetic", synth_root, "test")
    labels = [r.label for r in records]
    a = sample_episodes(labels, 5, 2, 1, seed=3, num_episodes=20)
    b = sample_episodes(labels, 5, 2, 1, seed=3, num_episodes=20)
    c = sample_episodes(labels, 5, 2, 1, seed=4, num_episodes=20)
    assert torch.equal(a.support, b.support) and not torch.equal(a.support, c.support)
    lab = torch.tensor(labels)
    assert torch.equal(lab[a.support], a.classes[:, :, None].expand(-1, -1, 2))  # support[e, n] is class n
    assert torch.equal(lab[a.query], a.classes.gather(1, a.query_labels))


def test_cached_equals_per_episode_exactly(synth_root, fsar_cache):
    records = list_videos("synthetic", synth_root, "test")
    torch.manual_seed(0)
    # otam: the reference decodes every clip again, as public code does; trx (2-shot): it reads the frame cache
    for method, shot, decode in (("otam", 1, True), ("trx", 2, False)):
        model = FewShotModel(build_backbone("tiny", tune="full", seed=1), build_method(method, 128, 8)).eval()
        kw = dict(way=5, shot=shot, episodes=12, seed=5, num_frames=8, size=SIZE)
        fast = evaluate_cached(model, records, batch=5, **kw)
        slow = evaluate_per_episode(model, records, frame_cache=not decode, **kw)
        assert fast.episodes == slow.episodes == 12
        assert torch.equal(fast.accuracies, slow.accuracies), method
        assert (fast.mean, fast.ci95) == (slow.mean, slow.ci95)
        assert 0 < fast.mean < 100  # a real mix of right and wrong answers, not a degenerate case
    # and a second cached run (features now on disk) is identical again
    again = evaluate_cached(model, records, batch=64, cache_dir=fsar_cache / "features", **kw)
    assert torch.equal(again.accuracies, fast.accuracies)


def test_cached_equals_per_episode_with_the_frame_adapter(synth_root, fsar_cache):
    """With a frozen backbone and the trainable adapter, evaluation adapts each video once (in chunks of videos);
    the per-episode path adapts inside every episode: the accuracies must still be identical."""
    from fsar.model.adapter import FrameAdapter

    records = list_videos("synthetic", synth_root, "test")
    torch.manual_seed(0)
    backbone = build_backbone("tiny", tune="frozen", seed=1)
    adapter = FrameAdapter(backbone.dim, 64)
    model = FewShotModel(backbone, build_method("otam", 64, 8), adapter=adapter).eval()
    kw = dict(way=5, shot=1, episodes=12, seed=5, num_frames=8, size=SIZE)
    fast = evaluate_cached(model, records, batch=5, **kw)
    slow = evaluate_per_episode(model, records, frame_cache=True, **kw)
    assert torch.equal(fast.accuracies, slow.accuracies)
    assert 0 < fast.mean < 100
