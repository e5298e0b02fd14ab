"""What every LLM backend provides: an identity (for cache keys and provenance) and async generation."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters; part of every cache key."""

    seed: int = 0
    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 384
    # small models loop on one phrase; a penalty on tokens already generated breaks the loop
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    no_repeat_ngram: int = 0  # llamacpp only: no run of this many words twice in one answer

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Completion:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0


class BackendError(RuntimeError):
    """A backend that cannot run (bad model file, unreachable server, missing package): a one-line reason."""


class Backend:
    """Base class. Subclasses set ``name`` and ``model`` and implement ``agenerate``."""

    name: str = "base"
    model: str = ""
    concurrency: int = 1

    def identity(self) -> dict:
        """What identifies the model exactly (a GGUF file's hash, a served model's name and URL)."""
        return {"backend": self.name, "model": self.model}

    @property
    def slug(self) -> str:
        """A folder-safe model name for the knowledge store: ``cache/knowledge/<dataset>/<kind>/<slug>/``."""
        return model_slug(self.model)

    async def agenerate(self, prompt: str, schema: dict, sampling: Sampling) -> Completion:
        raise NotImplementedError

    def close(self) -> None:
        pass


def model_slug(model: str) -> str:
    name = model.rstrip("/").split("/")[-1]
    name = re.sub(r"\.gguf$", "", name, flags=re.I)
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-").lower() or "model"
