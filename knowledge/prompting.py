"""Render a kind's Jinja2 template for one class, with its worked examples (``prompts/examples.json`` for the built-in kinds)."""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING

import jinja2

from fsar.knowledge.cache import sha256_text
from fsar.knowledge.validate import normalize

if TYPE_CHECKING:
    from fsar.knowledge.kinds import KnowledgeKind


@lru_cache(maxsize=None)
def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(lambda name: (resources.files("fsar.prompts") / name).read_text()),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
        autoescape=False,
    )
    # Jinja's own tojson sorts keys; the examples must show fields in the order the schema makes the model write them
    env.filters["tojson"] = lambda value: json.dumps(value, ensure_ascii=False)
    return env


def _kind(kind: str | KnowledgeKind) -> KnowledgeKind:
    from fsar.knowledge.kinds import get_kind

    return get_kind(kind) if isinstance(kind, str) else kind


@lru_cache(maxsize=None)
def _packaged_examples(name: str) -> list[dict]:
    return json.loads((resources.files("fsar.prompts") / "examples.json").read_text())[name]


def examples(kind: str | KnowledgeKind) -> list[dict]:
    """The worked examples of a kind (or of the contrast prompt, ``"contrast"``)."""
    return _packaged_examples(kind) if kind == "contrast" else _kind(kind).examples()


def template_source(kind: str | KnowledgeKind) -> str:
    """The Jinja2 text of a kind's template (or of ``"contrast"``)."""
    if kind == "contrast":
        return (resources.files("fsar.prompts") / "contrast.jinja").read_text()
    return _kind(kind).template_source()


def template_hash(kind: str | KnowledgeKind) -> str:
    """Changes whenever the template or its examples change (part of every row's provenance)."""
    ex = json.dumps(examples(kind), sort_keys=True)
    return sha256_text(template_source(kind) + "\n" + ex)[:16]


@lru_cache(maxsize=64)
def _compiled(source: str) -> jinja2.Template:
    return _env().from_string(source)


def render_contrast_prompt(first: str, second: str, counts: dict[str, int], error: str | None = None) -> str:
    """The prompt asking how two actions differ (``prompts/contrast.jinja``); no example shares an action with them."""
    mine = {normalize(first), normalize(second)}
    shown = [e for e in examples("contrast") if not mine & {normalize(n) for n in e["names"]}]
    return _env().get_template("contrast.jinja").render(
        first=first, second=second, examples=shown, counts=counts, error=error
    ).strip() + " "


def render_prompt(kind: str | KnowledgeKind, class_name: str, counts: dict[str, int], error: str | None = None) -> str:
    """The full prompt for ``class_name`` from the kind's template; an example for the same action is never shown."""
    k = _kind(kind)
    shown = [e for e in k.examples() if normalize(e["name"]) != normalize(class_name)]
    return _compiled(k.template_source()).render(
        name=class_name, examples=shown, counts=counts, error=error
    ).strip() + " "
