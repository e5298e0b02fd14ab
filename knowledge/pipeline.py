"""Stage 1 end to end: generate a data set's missing knowledge, report it, embed it (what the contract then reads).

``generate_with_report`` is the one generation front end: a progress bar, a line per finished class and a summary
line per kind, as ``fsar-knowledge generate`` prints them. ``ensure_knowledge`` (what ``fsar-train`` calls before
it reads the stage-1/stage-2 contract) runs it for the classes that have no valid knowledge yet, then embeds;
``ensure_embeddings`` only embeds. ``fsar.knowledge.contract`` itself never writes.
"""
from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeRemainingColumn

from fsar.knowledge.backends import Backend
from fsar.knowledge.generate import ClassEvent, GenerateOptions, KindSummary, generate_knowledge
from fsar.knowledge.kinds import parse_kinds
from fsar.knowledge.store import KnowledgeSet, load_knowledge


def generate_with_report(
    dataset: str | None,
    kinds: str = "dist",
    split: str = "all",
    *,
    classes_file: str | Path | None = None,
    limit: int | None = None,
    backend: str | Backend = "llamacpp",
    model: str | None = None,
    base_url: str | None = None,
    concurrency: int | None = None,
    options: GenerateOptions | None = None,
    console: Console | None = None,
    progress: bool = True,
) -> list[KindSummary]:
    """``generate_knowledge`` with the report ``fsar-knowledge generate`` prints on ``console`` (stderr by default):
    with ``progress``, a bar per kind and a line per finished class; always a summary line per kind and the classes
    that failed. Errors (BackendError, KeyboardInterrupt, ...) propagate to the caller."""
    console = console or Console(stderr=True)
    bar = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=not progress,
    )
    tasks: dict[str, int] = {}
    totals = {"tokens": 0, "start": time.perf_counter()}

    def on_plan(kind: str, n: int) -> None:
        tasks[kind] = bar.add_task(escape(f"{dataset} · {kind}"), total=n, rate="")

    def on_event(e: ClassEvent) -> None:
        totals["tokens"] += e.completion_tokens
        # throughput over the wall time: requests are decoded together, so their own times overlap
        rate = f"{totals['tokens'] / (time.perf_counter() - totals['start']):.1f} tok/s"
        bar.update(tasks[e.kind], advance=1, rate=rate)
        if progress:
            mark = "[green]ok[/]" if e.ok else "[red]failed[/]"
            tail = f" · {e.error}" if e.error else ""
            text = escape(f"{e.kind} · {e.cls.name} ({e.attempts} attempt{'s' if e.attempts != 1 else ''}){tail}")
            bar.console.print(f"  {mark} {text}", highlight=False)

    with bar:
        summaries = generate_knowledge(
            dataset=dataset, kinds=kinds, split=split, classes_file=classes_file, limit=limit, backend=backend,
            model=model, base_url=base_url, concurrency=concurrency, options=options, on_event=on_event, on_plan=on_plan,
        )
    print_summaries(summaries, console)
    return summaries


def print_summaries(summaries: list[KindSummary], console: Console) -> None:
    """One line per kind (valid classes, LLM calls, cached answers, throughput, where it is stored) and the failures."""
    for s in summaries:
        # throughput over the kind's wall time (requests overlap, so their own times would undercount it)
        rate = f", {s.completion_tokens / s.seconds:.1f} tok/s" if s.llm_calls and s.seconds else ""
        console.print(
            f"[bold]{escape(s.dataset)} · {s.kind}[/]: {s.ok}/{s.classes} valid ({s.kept} kept, {s.llm_calls} LLM calls, "
            f"{s.cache_hits} cached answers{rate}, {s.seconds:.1f} s) -> {escape(s.path)}",
            highlight=False,
        )
        if s.failed_classes:
            console.print(f"[red]failed ({len(s.failed_classes)}):[/] {escape(', '.join(s.failed_classes))}", highlight=False)


def _stored(dataset: str, kind: str, model: str | None) -> KnowledgeSet | None:
    try:
        return load_knowledge(dataset, kind, model)
    except FileNotFoundError:
        return None


def needs_generation(dataset: str, kind: str, split: str = "all", model: str | None = None) -> bool:
    """Whether some class of the split has no valid ``kind`` knowledge (none stored, failed, or absent)."""
    from fsar.knowledge.contract import _classes, missing_classes

    ks = _stored(dataset, kind, model)
    return ks is None or bool(missing_classes(ks, _classes(dataset, split, ks)))


def ensure_embeddings(dataset: str, kind: str, model: str | None = None, encoder: str | None = None,
                      console: Console | None = None) -> None:
    """Embed the stored knowledge set (``model``: its folder, default the most recent) when its embeddings are
    missing or out of date; a current set costs one manifest read. No LLM is involved."""
    from fsar.knowledge.embed import embed_command, embed_knowledge, load_embeddings

    ks = load_knowledge(dataset, kind, model)
    try:
        load_embeddings(dataset, kind, ks.model, encoder, ks=ks)
        return
    except FileNotFoundError:
        pass
    if console is not None:
        console.print(f"[bold]{escape(dataset)} · {kind}[/]: embedding the knowledge of '{escape(ks.model)}' "
                      f"(= {escape(embed_command(dataset, kind, encoder, ks.model))})", highlight=False)
    embed_knowledge(dataset, kind, ks.model, encoder)


def ensure_knowledge(dataset: str, kind: str, split: str = "all", encoder: str | None = None, model: str | None = None,
                     progress: bool = True) -> None:
    """Make sure ``dataset`` has ``kind`` knowledge (a kind or a comma list) for every class of ``split``, and its
    embeddings: classes without valid knowledge are generated with the embedded LLM (``generate_with_report``, the
    report ``fsar-knowledge generate`` prints; failed classes are retried with new seeds), then the set is embedded.

    ``model``: a knowledge set's folder to use as it is (never generated into: the LLM that made it is not known
    here); None: the most recent set, completed with the default embedded LLM when classes are missing.
    A class that still fails stays failed; the contract reports it (``allow_missing`` decides).
    """
    console = Console(stderr=True)
    for k in parse_kinds(kind):
        if model is None and needs_generation(dataset, k.name, split):
            console.print(f"[bold]{escape(dataset)} · {k.name}[/]: knowledge missing for split '{split}'; generating it with "
                          f"the embedded LLM (= fsar-knowledge generate --dataset {escape(dataset)} --kind {k.name} --split {split})",
                          highlight=False)
            generate_with_report(dataset, k.name, split, console=console, progress=progress)
        ensure_embeddings(dataset, k.name, model, encoder, console=console)


__all__ = ["generate_with_report", "print_summaries", "needs_generation", "ensure_embeddings", "ensure_knowledge"]
