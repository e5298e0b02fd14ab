"""``TrainConfig``: everything a training run depends on, saved in every checkpoint and result."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from fsar.model.adapter import ADAPTERS
from fsar.model.backbones import DEFAULT_SIZE


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
        """A config from a checkpoint's saved dict (fields this version no longer has are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
