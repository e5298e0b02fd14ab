"""Stage 2 must learn: brief training on the real synthetic videos must not collapse the clips' features.

The failure this guards against (issue 12): the five-way episodic loss can fall from its initial value to exactly
ln 5 by mapping every clip to one direction, after which every logit is equal and accuracy sits at chance. Here a
short run of a packaged pretrained backbone (frozen EfficientNet-Lite0, the fastest) with the frame adapter and the
classification loss must (1) end with a training loss well below ln 5 and (2) keep test clips apart: their mean
pairwise cosine similarity stays far from 1.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fsar.model.features import ClipLoader, extract_features
from fsar.model.results import read_jsonl
from fsar.model.trainer import Trainer, TrainConfig

from _model_helpers import fast_config, one_thread, synth_root  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def _mean_pairwise_cosine(trainer: Trainer) -> float:
    """Mean cosine similarity between the frame-averaged head inputs of every pair of distinct test clips."""
    model = trainer.model.eval()
    records = trainer.records["val"]
    loader = ClipLoader(records, trainer.cfg.frames, trainer.cfg.size, model.backbone.norm)
    feats, _ = extract_features(model, loader)
    with torch.no_grad():
        x = model.adapt(feats)
    x = x[:, :, 0] if x.dim() == 4 else x
    v = F.normalize(x.mean(dim=1), dim=-1)
    sim = v @ v.T
    n = len(v)
    return float((sim.sum() - sim.diagonal().sum()) / (n * (n - 1)))


def test_default_backbone_is_packaged_and_pretrained():
    cfg = TrainConfig().resolved()
    assert cfg.backbone == "dinov2-s" and cfg.tune == "frozen" and cfg.adapter == "spatial" and cfg.class_loss > 0
    assert cfg.size == 112  # 8 x 8 patches of 14 px: the size every DINOv2 row of BENCHMARKS.md was trained at


@pytest.mark.slow
def test_training_leaves_ln_n_and_features_stay_apart(synth_root, fsar_cache, tmp_path):
    cfg = fast_config(synth_root, tmp_path / "run", backbone="effnet-lite0", size=64, episodes=120, batch=2,
                      query=2, lr=2e-3, val_every=120, train_views=2, test=False, log_every=5)
    trainer = Trainer(cfg)
    trainer.run()
    rows = [r for r in read_jsonl(tmp_path / "run" / "log.jsonl") if r["kind"] == "train"]
    episodic = [r["loss"] - r.get("class_loss", 0.0) for r in rows]
    assert rows[-1]["acc"] > 0.5, rows[-1]  # chance is 0.2
    assert episodic[-1] < math.log(5) - 0.4, episodic[-3:]
    assert _mean_pairwise_cosine(trainer) < 0.8
