"""``fsar-train`` and ``fsar-eval``: episodic training and evaluation of few-shot action recognition methods."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from fsar.cli.common import error_message, fail, run_cli

train_app = typer.Typer(add_completion=False, help="Train a few-shot method episodically (train classes), select on val, test once.")
eval_app = typer.Typer(add_completion=False, help="Evaluate a trained checkpoint on seeded episodes of cached features.")


def _fail(message: str) -> None:
    fail(message)


def _user_errors() -> tuple[type[BaseException], ...]:
    from fsar.data.video import UnreadableVideo
    from fsar.model.backbones import BackboneUnavailable
    from fsar.model.trainer import TrainingDiverged

    errors: list[type[BaseException]] = [ValueError, KeyError, FileNotFoundError, FileExistsError, PermissionError,
                                         BackboneUnavailable, TrainingDiverged, UnreadableVideo]
    return tuple(errors)


def _message(e: BaseException) -> str:
    return error_message(e)


def _parse_opts(opts: list[str]) -> dict:
    """``key=value`` pairs; values are read as JSON when they parse (numbers, lists, true/false), else as text."""
    out = {}
    for item in opts:
        if "=" not in item:
            raise ValueError(f"--opt '{item}' is not KEY=VALUE (e.g. --opt lam=0.05)")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def _method_flags(method: str, knowledge: str | None, no_skc: bool, no_tkc: bool) -> dict:
    """Named switches of a method (``--knowledge``, ``--no-skc``, ``--no-tkc``) -> its head options, through the
    ``cli_options`` function of the head's module; a one-line error when the method has no such switches."""
    import sys as _sys

    from fsar.model.registry import get_method

    given = {k: v for k, v in dict(knowledge=knowledge, no_skc=no_skc, no_tkc=no_tkc).items() if v}
    if not given:
        return {}
    module = _sys.modules[get_method(method).__module__]
    if not hasattr(module, "cli_options"):
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise ValueError(f"{flags}: switches of methods with knowledge (e.g. dist), not of '{method}'; drop them")
    return module.cli_options(**given)


def _print_result(result: dict) -> None:
    from rich.console import Console

    console = Console(soft_wrap=True, highlight=False)
    console.print(
        f"[bold]{result['method']}[/bold] on {result['dataset']} {result['split']} classes, "
        f"{result['way']}-way {result['shot']}-shot, {result['episodes']} episodes (seed {result['episode_seed']}): "
        f"[bold green]{result['accuracy']:.2f} ± {result['ci95']:.2f}%[/bold green] (95% CI)"
    )
    if result.get("shot_note"):
        console.print(f"[yellow]note: {result['shot_note']}[/yellow]")


