"""The one base class of the errors a user causes and can fix.

Raise an ``FsarError`` (or a subclass) for bad input, missing knowledge, an unknown name, an unavailable model:
its message is one line naming what is wrong and what to do, and every command line prints it as ``error: ...``
with exit status 2. Anything else (a KeyError, a ValueError from a library) is a bug and keeps its traceback.
"""
from __future__ import annotations


class FsarError(Exception):
    """A user-caused error with a one-line message that says what to do."""


class UnknownName(FsarError, KeyError):
    """A name that no registry holds (a method, data set, knowledge kind, backend or backbone)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
