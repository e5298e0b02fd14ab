"""One small registry for every pluggable thing: methods, data sets, knowledge kinds, LLM backends, backbones.

    METHODS = Registry("method", package="fsar.model.heads")

    @METHODS.register("otam")
    class OTAMHead(Head): ...

    METHODS.get("otam")      # the class; an unknown name is a one-line UnknownName listing the choices
    METHODS.names()          # sorted names

A name registered twice is refused (a silent overwrite would make which one runs depend on import order).
``package``: the modules of that package are imported on first lookup, so that built-in entries register
themselves without a hand-kept list; one module that fails to import is a warning, not the end of every other entry.
"""
from __future__ import annotations

import importlib
import pkgutil
import warnings
from typing import Callable, Generic, Iterator, TypeVar

from fsar.core.errors import UnknownName

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> object, filled by ``register``; ``what`` names the kind of thing in messages ("method")."""

    def __init__(self, what: str, package: str | None = None):
        self.what = what
        self.package = package
        self._entries: dict[str, T] = {}
        self._loaded = package is None

    def register(self, name: str, obj: T | None = None):
        """Register ``obj`` under ``name``, or use as a decorator: ``@REG.register("name")``."""
        if obj is not None:
            self._add(name, obj)
            return obj

        def wrap(o: T) -> T:
            self._add(name, o)
            return o

        return wrap

    def _add(self, name: str, obj: T) -> None:
        if not name or not isinstance(name, str):
            raise ValueError(f"a {self.what} needs a non-empty string name, got {name!r}")
        old = self._entries.get(name)
        if old is not None and old is not obj and _qualname(old) != _qualname(obj):
            raise ValueError(f"{self.what} '{name}' is registered twice ({_qualname(old)} and {_qualname(obj)})")
        self._entries[name] = obj  # same object (or a module re-imported): keep the newest

    def unregister(self, name: str) -> None:
        """Remove an entry (tests that register a small entry of their own clean up with this)."""
        self._entries.pop(name, None)

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        pkg = importlib.import_module(self.package)
        for mod in pkgutil.iter_modules(pkg.__path__):
            if mod.name.startswith("_"):
                continue
            try:
                importlib.import_module(f"{self.package}.{mod.name}")
            except Exception as e:  # one broken module must not take every other entry down with it
                warnings.warn(f"{self.what} module {self.package}.{mod.name} failed to import "
                              f"({type(e).__name__}: {e})", stacklevel=3)

    def get(self, name: str) -> T:
        """The entry registered as ``name``; an unknown name is a one-line error listing the choices."""
        if name not in self._entries:
            self._load()
        if name not in self._entries:
            raise UnknownName(f"unknown {self.what} '{name}'; choose one of: {', '.join(self.names())}")
        return self._entries[name]

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self) -> list[tuple[str, T]]:
        self._load()
        return sorted(self._entries.items())


def _qualname(obj: object) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"
