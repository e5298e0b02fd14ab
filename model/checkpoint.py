"""Checkpoint I/O: what a checkpoint holds, writing it atomically, and reading it back with one-line errors.

A checkpoint is a dict saved with ``torch.save``::

    format      CHECKPOINT_FORMAT (older formats are refused: their heads and metrics differ)
    method      the method's registered name
    config      TrainConfig as a dict
    model       the weights (a frozen pretrained backbone is left out: it is reloaded from its source)
    episode, step, best           where training stood and the best validation so far
    text        fingerprint and info of the text embeddings, or None
    data        fingerprints of the train and val video lists
    optimizer, scheduler          only in last.pt (full=True), to resume
    rng         every rank's torch (and CUDA) generator state, to resume exactly
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from fsar.core.errors import FsarError
from fsar.model.config import TrainConfig
from fsar.model.fewshot import FewShotModel
from fsar.model.registry import get_method

if TYPE_CHECKING:  # the contract imports datasets (slow); stage 2 needs its type only for hints
    from fsar.knowledge.contract import TextEmbeddings



class CheckpointError(FsarError, ValueError):
    """A file that is not a checkpoint this run can use (another format, method, model or settings)."""


class MissingCheckpoint(FsarError, FileNotFoundError):
    """No checkpoint where one was asked for."""


class RunFolderExists(FsarError, FileExistsError):
    """The run folder already holds a checkpoint and --resume was not given."""


CHECKPOINT_FORMAT = "fsar-checkpoint-2"  # 2: frame adapter, classification loss, reference OTAM / Bi-MHM heads

# settings that --resume must find unchanged: any of them changes what the rest of the run would compute
RESUME_FIXED = ("dataset", "way", "shot", "query", "backbone", "episodes", "batch", "accum", "seed", "lr", "frames",
                "size", "adapter", "adapter_dim", "train_views", "view_seed", "class_loss", "weight_decay", "opts")


def model_state(model: FewShotModel) -> dict:
    """Weights worth saving: all of them, except a frozen pretrained backbone (reloaded from its source)."""
    state = model.state_dict()
    if model.backbone.pretrained and model.backbone.frozen:
        state = {k: v for k, v in state.items() if not k.startswith("backbone.")}
    return state


def load_model_state(model: FewShotModel, state: dict) -> None:
    """Load saved weights; a pretrained backbone may be absent, anything else missing or extra is an error."""
    if model.classifier is None:  # the training-only classifier is not needed to evaluate
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k.startswith("backbone.") and model.backbone.pretrained)]
    if missing or unexpected:
        raise CheckpointError(f"checkpoint does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")


def data_fingerprint(records: list) -> str:
    """A short hash of a video list (which videos, which labels)."""
    from fsar.data.loaders import fingerprint

    return fingerprint(records)


def checkpoint_payload(cfg: TrainConfig, model: FewShotModel, bank: TextEmbeddings | None, records: dict, episode: int,
                       step: int, best: dict, optimizer=None, scheduler=None) -> dict:
    """The checkpoint dict (see the module docstring); optimizer and scheduler only when given (last.pt)."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "method": cfg.method,
        "config": asdict(cfg),
        "model": model_state(model),
        "episode": episode,
        "step": step,
        "best": dict(best),
        "text": {"fingerprint": bank.fingerprint, "info": bank.info} if bank else None,
        "data": {s: data_fingerprint(r) for s, r in records.items()},
    }
    if optimizer is not None:
        payload["optimizer"] = optimizer.state_dict()
        payload["scheduler"] = scheduler.state_dict()
    return payload


def write_checkpoint(payload: dict, path: Path) -> None:
    """Save atomically: a temporary file renamed over ``path``, so a crash never leaves half a checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def read_resume_checkpoint(path: Path, cfg: TrainConfig, bank: TextEmbeddings | None) -> dict:
    """The last.pt of a run to continue; one-line errors when it was written by another version, with other text
    embeddings, another method, or settings that would not continue the same run."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} was written by another fsar version ({ckpt.get('format')}); start a new run")
    if bank is not None and ckpt.get("text") and ckpt["text"]["fingerprint"] != bank.fingerprint:
        raise CheckpointError(f"the text embeddings changed since {path} was written "
                         f"({ckpt['text']['fingerprint']} -> {bank.fingerprint}); start a new run")
    if ckpt.get("method") != cfg.method:
        raise CheckpointError(f"{path} is a checkpoint of method '{ckpt.get('method')}', not '{cfg.method}'")
    saved = TrainConfig.from_dict(ckpt["config"])
    changed = [k for k in RESUME_FIXED if getattr(saved, k) != getattr(cfg, k)]
    if changed:
        raise CheckpointError(f"--resume with different settings ({', '.join(changed)}) would not continue the run; use the saved ones")
    return ckpt


def load_checkpoint(path: Path | str, method: str | None = None) -> dict:
    """Read an fsar checkpoint; one-line errors for a missing file, another format, or another method."""
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt"
    if not path.is_file():
        raise MissingCheckpoint(f"checkpoint {path} does not exist; give a best.pt/last.pt of a run folder (or the folder)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__}); give a best.pt or last.pt written by fsar-train") from None
    if isinstance(ckpt, dict) and str(ckpt.get("format", "")).startswith("fsar-checkpoint-") and ckpt["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} was written by an older fsar ({ckpt['format']}, before the frame adapter and the reference "
                         f"metrics); train it again with this version")
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an fsar-train checkpoint; give a best.pt or last.pt written by fsar-train")
    if method is not None and ckpt["method"] != method:
        raise CheckpointError(f"{path} is a checkpoint of method '{ckpt['method']}', not '{method}'; drop --method or pick the right checkpoint")
    get_method(ckpt["method"])  # a method this installation does not know: one-line error listing the choices
    ckpt["path"] = str(path)
    return ckpt
