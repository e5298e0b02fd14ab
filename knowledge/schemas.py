"""The three knowledge kinds as pydantic schemas: DiST attributes, LGA stage triplets, STAR descriptors.

Each kind pairs a schema with a Jinja2 template (``prompts/<kind>.jinja``). Counts are configurable, so the schema
class is built for given counts by ``KnowledgeKind.schema(...)``; its JSON schema constrains the LLM's decoding.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, create_model

# The patterns go into the JSON schema, so constrained decoding cannot emit markup, digits or run-on text, and
# the bound is on words, so a long answer stops at a word boundary, never mid-word:
# a phrase is 1-10 lower-case words; a sentence is 4-25 words, starts with a capital and ends with a full stop.
Phrase = Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^[a-z][a-z'-]*(,? [a-z][a-z'-]*){0,9}$")]
Sentence = Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^[A-Z][a-z'-]*(,? [a-z][a-z'-]*){3,24}[.]$")]
Word = Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^[a-z][a-z'-]*( [a-z][a-z'-]*){0,3}$")]

STAGES = ("onset", "progression", "completion")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Stage(_Strict):
    """One atomic stage of an action (LGA): who does what to what, and a sentence describing it."""

    stage: Literal["onset", "progression", "completion"]
    subject: Word
    motion: Word
    object: Word
    sentence: Sentence


def _stage(name: str) -> type[Stage]:
    return create_model(f"{name.title()}Stage", __base__=Stage, stage=(Literal[name], ...))


# the three stages as a fixed tuple: constrained decoding writes them in order, each with its own name
StageTriple = tuple[_stage("onset"), _stage("progression"), _stage("completion")]


def _list(item, n: int):
    return Annotated[list[item], Field(min_length=n, max_length=n)]


@dataclass(frozen=True)
class KnowledgeKind:
    """A knowledge kind: its name, the paper it serves, and how to build its schema for given counts."""

    name: str
    paper: str
    description: str
    default_counts: dict[str, int]

    def schema(self, action: str | None = None, **counts: int) -> type[BaseModel]:
        """The answer schema. With ``action``, the answer must open with ``"action": "<action>"``: constrained
        decoding then writes the class name just before the content, which keeps a small model on the topic
        instead of drifting to the worked examples. ``knowledge_of`` drops that field again."""
        c = {**self.default_counts, **{k: v for k, v in counts.items() if v is not None}}
        head = {"action": (Literal[action], ...)} if action else {}
        if self.name == "dist":
            return create_model(
                "DistKnowledge",
                __base__=_Strict,
                **head,
                spatial=(_list(Phrase, c["spatial"]), ...),
                temporal=(_list(Phrase, c["temporal"]), ...),
            )
        if self.name == "lga":
            return create_model("LgaKnowledge", __base__=_Strict, **head, stages=(StageTriple, ...))
        if self.name == "star":
            return create_model(
                "StarKnowledge",
                __base__=_Strict,
                **head,
                descriptors=(_list(Sentence, c["descriptors"]), ...),
                summary=(Sentence, ...),
            )
        raise KeyError(self.name)

    @staticmethod
    def knowledge_of(answer: dict) -> dict:
        """The stored knowledge: the answer without its ``action`` anchor."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in answer.items() if k != "action"}

    def texts(self, knowledge: dict) -> dict[str, list[str]]:
        """The texts of one class's knowledge, grouped by field, in order (what stage 1 embeds)."""
        if self.name == "dist":
            return {"spatial": list(knowledge["spatial"]), "temporal": list(knowledge["temporal"])}
        if self.name == "lga":
            stages = knowledge["stages"]
            return {
                "triplets": [f"{s['subject']} {s['motion']} {s['object']}" for s in stages],
                "sentences": [s["sentence"] for s in stages],
            }
        if self.name == "star":
            return {"descriptors": list(knowledge["descriptors"]), "summary": [knowledge["summary"]]}
        raise KeyError(self.name)


CONTRAST_COUNTS = {"seen": 2, "motion": 2}  # phrases per action of a contrast answer
# what a contrast answer adds to a dist knowledge set: "seen" phrases are spatial, "motion" phrases temporal
CONTRAST_FIELDS = {"seen": "spatial", "motion": "temporal"}


def contrast_schema(first: str | None = None, second: str | None = None, **counts: int) -> type[BaseModel]:
    """The answer to "how do these two actions differ": for each, phrases of what is seen and how the motion goes.
    With the names, each side opens with its ``"action"`` anchor (as in :meth:`KnowledgeKind.schema`)."""
    c = {**CONTRAST_COUNTS, **{k: v for k, v in counts.items() if v is not None}}

    def side(label: str, name: str | None):
        head = {"action": (Literal[name], ...)} if name else {}
        return create_model(label, __base__=_Strict, **head, seen=(_list(Phrase, c["seen"]), ...),
                            motion=(_list(Phrase, c["motion"]), ...))

    return create_model("ContrastKnowledge", __base__=_Strict, first=(side("FirstAction", first), ...),
                        second=(side("SecondAction", second), ...))


KINDS: dict[str, KnowledgeKind] = {
    "dist": KnowledgeKind(
        "dist",
        "DiST (seed 000)",
        "spatial attributes (objects, scene, body parts, appearance) and temporal attributes (motion, ordered phases)",
        {"spatial": 4, "temporal": 4},
    ),
    "lga": KnowledgeKind(
        "lga",
        "LGA (seed 002)",
        "three atomic stages (onset, progression, completion), each a subject-motion-object triplet and a sentence",
        {},
    ),
    "star": KnowledgeKind(
        "star",
        "STAR (seed 001)",
        "temporally dependent class descriptors: ordered sentences of how the action unfolds, and a summary",
        {"descriptors": 4},
    ),
}


def get_kind(name: str) -> KnowledgeKind:
    if name not in KINDS:
        raise KeyError(f"unknown knowledge kind '{name}'; known kinds: {', '.join(KINDS)} (or 'all')")
    return KINDS[name]


def parse_kinds(spec: str) -> list[KnowledgeKind]:
    """``dist,lga`` or ``all`` -> the kinds, in the order given."""
    names = list(KINDS) if spec.strip() == "all" else [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise KeyError(f"no knowledge kind given; known kinds: {', '.join(KINDS)} (or 'all')")
    return [get_kind(n) for n in names]