@train_app.command()
def train(
    method: str = typer.Option(..., help="Method (head) to train; see the list in the error for an unknown name."),
    dataset: str = typer.Option("synthetic", help="Data set from the registry (synthetic needs no --root)."),
    root: Optional[str] = typer.Option(None, help="Data root: root/<class>/<video> (or SSv2 ids with label JSON)."),
    way: int = typer.Option(5, help="Classes per episode (N)."),
    shot: int = typer.Option(1, help="Support videos per class (K); K-shot results come from K-shot training."),
    query: int = typer.Option(3, help="Training queries per class (evaluation always uses 1)."),
    frames: int = typer.Option(8, help="Frames per clip (one per equal segment)."),
    size: Optional[int] = typer.Option(None, help="Input size; default by backbone (effnet 128, dinov2-s 112, tiny 64, clip/resnet50 224)."),
    backbone: str = typer.Option("effnet-lite0", help="effnet-lite0 (default: packaged ImageNet weights, frozen), effnet-lite1/2, dinov2-s, tiny (from scratch), resnet50 or clip."),
    backbone_path: Optional[str] = typer.Option(None, help="Local copy of the backbone weights (else the hub id)."),
    tune: str = typer.Option("auto", help="frozen, full, or N (last N blocks); auto: full for tiny, frozen otherwise."),
    adapter: str = typer.Option("auto", help="Trainable frame adapter on the backbone features: spatial or none (auto: spatial on pretrained backbones)."),
    train_views: int = typer.Option(1, help="Frozen backbone: cached augmented views per training video (1 = none)."),
    episodes: int = typer.Option(800, help="Training episodes (all ranks together)."),
    batch: int = typer.Option(1, help="Episodes per forward pass."),
    accum: int = typer.Option(1, help="Forward passes per optimizer step (gradient accumulation)."),
    optimizer: str = typer.Option("adamw", help="adam or adamw."),
    lr: float = typer.Option(1e-3, help="Learning rate of the head (the backbone's is scaled, see --backbone-lr-scale)."),
    class_loss: float = typer.Option(0.5, help="Weight of the classification loss over all training classes (0 = episodic loss only)."),
    backbone_lr_scale: Optional[float] = typer.Option(None, help="Backbone lr = lr x this (default 1 tiny, 0.1 pretrained)."),
    weight_decay: float = typer.Option(0.05),
    warmup: float = typer.Option(0.05, help="Fraction of steps with a linear warm-up."),
    schedule: str = typer.Option("cosine", help="cosine or constant after the warm-up."),
    clip_grad: float = typer.Option(5.0, help="Max gradient norm (0 = off)."),
    val_every: int = typer.Option(250, help="Episodes between validations on the val classes."),
    val_episodes: int = typer.Option(500),
    test_episodes: int = typer.Option(10000, help="Test episodes at the end (1 query per class)."),
    test_shot: Optional[int] = typer.Option(None, help="Evaluate with another shot than trained (the result says so)."),
    seed: int = typer.Option(0, help="Seed of everything: init, episodes, augmentation."),
    encoder: Optional[str] = typer.Option(None, help="Text encoder for methods that use text (default MiniLM)."),
    opt: list[str] = typer.Option([], "--opt", help="Method option KEY=VALUE (repeatable), e.g. --opt lam=0.05."),
    knowledge: Optional[str] = typer.Option(None, help="Methods with knowledge (dist, star, lga): llm, name or none."),
    no_skc: bool = typer.Option(False, "--no-skc", help="dist: drop the spatial knowledge compensator."),
    no_tkc: bool = typer.Option(False, "--no-tkc", help="dist: drop the temporal knowledge compensator."),
    out: Optional[str] = typer.Option(None, help="Run folder (default: <cache>/runs/<method>-...)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
    eval_batch: int = typer.Option(64, help="Episodes per batch at evaluation."),
    log_every: int = typer.Option(10, help="Optimizer steps between log lines."),
    resume: bool = typer.Option(False, help="Continue the run in --out from its last checkpoint."),
    stop_at: Optional[int] = typer.Option(None, help="Stop after this many episodes (resume later with --resume)."),
    no_test: bool = typer.Option(False, "--no-test", help="Skip the final test evaluation."),
    create_text: bool = typer.Option(True, "--create-text/--no-create-text", help="Generate missing knowledge / embeddings (embedded LLM, MiniLM) instead of failing."),
    frame_cache: bool = typer.Option(True, help="Decode each video once (train clips lose temporal jitter)."),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads (default: torch's choice; 1 is faster on busy shared cores)."),
    progress: bool = typer.Option(True, help="Show the progress bar."),
) -> None:
    """Train on the train classes, keep the best checkpoint on the val classes, then test once on the test classes."""
    from fsar.model.backbones import list_backbones
    from fsar.model.registry import get_method
    from fsar.model.trainer import TrainConfig
    from fsar.model.trainer import train as run_training

    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        get_method(method)
        if backbone not in list_backbones():
            raise ValueError(f"unknown backbone '{backbone}'; choose one of: {', '.join(list_backbones())}")
        from fsar.data.registry import get_dataset

        get_dataset(dataset)
        cfg = TrainConfig(
            method=method, dataset=dataset, root=root, way=way, shot=shot, query=query, frames=frames, size=size,
            backbone=backbone, backbone_path=backbone_path, tune=tune, adapter=adapter, train_views=train_views, episodes=episodes, batch=batch, accum=accum,
            optimizer=optimizer, lr=lr, class_loss=class_loss, backbone_lr_scale=backbone_lr_scale, weight_decay=weight_decay, warmup=warmup,
            schedule=schedule, clip_grad=clip_grad, val_every=val_every, val_episodes=val_episodes,
            test_episodes=test_episodes, test_shot=test_shot, seed=seed, encoder=encoder,
            opts={**_method_flags(method, knowledge, no_skc, no_tkc), **_parse_opts(opt)},
            out=out, device=device, eval_batch=eval_batch, log_every=log_every, resume=resume, stop_at=stop_at,
            test=not no_test, create_text=create_text, frame_cache=frame_cache, progress=progress,
        )
        result = run_training(cfg)
    except _user_errors() as e:
        _fail(_message(e))
    if "accuracy" in result:
        _print_result(result)
    if result.get("stopped_at") is not None:
        typer.echo(f"stopped after {result['stopped_at']} episodes; continue with --resume --out {result['run_dir']}")
    if result.get("run_dir"):
        typer.echo(f"run folder: {result['run_dir']}")


@eval_app.command()
def evaluate(
    checkpoint: Path = typer.Option(..., help="best.pt / last.pt of a run (or the run folder)."),
    episodes: int = typer.Option(10000, help="Seeded test episodes (1 query per class)."),
    shot: Optional[int] = typer.Option(None, help="Default: the training shot; another one is marked in the result."),
    way: Optional[int] = typer.Option(None, help="Default: the training way."),
    seed: Optional[int] = typer.Option(None, help="Episode seed (default: the run's seed)."),
    split: str = typer.Option("test", help="test (default) or val."),
    root: Optional[str] = typer.Option(None, help="Data root, if it moved since training."),
    method: Optional[str] = typer.Option(None, help="Check that the checkpoint is of this method."),
    backbone_path: Optional[str] = typer.Option(None, help="Local backbone weights, if they moved since training."),
    device: str = typer.Option("auto"),
    batch: int = typer.Option(64, help="Episodes per batch."),
    out: Optional[Path] = typer.Option(None, help="Result JSON (default: next to the checkpoint)."),
    progress: bool = typer.Option(True),
) -> None:
    """Evaluate a checkpoint: each video encoded once on deterministic frames, all episodes on cached features."""
    from fsar.model.trainer import evaluate_checkpoint

    try:
        result = evaluate_checkpoint(checkpoint, episodes=episodes, shot=shot, way=way, seed=seed, split=split,
                                     root=root, method=method, backbone_path=backbone_path, device=device,
                                     batch=batch, out=out, progress=progress)
    except _user_errors() as e:
        _fail(_message(e))
    _print_result(result)
    typer.echo(f"result: {result['result_path']}")


def train_main() -> None:
    run_cli(train_app, prog_name="fsar-train")


def eval_main() -> None:
    run_cli(eval_app, prog_name="fsar-eval")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(train_main())
