"""``fsar-knowledge``: generate, show, export and list LLM knowledge about action classes (stage 1)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from fsar.cli.common import console, error_message, fail, out, run_cli
from fsar.core.errors import FsarError
from rich.markup import escape
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Stage 1: LLM knowledge about action classes.")


@app.command()
def generate(
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="registered data set (hmdb51, ucf101, kinetics100, ssv2_small, ssv2_full, synthetic)"),
    kind: str = typer.Option("all", "--kind", "-k", help="dist, lga, star, a comma list, or all"),
    split: str = typer.Option("all", help="train, val, test or all"),
    classes: Optional[Path] = typer.Option(None, "--classes", help="custom class list (UTF-8): one name per line ('#' lines are comments), CSV with a name/class column, or JSON; stored under --dataset NAME (not a registered data set) or the file's name"),
    limit: Optional[int] = typer.Option(None, help="only the first N classes"),
    backend: str = typer.Option("llamacpp", help="llamacpp (embedded, offline), openai (any compatible server), vllm"),
    model: Optional[str] = typer.Option(None, help="llamacpp: a packaged model (gemma-3-270m, qwen2.5-coder-1.5b) or a GGUF path; openai, vllm: the model name"),
    base_url: Optional[str] = typer.Option(None, help="OpenAI-compatible server URL, e.g. http://127.0.0.1:8000/v1"),
    concurrency: Optional[int] = typer.Option(None, min=1, help="requests in flight: sequences decoded together (llamacpp, default 64; 1 makes each answer depend on its request alone) or concurrent requests (openai, default 4)"),
    seed: int = typer.Option(0, help="sampling seed (attempt i uses seed + i)"),
    temperature: float = typer.Option(0.7, min=0.0, help="sampling temperature"),
    max_tokens: int = typer.Option(384, min=1, help="token limit of one answer"),
    frequency_penalty: float = typer.Option(0.3, help="penalty on tokens by how often they were generated"),
    presence_penalty: float = typer.Option(0.5, help="penalty on tokens already generated"),
    no_repeat_ngram: int = typer.Option(4, min=0, help="llamacpp: never repeat a run of this many words in one answer (0: off)"),
    max_attempts: int = typer.Option(3, min=1, help="attempts per class before it is recorded as failed"),
    n_spatial: Optional[int] = typer.Option(None, help="dist: number of spatial attributes (default 4)"),
    n_temporal: Optional[int] = typer.Option(None, help="dist: number of temporal attributes (default 4)"),
    n_descriptors: Optional[int] = typer.Option(None, help="star: number of descriptors (default 4)"),
    count: list[str] = typer.Option([], "--count", help="any kind's count option NAME=N (repeatable), e.g. --count spatial=6; the kinds' options: dist spatial, temporal; star descriptors"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the rendered prompts; call no LLM, write nothing"),
    force: bool = typer.Option(False, "--force", help="regenerate everything, ignoring stored knowledge and cached answers"),
    contrast: bool = typer.Option(False, "--contrast", help="dist: then ask the model how the pairs of classes the report finds too close differ, and store the answers as extra items of both classes in <model>.contrast"),
    close: float = typer.Option(0.85, "--close", help="--contrast: pairs whose knowledge centroids have a cosine at or above this are too close"),
    max_pairs: Optional[int] = typer.Option(None, "--max-pairs", min=1, help="--contrast: only the N closest pairs"),
):
    """Decompose class names into validated knowledge with an LLM and store it as a Hugging Face dataset."""
    from fsar.knowledge.backends import BackendError
    from fsar.knowledge.generate import GenerateOptions, dry_run_prompts, resolve_classes
    from fsar.knowledge.kinds import parse_kinds
    from fsar.knowledge.pipeline import generate_with_report

    counts = {k: v for k, v in {"spatial": n_spatial, "temporal": n_temporal, "descriptors": n_descriptors}.items() if v}
    try:
        kinds = parse_kinds(kind)
        counts.update(_counts(count, kinds))
        info, selected = resolve_classes(dataset, classes, split, limit)
    except (FsarError, KeyError, ValueError, FileNotFoundError) as e:
        fail(error_message(e))
    skipped = info.extra.get("comment_lines") or []
    if skipped:
        console.print(f"note: {classes}: skipped {len(skipped)} comment line{'s' if len(skipped) != 1 else ''} starting with '#' "
                      f"(line{'s' if len(skipped) != 1 else ''} {', '.join(map(str, skipped[:10]))}{', ...' if len(skipped) > 10 else ''})",
                      markup=False, highlight=False)
    if dry_run:
        for kname, cls, prompt in dry_run_prompts(dataset, kind, split, classes, limit, counts):
            out.rule(escape(f"{kname} · {cls.name}"))
            typer.echo(prompt)
        console.print(f"dry run: {len(selected)} classes x {len(kinds)} kinds; no LLM called, nothing written")
        return

    from fsar.data.paths import cache_root, ensure_writable

    try:
        ensure_writable(cache_root())  # before the progress display starts: one clean line
    except OSError as e:
        fail(error_message(e))
    opts = GenerateOptions(
        seed=seed, temperature=temperature, max_tokens=max_tokens, frequency_penalty=frequency_penalty,
        presence_penalty=presence_penalty, no_repeat_ngram=no_repeat_ngram, max_attempts=max_attempts, force=force, counts=counts,
    )
    try:
        summaries = generate_with_report(
            info.name, kind, split, classes_file=classes, limit=limit, backend=backend, model=model, base_url=base_url,
            concurrency=concurrency, options=opts, console=console,
        )
    except BackendError as e:
        fail(str(e))
    except (FsarError, PermissionError, ValueError, KeyError) as e:
        fail(error_message(e))
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: finished classes are stored; run the same command again to continue")
        raise typer.Exit(130)
    failed_any = any(s.failed_classes for s in summaries)
    if contrast:
        from fsar.knowledge.contrast import contrast_knowledge
        from fsar.knowledge.report import Thresholds

        if "dist" not in [k.name for k in kinds]:
            fail("--contrast works on dist knowledge; add dist to --kind")
        try:
            run = contrast_knowledge(info.name, backend=backend, llm_model=model, base_url=base_url, concurrency=concurrency,
                                     options=opts, thresholds=Thresholds(close=close), max_pairs=max_pairs)
        except BackendError as e:
            fail(str(e))
        except (PermissionError, ValueError, KeyError, FileNotFoundError) as e:
            fail(error_message(e))
        for line in run.summary_lines():
            console.print(escape(line), highlight=False)
        failed_any = failed_any or bool(run.failed)
    if failed_any:
        console.print("failed classes are stored with their raw outputs and errors; run again to retry only them")
        raise typer.Exit(1)


def _counts(options: list[str], kinds) -> dict[str, int]:
    """``--count NAME=N`` options -> {NAME: N}; a name no chosen kind has, or a bad number, is a one-line FsarError."""
    known = {c for k in kinds for c in k.default_counts}
    given: dict[str, int] = {}
    for opt in options:
        name, sep, value = opt.partition("=")
        name = name.strip()
        if not sep or not value.strip().isdigit() or int(value) < 1:
            raise FsarError(f"--count {opt}: expected NAME=N with N a whole number of at least 1, e.g. --count spatial=6")
        if name not in known:
            raise FsarError(f"--count {opt}: no chosen kind has the count '{name}'; choose one of: {', '.join(sorted(known)) or 'none'}")
        given[name] = int(value)
    return given


def _load(dataset: str, kind: str, model: Optional[str]):
    from fsar.knowledge.kinds import get_kind
    from fsar.knowledge.store import load_knowledge

    try:
        get_kind(kind)
        return load_knowledge(dataset, kind, model)
    except (KeyError, ValueError, FileNotFoundError) as e:
        fail(error_message(e))


def _record(row: dict, full: bool) -> dict:
    rec = {"class": row["class_key"], "name": row["class_name"], "split": row["split"], "status": row["status"], "knowledge": row["knowledge"]}
    if full or row["status"] != "ok":
        rec["errors"] = row["errors"]
        rec["raw_outputs"] = row["raw_outputs"]
    if full:
        rec["provenance"] = row["provenance"]
    return rec


@app.command()
def show(
    dataset: str = typer.Option(..., "--dataset", "-d"),
    kind: str = typer.Option("dist", "--kind", "-k"),
    cls: Optional[str] = typer.Option(None, "--class", "-c", help="one class (key or natural name)"),
    model: Optional[str] = typer.Option(None, help="model folder name (default: the most recent)"),
    full: bool = typer.Option(False, help="include provenance and raw outputs"),
):
    """Print generated knowledge as JSON."""
    ks = _load(dataset, kind, model)
    rows = list(ks.rows)
    if cls is not None:
        want = cls.strip().lower()
        rows = [r for r in rows if want in (r["class_key"].lower(), r["class_name"].lower())]
        if not rows:
            fail(f"class '{cls}' has no '{kind}' knowledge in {dataset}; see: fsar-knowledge show --dataset {dataset} --kind {kind}")
    records = [_record(r, full) for r in rows]
    out.print_json(json.dumps(records[0] if cls is not None else records, ensure_ascii=False))


@app.command()
def export(
    dataset: str = typer.Option(..., "--dataset", "-d"),
    kind: str = typer.Option("dist", "--kind", "-k"),
    fmt: str = typer.Option("json", "--format", "-f", help="json, jsonl or parquet"),
    output: Optional[Path] = typer.Option(None, "--out", "-o", help="output file (default: next to the knowledge set)"),
    model: Optional[str] = typer.Option(None),
):
    """Write a knowledge set with its provenance to JSON, JSONL or Parquet."""
    from fsar.cli.common import os_error_line
    from fsar.data.paths import atomic_write_bytes, atomic_write_text

    if fmt not in ("json", "jsonl", "parquet"):
        fail(f"unknown format '{fmt}'; choose json, jsonl or parquet")
    if output is not None and output.is_dir():
        fail(f"--out {output} is a folder, expected a file; give a file path, e.g. {output / f'{dataset}_{kind}.{fmt}'}")
    ks = _load(dataset, kind, model)
    target = output or ks.path / f"{dataset}_{kind}_{ks.model}.{fmt}"
    try:
        if fmt == "parquet":
            import io

            import pyarrow.parquet as pq

            buf = io.BytesIO()
            pq.write_table(ks.rows.data.table, buf)
            atomic_write_bytes(target, buf.getvalue())
        else:
            records = [_record(r, True) for r in ks.rows]
            if fmt == "json":
                text = json.dumps({"dataset": dataset, "kind": kind, "model": ks.model, "fingerprint": ks.fingerprint, "classes": records}, indent=2, ensure_ascii=False)
            else:
                text = "\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n"
            atomic_write_text(target, text)
    except OSError as e:
        line = os_error_line(e, user_paths=[target.parent])
        if line is None:
            raise
        fail(line if output is not None else f"{line}, or pass --out FILE")
    console.print(f"wrote {len(ks.rows)} classes to {target}", markup=False, highlight=False)


@app.command("list")
def list_sets():
    """List the generated knowledge sets."""
    from fsar.data.paths import cache_root
    from fsar.knowledge.store import list_knowledge

    sets = list_knowledge()
    if not sets:
        console.print(f"no knowledge generated yet in {cache_root()}; run: fsar-knowledge generate --dataset hmdb51", markup=False)
        return
    table = Table("dataset", "kind", "model", "classes", "valid", "failed", "fingerprint", "updated")
    for m in sets:
        table.add_row(*(escape(str(m[k])) for k in ("dataset", "kind", "model", "classes", "ok", "failed", "fingerprint", "updated_at")))
    out.print(table)


from fsar.cli.knowledge_embed import register  # noqa: E402  (embed, search, report)

register(app)


def main() -> None:
    run_cli(app, prog_name="fsar-knowledge")


if __name__ == "__main__":
    main()
