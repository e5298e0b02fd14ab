"""Content-addressed cache of LLM answers: one JSON file per request, written atomically.

The key is the SHA-256 of the canonical JSON of everything that determines the answer: backend, model identity
(a GGUF file's hash), rendered prompt, JSON schema and sampling parameters. A run killed at any moment leaves
only whole entries, so a rerun replays every finished request and asks the LLM only for the rest.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from fsar.data.paths import atomic_write_text


def canonical_json(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def request_key(request: dict) -> str:
    return sha256_text(canonical_json(request))


class ResponseCache:
    """Answers stored under ``root/<key[:2]>/<key>.json``."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        path = self._path(key)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            path.unlink(missing_ok=True)  # cannot happen with atomic writes, but never trust a bad entry
            return None

    def put(self, key: str, request: dict, response: dict) -> None:
        atomic_write_text(self._path(key), canonical_json({"request": request, "response": response}))
