"""Accuracy summaries (mean and 95% interval), result JSON files, and PNG plots of training runs."""
from __future__ import annotations

import json
import math
from pathlib import Path

from torch import Tensor


def summarize(accuracies: Tensor) -> tuple[float, float]:
    """Per-episode accuracies in 0..1 -> (mean %, 95% interval %) with interval = 1.96 * std / sqrt(n).

    std is the population standard deviation of the per-episode accuracies (as in the field's code bases).
    """
    a = accuracies.double() * 100.0
    n = a.numel()
    if n == 0:
        raise ValueError("no episodes to summarise")
    std = a.std(unbiased=False).item() if n > 1 else 0.0
    return a.mean().item(), 1.96 * std / math.sqrt(n)


def format_accuracy(mean: float, ci: float) -> str:
    return f"{mean:.2f} ± {ci:.2f}"


def write_json(path: Path, payload: dict) -> None:
    """Write a JSON file atomically (readers never see half a file)."""
    from fsar.data.paths import atomic_write_text

    atomic_write_text(Path(path), json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _smooth(values: list[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def plot_training(log_path: Path, png_path: Path, title: str = "") -> None:
    """Loss and accuracy curves of a run (train: moving average of the logged steps; val: markers) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_jsonl(log_path)
    train = [r for r in rows if r.get("kind") == "train"]
    val = [r for r in rows if r.get("kind") == "val"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    if train:
        x = [r["episode"] for r in train]
        w = max(1, len(train) // 20)
        ax1.plot(x, [r["loss"] for r in train], color="tab:blue", alpha=0.25, lw=0.8)
        ax1.plot(x, _smooth([r["loss"] for r in train], w), color="tab:blue", label="train loss")
        ax2.plot(x, _smooth([100 * r["acc"] for r in train], w), color="tab:blue", label="train accuracy")
    if val:
        ax2.errorbar([r["episode"] for r in val], [r["acc"] for r in val], yerr=[r["ci95"] for r in val],
                     color="tab:orange", marker="o", capsize=3, label="val accuracy (95% CI)")
    ax1.set_xlabel("episode"), ax1.set_ylabel("loss"), ax1.grid(alpha=0.3), ax1.legend()
    ax2.set_xlabel("episode"), ax2.set_ylabel("accuracy (%)"), ax2.grid(alpha=0.3), ax2.legend()
    fig.suptitle(title)
    fig.tight_layout()
    png_path = Path(png_path)
    tmp = png_path.with_name(f".{png_path.stem}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(png_path)
