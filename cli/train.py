"""``fsar-train`` and ``fsar-eval``: episodic training and evaluation of few-shot action recognition methods.

``fsar-train``'s options are ``TrainConfig``'s fields (``fsar.model.config``: one place for each default and its
help), plus ``--config run.json`` (a whole experiment as JSON fields; options given on the command line override
it), ``--opt KEY=VALUE`` (method options, e.g. ``--opt knowledge=name --opt skc=false`` for DiST) and ``--threads``.
"""
from __future__ import annotations

import inspect
import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import Optional

import typer

from fsar.cli.common import error_message, fail, run_cli
from fsar.core.errors import FsarError

train_app = typer.Typer(add_completion=False, help="Train a few-shot method episodically (train classes), select on val, test once.")
eval_app = typer.Typer(add_completion=False, help="Evaluate a trained checkpoint on seeded episodes of cached features.")


def _user_errors() -> tuple[type[BaseException], ...]:
    """What ends a command with one ``error:`` line: every FsarError, plus two failures of a run that are not bugs:
    the loss diverging (our choice: a run failure, not a user error, so it keeps its own type) and unreadable videos."""
    from fsar.data.video import UnreadableVideo
    from fsar.model.trainer import TrainingDiverged

    return FsarError, TrainingDiverged, UnreadableVideo


def parse_opts(opts: list[str]) -> dict:
    """``key=value`` pairs; values are read as JSON when they parse (numbers, lists, true/false), else as text."""
    from fsar.model.config import ConfigError

    out = {}
    for item in opts:
        if "=" not in item:
            raise ConfigError(f"--opt '{item}' is not KEY=VALUE (e.g. --opt lam=0.05)")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def config_parameters() -> list[inspect.Parameter]:
    """One command-line option per TrainConfig field (its default and help), booleans as --x/--no-x."""
    from fsar.model.config import TrainConfig, field_default, field_types

    params = []
    for f in fields(TrainConfig):
        if not f.metadata.get("cli", True):
            continue
        kind, optional = field_types()[f.name]
        default = None if f.name == "method" else field_default(f.name)  # --method: required unless --config names it
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                                        default=typer.Option(default, help=f.metadata["help"]),
                                        annotation=Optional[kind] if optional or default is None else kind))
    return params


def given_on_command_line(ctx: typer.Context, name: str) -> bool:
    """Whether an option was typed (rather than left at its default), so that it overrides --config."""
    source = ctx.get_parameter_source(name)  # by name: typer's click may be its own copy of the enum
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def build_config(ctx: typer.Context, values: dict, config: Path | None, opt: list[str]):
    """TrainConfig from its defaults, then the --config file, then the options given on the command line."""
    from fsar.model.config import ConfigError, TrainConfig, load_config

    chosen = load_config(config) if config is not None else {}
    opts = dict(chosen.pop("opts", {}))
    chosen.update({k: v for k, v in values.items() if given_on_command_line(ctx, k)})
    opts.update(parse_opts(opt))
    if chosen.get("method") is None:
        raise ConfigError("give --method (or \"method\" in the --config file)")
    return TrainConfig(**chosen, opts=opts)


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


def train(
    ctx: typer.Context,
    config: Optional[Path] = None,
    opt: Optional[list[str]] = None,
    knowledge: Optional[str] = None,
    threads: Optional[int] = None,
    **values,
) -> None:
    """Train on the train classes, keep the best checkpoint on the val classes, then test once on the test classes."""
    from fsar.model.trainer import train as run_training

    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        extra = [f"knowledge={knowledge}"] if knowledge else []  # --knowledge X is --opt knowledge=X
        result = run_training(build_config(ctx, values, config, extra + (opt or [])))
    except _user_errors() as e:
        fail(error_message(e))
    if "accuracy" in result:
        _print_result(result)
    if result.get("stopped_at") is not None:
        typer.echo(f"stopped after {result['stopped_at']} episodes; continue with --resume --out {result['run_dir']}")
    if result.get("run_dir"):
        typer.echo(f"run folder: {result['run_dir']}")


# fsar-train's signature: the four options of its own, then one per TrainConfig field
train.__signature__ = inspect.Signature([
    inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
    inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path], default=typer.Option(
        None, help="A run file: TrainConfig fields as JSON; options given on the command line override it.")),
    inspect.Parameter("opt", inspect.Parameter.KEYWORD_ONLY, annotation=list[str], default=typer.Option(
        [], "--opt", help="Method option KEY=VALUE (repeatable), e.g. --opt lam=0.05, --opt knowledge=name.")),
    inspect.Parameter("knowledge", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str], default=typer.Option(
        None, help="Methods with knowledge (dist, star, lga): llm, name or none; the same as --opt knowledge=...")),
    inspect.Parameter("threads", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[int], default=typer.Option(
        None, help="torch CPU threads (default: torch's choice; 1 is faster on busy shared cores).")),
    *config_parameters(),
])
train_app.command()(train)


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
        fail(error_message(e))
    _print_result(result)
    typer.echo(f"result: {result['result_path']}")


def train_main() -> None:
    run_cli(train_app, prog_name="fsar-train")


def eval_main() -> None:
    run_cli(eval_app, prog_name="fsar-eval")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(train_main())
