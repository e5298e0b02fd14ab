"""List the videos of one split of a benchmark from a local root, in the layouts public code bases use.

Layouts (``root`` is what ``--root`` names):

- videos:         ``root/<class>/<video>.{avi,mp4,webm,mkv}`` (HMDB51, UCF101, Kinetics-100, the synthetic set)
- frame folders:  ``root/<class>/<video>/<frame>.jpg``
- SSv2:           ``root/<id>.webm`` (or ``.mp4``, or a frame folder ``root/<id>/``) with the official label
                  JSON files ``something-something-v2-{train,validation}.json`` (in ``root`` or its parent), which
                  map each id to its template

Split lists (optional; without one, every video of the split's classes is used) hold one video per line:

- ``<class name>/<video id>`` (a trailing `` <number>`` as in UCF101's lists and a file extension are ignored)
- ``<split><class index>/<video id>`` such as ``test3/78687``: the index is 0-based into the registry's classes of
  that split (``DatasetInfo.split(split)``), which follow the public code bases' class order
"""
from __future__ import annotations

import hashlib
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from fsar.data.registry import DatasetInfo, get_dataset
from fsar.data.video import FRAME_EXTENSIONS, VIDEO_EXTENSIONS

LAYOUTS = ("root/<class>/<video>.{avi,mp4,webm}, root/<class>/<video>/<frame>.jpg, "
           "or for SSv2 root/<id>.webm with something-something-v2-*.json labels")
SSV2_LABEL_FILES = ("something-something-v2-train.json", "something-something-v2-validation.json")
_SPLIT_INDEX = re.compile(r"^(train|val|test)(\d+)$")


@dataclass(frozen=True)
class VideoRecord:
    """One video of a split.

    path: the video file or frame folder; class_key: the registry's class key; label: that class's
    ``ClassInfo.index`` (registry order: train, val, test); video_id: the id in split lists (file stem);
    dataset: the registry name (decides flipping); root: the data root (fingerprints use paths relative to it).
    """
    path: Path
    class_key: str
    label: int
    video_id: str
    dataset: str = ""
    split: str = ""
    root: Path | None = field(default=None, compare=False)


def _canon(name: str) -> str:
    """A class name in a form that matches folder names written with _, -, spaces, brackets or any case."""
    name = name.replace("[", "").replace("]", "").replace("_", " ").replace("-", " ").lower()
    return re.sub(r"\s+", " ", name).strip()


def _info(dataset: str | DatasetInfo) -> DatasetInfo:
    return dataset if isinstance(dataset, DatasetInfo) else get_dataset(dataset)


def _is_video_entry(path: Path) -> bool:
    if path.name.startswith("."):
        return False
    if path.is_file():
        return path.suffix.lower() in VIDEO_EXTENSIONS
    return path.is_dir()


def _strip_ext(name: str) -> str:
    p = Path(name)
    return p.stem if p.suffix.lower() in VIDEO_EXTENSIONS else name


def _resolve(root: Path, folder: str | None, video_id: str) -> Path | None:
    """The file or frame folder of a video: under its class folder, else flat in root (SSv2)."""
    bases = ([root / folder] if folder is not None else []) + [root]
    for base in bases:
        for ext in ("", *VIDEO_EXTENSIONS):
            cand = base / f"{video_id}{ext}"
            if (ext and cand.is_file()) or (not ext and cand.is_dir()):
                return cand
    return None


def _class_folders(root: Path) -> dict[str, str]:
    """Canonical class name -> actual folder name, for every sub-folder of root."""
    return {_canon(p.name): p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}


def _ssv2_labels(root: Path) -> dict[str, str] | None:
    """Video id -> template, from the official label JSON files (in root or its parent), if present."""
    found = {}
    for base in (root, root.parent):
        for name in SSV2_LABEL_FILES:
            path = base / name
            if path.is_file():
                try:
                    items = json.loads(path.read_text(encoding="utf-8"))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}: line {e.lineno}: not valid JSON; expected the official SSv2 labels") from None
                for item in items:
                    if not isinstance(item, dict) or "id" not in item or "template" not in item:
                        raise ValueError(f"{path}: entries need 'id' and 'template' keys (official SSv2 label file)")
                    found[str(item["id"])] = item["template"]
        if found:
            return found
    return None


