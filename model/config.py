"""``TrainConfig``: everything a training run depends on, saved in every checkpoint and result.

Each field carries its command-line help (``option(default, help)``): ``fsar-train`` builds its options from these
fields, so a default and its help are written once, here. ``load_config`` reads a whole experiment from a JSON file
of these fields, checking every name and value type with a one-line error naming the field.
"""
from __future__ import annotations

import difflib
import json
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from fsar.core.errors import FsarError


class ConfigError(FsarError, ValueError):
    """A setting that cannot work (unknown field, wrong type, out of range); the message names the field."""


def option(default, help: str, cli: bool = True):
    """A config field with its default and command-line help; ``cli=False``: no generated option (set otherwise)."""
    meta = {"help": help, "cli": cli}
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Everything a run depends on; saved in every checkpoint and result."""

    method: str = option("prototype", "Method (head) to train; see the list in the error for an unknown name.")
    dataset: str = option("synthetic", "Data set from the registry (synthetic needs no --root).")
    root: str | None = option(None, "Data root: root/<class>/<video> (or SSv2 ids with label JSON).")
    way: int = option(5, "Classes per episode (N).")
    shot: int = option(1, "Support videos per class (K); K-shot results come from K-shot training.")
    query: int = option(3, "Training queries per class (evaluation always uses 1, the protocol).")
    frames: int = option(8, "Frames per clip (one per equal segment).")
    size: int | None = option(None, "Input size; default by backbone (effnet 128, dinov2-s 112, tiny 64, clip/resnet50 224).")
    backbone: str = option("dinov2-s", "dinov2-s (default: packaged DINOv2 ViT-S/14, frozen), effnet-lite0/1/2 "
                                       "(packaged ImageNet weights, faster, less accurate), tiny (from scratch), "
                                       "resnet50 or clip.")
    backbone_path: str | None = option(None, "Local copy of the backbone weights (else the hub id).")
    tune: str = option("auto", "frozen, full, or N (last N blocks); auto: full for tiny, frozen otherwise.")
    adapter: str = option("auto", "Trainable frame adapter on the backbone features: spatial or none "
                                  "(auto: spatial on pretrained backbones).")
    adapter_dim: int = option(128, "Width of the adapter's frame features (what the head sees).")
    train_views: int = option(1, "Frozen backbone: cached augmented views per training video (1 = none).")
    view_seed: int = option(0, "Seed of those views' augmentation (fixed, so that runs of every seed share one cache).")
    episodes: int = option(800, "Training episodes (all ranks together).")
    batch: int = option(1, "Episodes per forward pass (per rank).")
    accum: int = option(1, "Forward passes per optimizer step (gradient accumulation).")
    optimizer: str = option("adamw", "adam or adamw.")
    lr: float = option(1e-3, "Learning rate of the head (the backbone's is scaled, see --backbone-lr-scale).")
    class_loss: float = option(0.5, "Weight of the classification loss over all training classes (0 = episodic loss only).")
    backbone_lr_scale: float | None = option(None, "Backbone lr = lr x this (default 1 tiny, 0.1 pretrained).")
    weight_decay: float = option(0.05, "Weight decay of the optimizer.")
    warmup: float = option(0.05, "Fraction of steps with a linear warm-up.")
    schedule: str = option("cosine", "cosine or constant after the warm-up.")
    clip_grad: float = option(5.0, "Max gradient norm (0 = off).")
    amp: bool = option(True, "bf16 autocast (on GPUs only).")
    val_every: int = option(250, "Episodes between validations on the val classes (and always at the end).")
    val_episodes: int = option(500, "Validation episodes (1 query per class).")
    test_episodes: int = option(10000, "Test episodes at the end (1 query per class).")
    test_shot: int | None = option(None, "Evaluate with another shot than trained (the result says so).")
    seed: int = option(0, "Seed of everything: init, episodes, augmentation.")
    encoder: str | None = option(None, "Text encoder for methods that use text (default MiniLM).")
    opts: dict = option({}, "Method options (head keyword arguments); on the command line --opt KEY=VALUE.", cli=False)
    out: str | None = option(None, "Run folder (default: <cache>/runs/<method>-...).")
    device: str = option("auto", "auto, cpu, cuda, cuda:N.")
    log_every: int = option(10, "Optimizer steps between log lines.")
    eval_batch: int = option(64, "Episodes per batch at evaluation.")
    resume: bool = option(False, "Continue the run in --out from its last checkpoint.")
    stop_at: int | None = option(None, "Stop after this many episodes (resume later with --resume).")
    test: bool = option(True, "Evaluate on the test classes at the end (--no-test skips it).")
    progress: bool = option(True, "Show the progress bar.")
    create_text: bool = option(True, "Generate missing knowledge / embeddings (embedded LLM, MiniLM) instead of failing.")
    frame_cache: bool = option(True, "Decode each video once (train clips lose temporal jitter).")

    def resolved(self) -> "TrainConfig":
        """Check the values and fill the automatic ones (size, tuning, adapter, backbone learning rate, test shot)."""
        from fsar.model.adapter import ADAPTERS
        from fsar.model.backbones import DEFAULT_SIZE

        cfg = TrainConfig(**asdict(self))
        for name in AT_LEAST_ONE:
            value = getattr(cfg, name)
            if value is not None and value < 1:
                raise ConfigError(f"{flag(name)} must be at least 1, got {value}")
        for name, choices in (("optimizer", ("adam", "adamw")), ("schedule", ("cosine", "constant"))):
            if getattr(cfg, name) not in choices:
                raise ConfigError(f"unknown {flag(name)} '{getattr(cfg, name)}'; choose {' or '.join(choices)}")
        if cfg.size is None:
            cfg.size = DEFAULT_SIZE.get(cfg.backbone, 224)
        if cfg.tune == "auto":
            cfg.tune = "full" if cfg.backbone == "tiny" else "frozen"
        if cfg.adapter == "auto":
            cfg.adapter = "none" if cfg.backbone == "tiny" else "spatial"
        if cfg.adapter not in ADAPTERS:
            raise ConfigError(f"unknown --adapter '{cfg.adapter}'; choose one of: {', '.join(ADAPTERS)}")
        if cfg.adapter == "spatial" and (cfg.adapter_dim % 4 or cfg.frames > 64):
            raise ConfigError(f"the frame adapter needs a width divisible by 4 and at most 64 frames "
                              f"(got {cfg.adapter_dim}, {cfg.frames}); change --frames or use --adapter none")
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


# counts that make no sense below 1 (a validation every 0 episodes, 0 frames, ...)
AT_LEAST_ONE = ("way", "shot", "query", "frames", "size", "adapter_dim", "train_views", "episodes", "batch", "accum",
                "val_every", "val_episodes", "test_episodes", "test_shot", "log_every", "eval_batch")


def flag(name: str) -> str:
    """The command-line flag of a field: ``train_views`` -> ``--train-views``."""
    return "--" + name.replace("_", "-")


def field_types() -> dict[str, tuple[type, bool]]:
    """Field name -> (its value type, whether None is allowed), read from the annotations."""
    out = {}
    for name, hint in typing.get_type_hints(TrainConfig).items():
        args = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union else ()
        if args:
            out[name] = (next(a for a in args if a is not type(None)), type(None) in args)
        else:
            out[name] = (hint, False)
    return out


def field_default(name: str):
    """A field's default value."""
    f = next(f for f in fields(TrainConfig) if f.name == name)
    return f.default_factory() if f.default is MISSING else f.default


