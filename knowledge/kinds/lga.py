"""LGA (seed 002): three atomic stages of an action (onset, progression, completion), each a subject-motion-object
triplet and a sentence. Stage 2 gets each stage as the normalised mean of its triplet and sentence vectors."""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

from datasets import List, Value
from pydantic import create_model

from fsar.knowledge.kinds import KINDS, KnowledgeKind
from fsar.knowledge.schemas import Sentence, Strict, Word
from fsar.knowledge.validate import SENTENCE_WORDS, InvalidAnswer, check_item, check_unique, dangling_word

if TYPE_CHECKING:
    import numpy as np
    import torch

STAGES = ("onset", "progression", "completion")


class Stage(Strict):
    """One atomic stage of an action: who does what to what, and a sentence describing it."""

    stage: Literal["onset", "progression", "completion"]
    subject: Word
    motion: Word
    object: Word
    sentence: Sentence


def _stage(name: str) -> type[Stage]:
    return create_model(f"{name.title()}Stage", __base__=Stage, stage=(Literal[name], ...))


# the three stages as a fixed tuple: constrained decoding writes them in order, each with its own name
StageTriple = tuple[_stage("onset"), _stage("progression"), _stage("completion")]


def triplet(stage: dict) -> str:
    """"subject motion object" of one stage (the text embedded as its triplet)."""
    return f"{stage['subject']} {stage['motion']} {stage['object']}"


def slot_of(stage: dict, i: int) -> int:
    """The stage's position (onset 0, progression 1, completion 2), so a dropped stage leaves a gap, not a shift."""
    return STAGES.index(stage["stage"]) if stage.get("stage") in STAGES else i


@KINDS.register("lga")
class Lga(KnowledgeKind):
    """``{"stages": [{stage, subject, motion, object, sentence} x 3]}``; the contract gives ``triplets``,
    ``sentences`` and the pooled ``stages``, each [C, 3, D]."""

    name = "lga"
    paper = "LGA (seed 002)"
    description = "three atomic stages (onset, progression, completion), each a subject-motion-object triplet and a sentence"
    default_counts: dict[str, int] = {}
    fields = ("triplets", "sentences")
    widths = {"triplets": len(STAGES), "sentences": len(STAGES)}  # slots are stage positions, even when one is gone
    report_fields = ("stages",)  # the report scores (and the filter drops) whole stages

    def answer_fields(self, counts: dict[str, int]) -> dict:
        return {"stages": (StageTriple, ...)}

    def features(self) -> dict:
        return {"stages": List({"stage": Value("string"), "subject": Value("string"), "motion": Value("string"),
                                "object": Value("string"), "sentence": Value("string")})}

    def precheck(self, answer: dict) -> None:
        """Stages out of order: a clearer message than the schema's."""
        if isinstance(answer.get("stages"), list):
            order = [s.get("stage") if isinstance(s, dict) else None for s in answer["stages"]]
            if len(order) == 3 and set(order) <= set(STAGES) and order != list(STAGES):
                raise InvalidAnswer(f"stages are {', '.join(map(str, order))}; they must be onset, progression, completion in that order")

    def check(self, knowledge: dict, class_name: str) -> None:
        stages = knowledge["stages"]
        for s in stages:
            for part in ("subject", "motion", "object"):
                if not re.search(r"[a-zA-Z]", s[part]):
                    raise InvalidAnswer(f'{s["stage"]} {part} "{s[part]}" is not a word')
                # a motion may end on its preposition ("sinks into" + "water"); a subject or object may not
                last = dangling_word(s[part], phrase=True) if part != "motion" else None
                if last:
                    raise InvalidAnswer(
                        f'{s["stage"]} {part} "{s[part]}" ends mid-thought on "{last}"; finish it',
                        "a subject or object stopped mid-thought on a word like 'of' or 'the'; end it on its noun",
                    )
            check_item(f"{s['stage']} triplet", triplet(s), class_name, self.name, (2, 16), ends=False)
            check_item(f"{s['stage']} sentence", s["sentence"], class_name, self.name, SENTENCE_WORDS)
        check_unique("stage sentence", [s["sentence"] for s in stages])
        check_unique("stage triplet", [triplet(s) for s in stages])

    def texts(self, knowledge: dict) -> dict[str, list[str]]:
        stages = knowledge["stages"]
        return {"triplets": [triplet(s) for s in stages], "sentences": [s["sentence"] for s in stages]}

    def items(self, knowledge: dict) -> list[tuple[str, int, str]]:
        out = []
        for i, s in enumerate(knowledge["stages"]):
            out.append(("triplets", slot_of(s, i), triplet(s)))
            out.append(("sentences", slot_of(s, i), s["sentence"]))
        return out

    def pool(self, items: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> None:
        """``stages`` [C, 3, D]: the L2-normalised mean of each stage's triplet and sentence vectors."""
        import torch.nn.functional as F

        t, s = items["triplets"], items["sentences"]
        mt, ms = masks["triplets"].unsqueeze(-1).float(), masks["sentences"].unsqueeze(-1).float()
        mean = (t * mt + s * ms) / (mt + ms).clamp(min=1)
        items["stages"] = F.normalize(mean, dim=-1)
        masks["stages"] = masks["triplets"] | masks["sentences"]

    def report_units(self, rows: list[dict], vectors: np.ndarray, row_of: dict[str, int]) -> list[dict]:
        """One item per stage: its vector the normalised mean of its triplet and sentence vectors (as ``pool``)."""
        import numpy as np

        from fsar.knowledge.encoders import normalize

        parts: dict[tuple[str, int], dict] = {}
        for r, v in zip(rows, vectors):
            if r["field"] in self.fields:
                parts.setdefault((r["class_key"], r["slot"]), {})[r["field"]] = (r["text"], v)
        units = []
        for (key, slot), p in sorted(parts.items(), key=lambda kv: (row_of[kv[0][0]], kv[0][1])):
            vecs = [p[f][1] for f in self.fields if f in p]
            text = " | ".join(p[f][0] for f in self.fields if f in p)
            units.append({"class_key": key, "field": "stages", "slot": slot, "text": text,
                          "vec": normalize(np.mean(vecs, axis=0)), "droppable": True})
        return units

    def drop(self, knowledge: dict, gone: set[tuple[str, int]]) -> dict:
        return {"stages": [s for i, s in enumerate(knowledge["stages"]) if ("stages", slot_of(s, i)) not in gone]}
