"""Render a kind's Jinja2 template for one class, with worked examples from ``prompts/examples.json``."""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources

import jinja2

from fsar.knowledge.cache import sha256_text
from fsar.knowledge.validate import normalize


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


@lru_cache(maxsize=None)
def examples(kind: str) -> list[dict]:
    return json.loads((resources.files("fsar.prompts") / "examples.json").read_text())[kind]


def template_source(kind: str) -> str:
    return (resources.files("fsar.prompts") / f"{kind}.jinja").read_text()


def template_hash(kind: str) -> str:
    """Changes whenever the template or its examples change (part of every row's provenance)."""
    ex = json.dumps(examples(kind), sort_keys=True)
    return sha256_text(template_source(kind) + "\n" + ex)[:16]


def render_contrast_prompt(first: str, second: str, counts: dict[str, int], error: str | None = None) -> str:
    """The prompt asking how two actions differ (``prompts/contrast.jinja``); no example shares an action with them."""
    mine = {normalize(first), normalize(second)}
    shown = [e for e in examples("contrast") if not mine & {normalize(n) for n in e["names"]}]
    return _env().get_template("contrast.jinja").render(
        first=first, second=second, examples=shown, counts=counts, error=error
    ).strip() + " "


def render_prompt(kind: str, class_name: str, counts: dict[str, int], error: str | None = None) -> str:
    """The full prompt for ``class_name``; an example for the same action is never shown."""
    shown = [e for e in examples(kind) if normalize(e["name"]) != normalize(class_name)]
    return _env().get_template(f"{kind}.jinja").render(
        name=class_name, examples=shown, counts=counts, error=error
    ).strip() + " "
