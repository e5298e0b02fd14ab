"""The pydantic building blocks of answer schemas: phrases, sentences, words, fixed-length lists; the contrast answer.

Each knowledge kind (``fsar.knowledge.kinds``) builds its answer schema from these for given counts
(``KnowledgeKind.schema(...)``); its JSON schema constrains the LLM's decoding.
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, create_model

# The patterns go into the JSON schema, so constrained decoding cannot emit markup, digits or run-on text, and
# the bound is on words, so a long answer stops at a word boundary, never mid-word:
# a phrase is 1-12 lower-case words; a sentence is 4-25 words, starts with a capital and ends with a full stop; a
# word (a triplet's subject, motion or object) is 1-6 words. Our choice: the bounds sit well above what the prompts
# ask for (phrases of 2 to 8 words), because a bound the model reaches cuts its answer mid-thought (hmdb51 *clap*:
# "clap begins with a soft sound and ends with a", cut at 10 words) and costs a retry. Not higher: the 270M
# test model, given 14 words, rambled past the point (15 words, "... closed to keep the's'") on all three tries.
Phrase = Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^[a-z][a-z'-]*(,? [a-z][a-z'-]*){0,11}$")]
Sentence = Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^[A-Z][a-z'-]*(,? [a-z][a-z'-]*){3,24}[.]$")]
Word = Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^[a-z][a-z'-]*( [a-z][a-z'-]*){0,5}$")]


class Strict(BaseModel):
    """An answer object: no field beyond those declared (constrained decoding cannot add one)."""

    model_config = ConfigDict(extra="forbid")


_Strict = Strict  # the older private name


def fixed_list(item, n: int):
    """A list of exactly ``n`` items (its JSON schema bounds both ends)."""
    return Annotated[list[item], Field(min_length=n, max_length=n)]


_list = fixed_list


CONTRAST_COUNTS = {"seen": 2, "motion": 2}  # phrases per action of a contrast answer
# what a contrast answer adds to a dist knowledge set: "seen" phrases are spatial, "motion" phrases temporal
CONTRAST_FIELDS = {"seen": "spatial", "motion": "temporal"}


def contrast_schema(first: str | None = None, second: str | None = None, **counts: int) -> type[BaseModel]:
    """The answer to "how do these two actions differ": for each, phrases of what is seen and how the motion goes.
    With the names, each side opens with its ``"action"`` anchor (as in :meth:`KnowledgeKind.schema`)."""
    c = {**CONTRAST_COUNTS, **{k: v for k, v in counts.items() if v is not None}}

    def side(label: str, name: str | None):
        head = {"action": (Literal[name], ...)} if name else {}
        return create_model(label, __base__=Strict, **head, seen=(fixed_list(Phrase, c["seen"]), ...),
                            motion=(fixed_list(Phrase, c["motion"]), ...))

    return create_model("ContrastKnowledge", __base__=Strict, first=(side("FirstAction", first), ...),
                        second=(side("SecondAction", second), ...))


# The kinds themselves live in ``fsar.knowledge.kinds``, one module each; the older import path keeps working.
from fsar.knowledge.kinds import KINDS, KnowledgeKind, get_kind, parse_kinds  # noqa: E402,F401
