"""Knowledge kinds, one module each, registered in ``KINDS``: adding a kind is its module, its template, its examples.

A kind says everything the shared stage-1 code needs to know about it, so that code loops over declarations instead
of branching on names:

    @KINDS.register("mykind")
    class MyKind(KnowledgeKind):
        name = "mykind"
        paper = "..."; description = "..."
        default_counts = {"facts": 3}                   # count options (fsar-knowledge generate --count facts=5)
        fields = ("facts",)                             # what stage 1 embeds, per class, in this order
        def answer_fields(self, counts): ...            # the pydantic fields of an answer (its JSON schema)
        def features(self): ...                         # the typed ``datasets`` features of a stored answer
        def check(self, knowledge, class_name): ...     # semantic checks: raise InvalidAnswer
        def texts(self, knowledge): ...                 # field -> texts (what is embedded)

and, where the defaults do not fit, ``widths`` / ``scalars`` / ``pool`` (the tensor layout stage 2 gets),
``report_fields`` / ``kept_fields`` / ``report_units`` / ``drop`` (what the report scores and ``--filter`` may drop),
``template`` / ``template_source`` / ``examples`` (its prompt). The built-in kinds are ``dist``, ``lga`` and ``star``.
"""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, create_model

from fsar.core.errors import UnknownName
from fsar.core.registry import Registry

if TYPE_CHECKING:  # annotations only: the CLI imports kinds without loading torch
    import numpy as np
    import torch


class KnowledgeKind:
    """The base of every knowledge kind; a subclass declares its name, counts, fields and the methods below."""

    name: str = ""
    paper: str = ""
    description: str = ""
    default_counts: dict[str, int] = {}  # count options and their defaults, e.g. {"spatial": 4}
    fields: tuple[str, ...] = ()  # the embedded fields, in order (``texts`` returns them)
    widths: dict[str, int] = {}  # fields of a fixed width in the contract's tensors (others: the widest class)
    scalars: tuple[str, ...] = ()  # fields with one vector per class: [C, D] and a [C] mask in the contract
    report_fields: tuple[str, ...] | None = None  # the report's items (default: ``fields``)
    kept_fields: tuple[str, ...] = ()  # report items that ``--filter`` never drops

    # ---------------------------------------------------------------- schema and storage

    def answer_fields(self, counts: dict[str, int]) -> dict[str, tuple[Any, Any]]:
        """The pydantic fields of an answer for the given counts, in the order the model writes them."""
        raise NotImplementedError

    def features(self) -> dict:
        """The typed ``datasets`` features of the stored knowledge (the ``knowledge`` column of the store)."""
        raise NotImplementedError

    def counts(self, given: dict[str, int | None] | None = None) -> dict[str, int]:
        """The kind's counts: its defaults, overridden by the given ones it knows (others are for other kinds)."""
        return {**self.default_counts, **{k: v for k, v in (given or {}).items() if k in self.default_counts and v is not None}}

    def schema(self, action: str | None = None, **counts: int) -> type[BaseModel]:
        """The answer schema. With ``action``, the answer must open with ``"action": "<action>"``: constrained
        decoding then writes the class name just before the content, which keeps a small model on the topic
        instead of drifting to the worked examples. ``knowledge_of`` drops that field again."""
        from fsar.knowledge.schemas import Strict

        c = {**self.default_counts, **{k: v for k, v in counts.items() if v is not None}}
        head = {"action": (Literal[action], ...)} if action else {}
        return create_model(f"{self.name.title()}Knowledge", __base__=Strict, **head, **self.answer_fields(c))

    @staticmethod
    def knowledge_of(answer: dict) -> dict:
        """The stored knowledge: the answer without its ``action`` anchor."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in answer.items() if k != "action"}

    # ---------------------------------------------------------------- validation

    def precheck(self, answer: dict) -> None:
        """Checks on the parsed JSON before the schema, for a clearer message than the schema's (default: none)."""

    def check(self, knowledge: dict, class_name: str) -> None:
        """Semantic checks of one valid answer for ``class_name``; raise ``InvalidAnswer`` with a one-line reason."""

    # ---------------------------------------------------------------- prompt

    @property
    def template(self) -> str:
        """The template's file name in ``fsar.prompts`` (recorded in each row's provenance)."""
        return f"{self.name}.jinja"

    def template_source(self) -> str:
        """The Jinja2 template text (override to keep a template outside the package)."""
        return (resources.files("fsar.prompts") / self.template).read_text()

    def examples(self) -> list[dict]:
        """The worked examples shown in the prompt, ``[{"name": ..., "answer": {...}}]`` (``prompts/examples.json``)."""
        return list(_packaged_examples().get(self.name, []))

    # ---------------------------------------------------------------- embedding and the stage-2 layout

    def texts(self, knowledge: dict) -> dict[str, list[str]]:
        """The texts of one class's knowledge, grouped by field, in order (what stage 1 embeds)."""
        raise NotImplementedError

    def items(self, knowledge: dict) -> list[tuple[str, int, str]]:
        """(field, slot, text) of one class's knowledge; a slot is the position in the field's tensor row."""
        return [(f, i, t) for f, texts in self.texts(knowledge).items() for i, t in enumerate(texts) if t]

    def pool(self, items: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> None:
        """Add fields made from the embedded ones (e.g. a pooled vector per slot) to ``items`` / ``masks`` in place;
        items are [C, N, D], masks [C, N] (default: none)."""

    # ---------------------------------------------------------------- report and filter

    def report_units(self, rows: list[dict], vectors: np.ndarray, row_of: dict[str, int]) -> list[dict]:
        """The report's items from an embedding set's rows: one per embedded text of a ``report_fields`` field."""
        fields = self.report_fields if self.report_fields is not None else self.fields
        return [{"class_key": r["class_key"], "field": r["field"], "slot": r["slot"], "text": r["text"], "vec": v,
                 "droppable": r["field"] not in self.kept_fields}
                for r, v in zip(rows, vectors) if r["field"] in fields]

    def drop(self, knowledge: dict, gone: set[tuple[str, int]]) -> dict:
        """The knowledge without the items ``(field, slot)`` in ``gone`` (the default: list fields lose those slots)."""
        return {f: [t for i, t in enumerate(v) if (f, i) not in gone] if isinstance(v, list) else v
                for f, v in knowledge.items()}


@lru_cache(maxsize=1)
def _packaged_examples() -> dict[str, list[dict]]:
    return json.loads((resources.files("fsar.prompts") / "examples.json").read_text())


KINDS: Registry[type[KnowledgeKind]] = Registry("knowledge kind", package="fsar.knowledge.kinds")


def get_kind(name: str) -> KnowledgeKind:
    """The kind registered as ``name``; an unknown name is a one-line error naming the known kinds."""
    if name not in KINDS:
        raise UnknownName(f"unknown knowledge kind '{name}'; known kinds: {', '.join(KINDS.names())} (or 'all')")
    kind = KINDS.get(name)()
    if kind.name != name:  # the name is a folder of the store and a key of its rows: one name, not two
        raise ValueError(f"knowledge kind {type(kind).__qualname__} is registered as '{name}' but names itself '{kind.name}'")
    return kind


def parse_kinds(spec: str) -> list[KnowledgeKind]:
    """``dist,lga`` or ``all`` -> the kinds, in the order given."""
    names = KINDS.names() if spec.strip() == "all" else [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise UnknownName(f"no knowledge kind given; known kinds: {', '.join(KINDS.names())} (or 'all')")
    return [get_kind(n) for n in names]


__all__ = ["KnowledgeKind", "KINDS", "get_kind", "parse_kinds"]
