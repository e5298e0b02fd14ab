"""The dataset registry: each few-shot benchmark's classes and their standard train/val/test split.

Class keys are the original names of the data set (``ApplyEyeMakeup``, ``brush_hair``); ``prompt_name`` gives the
natural-language form used for prompting (``apply eye makeup``, ``brush hair``). The registry is open:
``register_dataset`` adds a data set to ``DATASETS`` (the synthetic benchmark registers itself this way, when its
module is first needed); an unknown name is a one-line error listing the known ones.
"""
from __future__ import annotations

import csv
import importlib
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from fsar.core.registry import Registry

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


DATASETS: Registry[DatasetInfo] = Registry("dataset")
# data sets that register themselves when their module is imported (kept lazy: importing it takes a while)
_PROVIDERS = {"synthetic": "fsar.data.synthetic"}


def register_dataset(info: DatasetInfo) -> DatasetInfo:
    """Add a data set; the same name again with other classes is refused (the same classes again are a no-op)."""
    if info.name in DATASETS and DATASETS.get(info.name) != info:
        raise ValueError(f"data set '{info.name}' is registered twice, with different classes")
    return DATASETS.register(info.name, info)


def build_dataset(name: str, splits: dict[str, list[str]], **kwargs) -> DatasetInfo:
    """Make a DatasetInfo from split lists of class keys (for data sets defined in code)."""
    return _build(name, splits, **kwargs)


def known_datasets() -> list[str]:
    """Every data set name, sorted (including those whose module is not imported yet)."""
    return sorted(set(DATASETS.names()) | set(_PROVIDERS))


def get_dataset(name: str) -> DatasetInfo:
    """Look a data set up by name; an unknown name is a one-line error listing the known ones."""
    if name not in DATASETS:
        for module in _PROVIDERS.values():  # a provider's name, or an unknown one (listed with every provider's)
            importlib.import_module(module)
    return DATASETS.get(name)


for _name, _kwargs in {
    "hmdb51": dict(description="HMDB51, ARN split (31/10/10)"),
    "ucf101": dict(description="UCF101, ARN split (70/10/21)"),
    "kinetics100": dict(description="Kinetics-100, CMN split (64/12/24)"),
    "ssv2_small": dict(description="Something-Something v2 small, CMN split (64/12/24)", direction_matters=True),
    "ssv2_full": dict(description="Something-Something v2 full, OTAM split (64/12/24)", direction_matters=True),
}.items():
    register_dataset(_build(_name, _packaged_splits(_name), **_kwargs))


CLASS_COLUMNS = ("name", "class", "class_name", "label", "action")  # CSV header names of the class column


def _read_utf8(path: Path) -> str:
    """The file's text; a byte-order mark is dropped, and non-UTF-8 bytes are a one-line error naming the line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ValueError(
            f"{path}: line {line}: not UTF-8 text (byte 0x{data[e.start]:02x}); save the class file as UTF-8"
        ) from None


def _is_comment(text: str) -> bool:
    return text.lstrip().startswith("#")


def load_class_file(path: str | Path, name: str | None = None) -> DatasetInfo:
    """A custom class list: one name per line (.txt), a CSV, or a JSON list (or ``{"classes": [...]}``).

    - The file must be UTF-8 (a byte-order mark is allowed and dropped).
    - .txt and .csv: lines (rows) starting with ``#`` are comments; they are skipped and their line numbers are
      returned in ``extra["comment_lines"]`` so that the caller can say how many were skipped.
    - .csv: a first row naming a column ``name``, ``class``, ``class_name``, ``label`` or ``action`` is a header and
      that column holds the classes (``id,class`` takes ``class``); without such a header, the first column.
    - Rejected, naming the file and line: empty names, names with no letter or digit (``___``, ``[]``), and names
      that read the same as an earlier one once normalised (``Pole Vault``, ``pole_vault``, ``PoleVault`` are one
      class, ``pole vault``: keep one of them).
    - The set is named ``name`` (a plain name, see ``check_name``), else after the file; it may not be the name of a
      registered data set, whose stored knowledge the custom classes would otherwise join.
    """
    from fsar.data.paths import check_name, path_problem

    path = Path(path)
    problem = path_problem(path, "file")
    if problem == "does not exist":
        raise FileNotFoundError(f"class file {path} does not exist; give a file with one class name per line")
    if problem:
        raise ValueError(f"class file {path} {problem}; give a file with one class name per line")
    if name is not None:
        check_name(name, "--dataset")
    else:
        name = re.sub(r"[^A-Za-z0-9._+-]+", "_", path.stem).strip("._-+")[:128] or "custom"
    if name in known_datasets():
        raise ValueError(
            f"custom classes cannot be stored as '{name}', a registered data set (they would mix with its knowledge); "
            f"pass --dataset with another name, e.g. --dataset {name}_custom"
        )
    text = _read_utf8(path)
    keys: list[tuple[int, str]] = []
    comments: list[int] = []
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
        rows = [(i, row) for i, row in enumerate(csv.reader(text.splitlines()), 1)]
        comments = [i for i, row in rows if row and _is_comment(row[0])]
        rows = [(i, row) for i, row in rows if i not in comments]
        if not rows:
            raise ValueError(f"{path}: the class file is empty; give one class name per line")
        header = [h.strip().lower() for h in rows[0][1]]
        named = [c for c in CLASS_COLUMNS if c in header]
        col = header.index(named[0]) if named else 0
        for i, row in rows[1:] if named else rows:
            if not row or not "".join(row).strip():
                continue
            if col >= len(row):
                raise ValueError(f"{path}: line {i}: has no column {col + 1}; expected a class name there")
            keys.append((i, row[col]))
    else:
        for i, line in enumerate(text.splitlines(), 1):
            if _is_comment(line):
                comments.append(i)
            elif line.strip():
                keys.append((i, line))
    where = "item" if path.suffix.lower() == ".json" else "line"
    seen: dict[str, int] = {}
    natural: dict[str, tuple[int, str]] = {}  # prompt name -> (line, key) of its first class
    for lineno, key in keys:
        key = key.strip()
        if not key:
            raise ValueError(f"{path}: {where} {lineno}: empty class name")
        if len(key) > 200 or "\x00" in key:
            raise ValueError(f"{path}: {where} {lineno}: does not look like a class name ({key[:40]!r}...)")
        if key in seen:
            raise ValueError(f"{path}: {where} {lineno}: class '{key}' repeats {where} {seen[key]}")
        pname = prompt_name(key)
        if not re.search(r"[^\W_]", pname):
            raise ValueError(f"{path}: {where} {lineno}: class '{key}' has no letter or digit; give a class name")
        if pname in natural:
            first_line, first = natural[pname]
            raise ValueError(
                f"{path}: {where} {lineno}: class '{key}' is the same class as '{first}' ({where} {first_line}) "
                f"(both read as '{pname}'); keep one of them"
            )
        seen[key] = lineno
        natural[pname] = (lineno, key)
    if not seen:
        raise ValueError(f"{path}: the class file is empty; give one class name per line")
    classes = tuple(ClassInfo(key=k, name=prompt_name(k), split="custom", index=i) for i, k in enumerate(seen))
    return DatasetInfo(name=name, classes=classes, description=f"custom classes from {path}", extra={"comment_lines": comments})
