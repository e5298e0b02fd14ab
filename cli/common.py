"""What every command line shares: a console for messages (stderr), one for results (stdout), one-line errors.

``fail`` prints an error as plain text (never as rich markup, so ``pip install 'fsar[vllm]'`` shows as written) with
URL credentials redacted. ``os_error_line`` turns the OSErrors a user causes with the cache (read-only, a file where
a folder should be, no space left) into one line naming the path and what to do; ``run_cli`` applies it to a whole
Typer app, so no command prints a traceback for them. Other OSErrors keep their traceback: they are bugs.
"""
from __future__ import annotations

import errno
import os
import re
import sys
from pathlib import Path
from typing import Iterable

import typer
from rich.console import Console
from rich.text import Text

from fsar.knowledge.backends.base import redact_secrets

console = Console(stderr=True)  # progress, messages and errors
out = Console()  # results: JSON, tables

# errors of the file system that the user causes and can fix; anything else is a bug and keeps its traceback
USER_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST, errno.EISDIR, errno.ENOSPC, errno.EDQUOT}


def print_error(message: str) -> None:
    """Print ``error: <message>`` on stderr: plain text, credentials in URLs redacted."""
    console.print(Text.assemble(("error:", "bold red"), " ", redact_secrets(str(message))), highlight=False, soft_wrap=True)


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error and exit with ``code``."""
    print_error(message)
    raise typer.Exit(code)


def _under(path: Path, roots: Iterable[Path]) -> bool:
    return any(path == r or r in path.parents for r in roots)


def os_error_line(e: BaseException, user_paths: Iterable[str | Path] = ()) -> str | None:
    """One line for an OSError the user caused on a cache path (or one of ``user_paths``, e.g. an ``--out`` file),
    naming the path and what to do; None for any other error (which should keep its traceback)."""
    if isinstance(e, PermissionError) and e.errno is None and e.args and isinstance(e.args[0], str):
        return e.args[0]  # our own one-line message (fsar.data.paths.ensure_writable)
    if not isinstance(e, OSError) or e.errno not in USER_ERRNOS or not e.filename:
        return None
    from fsar.data.paths import cache_root, first_file_on_path

    path = Path(os.path.abspath(os.fsdecode(e.filename)))
    temp = re.fullmatch(r"\.(.+)\.\d+\.tmp", path.name)  # an atomic write's temp file: name the file it makes
    if temp:
        path = path.with_name(temp.group(1))
    cache = cache_root(check=False)
    if not _under(path, [cache, *(Path(os.path.abspath(p)) for p in user_paths)]):
        return None
    fix = "set FSAR_CACHE to a writable folder" if _under(path, [cache]) else "choose a path you can write to"
    if e.errno in (errno.ENOTDIR, errno.EEXIST):
        blocker = first_file_on_path(path)
        if blocker is None:
            return None  # an existing folder: not something the user did
        if blocker == cache or blocker in cache.parents:
            return f"cannot use cache folder {cache}: {blocker} is a file, expected a folder; set FSAR_CACHE to a folder"
        return f"cannot write {path}: {blocker} is a file, expected a folder; remove or move {blocker}, or {fix}"
    if e.errno == errno.EISDIR:
        return f"cannot write {path}: it is a folder, expected a file; give a file path"
    if e.errno == errno.EROFS:
        return f"cannot write {path}: the file system is read-only; {fix}"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"cannot write {path}: no space left on the device; free some space or {fix}"
    return f"permission denied on {path}; {fix}"


def error_message(e: BaseException) -> str:
    """One line for an exception shown to the user: a KeyError's text without quotes, a user-caused OSError as
    ``os_error_line`` says it, otherwise the first line of its text (never a bare errno such as ``17``)."""
    if isinstance(e, KeyError) and e.args:
        text = str(e.args[0])
    else:
        text = os_error_line(e) or str(e)
    text = text.strip()
    return text.splitlines()[0] if text else type(e).__name__


def run_cli(app: typer.Typer, prog_name: str | None = None) -> None:
    """Run a Typer app; a user-caused OSError on a cache path becomes one ``error:`` line and exit status 2."""
    try:
        app(prog_name=prog_name)
    except OSError as e:
        line = os_error_line(e)
        if line is None:
            raise
        print_error(line)
        sys.exit(2)
