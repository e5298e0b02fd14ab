"""Where generated files live: ``$FSAR_CACHE``, else ``cache/`` of a checkout, else the user cache directory."""
from __future__ import annotations

import os
from pathlib import Path

_CHECKOUT_CACHE = Path(__file__).resolve().parent.parent / "cache"


def cache_root() -> Path:
    """Root folder for everything fsar generates (knowledge, embeddings, videos, runs)."""
    env = os.environ.get("FSAR_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    # An editable install or a checkout has a cache/ folder next to the code folders.
    if (_CHECKOUT_CACHE.parent / "pyproject.toml").exists():
        return _CHECKOUT_CACHE
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("fsar"))


def ensure_writable(path: Path) -> Path:
    """Create ``path`` and check that we can write in it; raise a one-line error otherwise."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise PermissionError(
            f"cannot write to cache folder {path} ({e.strerror}); set FSAR_CACHE to a writable folder"
        ) from None
    return path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so that readers see either the old content or the new, never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
