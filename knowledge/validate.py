"""Validation of an LLM answer: JSON, then the kind's pydantic schema, then semantic checks.

The semantic checks catch what small models do wrong: empty or duplicate items, items too short or too long,
items that only repeat the class name, items copied from the prompt's worked examples, stages out of order,
phrases that end mid-thought ("bounces up in") and words glued together ("thewheel"). They avoid false alarms on
what is legitimate: an object named in the action is a spatial attribute ("hair brush" for *brush hair*).
``validate_answer`` returns the knowledge as a plain dict, or raises ``InvalidAnswer`` with a one-line reason that
is appended to the next prompt.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from importlib import resources

from typing import TYPE_CHECKING

from pydantic import BaseModel, ValidationError

if TYPE_CHECKING:
    from fsar.knowledge.kinds import KnowledgeKind

# words that carry no content when comparing an item with a class name
_STOP = set(
    "a an the of to in on into onto at by for from with without and or his her their its is are be being "
    "person people someone somebody something one man woman it up down out off over".split()
)
PHRASE_WORDS = (1, 14)
SENTENCE_WORDS = (4, 40)

# Words a phrase cannot end on: articles, determiners, conjunctions, auxiliaries and prepositions that are never
# particles. A phrase ending on one was cut mid-thought ("bounces up in", "around for", "turns the"). Particles that
# do end phrases ("picks up", "sets down", "runs off", "breathes out") are not here; "in" is, for phrases only.
# Nor are words that end phrases as adverbs or nouns: "within" ("glows from within"), "can" ("soda can").
_DANGLING = set(
    "a an the this these those his their its my your our whose each every some any very "
    "and or but nor than as while when if because then whether which who whom that "
    "of for with from to at into onto toward towards upon between among like via per "
    "is are was were be been being has have had will would could should must".split()
)
_DANGLING_PHRASE = _DANGLING | {"in"}

# Closed-class words that, found inside an unknown word, show it is two words glued together ("thewheel",
# "andtheirselfisoverridden"); compounds of a content word and a particle ("backflip", "upswing") are not glue.
_GLUE = set(
    "a an the this that these those his her their its my your our them they he she it we him "
    "and or but nor than as while when if then of for with from to at into onto is are was were be been".split()
)
_SHORT_WORDS = {"a", "an", "to", "of", "in", "on", "at", "up", "is", "it", "by", "as", "or", "he", "we", "my", "so", "do", "go", "us", "be"}
MAX_WORD_LETTERS = 20  # longer than any word an action description needs ("counterclockwise" has 16)


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
    # silent final e: "dribble" and "dribbling" -> "dribbl", "ride" and "riding" -> "rid"
    if len(word) > 3 and word.endswith("e") and not word.endswith("ee"):
        word = word[:-1]
    return word


def content_words(text: str) -> set[str]:
    return {_stem(w) for w in normalize(text).split() if w not in _STOP}


def repeats_name(text: str, class_name: str, objects_allowed: bool = False) -> bool:
    """Whether an item says nothing but the action's name ("brushing hair", "brush the hair" for *brush hair*).

    With ``objects_allowed`` (spatial attributes: objects, body parts, scene), an object named in the action is
    legitimate ("hair brush", "hair"); the action itself still is not: the name's words in the name's order, or
    with a verb form of them ("hair brushing").
    """
    if normalize(text) == normalize(class_name):
        return True
    words = [w for w in normalize(text).split() if w not in _STOP]
    stems = [_stem(w) for w in words]
    name = [_stem(w) for w in normalize(class_name).split() if w not in _STOP]
    if not stems or not set(stems) <= set(name):
        return False
    if not objects_allowed:
        return True
    return stems == name or any(w != s and w.endswith(("ing", "ed")) for w, s in zip(words, stems))


def dangling_word(text: str, phrase: bool = True) -> str | None:
    """The last word when an item ends mid-thought on it ("bounces up in", "around for"), else None."""
    words = normalize(text).split()
    if not words:
        return None
    last = words[-1]
    return last if last in (_DANGLING_PHRASE if phrase else _DANGLING) else None


@lru_cache(maxsize=1)
def _dictionary() -> frozenset[str]:
    """English words with their inflections: pyspellchecker's frequency list (offline, about 160,000 words)."""
    from spellchecker import SpellChecker

    # plus words the list lacks that the model writes correctly ("themself" was flagged as "them" + "self")
    return frozenset(SpellChecker(language="en", distance=1).word_frequency.keys()) | {"themself"}


def _splits(word: str, known: frozenset[str]) -> list[list[str]]:
    """Ways to write ``word`` as two or more known words (words of three letters or more, or short common ones)."""
    out: list[list[str]] = []

    def rec(rest: str, parts: list[str]) -> None:
        if len(out) >= 8:
            return
        if not rest:
            if len(parts) >= 2:
                out.append(parts)
            return
        for i in range(len(rest), 0, -1):
            head = rest[:i]
            if (head in _SHORT_WORDS or (len(head) >= 3 and head in known)) and not (not parts and i == len(word)):
                rec(rest[i:], parts + [head])

    rec(word, [])
    return out


_SUFFIXES = ("r", "er", "rs", "ers", "s", "es", "d", "ed", "ing", "ly")


def _inflected(word: str, *known: frozenset[str]) -> bool:
    """A known word with a regular ending the list may lack: "massager" (ucf101 *head massage*) is "massage" + "r",
    not "mass" + "a" + "ger"."""
    stems = [word[: -len(end)] for end in _SUFFIXES if word.endswith(end) and len(word) - len(end) >= 4]
    return any(stem in words for stem in stems for words in known)


