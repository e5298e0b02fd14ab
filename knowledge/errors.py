"""The user errors of stage 1: each an ``FsarError`` (one ``error:`` line) that keeps its older built-in base."""
from __future__ import annotations

from fsar.core.errors import FsarError


class KnowledgeError(FsarError, ValueError):
    """Knowledge that cannot be used as asked: an empty set, no valid class, no class in the split."""


class KnowledgeNotFoundError(FsarError, FileNotFoundError):
    """A knowledge set or its embeddings is not in the cache (or out of date); the message names the command."""
