"""LLM backends: embedded llama.cpp (default), any OpenAI-compatible server, in-process vLLM."""
from __future__ import annotations

from pathlib import Path

from fsar.knowledge.backends.base import Backend, BackendError, Completion, Sampling, redact_url

BACKENDS = ("llamacpp", "openai", "vllm")


def make_backend(name: str, model: str | None = None, base_url: str | None = None, concurrency: int | None = None) -> Backend:
    """Build a backend by name; a one-line BackendError when it cannot run here. ``concurrency``: requests in flight
    (None: the backend's default, 8 sequences decoded together for llamacpp, 4 requests for openai)."""
    if name == "llamacpp":
        from fsar.knowledge.backends.llamacpp import LlamaCppBackend

        if model and Path(model).expanduser().is_dir():  # say what it is, not that it "does not exist"
            raise BackendError(f"model file {model} is a folder, expected a file; pass --model PATH.gguf")

        return LlamaCppBackend(model, parallel=concurrency)
    if name == "openai":
        from fsar.knowledge.backends.openai_api import OpenAIBackend

        return OpenAIBackend(model, base_url=base_url, concurrency=concurrency or 4)
    if name == "vllm":
        from fsar.knowledge.backends.vllm_backend import VLLMBackend

        return VLLMBackend(model)
    raise BackendError(f"unknown backend '{name}'; choose one of {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "Backend", "BackendError", "Completion", "Sampling", "make_backend", "redact_url"]
