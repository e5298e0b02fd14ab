"""Generate knowledge for the classes of a data set: prompt, validate, retry, cache, store.

For every (class, kind): render the kind's template, ask the backend (or replay the answer from the cache),
validate it, and on failure ask again with only the latest error appended, up to ``max_attempts``. A class that
still fails is stored as failed with its raw outputs and errors: never dropped, never filled in. The store is
rewritten atomically as classes finish, so an interrupted run keeps what it finished; the next run redoes only
failed, missing or stale classes (stale: made with another model, template, schema, seed or temperature).
Each write merges this run's rows into the stored set under the set's lock (``merge_knowledge``), so two runs on one
cache at once keep each other's rows.
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

from fsar.data.paths import atomic_write_text, cache_root, ensure_writable
from fsar.data.registry import ClassInfo, DatasetInfo, get_dataset, load_class_file
from fsar.knowledge.backends import Backend, Sampling, make_backend
from fsar.knowledge.cache import ResponseCache, canonical_json, request_key, sha256_text
from fsar.knowledge.errors import KnowledgeError
from fsar.knowledge.prompting import render_prompt, template_hash
from fsar.knowledge.kinds import KnowledgeKind, parse_kinds
from fsar.knowledge.store import KnowledgeSet, knowledge_dir, load_knowledge, merge_knowledge
from fsar.knowledge.validate import InvalidAnswer, validate_answer

FSAR_VERSION = "0.1.0"
SAVE_EVERY_S = 2.0  # how often finished classes are written to the store during a run


@dataclass(frozen=True)
class GenerateOptions(Sampling):
    """The sampling of every request (attempt i of a class uses seed + i) and how a run goes."""

    # measured on Gemma 3 270M: without penalties it repeats one phrase across the list; stronger ones give junk
    frequency_penalty: float = 0.3
    presence_penalty: float = 0.5
    # embedded model: no run of 4 words twice in one answer (the 270M model copies one stage into the next)
    no_repeat_ngram: int = 4
    max_attempts: int = 3
    force: bool = False
    counts: dict[str, int] = field(default_factory=dict)  # e.g. {"spatial": 4, "temporal": 4, "descriptors": 4}

    def sampling(self) -> dict:
        """The sampling fields alone (what goes into a request's cache key and a row's provenance)."""
        return {f.name: getattr(self, f.name) for f in fields(Sampling)}


@dataclass
class KindSummary:
    """What one run did for one kind: written to ``last_run.json`` next to the knowledge set."""

    dataset: str
    kind: str
    model: str
    classes: int = 0
    ok: int = 0
    failed_classes: list[str] = field(default_factory=list)
    kept: int = 0  # classes already valid and current in the store: no request at all
    llm_calls: int = 0
    cache_hits: int = 0
    first_try_ok: int = 0
    completion_tokens: int = 0
    llm_seconds: float = 0.0
    seconds: float = 0.0
    path: str = ""


@dataclass
class ClassEvent:
    """Reported to the progress callback when a class finishes."""

    kind: str
    cls: ClassInfo
    ok: bool
    attempts: int
    error: str | None
    completion_tokens: int
    llm_seconds: float


def resolve_classes(dataset: str | None, classes_file: str | Path | None, split: str = "all", limit: int | None = None) -> tuple[DatasetInfo, list[ClassInfo]]:
    """The data set and the classes to generate for (a class file makes its own set, named by ``dataset`` or the file)."""
    if classes_file:
        info = load_class_file(classes_file, name=dataset)
        classes = list(info.classes)
    else:
        if not dataset:
            raise KnowledgeError("give --dataset NAME or --classes FILE")
        info = get_dataset(dataset)
        classes = info.split(split)
    if limit is not None:
        if limit < 1:
            raise KnowledgeError(f"--limit must be at least 1, got {limit}")
        classes = classes[:limit]
    return info, classes


def _schema_json(schema) -> dict:
    return schema.model_json_schema()


def schema_hash(kind: KnowledgeKind, counts: dict[str, int]) -> str:
    """Identity of a kind's schema for given counts (the per-class ``action`` anchor left out)."""
    return sha256_text(canonical_json(_schema_json(kind.schema(**counts))))[:16]


def _is_current(row: dict, model_id: str, t_hash: str, s_hash: str, opts: GenerateOptions) -> bool:
    p = row.get("provenance") or {}
    return (
        row.get("status") == "ok"
        and p.get("model_id") == model_id
        and p.get("template_hash") == t_hash
        and p.get("schema_hash") == s_hash
        and p.get("seed") == opts.seed
        and abs((p.get("temperature") or 0.0) - opts.temperature) < 1e-9
    )


