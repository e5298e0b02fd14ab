"""The episodic trainer: every baseline learns, exact resume, NaN stop, protocol records, checkpoints."""
from __future__ import annotations

import json

import pytest
import torch

from fsar.model.registry import Head, HeadOutput, register_method
from fsar.model.results import read_jsonl
from fsar.model.trainer import Trainer, TrainingDiverged, evaluate_checkpoint, train

from _model_helpers import fast_config, one_thread, synth_root  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


@torch.no_grad()
def _loss_on(trainer: Trainer, episodes: range) -> float:
    """Mean training loss (dropout off) on fixed training episodes: the same inputs before and after training."""
    trainer.model.eval()
    total = 0.0
    for g in episodes:
        batch = trainer.source.batch(trainer.source.episodes(g, 1))
        out = trainer.model(batch, features=trainer.use_cache)
        total += float(trainer.model.loss(out, batch))
    trainer.model.train()
    return total / len(episodes)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["prototype", "otam", "bimhm", "trx", "clipfsar"])
def test_every_baseline_trains_and_its_loss_falls(method, synth_root, fsar_cache, tmp_path):
    cfg = fast_config(synth_root, tmp_path / "run", method=method, episodes=32, batch=2, query=2, lr=2e-3,
                      val_every=32, warmup=0.0, test=False, class_loss=0.0)  # the head's own loss must fall
    trainer = Trainer(cfg)
    before = _loss_on(trainer, range(16))
    trainer.run()
    after = _loss_on(trainer, range(16))
    assert after < before - 0.02, (method, before, after)
    assert (tmp_path / "run" / "best.pt").is_file() and (tmp_path / "run" / "curves.png").stat().st_size > 5000


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def test_resume_continues_identically(synth_root, fsar_cache, tmp_path):
    kw = dict(method="bimhm", episodes=12, val_every=6, test=False)  # bimhm has dropout: RNG state must resume
    train(fast_config(synth_root, tmp_path / "straight", **kw))
    stopped = train(fast_config(synth_root, tmp_path / "resumed", stop_at=4, **kw))
    assert stopped["stopped_at"] == 4
    with pytest.raises(FileExistsError, match="--resume"):
        train(fast_config(synth_root, tmp_path / "resumed", **kw))
    train(fast_config(synth_root, tmp_path / "resumed", resume=True, **kw))
    a, b = _weights(tmp_path / "straight" / "last.pt"), _weights(tmp_path / "resumed" / "last.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    logs = [read_jsonl(tmp_path / d / "log.jsonl") for d in ("straight", "resumed")]
    strip = lambda rows: [(r["kind"], r["episode"], round(r.get("loss", r.get("acc")), 6)) for r in rows]  # noqa: E731
    assert strip(logs[0]) == strip(logs[1])


@register_method("test_nan_after")
class NanAfter(Head):
    """Prototype scores that turn into NaN from the 5th training forward pass on (tests the divergence stop)."""

    def __init__(self, dim, num_frames, text_dim=None, after: int = 4):
        super().__init__(dim, num_frames, text_dim)
        self.scale = torch.nn.Parameter(torch.tensor(1.0))
        self.after, self.calls = after, 0

    def forward(self, batch):
        logits = batch.query.mean(2) @ batch.support.mean((2, 3)).transpose(-1, -2) * self.scale
        if self.training:
            self.calls += 1
            if self.calls > self.after:
                logits = logits * float("nan")
        return HeadOutput(logits)


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(synth_root, fsar_cache, tmp_path):
    cfg = fast_config(synth_root, tmp_path / "run", method="test_nan_after", episodes=10, val_every=2)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at episode 4.*last good checkpoint: .*last\.pt"):
        train(cfg)
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert ckpt["episode"] == 4 and all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert read_jsonl(tmp_path / "run" / "log.jsonl")[-1]["kind"] == "diverged"


@register_method("test_own_loss")
class OwnLoss(Head):
    """Prototype-like logits, but a loss of its own, (w - 3)^2, that ignores them: the trainer must minimise it."""

    def __init__(self, dim, num_frames, text_dim=None):
        super().__init__(dim, num_frames, text_dim)
        self.w = torch.nn.Parameter(torch.tensor(0.0))

    def forward(self, batch):
        return HeadOutput(batch.query.mean(2) @ batch.support.mean((2, 3)).transpose(-1, -2) * self.w)

    def loss(self, out, batch):
        return (self.w - 3.0) ** 2


def test_trainer_minimises_the_heads_own_loss_plus_the_class_loss(synth_root, fsar_cache, tmp_path):
    cfg = fast_config(synth_root, tmp_path / "run", method="test_own_loss", episodes=10, val_every=10, lr=0.3,
                      warmup=0.0, schedule="constant", test=False, class_loss=0.0)
    trainer = Trainer(cfg)
    trainer.run()
    losses = [r["loss"] for r in read_jsonl(tmp_path / "run" / "log.jsonl") if r["kind"] == "train"]
    assert losses[0] == 9.0 and losses[-1] < 1.0 and abs(float(trainer.model.head.w.detach()) - 3.0) < 1.0, losses
    # with a class loss the model adds it outside the head's loss (an overriding head cannot drop it)
    trainer = Trainer(fast_config(synth_root, tmp_path / "class", method="test_own_loss", class_loss=0.5))
    batch = trainer.source.batch(trainer.source.episodes(0, 2))
    out = trainer.model(batch)
    assert set(out.aux_losses) == {"class"} and float(out.aux_losses["class"]) > 0
    assert torch.equal(trainer.model.loss(out, batch), (trainer.model.head.w - 3.0) ** 2 + out.aux_losses["class"])


def test_result_records_protocol_and_eval_matches(synth_root, fsar_cache, tmp_path):
    result = train(fast_config(synth_root, tmp_path / "run", method="otam", episodes=6, val_every=3, test_episodes=40))
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["split"] == "test" and saved["episodes"] == 40 and saved["queries_per_class"] == 1
    assert saved["shot"] == saved["trained_shot"] == 1 and saved["shot_note"] is None
    assert set(saved["data_fingerprints"]) == {"train", "val", "test"} and saved["config"]["seed"] == 0
    assert saved["best_val"]["episode"] in (3, 6)
    # fsar-eval on the best checkpoint gives the same numbers for the same seed and episodes
    again = evaluate_checkpoint(tmp_path / "run", episodes=40, progress=False)
    assert again["accuracy"] == result["accuracy"] and again["ci95"] == result["ci95"]
    other = evaluate_checkpoint(tmp_path / "run" / "best.pt", episodes=40, shot=2, progress=False)
    assert other["shot"] == 2 and "trained on 1-shot" in other["shot_note"]
    with pytest.raises(ValueError, match="checkpoint of method 'otam', not 'trx'"):
        evaluate_checkpoint(tmp_path / "run", method="trx", progress=False)
