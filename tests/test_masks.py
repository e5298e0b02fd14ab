"""Acting-object masks and action spans of the synthetic benchmark."""
from __future__ import annotations

import numpy as np
import pytest

from fsar.data import synthetic as syn
from fsar.data.loaders import list_videos

CLASSES = [syn.class_key("push_lr", "ball"), syn.class_key("push_rl", "ball"), syn.class_key("pretend_push", "ball"),
           syn.class_key("lift", "book"), syn.class_key("closer", "star")]


@pytest.fixture(scope="module")
def span_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("span") / "set"
    return syn.ensure_synthetic(root, videos_per_class=2, size=24, frames=16, seed=3, classes=CLASSES,
                                progress=False, quiet=True, workers=1)


def test_action_span_matches_where_the_hand_acts(span_set):
    records = [r for split in ("train", "val", "test") for r in list_videos("synthetic", span_set, split)]
    assert {r.class_key for r in records} == set(CLASSES)
    spans, with_hand = [], 0
    for rec in records:
        onset, offset = syn.action_span(rec)
        assert 0 <= onset < offset <= 1 and 0.35 <= offset - onset <= 0.8
        masks = syn.load_masks(rec)
        tau = np.arange(len(masks)) / (len(masks) - 1)
        hand = (masks == syn.MASK_HAND).any(axis=(1, 2))
        # the renderer paints the hand exactly while a - 0.06 <= tau <= a + d + 0.06 (it may be hidden behind props)
        assert ((tau[hand] >= onset - 0.06 - 1e-9) & (tau[hand] <= offset + 0.06 + 1e-9)).all(), rec.video_id
        with_hand += bool(hand.any())
        spans.append((onset, offset))
    assert with_hand >= len(records) - 1
    assert len(set(spans)) == len(spans)  # drawn per video, not a constant