def parse_split_file(path: Path, info: DatasetInfo) -> list[tuple[str, str, str]]:
    """(class key, folder as written, video id) for every line of a split list; one-line errors name the line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split list {path} does not exist; give lines '<class>/<video id>'")
    out = []
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = re.sub(r"\s+\d+$", "", raw.strip())  # UCF101-style trailing label number
        if not line or line.startswith("#"):
            continue
        if "/" not in line:
            raise ValueError(f"{path}: line {lineno}: '{line[:60]}' is not '<class>/<video id>' "
                             "or '<split><class index>/<video id>'")
        folder, video = line.rsplit("/", 1)
        video = _strip_ext(video)
        m = _SPLIT_INDEX.match(folder)
        try:
            key = info.by_key(folder).key
        except KeyError:
            key = None
            canon = _canon(folder)
            for c in info.classes:
                if _canon(c.key) == canon:
                    key = c.key
                    break
            if key is None and m:
                classes = info.split(m.group(1))
                idx = int(m.group(2))
                if idx >= len(classes):
                    raise ValueError(f"{path}: line {lineno}: class index {idx} is out of range: {info.name} has "
                                     f"{len(classes)} {m.group(1)} classes (0-based)") from None
                key = classes[idx].key
            if key is None:
                raise ValueError(f"{path}: line {lineno}: class '{folder}' is not in data set '{info.name}'; "
                                 "check --dataset or the split list") from None
        out.append((key, folder, video))
    if not out:
        raise ValueError(f"split list {path} is empty; give lines '<class>/<video id>'")
    return out


@dataclass
class Listing:
    """The result of scanning a split: the records found and the videos a split list names but the root lacks."""
    records: list[VideoRecord]
    missing: list[str]
    root: Path


def scan(dataset: str | DatasetInfo, root: Path | str | None, split: str,
         split_file: Path | str | None = None) -> Listing:
    """Records of one split plus the split-list entries that have no file (see ``list_videos``)."""
    info = _info(dataset)
    if root is None and info.name == "synthetic":
        from fsar.data.synthetic import ensure_synthetic

        root = ensure_synthetic()
    if root is None:
        raise ValueError(f"data set '{info.name}' needs --root (a folder laid out as {LAYOUTS})")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root} does not exist; expected {LAYOUTS}")
    if split_file is None and info.name == "synthetic" and split == "all":
        parts = [scan(info, root, s) for s in ("train", "val", "test")]
        return Listing([r for p in parts for r in p.records], [m for p in parts for m in p.missing], root)
    if split_file is None and info.name == "synthetic":
        split_file = root / "splits" / f"{split}.txt"
    classes = info.split(split)
    wanted = {c.key for c in classes}
    by_key = {c.key: c for c in info.classes}
    records, missing = [], []

    def add(key: str, path: Path, video_id: str) -> None:
        records.append(VideoRecord(path=path, class_key=key, label=by_key[key].index, video_id=video_id,
                                   dataset=info.name, split=by_key[key].split, root=root))

    if split_file is not None:
        folders = _class_folders(root)
        for key, folder, video in parse_split_file(Path(split_file), info):
            if key not in wanted and split != "all":
                continue  # lists of several splits in one file: keep this split's classes
            real = folders.get(_canon(folder)) or folders.get(_canon(key)) or folder
            path = _resolve(root, real, video)
            if path is None:
                missing.append(f"{folder}/{video}")
            else:
                add(key, path, video)
    else:
        labels = _ssv2_labels(root) if info.name.startswith("ssv2") or not _class_folders(root) else None
        if labels is not None:  # SSv2: flat ids, classes from the label JSON
            canon_wanted = {_canon(k): k for k in wanted}
            for vid, template in labels.items():
                key = canon_wanted.get(_canon(template))
                if key is None:
                    continue
                path = _resolve(root, None, vid)
                if path is None:
                    missing.append(f"{template}/{vid}")
                else:
                    add(key, path, vid)
        else:
            folders = _class_folders(root)
            absent = [c.key for c in classes if _canon(c.key) not in folders]
            if len(absent) == len(classes):
                raise FileNotFoundError(f"{root} has no folder for any {split} class of {info.name} "
                                        f"(e.g. '{classes[0].key}'); expected {LAYOUTS}")
            if absent:
                warnings.warn(f"{root} lacks {len(absent)} of {len(classes)} {split} class folders of {info.name} "
                              f"(e.g. '{absent[0]}')", stacklevel=2)
            for c in classes:
                if _canon(c.key) not in folders:
                    continue
                for entry in sorted((root / folders[_canon(c.key)]).iterdir()):
                    if _is_video_entry(entry) and not entry.name.endswith(".masks.npz"):
                        add(c.key, entry, entry.stem if entry.is_file() else entry.name)
    records.sort(key=lambda r: (r.label, r.video_id))
    return Listing(records=records, missing=missing, root=root)


def list_videos(dataset: str | DatasetInfo, root: Path | str | None, split: str,
                split_file: Path | str | None = None) -> list[VideoRecord]:
    """The videos of one split (``train``, ``val``, ``test``) in a deterministic order (label, video id).

    ``root=None`` works for ``synthetic`` only: it uses (and generates on demand, with a message) the default
    benchmark under ``cache_root()/synthetic``. Videos a split list names but the root lacks are skipped with a
    warning. A missing root raises a one-line error naming the expected layouts.
    """
    listing = scan(dataset, root, split, split_file)
    if listing.missing:
        warnings.warn(f"{len(listing.missing)} videos of the split list are missing under {listing.root} "
                      f"(e.g. {listing.missing[0]})", stacklevel=2)
    if not listing.records:
        raise ValueError(f"no {split} videos of {_info(dataset).name} found under {listing.root}; expected {LAYOUTS}")
    return listing.records


def _size_of(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.iterdir() if p.suffix.lower() in FRAME_EXTENSIONS)
    try:
        return path.stat().st_size
    except OSError:
        return -1


def fingerprint(records: list[VideoRecord]) -> str:
    """The identity of a record list that every result.json records: 16 hex chars.

    It hashes each video's path relative to its root, its size in bytes (a frame folder: the sum of its images)
    and its label, so it costs one ``stat`` per file, where hashing the bytes or the decoded frames would read the
    whole data set (tens of GB for SSv2) before every run. Sizes stand for content because the videos this
    project writes are deterministic (``video.encode_mp4``: same frames, same bytes), so a regenerated synthetic
    set gets the same fingerprint; a file rewritten with other content of exactly the same size is not noticed.
    """
    h = hashlib.sha256()
    for r in records:
        rel = r.path.relative_to(r.root) if r.root is not None and r.path.is_relative_to(r.root) else r.path
        h.update(f"{rel.as_posix()}\t{_size_of(r.path)}\t{r.label}\n".encode("utf-8"))
    return h.hexdigest()[:16]
