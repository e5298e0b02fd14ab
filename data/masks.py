"""Acting-object masks of real videos from a text-guided segmenter (CLIPSeg), in the synthetic masks' format.

One ``<video>.masks.npz`` per video, next to it (the rule ``ClipLoader`` reads masks by): key "masks", uint8
[F, 64, 64] (1 = the prompted object, 0 = background), plus "prompt" and "segmenter" so a rerun skips files made
with the same prompt and segmenter and redoes the others.
"""
from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from fsar.core.errors import FsarError

MASK_SIZE = 64  # our choice: the synthetic benchmark's mask size
HUB_ID = "CIDAS/clipseg-rd64-refined"
THRESHOLD = 0.5  # our choice: sigmoid(logit) > 0.5 marks the object


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


def mask_file(record) -> Path:
    """Where the masks of a video live: ``<video id>.masks.npz`` next to the video file or frame folder."""
    from fsar.data.synthetic import mask_path

    return mask_path(record)


def is_current(path: Path, prompt: str, segmenter: str) -> bool:
    """Whether ``path`` holds readable masks made with this prompt and segmenter."""
    if not path.is_file():
        return False
    try:
        with np.load(path) as data:
            return str(data["prompt"]) == prompt and str(data["segmenter"]) == segmenter and data["masks"].ndim == 3
    except Exception:  # noqa: BLE001 - an unreadable file is redone
        return False


def write_masks(records: Sequence, prompts: dict[str, str], model, processor, segmenter: str,
                progress: bool = True) -> dict[str, int]:
    """Segment every frame of every record; counts of written, skipped (current) and unreadable videos."""
    from fsar.data.paths import atomic_write_bytes
    from fsar.data.progress import track
    from fsar.data.video import UnreadableVideo, count_frames, read_frames

    counts = dict(written=0, skipped=0, unreadable=0)
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
        np.savez_compressed(buf, masks=masks, prompt=np.array(prompt), segmenter=np.array(segmenter))
        atomic_write_bytes(path, buf.getvalue())
        counts["written"] += 1
    return counts
