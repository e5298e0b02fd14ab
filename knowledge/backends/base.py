"""What every LLM backend provides: an identity (for cache keys and provenance) and async generation."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from fsar.core.errors import FsarError


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


# "scheme://user:password@host": the user-info part, up to the last "@" before the path
_USERINFO = re.compile(r"(?<=://)[^\s/?#]*@")


def redact_url(url: str) -> str:
    """``url`` without its credentials: ``http://user:secret@host/v1`` -> ``http://***@host/v1``.

    Every URL that is stored (provenance, cache keys) or shown (messages) goes through this, so a password or token
    given in ``--base-url`` never leaves the process.
    """
    return _USERINFO.sub("***@", url)


def redact_secrets(text: str) -> str:
    """``text`` with the credentials of every URL in it redacted (for messages that may quote a URL)."""
    return _USERINFO.sub("***@", text)


class BackendError(FsarError, RuntimeError):
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
    """A model name or path as one plain folder name: ``/models/Gemma-3.gguf`` -> ``gemma-3``."""
    name = model.rstrip("/").split("/")[-1]
    name = re.sub(r"\.gguf$", "", name, flags=re.I)
    # a plain name (see fsar.data.paths.check_name): it is a folder of the cache, so ".." must not climb out of it
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-._").lower()[:128] or "model"
