"""STAR (seed 001): temporally dependent class descriptors, ordered sentences of how the action unfolds, and a summary."""
from __future__ import annotations

from datasets import List, Value

from fsar.knowledge.kinds import KINDS, KnowledgeKind
from fsar.knowledge.schemas import Sentence, fixed_list
from fsar.knowledge.validate import SENTENCE_WORDS, check_item, check_unique


@KINDS.register("star")
class Star(KnowledgeKind):
    """``{"descriptors": [sentence, ...], "summary": sentence}``; the contract gives [C, L, D] and a [C, D] summary."""

    name = "star"
    paper = "STAR (seed 001)"
    description = "temporally dependent class descriptors: ordered sentences of how the action unfolds, and a summary"
    default_counts = {"descriptors": 4}
    fields = ("descriptors", "summary")
    scalars = ("summary",)  # one summary per class: [C, D] and [C]
    kept_fields = ("summary",)  # the summary is scored by the report but never dropped by the filter

    def answer_fields(self, counts: dict[str, int]) -> dict:
        return {"descriptors": (fixed_list(Sentence, counts["descriptors"]), ...), "summary": (Sentence, ...)}

    def features(self) -> dict:
        return {"descriptors": List(Value("string")), "summary": Value("string")}

    def check(self, knowledge: dict, class_name: str) -> None:
        for i, item in enumerate(knowledge["descriptors"], 1):
            check_item(f"descriptor {i}", item, class_name, self.name, SENTENCE_WORDS)
        check_item("summary", knowledge["summary"], class_name, self.name, SENTENCE_WORDS)
        check_unique("descriptor", knowledge["descriptors"] + [knowledge["summary"]])

    def texts(self, knowledge: dict) -> dict[str, list[str]]:
        return {"descriptors": list(knowledge["descriptors"]), "summary": [knowledge["summary"]]}
