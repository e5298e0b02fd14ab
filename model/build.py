"""What a run is built from, shared by ``fsar-train`` and ``fsar-eval``: the videos of a split, the text bank a
method needs, the model (backbone, adapter, head), and where features and runs are kept."""
from __future__ import annotations

import contextlib
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from fsar.core.errors import FsarError
from fsar.model.adapter import FrameAdapter
from fsar.model.backbones import build_backbone, get_backbone
from fsar.model.config import ConfigError, TrainConfig
from fsar.model.features import derived_seed
from fsar.model.fewshot import FewShotModel, text_for
from fsar.model.registry import build_method, get_method

if TYPE_CHECKING:  # the contract imports datasets (slow); stage 2 needs its type only for hints
    from fsar.knowledge.contract import TextEmbeddings


class InputError(FsarError):
    """Bad input reported by a module that still signals it with a builtin exception (see ``user_errors_of``)."""


@contextlib.contextmanager
def user_errors_of(*kinds: type[BaseException]):
    """Inside: the listed builtin exceptions become a one-line ``InputError`` (the original chained).

    our choice: the data loaders, the method registry and the knowledge contract report bad input (no root, an
    unknown option, missing knowledge) with ValueError, KeyError or FileNotFoundError; we translate them only around
    those calls, so that a ValueError anywhere else (a bug) keeps its traceback. Drop a use once its callee raises
    FsarError itself.
    """
    try:
        yield
    except FsarError:
        raise
    except kinds as e:
        text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        raise InputError(text.strip().splitlines()[0] if text.strip() else type(e).__name__) from e


def check_names(cfg: TrainConfig) -> None:
    """An unknown method, backbone or data set: a one-line error listing the choices, before any data work."""
    from fsar.data.registry import get_dataset

    with user_errors_of(KeyError):  # the method registry (until it raises UnknownName)
        get_method(cfg.method)
    get_backbone(cfg.backbone)
    get_dataset(cfg.dataset)


def load_records(cfg: TrainConfig, split: str) -> list:
    """The videos of one split of the configured data set."""
    from fsar.data.loaders import list_videos

    with user_errors_of(ValueError, KeyError, FileNotFoundError):  # no --root, a missing root, an empty split
        return list_videos(cfg.dataset, cfg.root, split)


def check_fits(records: list, way: int, shot: int, query: int, split: str) -> None:
    """One-line error when the split cannot make ``way``-way episodes with shot + query videos per class."""
    counts = Counter(r.class_key for r in records)
    need = shot + query
    big = [k for k, n in counts.items() if n >= need]
    if len(counts) < way:
        raise ConfigError(f"the {split} split has {len(counts)} classes with videos, fewer than --way {way}; lower --way")
    if len(big) < way:
        key, n = min(counts.items(), key=lambda kv: kv[1])
        raise ConfigError(
            f"--shot {shot} + {query} queries = {need} videos per class, but only {len(big)} {split} classes have "
            f"that many (e.g. '{key}' has {n}); lower --shot or --query"
        )


def load_bank(cfg: TrainConfig) -> TextEmbeddings | None:
    """The text the method asks for with its options (None, class names, or a knowledge kind).

    With ``create_text``, missing knowledge of a kind is generated and embedded first, through the same pipeline
    (and progress report) as ``fsar-knowledge``, and a class the LLM kept failing on falls back to its name; without
    it, missing knowledge is a one-line error naming the command.
    """
    need = get_method(cfg.method).text_need(cfg.opts)
    with user_errors_of(ValueError, KeyError, FileNotFoundError):  # missing knowledge, unknown encoder, no text for a class
        if need not in (None, "names") and cfg.create_text:
            from fsar.knowledge.pipeline import ensure_knowledge

            ensure_knowledge(cfg.dataset, need, split="all", encoder=cfg.encoder, progress=cfg.progress)
        return text_for(need, cfg.dataset, cfg.encoder, allow_missing=cfg.create_text)


def build_model(cfg: TrainConfig, bank: TextEmbeddings | None, backbone_config=None, num_classes: int = 0) -> FewShotModel:
    """Backbone + head from a resolved config (the head gets the backbone's width and the text width); with
    ``num_classes`` (training) also the classifier of the auxiliary classification loss."""
    backbone = build_backbone(cfg.backbone, cfg.backbone_path, cfg.tune, seed=cfg.seed, config=backbone_config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derived_seed(cfg.seed, 7))
        cls = get_method(cfg.method)
        adapter = None
        if cfg.adapter == "spatial":
            adapter = FrameAdapter(backbone.dim, cfg.adapter_dim, tokens=cls.needs_tokens)
        with user_errors_of(ValueError, KeyError):  # an unknown or bad method option (until heads raise FsarError)
            head = build_method(cfg.method, dim=adapter_width(backbone, adapter), num_frames=cfg.frames,
                                text_dim=bank.dim if bank is not None else None, **cfg.opts)
        model = FewShotModel(backbone, head, num_classes=num_classes, class_loss=cfg.class_loss, adapter=adapter)
    return model


def adapter_width(backbone, adapter) -> int:
    """The feature width the head sees."""
    return adapter.global_proj.out_features if adapter is not None else backbone.dim


def features_dir() -> Path:
    """Where cached backbone features live (under the cache root)."""
    from fsar.data.paths import cache_root

    return cache_root() / "features"


def default_run_dir(cfg: TrainConfig) -> Path:
    """<cache>/runs/<method>-<dataset>-<way>w<shot>s-<backbone>-seed<seed>-<time>."""
    from fsar.data.paths import cache_root

    stamp = time.strftime("%Y%m%d-%H%M%S")
    return cache_root() / "runs" / f"{cfg.method}-{cfg.dataset}-{cfg.way}w{cfg.shot}s-{cfg.backbone}-seed{cfg.seed}-{stamp}"