class Generator:
    """Runs one generation job over classes x kinds with one backend."""

    def __init__(self, backend: Backend, opts: GenerateOptions, on_event: Callable[[ClassEvent], None] | None = None):
        self.backend = backend
        self.opts = opts
        self.on_event = on_event or (lambda e: None)
        self.cache = ResponseCache(cache_root() / "llm" / "responses")
        self.identity = backend.identity()
        self.model_id = canonical_json(self.identity)
        self._sem = asyncio.Semaphore(max(1, backend.concurrency))

    async def _ask(self, prompt: str, schema: dict, sampling: Sampling, summary: KindSummary) -> tuple[str, str, dict]:
        request = {"backend": self.identity, "prompt": prompt, "schema": schema, "sampling": sampling.as_dict()}
        key = request_key(request)
        if not self.opts.force:
            hit = self.cache.get(key)
            if hit is not None:
                summary.cache_hits += 1
                return hit["response"]["text"], key, hit["response"]
        async with self._sem:
            completion = await self.backend.agenerate(prompt, schema, sampling)
        response = asdict(completion)
        self.cache.put(key, request, response)
        summary.llm_calls += 1
        summary.completion_tokens += completion.completion_tokens
        summary.llm_seconds += completion.seconds
        return completion.text, key, response

    async def run_class(self, kind: KnowledgeKind, cls: ClassInfo, previous: dict | None, summary: KindSummary) -> dict:
        schema = kind.schema(action=cls.name, **self.opts.counts)
        schema_json = _schema_json(schema)
        counts = kind.counts(self.opts.counts)
        # a class that failed before continues with new attempt numbers (new seeds), so it is really retried
        first = 0 if self.opts.force or previous is None or previous.get("status") == "ok" else int(
            (previous.get("provenance") or {}).get("attempts") or 0
        )
        raw, errors, keys = [], [], []
        tokens, llm_s, prompt_tokens = 0, 0.0, 0
        error: str | None = None
        knowledge = None
        for attempt in range(self.opts.max_attempts):
            prompt = render_prompt(kind, cls.name, counts, error)
            sampling = Sampling(**{**self.opts.sampling(), "seed": self.opts.seed + first + attempt})
            text, key, response = await self._ask(prompt, schema_json, sampling, summary)
            raw.append(text)
            keys.append(key)
            tokens += int(response.get("completion_tokens") or 0)
            prompt_tokens += int(response.get("prompt_tokens") or 0)
            llm_s += float(response.get("seconds") or 0.0)
            try:
                knowledge = validate_answer(kind, schema, cls.name, text)
                break
            except InvalidAnswer as e:
                error = e.hint  # only the latest error goes into the next prompt
                errors.append(str(e))
        ok = knowledge is not None
        if ok and not errors:
            summary.first_try_ok += 1
        self.on_event(ClassEvent(kind.name, cls, ok, len(raw), None if ok else errors[-1], tokens, llm_s))
        return {
            "class_key": cls.key,
            "class_name": cls.name,
            "split": cls.split,
            "index": cls.index,
            "status": "ok" if ok else "failed",
            "knowledge": knowledge,
            "raw_outputs": raw,
            "errors": errors,
            "provenance": {
                "backend": self.backend.name,
                "model": self.backend.model,
                "model_id": self.model_id,
                "template": kind.template,
                "template_hash": template_hash(kind),
                "schema_hash": schema_hash(kind, self.opts.counts),
                **self.opts.sampling(),
                "concurrency": self.backend.concurrency,  # batched decoding can round differently (llamacpp)
                "attempts": first + len(raw),
                "prompt_tokens": prompt_tokens,
                "completion_tokens": tokens,
                "seconds": round(llm_s, 3),  # generation time of its answers (waiting for a turn not counted)
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "cache_keys": keys,
                "filter": "",
                "fsar_version": FSAR_VERSION,
            },
        }

    async def run_kind(self, dataset: str, kind: KnowledgeKind, classes: list[ClassInfo], on_plan: Callable[[str, int], None] | None = None) -> KindSummary:
        """Generate one kind for the classes; returns what happened. The store always holds every finished class."""
        start = time.perf_counter()
        t_hash = template_hash(kind)
        s_hash = schema_hash(kind, self.opts.counts)
        model = self.backend.slug
        summary = KindSummary(dataset=dataset, kind=kind.name, model=model, classes=len(classes))
        try:
            existing = {r["class_key"]: r for r in load_knowledge(dataset, kind.name, model).rows}
        except FileNotFoundError:
            existing = {}
        rows = dict(existing)  # the stored set as last written (by this run or, concurrently, another one)
        new_rows: dict[str, dict] = {}  # what this run made; merged into the stored set at each write
        todo = []
        for cls in classes:
            prev = existing.get(cls.key)
            if prev is not None and not self.opts.force and _is_current(prev, self.model_id, t_hash, s_hash, self.opts):
                summary.kept += 1
            else:
                todo.append(cls)
        if on_plan:
            on_plan(kind.name, len(todo))
        last_save = time.perf_counter()
        dirty = False

        def keep_stored(stored: dict, new: dict) -> bool:
            """A class this run failed that another run made valid meanwhile keeps the other run's row."""
            before = existing.get(stored["class_key"]) or {}
            changed = (stored.get("provenance") or {}).get("cache_keys") != (before.get("provenance") or {}).get("cache_keys")
            return new["status"] != "ok" and stored["status"] == "ok" and changed

        def save() -> dict[str, dict]:
            ks = merge_knowledge(dataset, kind.name, model, new_rows.values(), keep_stored)
            return {r["class_key"]: r for r in ks.rows}

        async def one(cls: ClassInfo):
            return await self.run_class(kind, cls, existing.get(cls.key), summary)

        tasks = [asyncio.ensure_future(one(c)) for c in todo]
        try:
            for fut in asyncio.as_completed(tasks):
                row = await fut
                new_rows[row["class_key"]] = row
                dirty = True
                if time.perf_counter() - last_save > SAVE_EVERY_S:
                    rows = save()
                    last_save, dirty = time.perf_counter(), False
        finally:
            for t in tasks:
                t.cancel()
            if dirty or self.opts.force:
                rows = save()
        selected = {c.key for c in classes}
        summary.ok = sum(1 for k, r in rows.items() if k in selected and r["status"] == "ok")
        summary.failed_classes = [r["class_name"] for k, r in rows.items() if k in selected and r["status"] != "ok"]
        summary.seconds = round(time.perf_counter() - start, 3)
        summary.path = str(knowledge_dir(dataset, kind.name, model))
        atomic_write_text(Path(summary.path) / "last_run.json", json.dumps(asdict(summary), indent=2))
        return summary


