"""``fsar-knowledge embed | search | report``: text embeddings of knowledge, nearest-neighbour search, quality report.

``register(app)`` adds the three commands to the ``fsar-knowledge`` Typer app.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from fsar.cli.common import console, error_message, os_error_line, out
from fsar.cli.common import fail as _fail
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table


ENCODER_HELP = "sentence-transformers model: id (clip-ViT-B-16), local folder; default all-MiniLM-L6-v2 (packaged, offline)"


def _message(e: BaseException) -> str:
    return error_message(e)


def _progress() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                    TimeRemainingColumn(), console=console, transient=False)


def _kinds(kind: str) -> list[str]:
    from fsar.knowledge.schemas import parse_kinds

    return [k.name for k in parse_kinds(kind)]


def embed(
    dataset: str = typer.Option(..., "--dataset", "-d", help="data set whose knowledge to embed"),
    kind: str = typer.Option("all", "--kind", "-k", help="dist, lga, star, a comma list, or all (those generated)"),
    encoder: Optional[str] = typer.Option(None, "--encoder", "-e", help=ENCODER_HELP),
    model: Optional[str] = typer.Option(None, "--model", help="knowledge model folder (default: the most recent set)"),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="texts per encoder batch"),
    force: bool = typer.Option(False, "--force", help="re-encode every text, ignoring both caches"),
):
    """Encode every knowledge text and class-name prompt (L2-normalised), cached by knowledge fingerprint and encoder."""
    from fsar.knowledge.embed import embed_knowledge
    from fsar.knowledge.encoders import EncoderError, resolve_encoder
    from fsar.knowledge.store import load_knowledge

    from fsar.data.paths import check_name

    try:
        kinds = _kinds(kind)
        check_name(dataset, "--dataset")
        if model is not None:
            check_name(model, "--model")
        resolve_encoder(encoder)
    except (KeyError, ValueError, EncoderError) as e:
        _fail(_message(e))
    if kind.strip() == "all":  # only the kinds that exist; name the generate command when none does
        present = []
        for k in kinds:
            try:
                load_knowledge(dataset, k, model)
                present.append(k)
            except FileNotFoundError:
                pass
        if not present:
            _fail(f"no knowledge for dataset '{dataset}' yet; run: fsar-knowledge generate --dataset {dataset}")
        kinds = present
    table = Table("kind", "model", "texts", "encoded", "cache", "seconds", title=escape(f"{dataset} embeddings"))
    folders = []
    with _progress() as progress:
        task = {}

        def on_start(n: int) -> None:
            task["id"] = progress.add_task(escape(f"encoding {dataset} · {k}"), total=n, rate="")
            task["t0"] = time.perf_counter()

        def on_progress(n: int) -> None:
            progress.advance(task["id"], n)
            done = progress.tasks[task["id"]].completed
            elapsed = time.perf_counter() - task["t0"]
            progress.update(task["id"], rate=f"{done / elapsed:.0f} texts/s" if elapsed > 0 else "")

        for k in kinds:
            try:
                r = embed_knowledge(dataset, k, model, encoder, batch_size=batch_size, force=force, on_progress=on_progress, on_start=on_start)
            except (FileNotFoundError, KeyError, ValueError) as e:  # EncoderError is a ValueError
                _fail(_message(e))
            cache = "hit" if r.cached else ("partial" if r.encoded < r.unique else "miss")
            table.add_row(k, escape(r.model), str(r.texts), str(r.encoded), cache, f"{r.seconds:.2f}")
            folders.append(r.path)
    out.print(table)
    console.print(f"encoder: {r.encoder}", highlight=False, markup=False)
    for p in folders:
        console.print(f"-> {p}", highlight=False, soft_wrap=True, markup=False)


def search(
    query: str = typer.Argument(..., help="text to look up, e.g. \"swinging a golf club\""),
    dataset: str = typer.Option("all", "--dataset", "-d", help="a data set, or all"),
    kind: str = typer.Option("all", "--kind", help="dist, lga, star or all"),
    k: int = typer.Option(10, "--k", min=1, help="how many items and classes to show"),
    encoder: Optional[str] = typer.Option(None, "--encoder", "-e", help=ENCODER_HELP),
):
    """Nearest classes and knowledge items to a query, by cosine similarity (faiss)."""
    from fsar.knowledge.encoders import EncoderError
    from fsar.knowledge.search import collection_index, load_collection, search as run_search

    try:
        if kind != "all":
            _kinds(kind)
        col = load_collection(dataset, encoder, kind)
        index = collection_index(col)
        items, classes = run_search(query, dataset, k, encoder, kind, collection=col)
    except (FileNotFoundError, KeyError, ValueError, EncoderError) as e:
        _fail(_message(e))
    note = f"{len(col.rows)} texts, {'exact IndexFlatIP' if index.kind == 'flat' else f'IVF-Flat (nprobe {index.nprobe})'}, {col.encoder.id}"
    t = Table("#", "score", "class", "kind", "field", "text", "dataset", title=escape(f"nearest items to \"{query}\" ({note})"))
    for i, h in enumerate(items, 1):
        t.add_row(str(i), f"{h.score:.3f}", *(escape(x) for x in (h.class_name, h.kind, h.field, h.text, h.dataset)))
    out.print(t)
    t = Table("#", "score", "class", "dataset", "best match", title="nearest classes (best item or name)")
    for i, h in enumerate(classes, 1):
        t.add_row(str(i), f"{h.score:.3f}", escape(h.class_name), escape(h.dataset), escape(f"{h.field}: {h.text}"))
    out.print(t)


def report(
    dataset: str = typer.Option(..., "--dataset", "-d"),
    kind: str = typer.Option("dist", "--kind", "-k", help="dist, lga or star"),
    model: Optional[str] = typer.Option(None, "--model", help="knowledge model folder (default: the most recent set)"),
    encoder: Optional[str] = typer.Option(None, "--encoder", "-e", help=ENCODER_HELP),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="folder for report.json and report.png (default: cache/reports/...)"),
    min_relevance: float = typer.Option(0.10, help="items less similar than this to their own class-name prompt are irrelevant"),
    duplicate: float = typer.Option(0.95, help="cosine to an earlier item of the same class that makes a duplicate"),
    close: float = typer.Option(0.85, help="class-knowledge cosine from which two classes are too close to tell apart"),
    generic_margin: float = typer.Option(0.05, help="an other class within this margin of the own class counts as close"),
    generic_frac: float = typer.Option(0.25, help="share of other classes close to an item that makes it generic"),
    generic_min: int = typer.Option(3, help="at least this many close classes for generic"),
    filter_: bool = typer.Option(False, "--filter", help="write <model>.filtered without the items that fail the thresholds"),
    drop_generic: bool = typer.Option(True, "--drop-generic/--keep-generic", help="the filter drops generic items"),
    drop_duplicates: bool = typer.Option(True, "--drop-duplicates/--keep-duplicates", help="the filter drops duplicates"),
    filter_model: Optional[str] = typer.Option(None, help="name of the filtered set (default <model>.filtered)"),
):
    """Knowledge quality per class and overall: validity, attempts, duplicates, relevance, discriminativeness."""
    from fsar.knowledge.encoders import EncoderError
    from fsar.knowledge.report import Thresholds, build_report, filter_knowledge, write_report
    from fsar.knowledge.schemas import get_kind

    th = Thresholds(min_relevance=min_relevance, duplicate=duplicate, generic_margin=generic_margin, generic_frac=generic_frac,
                    generic_min=generic_min, close=close, drop_duplicates=drop_duplicates, drop_generic=drop_generic)
    try:
        get_kind(kind)
        if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
            raise ValueError(f"--out {out_dir} is a file, expected a folder (for report.json and report.png)")
        with console.status(escape(f"scoring {dataset} · {kind} ...")):
            rep = build_report(dataset, kind, model, encoder, th)
            json_path, png_path = write_report(rep, out_dir)
    except (FileNotFoundError, KeyError, ValueError, EncoderError) as e:
        _fail(_message(e))
    except OSError as e:  # a read-only cache or --out folder: one line; anything else keeps its traceback
        line = os_error_line(e, user_paths=[out_dir] if out_dir is not None else [])
        if line is None:
            raise
        _fail(line)
    d, o = rep.data, rep.data["overall"]

    def f(x, fmt=".2f"):
        return "-" if x is None else format(x, fmt)

    t = Table("class", "status", "tries", "items", "dup", "gen", "low", "rel", "nearest class", "sim", "flags",
              title=escape(f"{dataset} · {kind} · {d['model']} · encoder {d['encoder']}"))
    for c in d["classes"]:
        style = "red" if c["status"] != "ok" else ("yellow" if c["flags"] else None)
        t.add_row(escape(c["name"]), c["status"], str(c["attempts"]), str(c["items"]), str(c["duplicates"]), str(c["generic"]),
                  str(c["low_relevance"]), f(c["relevance_mean"]), escape(c["nearest_class"] or "-"), f(c["nearest_sim"]), escape("; ".join(c["flags"])), style=style)
    out.print(t)
    s = Table("overall", "value", show_header=False, title="overall")
    s.add_row("valid classes", escape(f"{o['valid']}/{o['classes']}" + (f"  (failed: {', '.join(o['failed_classes'])})" if o["failed_classes"] else "")))
    s.add_row("valid on first attempt", f"{o['first_try_valid']}/{o['classes']}")
    s.add_row("mean attempts", f(o["mean_attempts"]))
    if o["absent_from_set"]:
        s.add_row("registry classes absent", str(len(o["absent_from_set"])))
    s.add_row("items", str(o["items"]))
    s.add_row("relevance mean / median / p10", f"{f(o['relevance_mean'])} / {f(o['relevance_median'])} / {f(o['relevance_p10'])}")
    s.add_row(f"below min relevance {th.min_relevance}", str(o["low_relevance"]))
    s.add_row("duplicates (within class) / shared (across)", f"{o['duplicates']} / {o['shared']}")
    s.add_row(f"generic (>= {d['thresholds']['generic_count']} classes within {th.generic_margin})", str(o["generic"]))
    s.add_row("mean similarity to nearest class", f(o["nearest_sim_mean"]))
    pairs = ", ".join(f"{p['a']}~{p['b']} ({p['sim']:.2f})" for p in o["too_close_pairs"][:10]) or "none"
    s.add_row(f"too close (>= {th.close})", escape(pairs))
    s.add_row("would drop", str(o["would_drop"]))
    out.print(s)
    console.print(f"report: {json_path}", highlight=False, soft_wrap=True, markup=False)
    console.print(f"plot:   {png_path}", highlight=False, soft_wrap=True, markup=False)
    if filter_:
        try:
            fk = filter_knowledge(rep, filter_model)
        except ValueError as e:
            _fail(_message(e))
        console.print(f"filtered set '{fk.model}': dropped {o['would_drop']} of {o['items']} items, {len(fk.ok)}/{len(fk.rows)} classes valid -> {fk.path}", highlight=False, markup=False)
        console.print(f"embed it with: fsar-knowledge embed --dataset {dataset} --kind {kind} --model {fk.model}", highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    """Add ``embed``, ``search`` and ``report`` to the ``fsar-knowledge`` app."""
    app.command("embed")(embed)
    app.command("search")(search)
    app.command("report")(report)
