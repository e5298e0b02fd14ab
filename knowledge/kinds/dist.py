"""DiST (seed 000): spatial attributes (what is seen) and temporal attributes (how the motion goes), as phrases."""
from __future__ import annotations

from datasets import List, Value

from fsar.knowledge.kinds import KINDS, KnowledgeKind
from fsar.knowledge.schemas import Phrase, fixed_list
from fsar.knowledge.validate import PHRASE_WORDS, check_item, check_unique


@KINDS.register("dist")
class Dist(KnowledgeKind):
    """``{"spatial": [phrase, ...], "temporal": [phrase, ...]}``; the contract gives [C, S, D] and [C, T, D]."""

    name = "dist"
    paper = "DiST (seed 000)"
    description = "spatial attributes (objects, scene, body parts, appearance) and temporal attributes (motion, ordered phases)"
    default_counts = {"spatial": 4, "temporal": 4}
    fields = ("spatial", "temporal")

    def answer_fields(self, counts: dict[str, int]) -> dict:
        return {"spatial": (fixed_list(Phrase, counts["spatial"]), ...), "temporal": (fixed_list(Phrase, counts["temporal"]), ...)}

    def features(self) -> dict:
        return {"spatial": List(Value("string")), "temporal": List(Value("string"))}

    def check(self, knowledge: dict, class_name: str) -> None:
        for field in self.fields:
            for i, item in enumerate(knowledge[field], 1):
                # a spatial attribute may name an object of the action ("hair brush" for brush hair)
                check_item(f"{field} item {i}", item, class_name, self.name, PHRASE_WORDS, objects_allowed=field == "spatial", phrase=True)
            check_unique(f"{field} item", knowledge[field])
        check_unique("attribute", knowledge["spatial"] + knowledge["temporal"])

    def texts(self, knowledge: dict) -> dict[str, list[str]]:
        return {"spatial": list(knowledge["spatial"]), "temporal": list(knowledge["temporal"])}
