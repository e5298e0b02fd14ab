"""Episodic training: train classes for learning, val classes for checkpoint selection, test classes once at the end.

One optimizer step consumes ``batch * accum * world_size`` episodes of one global seeded stream; rank r of w takes
every w-th episode. Everything random flows from the seed: episodes from (seed, episode), clip augmentation from
(seed, episode, slot), dropout from each rank's saved generator state, so a resumed run continues exactly.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fsar.model.adapter import ADAPTERS, FrameAdapter
from fsar.model.backbones import DEFAULT_SIZE, build_backbone, state_fingerprint
from fsar.model.evaluator import (
    Episodes,
    EvalResult,
    episode_arrays,
    evaluate_cached,
    label_lut,
    make_sampler,
    run_episodes,
    sample_episodes,
)
from fsar.model.features import ClipLoader, cached_features, derived_seed
from fsar.model.fewshot import FewShotModel, TextBank, text_bank_for
from fsar.model.registry import build_method, get_method
from fsar.model.results import format_accuracy, plot_training, summarize, write_json

CHECKPOINT_FORMAT = "fsar-checkpoint-2"  # 2: frame adapter, classification loss, reference OTAM / Bi-MHM heads


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class TrainConfig:
    """Everything a run depends on; saved in every checkpoint and result."""

    method: str = "prototype"
    dataset: str = "synthetic"
    root: str | None = None
    way: int = 5
    shot: int = 1
    query: int = 3  # training queries per class (evaluation always uses 1, the protocol)
    frames: int = 8
    size: int | None = None  # input size; None = the backbone's default (tiny 64, clip/resnet50 224)
    backbone: str = "effnet-lite0"  # packaged ImageNet weights, frozen: the CPU default (tiny, clip, resnet50, ...)
    backbone_path: str | None = None
    tune: str = "auto"  # frozen | full | N (last N blocks); auto = full for tiny, frozen for pretrained backbones
    adapter: str = "auto"  # spatial | none: the trainable frame adapter (auto = spatial on pretrained backbones)
    adapter_dim: int = 128  # width of the adapter's frame features (what the head sees)
    train_views: int = 1  # frozen backbone: cached views per training video (1 = the test-style clip only)
    view_seed: int = 0  # seed of those views' augmentation (fixed, so that runs of every seed share one cache)
    episodes: int = 800  # training episodes (all ranks together)
    batch: int = 1  # episodes per forward pass (per rank)
    accum: int = 1  # forward passes per optimizer step
    optimizer: str = "adamw"  # adam | adamw
    lr: float = 1e-3
    class_loss: float = 0.5  # weight of the classification loss over all training classes (0 = episodic loss only)
    backbone_lr_scale: float | None = None  # None = 1.0 for tiny, 0.1 for pretrained backbones
    weight_decay: float = 0.05
    warmup: float = 0.05  # fraction of optimizer steps with a linear warm-up
    schedule: str = "cosine"  # cosine | constant (after warm-up)
    clip_grad: float = 5.0  # max gradient norm, 0 = off
    amp: bool = True  # bf16 autocast, on GPU only
    val_every: int = 250  # episodes between validations (and always at the end)
    val_episodes: int = 500
    test_episodes: int = 10000
    test_shot: int | None = None  # None = shot (K-shot results from K-shot training)
    seed: int = 0
    encoder: str | None = None  # text encoder for methods that use text (None = packaged MiniLM)
    opts: dict = field(default_factory=dict)  # method options (head keyword arguments)
    out: str | None = None
    device: str = "auto"
    log_every: int = 10  # optimizer steps between log lines
    eval_batch: int = 64  # episodes per batch at evaluation
    resume: bool = False
    stop_at: int | None = None  # stop after this many episodes (checkpoint kept; resume later)
    test: bool = True  # evaluate on the test classes at the end
    progress: bool = True
    create_text: bool = True  # make missing knowledge / embeddings (with a message) instead of failing
    frame_cache: bool = True  # decode each video once (train clips: spatial augmentation only, no temporal jitter)

    def resolved(self) -> "TrainConfig":
        """Fill the automatic values (size, tuning, backbone learning rate)."""
        cfg = TrainConfig(**asdict(self))
        if cfg.size is None:
            cfg.size = DEFAULT_SIZE.get(cfg.backbone, 224)
        if cfg.tune == "auto":
            cfg.tune = "full" if cfg.backbone == "tiny" else "frozen"
        if cfg.adapter == "auto":
            cfg.adapter = "none" if cfg.backbone == "tiny" else "spatial"
        if cfg.adapter not in ADAPTERS:
            raise ValueError(f"unknown --adapter '{cfg.adapter}'; choose one of: {', '.join(ADAPTERS)}")
        if cfg.adapter == "spatial" and (cfg.adapter_dim % 4 or cfg.frames > 64):
            raise ValueError(f"the frame adapter needs a width divisible by 4 and at most 64 frames "
                             f"(got {cfg.adapter_dim}, {cfg.frames}); change --frames or use --adapter none")
        if cfg.train_views < 1:
            raise ValueError(f"--train-views must be at least 1, got {cfg.train_views}")
        if cfg.backbone_lr_scale is None:
            cfg.backbone_lr_scale = 1.0 if cfg.backbone == "tiny" else 0.1
        if cfg.test_shot is None:
            cfg.test_shot = cfg.shot
        return cfg

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# ------------------------------------------------------------------ set-up shared by fsar-train and fsar-eval


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_records(cfg: TrainConfig, split: str) -> list:
    from fsar.data.loaders import list_videos

    return list_videos(cfg.dataset, cfg.root, split)


def check_fits(records: list, way: int, shot: int, query: int, split: str) -> None:
    """One-line error when the split cannot make ``way``-way episodes with shot + query videos per class."""
    counts = Counter(r.class_key for r in records)
    need = shot + query
    big = [k for k, n in counts.items() if n >= need]
    if len(counts) < way:
        raise ValueError(f"the {split} split has {len(counts)} classes with videos, fewer than --way {way}; lower --way")
    if len(big) < way:
        key, n = min(counts.items(), key=lambda kv: kv[1])
        raise ValueError(
            f"--shot {shot} + {query} queries = {need} videos per class, but only {len(big)} {split} classes have "
            f"that many (e.g. '{key}' has {n}); lower --shot or --query"
        )


def build_model(cfg: TrainConfig, bank: TextBank | None, backbone_config=None, num_classes: int = 0) -> FewShotModel:
    """Backbone + head from a resolved config (the head gets the backbone's width and the text width); with
    ``num_classes`` (training) also the classifier of the auxiliary classification loss."""
    backbone = build_backbone(cfg.backbone, cfg.backbone_path, cfg.tune, seed=cfg.seed, config=backbone_config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derived_seed(cfg.seed, 7))
        cls = get_method(cfg.method)
        adapter = None
        if cfg.adapter == "spatial":
            adapter = FrameAdapter(backbone.dim, cfg.adapter_dim, tokens=cls.needs_tokens)
        head = build_method(cfg.method, dim=adapter_width(backbone, adapter), num_frames=cfg.frames,
                            text_dim=bank.dim if bank is not None else None, **cfg.opts)
        model = FewShotModel(backbone, head, num_classes=num_classes, class_loss=cfg.class_loss, adapter=adapter)
    return model


def adapter_width(backbone, adapter) -> int:
    """The feature width the head sees."""
    return adapter.global_proj.out_features if adapter is not None else backbone.dim


def load_bank(cfg: TrainConfig) -> TextBank | None:
    need = get_method(cfg.method).text_need(cfg.opts)
    return text_bank_for(need, cfg.dataset, cfg.encoder, create=cfg.create_text)


def model_state(model: FewShotModel) -> dict:
    """Weights worth saving: all of them, except a frozen pretrained backbone (reloaded from its source)."""
    state = model.state_dict()
    if model.backbone.pretrained and model.backbone.frozen:
        state = {k: v for k, v in state.items() if not k.startswith("backbone.")}
    return state


def load_model_state(model: FewShotModel, state: dict) -> None:
    if model.classifier is None:  # the training-only classifier is not needed to evaluate
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k.startswith("backbone.") and model.backbone.pretrained)]
    if missing or unexpected:
        raise ValueError(f"checkpoint does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")


def features_dir() -> Path:
    from fsar.data.paths import cache_root

    return cache_root() / "features"


def default_run_dir(cfg: TrainConfig) -> Path:
    from fsar.data.paths import cache_root

    stamp = time.strftime("%Y%m%d-%H%M%S")
    return cache_root() / "runs" / f"{cfg.method}-{cfg.dataset}-{cfg.way}w{cfg.shot}s-{cfg.backbone}-seed{cfg.seed}-{stamp}"


# ------------------------------------------------------------------ distributed helpers


def dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def _all_true(flag: bool, world: int, device) -> bool:
    if world == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
    return bool(t.item() > 0)


def _gather(obj, world: int) -> list:
    if world == 1:
        return [obj]
    out = [None] * world
    torch.distributed.all_gather_object(out, obj)
    return out


# ------------------------------------------------------------------ the loop


class Trainer:
    """Holds a run's state; ``run()`` trains, validates, checkpoints and finally tests."""

    def __init__(self, cfg: TrainConfig, backbone_config=None):
        self.cfg = cfg.resolved()
        cfg = self.cfg
        self.rank, self.world, local = dist_env()
        self.device = pick_device(cfg.device, local)
        if self.world > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.main = self.rank == 0
        if cfg.episodes < 1:
            raise ValueError(f"--episodes must be at least 1, got {cfg.episodes}")
        self.out = Path(cfg.out) if cfg.out else default_run_dir(cfg)
        if cfg.out is None and self.world > 1:
            self.out = Path(_gather(str(self.out), self.world)[0])  # every rank writes to rank 0's folder
        self.last_path, self.best_path = self.out / "last.pt", self.out / "best.pt"
        self.log_path = self.out / "log.jsonl"
        if self.last_path.exists() and not cfg.resume:
            raise FileExistsError(f"run folder {self.out} already holds a checkpoint; pass --resume to continue it or choose another --out")
        if cfg.resume and not self.last_path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint {self.last_path}; start without --resume")

        get_method(cfg.method)  # unknown method: one-line error before any data work
        self.records = {s: load_records(cfg, s) for s in ("train", "val")}
        check_fits(self.records["train"], cfg.way, cfg.shot, cfg.query, "train")
        check_fits(self.records["val"], cfg.way, cfg.test_shot, 1, "val")
        self.bank = load_bank(cfg)
        train_labels = sorted({r.label for r in self.records["train"]})
        self.class_lut = torch.full((max(train_labels) + 1,), -1, dtype=torch.long)
        self.class_lut[torch.tensor(train_labels)] = torch.arange(len(train_labels))
        self.model = build_model(cfg, self.bank, backbone_config, num_classes=len(train_labels)).to(self.device)
        self.use_cache = self.model.backbone.frozen  # fixed backbone: encode every video once
        torch.manual_seed(derived_seed(cfg.seed, 11, self.rank))  # dropout etc.; restored on resume

        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"nothing to train: method '{cfg.method}' has no parameters and the backbone is frozen; use --tune full or N")
        bb = [p for p in self.model.backbone.parameters() if p.requires_grad]
        in_backbone = {id(p) for p in self.model.backbone.parameters()}
        hd = [p for p in params if id(p) not in in_backbone]  # head, adapter, classifier
        groups = [g for g in ({"params": hd, "lr": cfg.lr}, {"params": bb, "lr": cfg.lr * cfg.backbone_lr_scale}) if g["params"]]
        if cfg.optimizer not in ("adam", "adamw"):
            raise ValueError(f"unknown --optimizer '{cfg.optimizer}'; choose adam or adamw")
        opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = opt_cls(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.per_step = cfg.batch * cfg.accum * self.world
        self.total_steps = math.ceil(cfg.episodes / self.per_step)
        warm = int(cfg.warmup * self.total_steps)

        def lr_factor(step: int) -> float:
            if step < warm:
                return (step + 1) / (warm + 1)
            if cfg.schedule == "constant":
                return 1.0
            progress = (step - warm) / max(1, self.total_steps - warm)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

        if cfg.schedule not in ("cosine", "constant"):
            raise ValueError(f"unknown --schedule '{cfg.schedule}'; choose cosine or constant")
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor)
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
        self.sampler = make_sampler([r.label for r in self.records["train"]], cfg.way, cfg.shot, cfg.query, cfg.seed,
                                    self.total_steps * self.per_step)
        self.train_lut = label_lut(self.bank, self.records["train"]) if self.bank is not None else None
        self.val_feats, self.val_loader = None, None

    # ---------------------------------------------------------------- checkpoints

    def _payload(self, full: bool) -> dict:
        cfg = self.cfg
        payload = {
            "format": CHECKPOINT_FORMAT,
            "method": cfg.method,
            "config": asdict(cfg),
            "model": model_state(self.model),
            "episode": self.episode,
            "step": self.step,
            "best": dict(self.best),
            "text": {"fingerprint": self.bank.fingerprint, "info": self.bank.info} if self.bank else None,
            "data": {s: _fp(r) for s, r in self.records.items()},
        }
        if full:
            payload["optimizer"] = self.optimizer.state_dict()
            payload["scheduler"] = self.scheduler.state_dict()
        return payload

    def _sync_buffers(self) -> None:
        """Copy rank 0's buffers (batch-norm statistics) to every rank, as DDP does before each forward pass."""
        if self.world > 1:
            for buf in self.model.buffers():
                torch.distributed.broadcast(buf, 0)

    def save(self, path: Path, full: bool = True) -> None:
        self._sync_buffers()
        rng = _gather({"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if self.device.type == "cuda" else None}, self.world)
        if not self.main:
            return
        payload = self._payload(full)
        payload["rng"] = rng
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(payload, tmp)
        tmp.replace(path)

    def restore(self) -> None:
        ckpt = torch.load(self.last_path, map_location="cpu", weights_only=False)
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{self.last_path} was written by another fsar version ({ckpt.get('format')}); start a new run")
        if self.bank is not None and ckpt.get("text") and ckpt["text"]["fingerprint"] != self.bank.fingerprint:
            raise ValueError(f"the text embeddings changed since {self.last_path} was written "
                             f"({ckpt['text']['fingerprint']} -> {self.bank.fingerprint}); start a new run")
        if ckpt.get("method") != self.cfg.method:
            raise ValueError(f"{self.last_path} is a checkpoint of method '{ckpt.get('method')}', not '{self.cfg.method}'")
        saved = TrainConfig.from_dict(ckpt["config"])
        changed = [k for k in ("dataset", "way", "shot", "query", "backbone", "episodes", "batch", "accum", "seed", "lr", "frames",
                               "size", "adapter", "adapter_dim", "train_views", "view_seed", "class_loss", "weight_decay", "opts")
                   if getattr(saved, k) != getattr(self.cfg, k)]
        if changed:
            raise ValueError(f"--resume with different settings ({', '.join(changed)}) would not continue the run; use the saved ones")
        load_model_state(self.model, ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.episode, self.step, self.best = ckpt["episode"], ckpt["step"], ckpt["best"]
        states = ckpt["rng"]
        if len(states) != self.world:
            raise ValueError(f"checkpoint was written by {len(states)} processes, this run has {self.world}; resume with the same number")
        torch.set_rng_state(states[self.rank]["torch"])
        if states[self.rank]["cuda"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(states[self.rank]["cuda"])

    # ---------------------------------------------------------------- data

    def _episodes(self, first: int, count: int) -> list[Episodes]:
        """This rank's episodes among global episodes [first, first + count): every world-th one."""
        out = []
        for g in range(first, first + count):
            if g % self.world == self.rank:
                support, query, labels, classes = episode_arrays(self.sampler.episode(g), self.cfg.shot)
                out.append(Episodes(support[None], query[None], labels[None], classes[None], first=g))
        return out

    def _inputs(self, eps) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict | None, tuple]:
        """Support, query (clips or cached features), query labels, text and the global training-class labels
        (support [E, N, K], query [E, Q]) for a list of 1-episode Episodes."""
        sup = torch.cat([e.support for e in eps])
        qry = torch.cat([e.query for e in eps])
        labels = torch.cat([e.query_labels for e in eps])
        if self.use_cache:
            support, query = self._cached(eps, sup, qry)
        else:
            clips = []
            for e in eps:
                idx = e.support.flatten().tolist() + e.query.flatten().tolist()
                clips.append(self.train_loader.train_clips(idx, episode=e.first))
            n_s = sup[0].numel()
            support = torch.stack([c[:n_s] for c in clips]).unflatten(1, tuple(sup.shape[1:]))
            query = torch.stack([c[n_s:] for c in clips])
        text = None
        if self.bank is not None:
            text = self.bank.gather(self.train_lut[torch.cat([e.classes for e in eps])], self.device)
        classes = self.class_lut[torch.cat([e.classes for e in eps])]  # [E, N]
        support_cls = classes[:, :, None].expand(*sup.shape)
        query_cls = torch.gather(classes, 1, labels)
        class_labels = (support_cls.to(self.device), query_cls.to(self.device))
        return support.to(self.device), query.to(self.device), labels.to(self.device), text, class_labels

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

    def _cached(self, eps, sup: torch.Tensor, qry: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached features of an episode's videos; each slot's view comes from (seed, episode, slot) only."""
        views = []
        for e in eps:
            g = torch.Generator().manual_seed(derived_seed(self.cfg.seed, 15485863, e.first))
            views.append(torch.randint(len(self.train_feats), (e.support.numel() + e.query.numel(),), generator=g))
        views = torch.stack(views)  # [E, N*K + Q]
        n_s = sup[0].numel()
        support = self.train_feats[views[:, :n_s].reshape(sup.shape), sup].float()
        query = self.train_feats[views[:, n_s:].reshape(qry.shape), qry].float()
        return support, query

    # ---------------------------------------------------------------- validation and test

    def validate(self) -> EvalResult:
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
        cfg = self.cfg
        records = load_records(cfg, "test")
        check_fits(records, cfg.way, cfg.test_shot, 1, "test")
        self.records["test"] = records
        return evaluate_cached(self.model, records, cfg.way, cfg.test_shot, cfg.test_episodes, cfg.seed, cfg.frames,
                               cfg.size, self.bank, batch=cfg.eval_batch, device=self.device, progress=cfg.progress,
                               cache_dir=features_dir(), amp=self.amp, frame_cache=cfg.frame_cache)

    # ---------------------------------------------------------------- main loop

    def log(self, row: dict) -> None:
        if not self.main:
            return
        import json

        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def run(self) -> dict:
        cfg = self.cfg
        if cfg.resume:
            self.restore()
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            write_json(self.out / "config.json", asdict(cfg))
        if self.use_cache:
            self.train_feats = self._train_views()
        stop = min(cfg.stop_at if cfg.stop_at is not None else cfg.episodes, cfg.episodes)
        self.model.train()
        progress = _progress(cfg.progress and self.main, cfg.episodes, self.episode, cfg.method)
        window: list[tuple[float, float, float]] = []
        next_val = (self.episode // cfg.val_every + 1) * cfg.val_every
        last_good = self.last_path if self.last_path.exists() else None
        t0, ep0 = time.perf_counter(), self.episode
        with progress:
            while self.episode < stop:
                self.optimizer.zero_grad(set_to_none=True)
                loss_sum, acc_sum, class_sum = 0.0, 0.0, 0.0
                for a in range(cfg.accum):
                    eps = self._episodes(self.episode + a * cfg.batch * self.world, cfg.batch * self.world)
                    support, query, labels, text, class_labels = self._inputs(eps)
                    sync = a == cfg.accum - 1 or self.world == 1
                    ctx = self.ddp.no_sync() if (self.world > 1 and not sync) else contextlib.nullcontext()
                    with ctx:
                        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
                            out = self.ddp(support, query, text, labels, features=self.use_cache, class_labels=class_labels)
                            logits = out.logits.float()
                            loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
                            for aux in out.aux_losses.values():
                                loss = loss + aux.float()
                        if not _all_true(bool(torch.isfinite(loss)), self.world, self.device):
                            value = float(loss.detach())
                            where = f"episode {self.episode}, step {self.step}"
                            kept = f"last good checkpoint: {last_good}" if last_good else "no checkpoint was saved yet"
                            self.log({"kind": "diverged", "episode": self.episode, "step": self.step, "loss": str(value)})
                            raise TrainingDiverged(f"loss became {value} at {where}; stopped ({kept}); lower --lr or set --clip-grad")
                        (loss / cfg.accum).backward()
                    loss_sum += float(loss.detach()) / cfg.accum
                    if "class" in out.aux_losses:
                        class_sum += float(out.aux_losses["class"].detach()) / cfg.accum
                    acc_sum += float((logits.argmax(-1) == labels).float().mean()) / cfg.accum
                if cfg.clip_grad > 0:
                    nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
                self.optimizer.step()
                self.scheduler.step()
                self.step += 1
                self.episode += self.per_step
                window.append((loss_sum, acc_sum, class_sum))
                if self.step % cfg.log_every == 0 or self.episode >= stop:
                    rate = (self.episode - ep0) / max(1e-9, time.perf_counter() - t0)
                    ls, ac, cl = (sum(x) / len(window) for x in zip(*window))
                    self.log({"kind": "train", "step": self.step, "episode": self.episode, "loss": ls, "acc": ac,
                              "class_loss": cl, "lr": self.scheduler.get_last_lr()[0], "episodes_per_s": rate})
                    window = []
                progress.update(self.episode, loss_sum, acc_sum)
                if self.episode >= next_val or self.episode >= cfg.episodes:
                    next_val = (self.episode // cfg.val_every + 1) * cfg.val_every
                    self._validate_and_save()
                    last_good = self.last_path
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
        self.best = _gather(self.best, self.world)[0]
        if self.best["episode"] == self.episode:
            self.save(self.best_path, full=False)
        self.save(self.last_path)
        if self.main:
            plot_training(self.log_path, self.out / "curves.png", f"{self.cfg.method} on {self.cfg.dataset}")

    def finish(self) -> dict:
        """DDP weight check, then (rank 0) restore the best checkpoint and test once on the test classes."""
        cfg = self.cfg
        self._sync_buffers()
        hashes = _gather(state_fingerprint(self.model), self.world)
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
        if self.world > 1:
            torch.distributed.barrier()
        result.setdefault("run_dir", str(self.out))
        return result


def _fp(records: list) -> str:
    from fsar.data.loaders import fingerprint

    return fingerprint(records)


def result_payload(cfg: TrainConfig, res: EvalResult, split: str, records: dict, bank: TextBank | None,
                   trained_shot: int, checkpoint: Path | None, best: dict | None = None, weights: str | None = None) -> dict:
    """The result JSON: accuracy and interval, the full configuration, seed, data and knowledge fingerprints."""
    import platform

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
        "data_fingerprints": {s: _fp(r) for s, r in records.items()},
        "knowledge": {"fingerprint": bank.fingerprint, "info": bank.info} if bank is not None else None,
        "config": asdict(cfg),
        "eval_seconds": res.seconds,
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }


class _progress:
    """A rich progress bar with loss, accuracy and ETA (a no-op when disabled)."""

    def __init__(self, enabled: bool, total: int, done: int, name: str):
        self.enabled, self.total, self.done, self.name = enabled, total, done, name
        self.loss = self.acc = None

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("loss {task.fields[loss]}  acc {task.fields[acc]}"), TimeElapsedColumn(),
                                TextColumn("ETA"), TimeRemainingColumn())
            self.bar.__enter__()
            self.task = self.bar.add_task(f"train {self.name}", total=self.total, completed=self.done, loss="-", acc="-")
        return self

    def update(self, done: int, loss: float, acc: float) -> None:
        if not self.enabled:
            return
        self.loss = loss if self.loss is None else 0.9 * self.loss + 0.1 * loss
        self.acc = acc if self.acc is None else 0.9 * self.acc + 0.1 * acc
        self.bar.update(self.task, completed=min(done, self.total), loss=f"{self.loss:.3f}", acc=f"{100 * self.acc:.1f}%")

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.__exit__(*exc)
        return False


def train(cfg: TrainConfig, backbone_config=None) -> dict:
    """Train (and, unless ``cfg.test`` is False, test) one method; returns the result dict on rank 0."""
    return Trainer(cfg, backbone_config).run()


def load_checkpoint(path: Path | str, method: str | None = None) -> dict:
    """Read an fsar checkpoint; one-line errors for a missing file, another format, or another method."""
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; give a best.pt/last.pt of a run folder (or the folder)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
        raise ValueError(f"{path} is not a readable checkpoint ({type(e).__name__}); give a best.pt or last.pt written by fsar-train") from None
    if isinstance(ckpt, dict) and str(ckpt.get("format", "")).startswith("fsar-checkpoint-") and ckpt["format"] != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} was written by an older fsar ({ckpt['format']}, before the frame adapter and the reference "
                         f"metrics); train it again with this version")
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an fsar-train checkpoint; give a best.pt or last.pt written by fsar-train")
    if method is not None and ckpt["method"] != method:
        raise ValueError(f"{path} is a checkpoint of method '{ckpt['method']}', not '{method}'; drop --method or pick the right checkpoint")
    get_method(ckpt["method"])  # a method this installation does not know: one-line error listing the choices
    ckpt["path"] = str(path)
    return ckpt


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
        raise ValueError(f"--split must be test or val, got '{split}'")
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
