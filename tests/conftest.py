"""Shared test set-up: never reach a hub, and give every test its own cache folder."""
from __future__ import annotations

import os

import pytest

# Nothing may download weights or data sets in tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The embedded default LLM is Qwen2.5-Coder-1.5B (1.1 GB, about 6x slower); tests that are not about the model use the
# fast Gemma 3 270M (tests/test_llm_models.py covers the default and Qwen itself).
os.environ.setdefault("FSAR_LLM_MODEL", "gemma-3-270m")


@pytest.fixture
def fsar_cache(tmp_path, monkeypatch):
    """A fresh, empty FSAR_CACHE for one test."""
    root = tmp_path / "cache"
    root.mkdir()
    monkeypatch.setenv("FSAR_CACHE", str(root))
    return root
