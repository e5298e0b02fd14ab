"""Episodic training: train classes for learning, val classes for checkpoint selection, test classes once at the end.

One optimizer step consumes ``batch * accum * world_size`` episodes of one global seeded stream; rank r of w takes
every w-th episode. Everything random flows from the seed: episodes from (seed, episode), clip augmentation from
(seed, episode, slot), dropout from each rank's saved generator state, so a resumed run continues exactly.

The rest of a run lives beside this file, each part read top to bottom:

    config.py       TrainConfig: every setting, its default and help
    build.py        the videos of a split, the text bank, the model (shared with fsar-eval)
    distributed.py  ranks, devices and the few collective operations the loop needs
    checkpoint.py   what a checkpoint holds; save, resume and load with one-line errors
    evaluation.py   the result JSON and fsar-eval's evaluate_checkpoint
    progress.py     the training progress bar

``train``, ``TrainConfig``, ``Trainer``, ``load_checkpoint`` and ``evaluate_checkpoint`` are importable from here.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from fsar.model.backbones import state_fingerprint
from fsar.model.build import build_model, check_fits, check_names, default_run_dir, features_dir, load_bank, load_records
from fsar.model.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    MissingCheckpoint,
    RunFolderExists,
    checkpoint_payload,
    load_checkpoint,
    load_model_state,
    read_resume_checkpoint,
    write_checkpoint,
)
from fsar.model.config import ConfigError, TrainConfig
from fsar.model.distributed import all_true, barrier, dist_env, gather, init_process_group, pick_device, sync_buffers
from fsar.model.evaluation import evaluate_checkpoint, result_payload
from fsar.model.evaluator import EvalResult, evaluate_cached, run_episodes
from fsar.model.features import ClipLoader, cached_features, derived_seed
from fsar.model.progress import TrainProgress
from fsar.model.registry import get_method
from fsar.model.results import format_accuracy, plot_training, summarize, write_json
from fsar.model.source import TrainingSource, make_sampler, sample_episodes

__all__ = ["CHECKPOINT_FORMAT", "TrainConfig", "Trainer", "TrainingDiverged", "evaluate_checkpoint", "features_dir",
           "load_checkpoint", "train"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def train(cfg: TrainConfig, backbone_config=None) -> dict:
    """Train (and, unless ``cfg.test`` is False, test) one method; returns the result dict on rank 0."""
    return Trainer(cfg, backbone_config).run()


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam(W) over every trainable parameter: head, adapter and classifier at ``lr``, a tuned backbone at
    ``lr * backbone_lr_scale``."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError(f"nothing to train: method '{cfg.method}' has no parameters and the backbone is frozen; use --tune full or N")
    bb = [p for p in model.backbone.parameters() if p.requires_grad]
    in_backbone = {id(p) for p in model.backbone.parameters()}
    hd = [p for p in params if id(p) not in in_backbone]  # head, adapter, classifier
    groups = [g for g in ({"params": hd, "lr": cfg.lr}, {"params": bb, "lr": cfg.lr * cfg.backbone_lr_scale}) if g["params"]]
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return opt_cls(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(cfg: TrainConfig, total_steps: int):
    """The learning-rate multiplier per optimizer step: linear warm-up, then cosine decay to 0 (or constant)."""
    warm = int(cfg.warmup * total_steps)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - warm) / max(1, total_steps - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


class Trainer:
    """Holds a run's state; ``run()`` trains, validates, checkpoints and finally tests."""

    def __init__(self, cfg: TrainConfig, backbone_config=None):
        self.cfg = cfg.resolved()
        cfg = self.cfg
        self.rank, self.world, local = dist_env()
        self.device = pick_device(cfg.device, local)
        init_process_group(self.world, self.device)
        self.main = self.rank == 0
        self.out = Path(cfg.out) if cfg.out else default_run_dir(cfg)
        if cfg.out is None and self.world > 1:
            self.out = Path(gather(str(self.out), self.world)[0])  # every rank writes to rank 0's folder
        self.last_path, self.best_path = self.out / "last.pt", self.out / "best.pt"
        self.log_path = self.out / "log.jsonl"
        if self.last_path.exists() and not cfg.resume:
            raise RunFolderExists(f"run folder {self.out} already holds a checkpoint; pass --resume to continue it or choose another --out")
        if cfg.resume and not self.last_path.exists():
            raise MissingCheckpoint(f"--resume: no checkpoint {self.last_path}; start without --resume")

        check_names(cfg)  # an unknown method, backbone or data set: one-line error before any data work
        self.records = {s: load_records(cfg, s) for s in ("train", "val")}
        check_fits(self.records["train"], cfg.way, cfg.shot, cfg.query, "train")
        check_fits(self.records["val"], cfg.way, cfg.test_shot, 1, "val")
        self.bank = load_bank(cfg)
        num_classes = len({r.label for r in self.records["train"]})
        self.model = build_model(cfg, self.bank, backbone_config, num_classes=num_classes).to(self.device)
        self.use_cache = self.model.backbone.frozen  # fixed backbone: encode every video once
        torch.manual_seed(derived_seed(cfg.seed, 11, self.rank))  # dropout etc.; restored on resume

        self.optimizer = make_optimizer(self.model, cfg)
        self.per_step = cfg.batch * cfg.accum * self.world
        self.total_steps = math.ceil(cfg.episodes / self.per_step)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor(cfg, self.total_steps))
        self.step, self.episode = 0, 0
        self.best = {"acc": -1.0, "ci95": 0.0, "episode": -1}
        self.ddp = self.model
        if self.world > 1:
            self.ddp = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True,
            )
        self.amp = cfg.amp and self.device.type == "cuda"
        self.train_loader = ClipLoader(self.records["train"], cfg.frames, cfg.size, self.model.backbone.norm,
                                       cfg.view_seed if self.use_cache else cfg.seed,
                                       frame_cache=cfg.frame_cache and not self.use_cache, progress=cfg.progress and self.main)
        sampler = make_sampler([r.label for r in self.records["train"]], cfg.way, cfg.shot, cfg.query, cfg.seed,
                               self.total_steps * self.per_step)
        self.source = TrainingSource(self.records["train"], self.bank, self.device, self.train_loader, sampler, cfg.shot,
                                     cfg.seed, self.rank, self.world, masks=self.model.head.needs_masks)
        self.val_feats, self.val_loader = None, None

    # ---------------------------------------------------------------- the loop

    def run(self) -> dict:
        """Train to ``cfg.episodes`` (or ``cfg.stop_at``), validating and checkpointing on the way, then test."""
        cfg = self.cfg
        if cfg.resume:
            self.restore()
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            write_json(self.out / "config.json", asdict(cfg))
        if self.use_cache:
            self.source.views = self._train_views()
        stop = min(cfg.stop_at if cfg.stop_at is not None else cfg.episodes, cfg.episodes)
        self.model.train()
        progress = TrainProgress(cfg.progress and self.main, cfg.episodes, self.episode, cfg.method)
        window: list[tuple[float, float, float]] = []
        aux_window: dict[str, list[float]] = {}  # the head's other aux losses (mask, contrastive, ...) per step
        next_val = (self.episode // cfg.val_every + 1) * cfg.val_every
        last_good = self.last_path if self.last_path.exists() else None
        t0, ep0 = time.perf_counter(), self.episode
        with progress:
            while self.episode < stop:
                self.optimizer.zero_grad(set_to_none=True)
                loss_sum, acc_sum, class_sum = 0.0, 0.0, 0.0
                aux_sum: dict[str, float] = {}
                for a in range(cfg.accum):
                    batch = self.source.batch(self.source.episodes(self.episode + a * cfg.batch * self.world,
                                                                   cfg.batch * self.world))
                    sync = a == cfg.accum - 1 or self.world == 1
                    ctx = self.ddp.no_sync() if (self.world > 1 and not sync) else contextlib.nullcontext()
                    with ctx:
                        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
                            out = self.ddp(batch, features=self.use_cache)
                            loss = self.model.loss(out, batch)  # the head's own loss + the class loss
                        if not all_true(bool(torch.isfinite(loss)), self.world, self.device):
                            value = float(loss.detach())
                            where = f"episode {self.episode}, step {self.step}"
                            kept = f"last good checkpoint: {last_good}" if last_good else "no checkpoint was saved yet"
                            self.log({"kind": "diverged", "episode": self.episode, "step": self.step, "loss": str(value)})
                            raise TrainingDiverged(f"loss became {value} at {where}; stopped ({kept}); lower --lr or set --clip-grad")
                        (loss / cfg.accum).backward()
                    loss_sum += float(loss.detach()) / cfg.accum
                    if "class" in out.aux_losses:
                        class_sum += float(out.aux_losses["class"].detach()) / cfg.accum
                    for name, value in out.aux_losses.items():
                        if name != "class":
                            aux_sum[name] = aux_sum.get(name, 0.0) + float(value.detach()) / cfg.accum
                    acc_sum += float((out.logits.float().argmax(-1) == batch.query_labels).float().mean()) / cfg.accum
                if cfg.clip_grad > 0:
                    nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
                self.optimizer.step()
                self.scheduler.step()
                self.step += 1
                self.episode += self.per_step
                window.append((loss_sum, acc_sum, class_sum))
                for name, value in aux_sum.items():
                    aux_window.setdefault(name, []).append(value)
                if self.step % cfg.log_every == 0 or self.episode >= stop:
                    rate = (self.episode - ep0) / max(1e-9, time.perf_counter() - t0)
                    ls, ac, cl = (sum(x) / len(window) for x in zip(*window))
                    self.log({"kind": "train", "step": self.step, "episode": self.episode, "loss": ls, "acc": ac,
                              "class_loss": cl, **{f"{k}_loss": sum(v) / len(v) for k, v in aux_window.items()},
                              "lr": self.scheduler.get_last_lr()[0], "episodes_per_s": rate})
                    window, aux_window = [], {}
                progress.update(self.episode, loss_sum, acc_sum)
                if self.episode >= next_val or self.episode >= cfg.episodes:
                    next_val = (self.episode // cfg.val_every + 1) * cfg.val_every
                    self._validate_and_save()
                    last_good = self.last_path
        if self.source.unmasked:  # never silently: the head trained these videos without its mask loss
            self.log({"kind": "masks", "videos_without_masks": len(self.source.unmasked)})
            warnings.warn(f"{len(self.source.unmasked)} training videos have no mask file; they trained without the "
                          "mask loss (make masks with: fsar-data masks)", stacklevel=2)
        if self.episode < cfg.episodes:  # --stop-at: keep a checkpoint to resume from
            self.save(self.last_path)
            return {"stopped_at": self.episode, "run_dir": str(self.out)}
        return self.finish()

    def _validate_and_save(self) -> None:
        """Validate on the val classes (rank 0), keep the best checkpoint, save the last one, redraw the curves."""
        if self.main:
            res = self.validate()
            self.log({"kind": "val", "episode": self.episode, "step": self.step, "acc": res.mean, "ci95": res.ci95,
                      "episodes": res.episodes})
            if res.mean > self.best["acc"]:
                self.best = {"acc": res.mean, "ci95": res.ci95, "episode": self.episode}
        self.best = gather(self.best, self.world)[0]
        if self.best["episode"] == self.episode:
            self.save(self.best_path, full=False)
        self.save(self.last_path)
        if self.main:
            plot_training(self.log_path, self.out / "curves.png", f"{self.cfg.method} on {self.cfg.dataset}")

    def finish(self) -> dict:
        """DDP weight check, then (rank 0) restore the best checkpoint and test once on the test classes."""
        cfg = self.cfg
        sync_buffers(self.model, self.world)
        hashes = gather(state_fingerprint(self.model), self.world)
        if self.world > 1:
            if self.main:
                write_json(self.out / "ddp_check.json", {"world_size": self.world, "weights": hashes,
                                                         "identical": len(set(hashes)) == 1})
            if len(set(hashes)) != 1:
                raise RuntimeError(f"DDP ranks ended with different weights: {hashes}")
        result: dict = {}
        if self.main and cfg.test:
            best = torch.load(self.best_path, map_location="cpu", weights_only=False)
            load_model_state(self.model, best["model"])
            res = self.test()
            result = result_payload(cfg, res, "test", self.records, self.bank, trained_shot=cfg.shot,
                                    checkpoint=self.best_path, best=self.best,
                                    weights=getattr(self.model.backbone, "weights_id", None))
            torch.save(res.accuracies, self.out / "test_accuracies.pt")  # per episode, for paired comparisons
            result["episode_accuracies"] = str(self.out / "test_accuracies.pt")
            write_json(self.out / "result.json", result)
            self.log({"kind": "test", "episode": self.episode, "acc": res.mean, "ci95": res.ci95, "episodes": res.episodes})
            plot_training(self.log_path, self.out / "curves.png", f"{cfg.method} on {cfg.dataset}: test {format_accuracy(res.mean, res.ci95)}%")
        barrier(self.world)
        result.setdefault("run_dir", str(self.out))
        return result

    def log(self, row: dict) -> None:
        """Append one JSON row to log.jsonl (rank 0)."""
        if not self.main:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a") as f:
            f.write(json.dumps(row) + "\n")

    # ---------------------------------------------------------------- checkpoints

    def save(self, path: Path, full: bool = True) -> None:
        """Write a checkpoint (rank 0); ``full`` adds optimizer and scheduler state, for --resume."""
        sync_buffers(self.model, self.world)
        rng = gather({"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if self.device.type == "cuda" else None}, self.world)
        if not self.main:
            return
        payload = checkpoint_payload(self.cfg, self.model, self.bank, self.records, self.episode, self.step, self.best,
                                     self.optimizer if full else None, self.scheduler if full else None)
        payload["rng"] = rng
        write_checkpoint(payload, path)

    def restore(self) -> None:
        """Continue from last.pt: weights, optimizer, schedule, position and this rank's generator state."""
        ckpt = read_resume_checkpoint(self.last_path, self.cfg, self.bank)
        load_model_state(self.model, ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.episode, self.step, self.best = ckpt["episode"], ckpt["step"], ckpt["best"]
        states = ckpt["rng"]
        if len(states) != self.world:
            raise CheckpointError(f"checkpoint was written by {len(states)} processes, this run has {self.world}; resume with the same number")
        torch.set_rng_state(states[self.rank]["torch"])
        if states[self.rank]["cuda"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(states[self.rank]["cuda"])

    # ---------------------------------------------------------------- features, validation and test
    # The batches themselves come from ``self.source`` (fsar.model.source); here: the cached training views it
    # reads while the backbone is frozen, and how the model is scored on the val and test classes.

    def _train_views(self) -> torch.Tensor:
        """Frozen backbone: features of ``train_views`` fixed views of every training video, [views, videos, T, ...]
        in float16 (view 0 the test-style clip, the others augmented as training clips are), each cached on disk."""
        cfg = self.cfg
        views = []
        for view in range(max(1, cfg.train_views)):
            feats, kept = cached_features(self.model, self.train_loader, features_dir(), device=self.device, view=view,
                                          progress=cfg.progress and self.main,
                                          description=f"train features, view {view + 1}/{cfg.train_views}")
            full = torch.zeros(len(self.records["train"]), *feats.shape[1:], dtype=torch.float16)
            full[kept] = feats.half()
            views.append(full)
        return torch.stack(views)

    def validate(self) -> EvalResult:
        """Accuracy on ``val_episodes`` seeded episodes of the val classes (features cached while the backbone is frozen)."""
        cfg = self.cfg
        records = self.records["val"]
        if self.val_loader is None:
            self.val_loader = ClipLoader(records, cfg.frames, cfg.size, self.model.backbone.norm, frame_cache=cfg.frame_cache)
        loader = self.val_loader
        if self.val_feats is None or not self.use_cache:
            self.val_feats = cached_features(self.model, loader, features_dir() if self.use_cache else None,
                                             device=self.device, amp=self.amp)
        feats, kept = self.val_feats
        kept_records = [records[i] for i in kept]
        eps = sample_episodes([r.label for r in kept_records], cfg.way, cfg.test_shot, 1, cfg.seed, cfg.val_episodes)
        accs = run_episodes(self.model, feats, eps, self.bank, kept_records, cfg.eval_batch, self.device, self.amp)
        self.model.train()
        mean, ci = summarize(accs)
        return EvalResult(accs, mean, ci, len(accs))

    def test(self) -> EvalResult:
        """Accuracy on ``test_episodes`` seeded episodes of the test classes, once, at the end."""
        cfg = self.cfg
        records = load_records(cfg, "test")
        check_fits(records, cfg.way, cfg.test_shot, 1, "test")
        self.records["test"] = records
        return evaluate_cached(self.model, records, cfg.way, cfg.test_shot, cfg.test_episodes, cfg.seed, cfg.frames,
                               cfg.size, self.bank, batch=cfg.eval_batch, device=self.device, progress=cfg.progress,
                               cache_dir=features_dir(), amp=self.amp, frame_cache=cfg.frame_cache)
