"""bench/bench_i2st_masks.py's scoring: IoU of perfect, complementary and half-right masks, empty truths, and the
val-chosen threshold."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from bench_i2st_masks import best_threshold, frame_iou, iou_per_video, mean_ci, video_iou  # noqa: E402


def _truth(videos: int = 3, frames: int = 4, size: int = 8) -> torch.Tensor:
    """Boolean masks [V, T, S, S]: a square that moves one cell right per frame, a different size per video."""
    truth = torch.zeros(videos, frames, size, size, dtype=torch.bool)
    for v in range(videos):
        for t in range(frames):
            truth[v, t, 1 : 3 + v, t : t + 2 + v] = True
    return truth


def test_perfect_prediction_scores_one_and_its_complement_zero():
    truth = _truth()
    perfect = iou_per_video(truth.float(), truth, 0.5)
    assert torch.equal(perfect["frame_iou"], torch.ones(3, dtype=torch.float64))
    assert torch.equal(perfect["video_iou"], torch.ones(3, dtype=torch.float64))
    assert torch.allclose(perfect["pred_share"], perfect["true_share"])
    complement = iou_per_video((~truth).float(), truth, 0.5)
    assert torch.equal(complement["frame_iou"], torch.zeros(3, dtype=torch.float64))
    assert torch.equal(complement["video_iou"], torch.zeros(3, dtype=torch.float64))
    # a probability map is cut at the threshold: 0.6 inside is found at 0.5 but not at 0.7
    assert float(iou_per_video(truth.float() * 0.6, truth, 0.5)["frame_iou"].mean()) == 1.0
    assert float(iou_per_video(truth.float() * 0.6, truth, 0.7)["frame_iou"].mean()) == 0.0


def test_partial_overlap_frame_and_pooled_video_iou():
    truth = torch.zeros(1, 2, 4, 4, dtype=torch.bool)
    truth[0, :, 0, :2] = True  # 2 cells per frame
    pred = torch.zeros_like(truth)
    pred[0, 0, 0, 1:3] = True  # frame 0: 1 shared of 3 -> 1/3
    pred[0, 1, 0, :2] = True  # frame 1: exact -> 1
    assert torch.allclose(frame_iou(pred, truth), torch.tensor([[1 / 3, 1.0]], dtype=torch.float64))
    assert math.isclose(float(video_iou(pred, truth)), 3 / 5)  # pooled: 3 shared of 5 cells
    assert math.isclose(float(iou_per_video(pred.float(), truth, 0.5)["frame_iou"]), 2 / 3)


def test_empty_truth_frames_are_left_out_of_the_frame_mean():
    truth = _truth(videos=2)
    truth[0, 0] = False  # nothing to find in video 0 frame 0 ...
    pred = truth.clone()
    pred[0, 0, 5, 5] = True  # ... where the prediction has a false positive
    truth[1] = False  # video 1: no object at all
    pred[1] = False
    figs = iou_per_video(pred.float(), truth, 0.5)
    assert float(figs["frame_iou"][0]) == 1.0  # the empty-truth frame does not count per frame ...
    assert float(figs["video_iou"][0]) < 1.0  # ... but its false positive counts in the pooled video IoU
    assert math.isnan(float(figs["frame_iou"][1]))  # no frame to score
    assert float(figs["video_iou"][1]) == 1.0  # nothing there, nothing found
    assert mean_ci(figs["frame_iou"]) == (1.0, 0.0)  # the NaN video is left out of the mean


def test_best_threshold_is_the_one_that_separates_object_from_background():
    truth = _truth()
    probs = torch.where(truth, torch.tensor(0.3), torch.tensor(0.1))  # a decoder that runs low, as L2 ones do
    thr, scores = best_threshold(probs, truth)
    assert scores[0.2] == scores[0.3] == 1.0 and scores[0.5] == 0.0 and scores[0.05] < 1.0
    assert thr == 0.3  # of the tied ones, the nearest to 0.5
