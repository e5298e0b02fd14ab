"""Where generated files live: ``$FSAR_CACHE``, else ``cache/`` of a checkout, else the user cache directory."""
from __future__ import annotations

import errno
import os
import re
from pathlib import Path

_CHECKOUT_CACHE = Path(__file__).resolve().parent.parent / "cache"


def cache_root(check: bool = True) -> Path:
    """Root folder for everything fsar generates (knowledge, embeddings, videos, runs).

    A ``FSAR_CACHE`` that is (or lies under) a file raises NotADirectoryError naming it, unless ``check`` is False.
    """
    env = os.environ.get("FSAR_CACHE")
    if env:
        root = Path(env).expanduser().resolve()
        blocker = first_file_on_path(root) if check else None
        if blocker is not None:  # never a valid cache: say so wherever the cache is first used
            raise NotADirectoryError(errno.ENOTDIR, f"FSAR_CACHE={env} cannot be a folder: {blocker} is a file", str(root))
        return root
    # An editable install or a checkout has a cache/ folder next to the code folders.
    if (_CHECKOUT_CACHE.parent / "pyproject.toml").exists():
        return _CHECKOUT_CACHE
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("fsar"))


_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


def check_name(name: str, what: str = "--dataset") -> str:
    """Return ``name`` if it can be one folder of the cache; a ValueError otherwise.

    Names become path components (``cache/knowledge/<dataset>/...``), so ``../../x`` or ``/tmp/x`` would write
    outside the cache: only letters, digits, ``.``, ``_``, ``+`` and ``-`` are taken, starting with a letter or digit.
    """
    if not isinstance(name, str) or not _PLAIN_NAME.fullmatch(name):
        raise ValueError(
            f"{what} '{name}' is not a plain name; use letters, digits, '.', '_', '+' or '-' "
            f"(no '/', no leading '.', at most 128 characters), e.g. my_classes"
        )
    return name


def path_problem(path: str | Path, expect: str = "file") -> str | None:
    """What is wrong with ``path`` when a ``expect`` ("file" or "folder") is wanted there, or None when nothing is.

    Says "is a folder, expected a file" (and the reverse) instead of "does not exist" for something that does.
    """
    path = Path(path)
    if expect == "file":
        if path.is_file():
            return None
        return "is a folder, expected a file" if path.is_dir() else "does not exist"
    if path.is_dir():
        return None
    return "is a file, expected a folder" if path.exists() else "does not exist"


def first_file_on_path(path: Path) -> Path | None:
    """The first existing component of ``path`` (itself included) that is not a folder: why no folder can be made."""
    for p in reversed((path, *path.parents)):
        if p.exists() and not p.is_dir():
            return p
    return None


def ensure_writable(path: Path) -> Path:
    """Create ``path`` and check that we can write in it; raise a one-line PermissionError otherwise."""
    blocker = first_file_on_path(path)
    if blocker is not None:
        inside = cache_root(check=False) in blocker.parents  # a stray file in the cache, not a wrong FSAR_CACHE
        fix = f"remove or move {blocker}, or set FSAR_CACHE to another folder" if inside else "set FSAR_CACHE to a folder"
        raise PermissionError(f"cannot use cache folder {path}: {blocker} is a file, expected a folder; {fix}")
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


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks (checks packaged weights without loading them whole)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
