"""The result of a run and ``fsar-eval``: the result JSON, and evaluating a saved checkpoint on seeded episodes.

The episodes themselves are scored by ``fsar.model.evaluator``; this file says what is recorded around the numbers
(protocol, configuration, data and knowledge fingerprints) and rebuilds a trained model from its checkpoint.
"""
from __future__ import annotations

import platform
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from fsar.model.build import build_model, check_fits, features_dir, load_bank, load_records
from fsar.model.checkpoint import data_fingerprint, load_checkpoint, load_model_state
from fsar.model.config import ConfigError, TrainConfig
from fsar.model.distributed import pick_device
from fsar.model.evaluator import EvalResult, evaluate_cached
from fsar.model.results import format_accuracy, write_json

if TYPE_CHECKING:  # the contract imports datasets (slow); stage 2 needs its type only for hints
    from fsar.knowledge.contract import TextEmbeddings


def result_payload(cfg: TrainConfig, res: EvalResult, split: str, records: dict, bank: TextEmbeddings | None,
                   trained_shot: int, checkpoint: Path | None, best: dict | None = None, weights: str | None = None) -> dict:
    """The result JSON: accuracy and interval, the full configuration, seed, data and knowledge fingerprints."""
    shot = cfg.test_shot
    note = None
    if shot != trained_shot:
        note = f"evaluated {shot}-shot with a model trained on {trained_shot}-shot episodes (not the K-shot protocol)"
    return {
        "method": cfg.method,
        "dataset": cfg.dataset,
        "split": split,
        "way": cfg.way,
        "shot": shot,
        "trained_shot": trained_shot,
        "shot_note": note,
        "queries_per_class": 1,
        "episodes": res.episodes,
        "episode_seed": cfg.seed,
        "accuracy": res.mean,
        "ci95": res.ci95,
        "accuracy_text": f"{format_accuracy(res.mean, res.ci95)}%",
        "best_val": best,
        "checkpoint": str(checkpoint) if checkpoint else None,
        "backbone": {"name": cfg.backbone, "path": cfg.backbone_path, "tune": cfg.tune, "frames": cfg.frames, "size": cfg.size,
                     "weights": weights, "adapter": cfg.adapter, "train_views": cfg.train_views},
        "data_fingerprints": {s: data_fingerprint(r) for s, r in records.items()},
        "knowledge": {"fingerprint": bank.fingerprint, "info": bank.info} if bank is not None else None,
        "config": asdict(cfg),
        "eval_seconds": res.seconds,
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }


def evaluate_checkpoint(
    checkpoint: Path | str,
    episodes: int = 10000,
    shot: int | None = None,
    way: int | None = None,
    seed: int | None = None,
    split: str = "test",
    root: str | None = None,
    method: str | None = None,
    backbone_path: str | None = None,
    device: str = "auto",
    batch: int = 64,
    out: Path | str | None = None,
    progress: bool = True,
    backbone_config=None,
) -> dict:
    """``fsar-eval``: rebuild a trained model from its checkpoint and evaluate it on cached features.

    The shot defaults to the training shot; a different one is allowed and the result says so.
    """
    ckpt = load_checkpoint(checkpoint, method)
    cfg = TrainConfig.from_dict(ckpt["config"])
    trained_shot = cfg.shot
    cfg.test_shot = shot if shot is not None else cfg.shot
    cfg.way = way if way is not None else cfg.way
    cfg.seed = seed if seed is not None else cfg.seed
    cfg.test_episodes = episodes
    if root is not None:
        cfg.root = root
    if backbone_path is not None:
        cfg.backbone_path = backbone_path
    if split not in ("test", "val"):
        raise ConfigError(f"--split must be test or val, got '{split}'")
    records = load_records(cfg, split)
    check_fits(records, cfg.way, cfg.test_shot, 1, split)
    bank = load_bank(cfg)
    if bank is not None and ckpt.get("text") and ckpt["text"]["fingerprint"] != bank.fingerprint:
        import warnings

        warnings.warn(f"the text embeddings changed since training ({ckpt['text']['fingerprint']} -> {bank.fingerprint})", stacklevel=2)
    dev = pick_device(device)
    model = build_model(cfg, bank, backbone_config)
    load_model_state(model, ckpt["model"])
    model.to(dev)
    res = evaluate_cached(model, records, cfg.way, cfg.test_shot, episodes, cfg.seed, cfg.frames, cfg.size, bank,
                          batch=batch, device=dev, progress=progress, cache_dir=features_dir(),
                          description=f"{split} features", frame_cache=cfg.frame_cache)
    result = result_payload(cfg, res, split, {split: records}, bank, trained_shot, Path(ckpt["path"]), ckpt.get("best"),
                            weights=getattr(model.backbone, "weights_id", None))
    out = Path(out) if out else Path(ckpt["path"]).parent / f"eval-{split}-{cfg.way}w{cfg.test_shot}s-seed{cfg.seed}-{episodes}.json"
    write_json(out, result)
    result["result_path"] = str(out)
    return result
