"""Shared test set-up: never reach a hub, and give every test its own cache folder."""
from __future__ import annotations

import os

import pytest

# Nothing may download weights or data sets in tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def fsar_cache(tmp_path, monkeypatch):
    """A fresh, empty FSAR_CACHE for one test."""
    root = tmp_path / "cache"
    root.mkdir()
    monkeypatch.setenv("FSAR_CACHE", str(root))
    return root
