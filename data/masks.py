"""Acting-object masks of real videos from a text-guided segmenter (CLIPSeg), in the synthetic masks' format.

One mask file per video next to the frame cache (``<FSAR cache>/frames/masks/<dataset>/<video id>.<key>.masks.npz``),
so a read-only data root is never written to; the key hashes the video's absolute path, size and modification
time, so a changed or moved video never meets the masks of its old content (our choice: a copy that does not
keep modification times is segmented again). The file holds key "masks", uint8 [F, 64, 64] (1 = the prompted
object, 0 = background), "prompt" (the text the segmenter got for this video), "segmenter" and "video" (its path);
a rerun skips files made with the same prompt and segmenter and redoes the others. Readers (``ClipLoader``) look there first and then at
``<video>.masks.npz`` beside the video, where the synthetic benchmark writes its ground-truth masks.
"""
from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from fsar.core.errors import FsarError

MASK_SIZE = 64  # our choice: the synthetic benchmark's mask size
HUB_ID = "CIDAS/clipseg-rd64-refined"
THRESHOLD = 0.5  # our choice: sigmoid(logit) > 0.5 marks the object
PROMPTS = ("name", "knowledge")
# our choice: a knowledge prompt is the class name plus the first spatial phrase of its dist knowledge. The dist
# template's worked examples name the acting object first ("a peeler held in one hand") and often the scene second
# ("kitchen counter or sink"); adding more phrases, or max-pooling one mask per phrase, would also mark the scene.
KNOWLEDGE_PHRASES = 1


def mask_folder(check: bool = True) -> Path:
    """The folder of the segmenter's mask files: ``masks/`` beside the frame cache's arrays."""
    from fsar.data.paths import cache_root

    return cache_root(check=check) / "frames" / "masks"


def video_key(path: Path) -> str:
    """16 hex chars naming one version of a video: its absolute path, size in bytes and modification time."""
    from fsar.data.loaders import _size_of

    path = Path(path).resolve()
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        mtime = -1
    return hashlib.sha256(f"{path}\t{_size_of(path)}\t{mtime}".encode("utf-8")).hexdigest()[:16]


def mask_file(record, check: bool = True) -> Path:
    """Where the segmenter's masks of ``record`` live (whether or not they exist yet)."""
    path = Path(record.path)
    dataset = getattr(record, "dataset", "") or "unnamed"
    return mask_folder(check) / dataset / f"{path.stem}.{video_key(path)}.masks.npz"


def find_mask_file(record) -> Path | None:
    """The mask file a reader uses: the segmenter's beside the frame cache, else ``<video>.masks.npz``; None if neither."""
    from fsar.data.synthetic import mask_path

    for path in (mask_file(record, check=False), mask_path(record)):
        if path.is_file():
            return path
    return None


def load_segmenter(path: Path | str | None = None):
    """CLIPSeg model and processor from a local folder, else the hub id (offline: from the local HF cache only)."""
    from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

    source = str(path) if path is not None else HUB_ID
    try:
        processor = CLIPSegProcessor.from_pretrained(source)
        model = CLIPSegForImageSegmentation.from_pretrained(source).eval()
    except (OSError, ValueError) as e:
        raise FsarError(f"cannot load the CLIPSeg segmenter from '{source}' ({type(e).__name__}); download "
                        f"{HUB_ID} and pass its folder with --segmenter-path DIR") from None
    return model, processor


@torch.no_grad()
def segment_frames(model, processor, frames: np.ndarray, prompt: str, batch: int = 8) -> np.ndarray:
    """Masks uint8 [F, 64, 64] of the prompted object in uint8 RGB frames [F, H, W, 3]."""
    out = []
    for s in range(0, len(frames), batch):
        chunk = [f for f in frames[s:s + batch]]
        inputs = processor(text=[prompt] * len(chunk), images=chunk, padding=True, truncation=True,
                           max_length=model.config.text_config.max_position_embeddings, return_tensors="pt")
        logits = model(**inputs).logits
        if logits.ndim == 2:  # one image: [h, w]
            logits = logits[None]
        prob = torch.sigmoid(logits)[:, None]  # b h w -> b 1 h w
        prob = torch.nn.functional.interpolate(prob, size=(MASK_SIZE, MASK_SIZE), mode="bilinear", align_corners=False)
        out.append((prob[:, 0] > THRESHOLD).to(torch.uint8).numpy())
    return np.concatenate(out)


