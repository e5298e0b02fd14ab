"""Validation of an LLM answer: JSON, then the kind's pydantic schema, then semantic checks.

The semantic checks catch what small models do wrong: empty or duplicate items, items too short or too long,
items that only repeat the class name, items copied from the prompt's worked examples, stages out of order.
``validate_answer`` returns the knowledge as a plain dict, or raises ``InvalidAnswer`` with a one-line reason that
is appended to the next prompt.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from importlib import resources

from pydantic import BaseModel, ValidationError

from fsar.knowledge.schemas import STAGES, KnowledgeKind

# words that carry no content when comparing an item with a class name
_STOP = set(
    "a an the of to in on into onto at by for from with without and or his her their its is are be being "
    "person people someone somebody something one man woman it up down out off over".split()
)
PHRASE_WORDS = (1, 14)
SENTENCE_WORDS = (4, 40)


class InvalidAnswer(ValueError):
    """An answer that failed validation; ``str(err)`` is the one-line reason (stored with the class).

    ``hint`` is the form appended to the next prompt: it names the fault without quoting the bad text, since a
    small model shown a phrase tends to write it again.
    """

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint or message


def normalize(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^a-z0-9 ]+", " ", text.lower())).strip()


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            word = word[: -len(suffix)]
            break
    # doubled final consonant: "running" -> "runn" -> "run"
    if len(word) > 3 and word[-1] == word[-2] and word[-1] not in "aeiou":
        word = word[:-1]
    return word


def content_words(text: str) -> set[str]:
    return {_stem(w) for w in normalize(text).split() if w not in _STOP}


@lru_cache(maxsize=None)
def example_items(kind: str) -> frozenset[str]:
    """Every text of the kind's worked examples, normalised (an answer may not copy them)."""
    examples = json.loads((resources.files("fsar.prompts") / "examples.json").read_text())[kind]
    items: set[str] = set()

    def walk(x):
        if isinstance(x, str):
            items.add(normalize(x))
        elif isinstance(x, dict):
            for k, v in x.items():
                if k != "stage":
                    walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    for ex in examples:
        walk(ex["answer"])
    return frozenset(i for i in items if len(i.split()) >= 2)


def parse_json(text: str) -> dict:
    """The first JSON object in ``text`` (models sometimes add words around it)."""
    start = text.find("{")
    if start < 0:
        raise InvalidAnswer("the answer has no JSON object; answer with a JSON object only")
    try:
        obj, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError as e:
        raise InvalidAnswer(f"the answer is not valid JSON ({e.msg} at character {e.pos})") from None
    if not isinstance(obj, dict):
        raise InvalidAnswer("the answer must be a JSON object")
    return obj


def _pydantic_reason(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "answer"
    return f"{where}: {first['msg'].lower()}"


def _check_item(label: str, text: str, class_name: str, kind: str, words: tuple[int, int]) -> None:
    n = len(normalize(text).split())
    if not re.search(r"[a-zA-Z]", text) or re.search(r"[{}<>\[\]]|https?:", text):
        raise InvalidAnswer(f'{label} "{text}" is not plain English text', "write plain English words only")
    if n < words[0] or n > words[1]:
        raise InvalidAnswer(f'{label} "{text}" has {n} words; use {words[0]} to {words[1]}', f"keep each item to {words[0]}-{words[1]} words")
    name_words = content_words(class_name)
    item_words = content_words(text)
    if normalize(text) == normalize(class_name) or (item_words and item_words <= name_words):
        raise InvalidAnswer(
            f'{label} "{text}" only repeats the action name; describe what is seen instead',
            "an item only repeated the action's name; name concrete objects, body parts and motions instead",
        )
    norm = normalize(text)
    for ex in example_items(kind):
        ex_words = set(ex.split())
        overlap = len(ex_words & set(norm.split())) / max(1, len(ex_words | set(norm.split())))
        if norm == ex or (len(ex_words) >= 3 and overlap >= 0.8):
            raise InvalidAnswer(
                f'{label} "{text}" is copied from an example of another action; describe "{class_name}"',
                f'an item was copied from the sheet of another action; every item must be about "{class_name}"',
            )


def _near_duplicate(a: str, b: str) -> bool:
    """Same text, or (for 4+ words) the same words up to one in five: 'looks at the hair' ~ 'looks at hair'."""
    wa, wb = normalize(a).split(), normalize(b).split()
    if wa == wb:
        return True
    sa, sb = set(wa), set(wb)
    return min(len(sa), len(sb)) >= 4 and len(sa & sb) / len(sa | sb) >= 0.8


def _check_unique(label: str, items: list[str]) -> None:
    for i, item in enumerate(items, 1):
        for j in range(1, i):
            if _near_duplicate(item, items[j - 1]):
                raise InvalidAnswer(
                    f'{label} {i} "{item}" repeats item {j}; every item must be different',
                    "two items were the same; every item must say something different",
                )


def validate_answer(kind: KnowledgeKind, schema: type[BaseModel], class_name: str, text: str) -> dict:
    """Parse and check one answer for ``class_name``; return the knowledge dict or raise InvalidAnswer."""
    obj = parse_json(text)
    if kind.name == "lga" and isinstance(obj.get("stages"), list):  # a clearer message than the schema's
        order = [s.get("stage") if isinstance(s, dict) else None for s in obj["stages"]]
        if len(order) == 3 and set(order) <= set(STAGES) and order != list(STAGES):
            raise InvalidAnswer(f"stages are {', '.join(map(str, order))}; they must be onset, progression, completion in that order")
    try:
        knowledge = kind.knowledge_of(schema.model_validate(obj).model_dump())
    except ValidationError as e:
        raise InvalidAnswer(_pydantic_reason(e)) from None

    if kind.name == "dist":
        for field in ("spatial", "temporal"):
            for i, item in enumerate(knowledge[field], 1):
                _check_item(f"{field} item {i}", item, class_name, kind.name, PHRASE_WORDS)
            _check_unique(f"{field} item", knowledge[field])
        _check_unique("attribute", knowledge["spatial"] + knowledge["temporal"])
    elif kind.name == "lga":
        stages = knowledge["stages"]
        for s in stages:
            for part in ("subject", "motion", "object"):
                if not re.search(r"[a-zA-Z]", s[part]):
                    raise InvalidAnswer(f'{s["stage"]} {part} "{s[part]}" is not a word')
            triplet = f"{s['subject']} {s['motion']} {s['object']}"
            _check_item(f"{s['stage']} triplet", triplet, class_name, kind.name, (2, 16))
            _check_item(f"{s['stage']} sentence", s["sentence"], class_name, kind.name, SENTENCE_WORDS)
        _check_unique("stage sentence", [s["sentence"] for s in stages])
        _check_unique("stage triplet", [f"{s['subject']} {s['motion']} {s['object']}" for s in stages])
    elif kind.name == "star":
        for i, item in enumerate(knowledge["descriptors"], 1):
            _check_item(f"descriptor {i}", item, class_name, kind.name, SENTENCE_WORDS)
        _check_item("summary", knowledge["summary"], class_name, kind.name, SENTENCE_WORDS)
        _check_unique("descriptor", knowledge["descriptors"] + [knowledge["summary"]])
    return knowledge
