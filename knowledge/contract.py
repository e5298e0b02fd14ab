"""The contract between stage 1 and stage 2: a knowledge set's text embeddings as torch tensors, in class order.

``load_text_embeddings(dataset, kind, encoder=None, split="all", model=None, allow_missing=False)``
returns a ``TextEmbeddings`` whose rows follow the registry's class order for ``split`` (C classes, D = encoder
dimension, 384 for the default all-MiniLM-L6-v2). Every vector is L2-normalised, float32, on the CPU.

    names                 [C, D]     class-name prompt "a video of a person {name}" (``NAME_TEMPLATE``)
    items (dist)   spatial  [C, S, D]   spatial attributes, in generated order
                   temporal [C, T, D]   temporal attributes, in generated order
    items (lga)    stages    [C, 3, D]  one per stage (onset, progression, completion): the L2-normalised mean of
                                        the stage's triplet vector and sentence vector
                   triplets  [C, 3, D]  "subject motion object" of each stage
                   sentences [C, 3, D]  the sentence of each stage
    items (star)   descriptors [C, L, D] ordered descriptors
                   summary     [C, D]    summary sentence
    masks          one BoolTensor per item tensor: [C, S], [C, T], [C, 3], [C, L] and [C] for summary;
                   True = a real vector, False = padding (counts differ between classes, e.g. after a filter)
    has_knowledge  [C] bool: the class has valid knowledge

Every mask row has at least one True. A class with no valid knowledge (failed or absent) raises
``MissingKnowledgeError`` naming the classes, unless ``allow_missing=True``: then each of its item tensors holds its
name vector in slot 0 (mask True there, False elsewhere), ``has_knowledge`` is False, and ``info["missing"]`` lists
it. A field that a filter emptied for a valid class gets the same name fallback (``info["name_fallback"]``).

The contract only reads: missing knowledge or embeddings raise FileNotFoundError with the command that makes them.
``fsar.knowledge.pipeline.ensure_knowledge`` makes them (the LLM, then the encoder) with the same progress and report
as ``fsar-knowledge generate``; ``fsar-train`` calls it before reading.

Stage 2 reads the same object: ``tensors`` ({"names", each item, item + "_mask"}), ``rows(class_keys)`` and
``gather(rows)`` give an episode's text in its class order. Class names alone (methods that need no knowledge) are a
``TextEmbeddings`` with no items (``fsar.model.fewshot.class_name_text``).

The layout of each kind's tensors is its own declaration (``fsar.knowledge.kinds``): ``fields`` (embedded, one slot
per text), ``widths`` (fixed widths), ``pool`` (fields made from others, lga's ``stages``), ``scalars`` ([C, D]).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from fsar.knowledge.embed import NAME_TEMPLATE, encode_texts, load_embeddings, name_prompt
from fsar.knowledge.encoders import resolve_encoder
from fsar.knowledge.errors import KnowledgeError
from fsar.knowledge.kinds import get_kind
from fsar.knowledge.store import KnowledgeSet, load_knowledge


class MissingKnowledgeError(KnowledgeError):
    """Some classes of the split have no valid knowledge (failed or never generated); a ValueError for older callers."""


@dataclass
class TextEmbeddings:
    """Text embeddings of one knowledge set for one split; shapes in the module docstring."""

    names: torch.Tensor  # [C, D]
    items: dict[str, torch.Tensor]  # field -> [C, N, D] (summary: [C, D])
    masks: dict[str, torch.Tensor]  # field -> [C, N] bool (summary: [C])
    class_keys: list[str]
    class_names: list[str]
    has_knowledge: torch.Tensor  # [C] bool
    fingerprint: str  # of knowledge + encoder + name prompt
    info: dict = field(default_factory=dict)  # dataset, kind, split, knowledge_model, knowledge_fingerprint, encoder, dim, ...

    @property
    def dim(self) -> int:
        return int(self.names.shape[-1])

    def __len__(self) -> int:
        return len(self.class_keys)

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        """What a head may read, keyed as episodes gather it: "names", each item, and each item's mask as item + "_mask"."""
        return {"names": self.names, **self.items, **{f"{k}_mask": m for k, m in self.masks.items()}}

    def rows(self, class_keys: list[str]) -> torch.Tensor:
        """[len(class_keys)] row index of each class key; a one-line KeyError names the first class without text."""
        index = {k: i for i, k in enumerate(self.class_keys)}
        missing = [k for k in class_keys if k not in index]
        if missing:
            raise KeyError(f"no text embeddings for class '{missing[0]}' ({len(missing)} missing); re-run the embedding step")
        return torch.tensor([index[k] for k in class_keys], dtype=torch.long)

    def gather(self, rows: torch.Tensor, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """rows [E, N] -> {key: [E, N, ...]}: the text of each episode's classes, in episode class order."""
        return {k: v[rows].to(device) for k, v in self.tensors.items()}

    def to(self, device) -> "TextEmbeddings":
        move = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
        return TextEmbeddings(self.names.to(device), move(self.items), move(self.masks), self.class_keys, self.class_names,
                              self.has_knowledge.to(device), self.fingerprint, self.info)


def encode_class_names(names: list[str], encoder: str | None = None, template: str = NAME_TEMPLATE, batch_size: int = 64) -> torch.Tensor:
    """[C, D] L2-normalised embeddings of the class-name prompts (``template`` with {name}; "{name}" for the bare name).

    Cached in the text store: names seen before cost no encoding and do not load the encoder.
    """
    if not names:
        raise ValueError("encode_class_names needs at least one class name")
    vectors, _ = encode_texts([name_prompt(n, template) for n in names], resolve_encoder(encoder), batch_size)
    return torch.from_numpy(vectors)


def _classes(dataset: str, split: str, ks: KnowledgeSet) -> list[tuple[str, str]]:
    """(key, name) of the split's classes in registry order; a data set outside the registry uses the set's rows."""
    from fsar.data.registry import get_dataset

    try:
        return [(c.key, c.name) for c in get_dataset(dataset).split(split)]
    except KeyError:
        rows = sorted(ks.rows, key=lambda r: r["index"])
        return [(r["class_key"], r["class_name"]) for r in rows if split == "all" or r["split"] == split]


def missing_classes(ks: KnowledgeSet, classes: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The (key, name) of ``classes`` that have no valid knowledge in ``ks`` (failed or absent)."""
    ok = {r["class_key"] for r in ks.ok}
    return [c for c in classes if c[0] not in ok]


_missing = missing_classes


def load_text_embeddings(
    dataset: str,
    kind: str,
    encoder: str | None = None,
    split: str = "all",
    model: str | None = None,
    allow_missing: bool = False,
) -> TextEmbeddings:
    """The text embeddings of ``dataset``'s ``kind`` knowledge for ``split``, in registry class order (see module doc).

    ``model``: the knowledge model folder (default: the most recently updated set). Only reads: missing knowledge or
    embeddings are made by ``fsar.knowledge.pipeline.ensure_knowledge`` (or ``ensure_embeddings``), never here.
    """
    k = get_kind(kind)
    gen_cmd = f"fsar-knowledge generate --dataset {dataset} --kind {kind}"
    ks = load_knowledge(dataset, kind, model)
    classes = _classes(dataset, split, ks)
    if not classes:
        raise KnowledgeError(f"data set '{dataset}' has no classes in split '{split}'")
    missing = missing_classes(ks, classes)
    if missing and not allow_missing:
        shown = ", ".join(n for _, n in missing[:10]) + (", ..." if len(missing) > 10 else "")
        raise MissingKnowledgeError(
            f"no valid '{kind}' knowledge for {len(missing)} of {len(classes)} classes of {dataset} ({shown}); "
            f"run: {gen_cmd} to retry them, or pass allow_missing=True to use their class names instead"
        )
    es = load_embeddings(dataset, kind, ks.model, encoder, ks=ks)

    names = encode_class_names([n for _, n in classes], encoder, es.manifest.get("name_template", NAME_TEMPLATE))  # [C, D]
    row_of = {key: i for i, (key, _) in enumerate(classes)}
    C, D = len(classes), int(es.vectors.shape[1])
    cells: dict[str, dict[tuple[int, int], np.ndarray]] = {f: {} for f in k.fields}
    for r, v in zip(es.rows, es.vectors):
        if r["field"] in cells and r["class_key"] in row_of:
            cells[r["field"]][(row_of[r["class_key"]], r["slot"])] = v

    items: dict[str, torch.Tensor] = {}
    masks: dict[str, torch.Tensor] = {}
    fallback: dict[str, list[str]] = {}
    for f, cell in cells.items():  # one slot per text: a fixed width where the kind says, else the widest class
        width = k.widths.get(f) or max([s + 1 for _, s in cell] or [1])
        x = torch.zeros(C, width, D)
        m = torch.zeros(C, width, dtype=torch.bool)
        for (c, s), v in cell.items():
            x[c, s] = torch.from_numpy(v)
            m[c, s] = True
        items[f], masks[f] = x, m
    k.pool(items, masks)  # fields made from the embedded ones (lga: stages)
    for f in items:  # no mask row without a True: the class name stands in for an empty field
        empty = ~masks[f].any(dim=1)
        if empty.any():
            items[f][empty, 0] = names[empty]
            masks[f][empty, 0] = True
            fallback[f] = [classes[i][0] for i in empty.nonzero().flatten().tolist()]
    for f in k.scalars:  # one vector per class: [C, D] and [C]
        items[f], masks[f] = items[f][:, 0], masks[f][:, 0]
    missing_keys = {key for key, _ in missing}
    has = torch.tensor([key not in missing_keys for key, _ in classes], dtype=torch.bool)
    info = {
        "dataset": dataset,
        "kind": kind,
        "split": split,
        "knowledge_model": ks.model,
        "knowledge_fingerprint": ks.fingerprint,
        "encoder": es.manifest["encoder"],
        "dim": D,
        "name_template": es.manifest.get("name_template", NAME_TEMPLATE),
        "missing": [key for key, _ in missing],
        "name_fallback": fallback,
        "embeddings_path": str(es.path),
    }
    return TextEmbeddings(
        names=names,
        items=items,
        masks=masks,
        class_keys=[key for key, _ in classes],
        class_names=[n for _, n in classes],
        has_knowledge=has,
        fingerprint=es.manifest["fingerprint"],
        info=info,
    )


__all__ = ["TextEmbeddings", "MissingKnowledgeError", "load_text_embeddings", "encode_class_names", "missing_classes", "NAME_TEMPLATE"]