def generate_knowledge(
    dataset: str | None = None,
    kinds: str = "dist",
    split: str = "all",
    classes_file: str | Path | None = None,
    limit: int | None = None,
    backend: str | Backend = "llamacpp",
    model: str | None = None,
    base_url: str | None = None,
    concurrency: int | None = None,
    options: GenerateOptions | None = None,
    on_event: Callable[[ClassEvent], None] | None = None,
    on_plan: Callable[[str, int], None] | None = None,
) -> list[KindSummary]:
    """Generate (or complete) the knowledge sets of ``dataset`` for each kind in ``kinds`` ("dist,lga" or "all")."""
    opts = options or GenerateOptions()
    if opts.max_attempts < 1:
        raise KnowledgeError(f"--max-attempts must be at least 1, got {opts.max_attempts}")
    kind_list = parse_kinds(kinds)
    info, classes = resolve_classes(dataset, classes_file, split, limit)
    ensure_writable(cache_root())
    be = backend if isinstance(backend, Backend) else make_backend(backend, model, base_url, concurrency)
    gen = Generator(be, opts, on_event)

    async def main():
        return [await gen.run_kind(info.name, k, classes, on_plan) for k in kind_list]

    try:
        return asyncio.run(main())
    finally:
        if not isinstance(backend, Backend):
            be.close()


def dry_run_prompts(dataset: str | None, kinds: str, split: str = "all", classes_file=None, limit=None, counts=None):
    """Yield (kind, class, first prompt) without calling any LLM."""
    info, classes = resolve_classes(dataset, classes_file, split, limit)
    for kind in parse_kinds(kinds):
        c = kind.counts(counts)
        for cls in classes:
            yield kind.name, cls, render_prompt(kind, cls.name, c)


__all__ = ["GenerateOptions", "KindSummary", "ClassEvent", "generate_knowledge", "dry_run_prompts", "resolve_classes", "KnowledgeSet"]