def glued_word(text: str, extra: frozenset[str] = frozenset()) -> str | None:
    """A word of ``text`` that is words glued together ("thewheel"), or longer than any real word; else None.

    A word is glued when it is not in the dictionary (nor in ``extra``, e.g. the class name's words) and it splits
    into known words one of which is a closed-class word (an article, pronoun, conjunction, preposition or
    auxiliary). Unknown compounds of content words ("backflip") are not flagged.
    """
    known = _dictionary()
    for raw in re.findall(r"[a-z]+(?:'[a-z]+)?", text.lower()):
        word = re.sub(r"'s$", "", raw).replace("'", "")
        if len(word) > MAX_WORD_LETTERS and word not in extra:
            return raw
        if len(word) < 5 or word in known or word in extra or _inflected(word, known, extra):
            continue
        if any(any(p in _GLUE for p in parts) for parts in _splits(word, known)):
            return raw
    return None


@lru_cache(maxsize=None)
def example_items(kind: str) -> frozenset[str]:
    """Every text of the kind's worked examples (or the contrast prompt's), normalised (an answer may not copy them)."""
    from fsar.knowledge.kinds import KINDS, get_kind

    if kind in KINDS:
        examples = get_kind(kind).examples()
    else:
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


def check_item(label: str, text: str, class_name: str, kind: str, words: tuple[int, int], objects_allowed: bool = False,
                phrase: bool = False, ends: bool = True) -> None:
    """One item's checks; ``objects_allowed``: a spatial attribute (may name an object of the action); ``phrase``:
    a phrase rather than a sentence; ``ends``: the item must not end on a word like "the" or "of"."""
    n = len(normalize(text).split())
    if not re.search(r"[a-zA-Z]", text) or re.search(r"[{}<>\[\]]|https?:", text):
        raise InvalidAnswer(f'{label} "{text}" is not plain English text', "write plain English words only")
    if n < words[0] or n > words[1]:
        raise InvalidAnswer(f'{label} "{text}" has {n} words; use {words[0]} to {words[1]}', f"keep each item to {words[0]}-{words[1]} words")
    glued = glued_word(text, frozenset(normalize(class_name).split()))
    if glued:
        raise InvalidAnswer(
            f'{label} "{text}" has words glued together ("{glued}"); put a space between words',
            "a word was glued to the next one; put a space between every two words",
        )
    last = dangling_word(text, phrase) if ends else None
    if last:
        raise InvalidAnswer(
            f'{label} "{text}" ends mid-thought on "{last}"; finish the phrase',
            "an item stopped mid-thought on a word like 'of', 'the' or 'and'; end every item on its key word",
        )
    if repeats_name(text, class_name, objects_allowed):
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


def check_unique(label: str, items: list[str]) -> None:
    for i, item in enumerate(items, 1):
        for j in range(1, i):
            if _near_duplicate(item, items[j - 1]):
                raise InvalidAnswer(
                    f'{label} {i} "{item}" repeats item {j}; every item must be different',
                    "two items were the same; every item must say something different",
                )


def validate_answer(kind: KnowledgeKind, schema: type[BaseModel], class_name: str, text: str) -> dict:
    """Parse and check one answer for ``class_name``: JSON, the schema, the kind's checks; return the knowledge dict
    or raise InvalidAnswer."""
    obj = parse_json(text)
    kind.precheck(obj)
    try:
        knowledge = kind.knowledge_of(schema.model_validate(obj).model_dump())
    except ValidationError as e:
        raise InvalidAnswer(_pydantic_reason(e)) from None
    kind.check(knowledge, class_name)
    return knowledge


def validate_contrast(schema: type[BaseModel], first: str, second: str, text: str,
                      known: tuple[list[str], list[str]] = ([], [])) -> dict:
    """Parse and check a contrast answer for the actions ``first`` and ``second``; ``known``: each one's current
    knowledge texts (a contrast item must add something new). Returns ``{"first": {"seen": [...], "motion": [...]},
    "second": {...}}`` without the anchors, or raises InvalidAnswer."""
    obj = parse_json(text)
    try:
        answer = schema.model_validate(obj).model_dump()
    except ValidationError as e:
        raise InvalidAnswer(_pydantic_reason(e)) from None
    out = {}
    for side, name, other, seen_before in (("first", first, second, known[0]), ("second", second, first, known[1])):
        items = {f: list(answer[side][f]) for f in ("seen", "motion")}
        for field, texts in items.items():
            for i, item in enumerate(texts, 1):
                label = f"{side} {field} item {i}"
                check_item(label, item, name, "contrast", PHRASE_WORDS, objects_allowed=field == "seen", phrase=True)
                if repeats_name(item, other, objects_allowed=field == "seen"):
                    raise InvalidAnswer(
                        f'{label} "{item}" names the other action, "{other}"',
                        "an item of one action named the other action; describe each action by itself",
                    )
                for old in seen_before:
                    if _near_duplicate(item, old):
                        raise InvalidAnswer(
                            f'{label} "{item}" is already in the knowledge of "{name}"; say what differs',
                            "an item repeated what was already known; say what tells the two actions apart",
                        )
        check_unique(f"{side} item", items["seen"] + items["motion"])
        out[side] = items
    for a in out["first"]["seen"] + out["first"]["motion"]:
        for b in out["second"]["seen"] + out["second"]["motion"]:
            # stricter than within one list: "body rises and falls with each step" said of one action and "body
            # rises and descends with each step" of the other tells them apart by one word, which is not enough
            wa, wb = content_words(a), content_words(b)
            if _near_duplicate(a, b) or (min(len(wa), len(wb)) >= 3 and len(wa & wb) / len(wa | wb) >= 0.6):
                raise InvalidAnswer(
                    f'"{a}" is said of both actions; every item must tell them apart',
                    "an item was said of both actions; every item must hold for one action only",
                )
    return out


_check_item, _check_unique = check_item, check_unique  # the older private names
