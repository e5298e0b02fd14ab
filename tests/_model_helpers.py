"""Shared set-up for the model tests: a small real synthetic benchmark (mp4 files) and fast training configs."""
from __future__ import annotations

from pathlib import Path

import pytest

from fsar.model.trainer import TrainConfig

SIZE = 32  # pixels: the tiny backbone gives a 2 x 2 feature map
PER_CLASS = 6


def small_synthetic(root: Path) -> Path:
    """6 train, 5 val and 5 test classes of the real synthetic benchmark, 6 videos each, 32 px, 8 frames."""
    from fsar.data.registry import get_dataset
    from fsar.data.synthetic import ensure_synthetic

    ds = get_dataset("synthetic")
    keys = [c.key for c in ds.split("train")[:6] + ds.split("val")[:5] + ds.split("test")[:5]]
    return ensure_synthetic(root, videos_per_class=PER_CLASS, size=SIZE, frames=8, classes=keys, progress=False, quiet=True)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    return small_synthetic(tmp_path_factory.mktemp("synthetic") / "small")


def fast_config(root: Path, out: Path, **kw) -> TrainConfig:
    """A training run of a few seconds on the small benchmark."""
    base = dict(dataset="synthetic", root=str(root), backbone="tiny", way=5, shot=1, query=1, size=SIZE, episodes=20, val_every=10,
                val_episodes=20, test_episodes=30, out=str(out), progress=False, log_every=1)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(autouse=False)
def one_thread():
    """Run torch on one thread: small ops on 2 shared, busy cores spin far longer with two OpenMP threads."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_backbones() -> list[tuple[str, object, int, int]]:
    """(name, random-init transformers config or None, input size, tokens per frame) of a tiny CNN, a one-layer
    CLIP tower and a small ResNet: every backbone kind a head must work on, without any download."""
    from transformers import CLIPVisionConfig, ResNetConfig

    clip = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8)
    res = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1], layer_type="basic")
    return [("tiny", None, 32, 1 + 4), ("clip", clip, 32, 1 + 16), ("resnet50", res, 64, 1 + 4)]
