"""bench/bench_segment.py's truth: which clip frames are before, during and after the synthetic action."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fsar.data import synthetic as syn
from fsar.data.loaders import list_videos
from fsar.data.video import sample_frames

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from bench_segment import bounds_to_labels, clip_positions, labels_to_bounds, true_labels, truth_of, video_frames  # noqa: E402

CLASSES = [syn.class_key("push_lr", "ball"), syn.class_key("lift", "book"), syn.class_key("closer", "star"),
           syn.class_key("push_rl", "cup")]  # push_rl is a reversed class: its span is mirrored


def test_truth_on_hand_made_spans():
    pos = clip_positions(16, 8)  # video frames 1, 3, ..., 15 of 16
    assert torch.allclose(pos, torch.arange(1, 16, 2, dtype=torch.float64) / 15)
    # onset exactly on a frame: that frame is in the action; offset exactly on one: it is too
    labels = true_labels(pos, 3 / 15, 11 / 15)
    assert labels.tolist() == [0, 1, 1, 1, 1, 1, 2, 2]
    assert labels_to_bounds(labels).tolist() == [0, 1, 6, 8]
    # the action fills the whole clip: no before, no after -> boundaries at the clip's ends
    full = true_labels(pos, 0.0, 1.0)
    assert full.tolist() == [1] * 8 and labels_to_bounds(full).tolist() == [0, 0, 8, 8]
    # it starts before the first clip frame (video frame 1 sits at 1/15) but ends inside
    assert labels_to_bounds(true_labels(pos, 0.05, 0.5)).tolist() == [0, 0, 4, 8]
    # boundaries -> labels -> boundaries round-trips
    b = torch.tensor([[0, 2, 5, 8], [0, 1, 7, 8], [0, 0, 8, 8]])
    assert labels_to_bounds(bounds_to_labels(b, 8)).tolist() == b.tolist()


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("segbench") / "set"
    return syn.ensure_synthetic(root, videos_per_class=3, size=24, frames=16, seed=5, classes=CLASSES,
                                progress=False, quiet=True, workers=1)


def test_truth_follows_the_decoded_clip_and_the_rendered_hand(small_set):
    records = [r for split in ("train", "val", "test") for r in list_videos("synthetic", small_set, split)]
    labels, bounds, spans = truth_of(records, 8)
    during_hand, during = 0, 0
    for rec, lab, b, (onset, offset) in zip(records, labels, bounds, spans.tolist()):
        _, idx = sample_frames(rec.path, 8)  # the video frames the test clip really shows
        masks = syn.load_masks(rec)
        assert video_frames(rec) == len(masks)  # F is the decoded video's length
        assert torch.allclose(clip_positions(video_frames(rec), 8), torch.tensor(idx, dtype=torch.float64) / (len(masks) - 1))
        tau = np.asarray(idx) / (len(masks) - 1)
        assert lab.tolist() == [0 if x < onset else 1 if x <= offset else 2 for x in tau]
        assert b.tolist() == [0, int((lab == 0).sum()), int((lab <= 1).sum()), 8]
        hand = (masks[idx] == syn.MASK_HAND).any(axis=(1, 2))
        during += int((lab == 1).sum())
        during_hand += int(hand[lab.numpy() == 1].sum())
        # the renderer paints the hand only within 0.06 of the span: never on a frame far outside it
        far = (tau < onset - 0.07) | (tau > offset + 0.07)
        assert not hand[far].any(), rec.video_id
    # and the hand is seen on nearly every frame the truth calls "during" (it may hide behind a distractor)
    assert during > 0 and during_hand >= 0.85 * during