_KIND = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "an object {...}"}


def check_value(name: str, value, where: str):
    """``value`` if it has the field's type (an integer is a valid float); else a one-line error naming the field."""
    kind, optional = field_types()[name]
    if value is None and optional:
        return None
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok, value = True, float(value)
    if not ok:
        none = " or null" if optional else ""
        raise ConfigError(f"{where}: field '{name}' must be {_KIND[kind]}{none}, got {json.dumps(value)}")
    return value


def config_values(data, where: str) -> dict:
    """The fields of a JSON object, each name and value type checked; unknown names are one-line errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object of TrainConfig fields, e.g. {{\"method\": \"otam\", \"way\": 5}}")
    names = [f.name for f in fields(TrainConfig)]
    out = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{where}: unknown field '{key}'{hint}; the fields are fsar-train's options, e.g. way, shot, lr")
        out[key] = check_value(key, value, where)
    return out


def load_config(path: str | Path) -> dict:
    """The fields set in a run file (JSON object of TrainConfig fields), checked; the caller applies them."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; give a JSON file of TrainConfig fields")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        line = f"line {e.lineno}: " if isinstance(e, json.JSONDecodeError) else ""
        raise ConfigError(f"{path}: {line}not valid JSON; expected an object of TrainConfig fields") from None
    return config_values(data, str(path))
