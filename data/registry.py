"""The dataset registry: each few-shot benchmark's classes and their standard train/val/test split.

Class keys are the original names of the data set (``ApplyEyeMakeup``, ``brush_hair``); ``prompt_name`` gives the
natural-language form used for prompting (``apply eye makeup``, ``brush hair``). The registry is open:
``register_dataset`` adds a data set (the synthetic benchmark registers itself this way).
"""
from __future__ import annotations

import csv
import importlib
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ClassInfo:
    key: str  # the data set's own name, as in its folders and split files
    name: str  # natural-language form for prompts and text embeddings
    split: str  # train, val, test, or "custom"
    index: int  # position in the registry's class order (train, then val, then test)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    classes: tuple[ClassInfo, ...]
    description: str = ""
    # direction of motion is part of the label (SSv2, synthetic): no horizontal flip in augmentation
    direction_matters: bool = False
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def split(self, split: str) -> list[ClassInfo]:
        """The classes of one split (``train``, ``val``, ``test``) or all of them (``all``), in registry order."""
        if split == "all":
            return list(self.classes)
        if split not in SPLITS and split != "custom":
            raise ValueError(f"unknown split '{split}'; choose one of train, val, test, all")
        return [c for c in self.classes if c.split == split]

    def by_key(self, key: str) -> ClassInfo:
        for c in self.classes:
            if c.key == key or c.name == key or _strip_brackets(c.key) == _strip_brackets(key):
                return c
        raise KeyError(f"class '{key}' is not in data set '{self.name}'")


def prompt_name(key: str) -> str:
    """Natural-language form of a class key: ``ApplyEyeMakeup`` -> ``apply eye makeup``, ``brush_hair`` -> ``brush hair``."""
    text = _strip_brackets(key).replace("_", " ").replace("-", " ")
    if " " not in text.strip():
        # CamelCase: split before each capital that follows a lower-case letter or starts a new word
        text = re.sub(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", text)
    return re.sub(r"\s+", " ", text).strip().lower()


def _strip_brackets(text: str) -> str:
    """SSv2 templates are written with or without brackets: ``Pouring [something] into [something]``."""
    return text.replace("[", "").replace("]", "")


def _build(name: str, splits: dict[str, list[str]], **kwargs) -> DatasetInfo:
    classes, seen = [], set()
    for split in SPLITS:
        for key in splits.get(split, []):
            if key in seen:
                raise ValueError(f"class '{key}' appears twice in data set '{name}'")
            seen.add(key)
            classes.append(ClassInfo(key=key, name=prompt_name(key), split=split, index=len(classes)))
    return DatasetInfo(name=name, classes=tuple(classes), **kwargs)


def _packaged_splits(name: str) -> dict[str, list[str]]:
    folder = resources.files("fsar.data") / "splits"
    return {
        split: [line.strip() for line in (folder / f"{name}_{split}.txt").read_text().splitlines() if line.strip()]
        for split in SPLITS
    }


_BUILTIN = {
    "hmdb51": dict(description="HMDB51, ARN split (31/10/10)"),
    "ucf101": dict(description="UCF101, ARN split (70/10/21)"),
    "kinetics100": dict(description="Kinetics-100, CMN split (64/12/24)"),
    "ssv2_small": dict(description="Something-Something v2 small, CMN split (64/12/24)", direction_matters=True),
    "ssv2_full": dict(description="Something-Something v2 full, OTAM split (64/12/24)", direction_matters=True),
}
# data sets that register themselves when their module is imported (kept lazy: importing them may be heavy)
_PROVIDERS = {"synthetic": "fsar.data.synthetic"}
_REGISTRY: dict[str, DatasetInfo] = {}


def register_dataset(info: DatasetInfo) -> DatasetInfo:
    """Add (or replace) a data set in the registry."""
    _REGISTRY[info.name] = info
    return info


def build_dataset(name: str, splits: dict[str, list[str]], **kwargs) -> DatasetInfo:
    """Make a DatasetInfo from split lists of class keys (for data sets defined in code)."""
    return _build(name, splits, **kwargs)


def known_datasets() -> list[str]:
    return sorted(set(_BUILTIN) | set(_PROVIDERS) | set(_REGISTRY))


def get_dataset(name: str) -> DatasetInfo:
    """Look a data set up by name; a one-line error lists the known ones."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in _BUILTIN:
        return register_dataset(_build(name, _packaged_splits(name), **_BUILTIN[name]))
    if name in _PROVIDERS:
        importlib.import_module(_PROVIDERS[name])
        if name in _REGISTRY:
            return _REGISTRY[name]
    raise KeyError(f"unknown dataset '{name}'; known datasets: {', '.join(known_datasets())}")


def load_class_file(path: str | Path, name: str | None = None) -> DatasetInfo:
    """A custom class list: one name per line (.txt), a CSV with a ``name`` (or first) column, or a JSON list.

    Raises ValueError naming the file and line of the first problem; nothing is silently dropped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class file {path} does not exist; give one class name per line")
    text = path.read_text(encoding="utf-8")
    keys: list[tuple[int, str]] = []
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {e.lineno}: not valid JSON ({e.msg}); expected a list of class names") from None
        if isinstance(data, dict) and "classes" in data:
            data = data["classes"]
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of class names (or {{\"classes\": [...]}})")
        for i, item in enumerate(data, 1):
            if not isinstance(item, str):
                raise ValueError(f"{path}: item {i} is {type(item).__name__}, expected a class name string")
            keys.append((i, item))
    elif path.suffix.lower() == ".csv":
        rows = list(csv.reader(text.splitlines()))
        if not rows:
            raise ValueError(f"{path}: the class file is empty; give one class name per line")
        header = [h.strip().lower() for h in rows[0]]
        col = header.index("name") if "name" in header else 0
        start = 1 if "name" in header or "class" in header else 0
        for i, row in enumerate(rows[start:], start + 1):
            if not row or not "".join(row).strip():
                continue
            if col >= len(row):
                raise ValueError(f"{path}: line {i}: has no column {col + 1}; expected a class name there")
            keys.append((i, row[col]))
    else:
        keys = [(i, line) for i, line in enumerate(text.splitlines(), 1) if line.strip() and not line.startswith("#")]
    seen: dict[str, int] = {}
    for lineno, key in keys:
        key = key.strip()
        if not key:
            raise ValueError(f"{path}: line {lineno}: empty class name")
        if len(key) > 200 or "\x00" in key:
            raise ValueError(f"{path}: line {lineno}: does not look like a class name ({key[:40]!r}...)")
        if key in seen:
            raise ValueError(f"{path}: line {lineno}: class '{key}' repeats line {seen[key]}")
        seen[key] = lineno
    if not seen:
        raise ValueError(f"{path}: the class file is empty; give one class name per line")
    name = name or path.stem
    classes = tuple(ClassInfo(key=k, name=prompt_name(k), split="custom", index=i) for i, k in enumerate(seen))
    return DatasetInfo(name=name, classes=classes, description=f"custom classes from {path}")