def is_current(path: Path, prompt: str, segmenter: str) -> bool:
    """Whether ``path`` holds readable masks made with this prompt and segmenter."""
    if not path.is_file():
        return False
    try:
        with np.load(path) as data:
            return str(data["prompt"]) == prompt and str(data["segmenter"]) == segmenter and data["masks"].ndim == 3
    except Exception:  # noqa: BLE001 - an unreadable file is redone
        return False


def knowledge_prompt(name: str, spatial: Sequence[str]) -> str:
    """The CLIPSeg prompt of one class from its dist spatial phrases: "<name>, <phrase 1>" (see KNOWLEDGE_PHRASES)."""
    return ", ".join([name, *[str(p).strip() for p in spatial[:KNOWLEDGE_PHRASES]]])


def class_prompts(dataset: str, class_keys: Iterable[str], prompt: str = "name") -> dict[str, str]:
    """The segmenter's prompt for each class key: its name (the paper's choice), or its name plus the objects its
    stored ``dist`` knowledge names (beyond the paper); missing knowledge is a one-line FsarError naming the command."""
    from fsar.data.registry import get_dataset

    if prompt not in PROMPTS:
        raise FsarError(f"unknown --prompt '{prompt}'; use one of: {', '.join(PROMPTS)}")
    names = {c.key: c.name for c in get_dataset(dataset).classes}
    keys = sorted(set(class_keys), key=list(names).index)
    if prompt == "name":
        return {k: names[k] for k in keys}
    from fsar.knowledge.store import load_knowledge

    fix = f"run: fsar-knowledge generate --dataset {dataset} --kind dist"
    try:
        stored = load_knowledge(dataset, "dist")  # the most recent dist set of this data set
    except FileNotFoundError:
        raise FsarError(f"--prompt knowledge needs 'dist' knowledge for dataset '{dataset}' and there is none; "
                        f"{fix}") from None
    spatial = {r["class_key"]: (r["knowledge"] or {}).get("spatial") or [] for r in stored.ok}
    missing = [k for k in keys if not spatial.get(k)]
    if missing:
        raise FsarError(f"--prompt knowledge: the 'dist' knowledge of dataset '{dataset}' (model {stored.model}) has no "
                        f"spatial phrases for {len(missing)} of {len(keys)} classes (first: {missing[0]}); {fix}")
    return {k: knowledge_prompt(names[k], spatial[k]) for k in keys}


def write_masks(records: Sequence, prompts: dict[str, str], model, processor, segmenter: str,
                progress: bool = True) -> dict[str, int]:
    """Segment every frame of every record into its mask file beside the frame cache; counts of written, skipped
    (current) and unreadable videos. Nothing is written under the data root."""
    from fsar.data.paths import atomic_write_bytes, ensure_writable
    from fsar.data.progress import track
    from fsar.data.video import UnreadableVideo, count_frames, read_frames

    counts, checked = dict(written=0, skipped=0, unreadable=0), set()
    for rec in track(records, "segmenting videos", enabled=progress):
        path, prompt = mask_file(rec), prompts[rec.class_key]
        if is_current(path, prompt, segmenter):
            counts["skipped"] += 1
            continue
        try:
            frames = read_frames(rec.path, count_frames(rec.path))  # every frame, in order
        except UnreadableVideo:
            counts["unreadable"] += 1
            continue
        masks = segment_frames(model, processor, frames, prompt)
        buf = io.BytesIO()
        np.savez_compressed(buf, masks=masks, prompt=np.array(prompt), segmenter=np.array(segmenter),
                            video=np.array(str(Path(rec.path).resolve())))
        if path.parent not in checked:  # a one-line PermissionError naming FSAR_CACHE when the cache is read-only
            checked.add(ensure_writable(path.parent))
        atomic_write_bytes(path, buf.getvalue())
        counts["written"] += 1
    return counts
