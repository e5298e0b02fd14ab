"""LLM backends: embedded llama.cpp (default), any OpenAI-compatible server, in-process vLLM.

Each backend registers a factory ``(model, base_url, concurrency) -> Backend`` in ``BACKENDS`` (the project's one
``Registry``); the factory imports its module only when called, so a missing optional package (vLLM) costs nothing
until that backend is asked for.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from fsar.core.errors import UnknownName
from fsar.core.registry import Registry
from fsar.knowledge.backends.base import Backend, BackendError, Completion, Sampling, redact_url

BACKENDS: Registry[Callable[[str | None, str | None, int | None], Backend]] = Registry("backend")


@BACKENDS.register("llamacpp")
def _llamacpp(model: str | None, base_url: str | None, concurrency: int | None) -> Backend:
    from fsar.knowledge.backends.llamacpp import LlamaCppBackend

    if model and Path(model).expanduser().is_dir():  # say what it is, not that it "does not exist"
        raise BackendError(f"model file {model} is a folder, expected a file; pass --model PATH.gguf")
    return LlamaCppBackend(model, parallel=concurrency)


@BACKENDS.register("openai")
def _openai(model: str | None, base_url: str | None, concurrency: int | None) -> Backend:
    from fsar.knowledge.backends.openai_api import OpenAIBackend

    return OpenAIBackend(model, base_url=base_url, concurrency=concurrency or 4)


@BACKENDS.register("vllm")
def _vllm(model: str | None, base_url: str | None, concurrency: int | None) -> Backend:
    from fsar.knowledge.backends.vllm_backend import VLLMBackend

    return VLLMBackend(model)


def make_backend(name: str, model: str | None = None, base_url: str | None = None, concurrency: int | None = None) -> Backend:
    """Build a backend by name; a one-line BackendError when it cannot run here. ``concurrency``: requests in flight
    (None: the backend's default, 8 sequences decoded together for llamacpp, 4 requests for openai)."""
    try:
        factory = BACKENDS.get(name)
    except UnknownName as e:
        raise BackendError(str(e)) from None
    return factory(model, base_url, concurrency)


__all__ = ["BACKENDS", "Backend", "BackendError", "Completion", "Sampling", "make_backend", "redact_url"]
