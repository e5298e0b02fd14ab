"""Knowledge that tells classes apart: ask the LLM how two actions whose knowledge is too close differ.

The knowledge report (``knowledge/report.py``) flags pairs of classes whose dist knowledge centroids are closer
than ``Thresholds.close``. For each such pair the model answers ``prompts/contrast.jinja``: for both actions, a
few phrases of what is seen only in its videos and of how its motion goes unlike the other's. The answer is
validated like any other (schema, then ``validate_contrast``: no repeat of either name, nothing said of both
actions, nothing already in the class's knowledge), retried with the latest error, and cached like every request.

Valid answers become extra items of both classes ("seen" -> spatial, "motion" -> temporal) in a derived knowledge
set ``<model>.contrast`` beside the source set, which stays as it was. Each row's provenance ``filter`` field holds
the JSON of what was added, from which pair, with which model, template, schema, sampling and cached answers (the
same field a ``.filtered`` set uses to say how it was derived); ``contrast.json`` beside the set holds the whole
run, failed pairs with their raw outputs and errors included. The report then shows whether the pairs moved apart.
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fsar.data.paths import atomic_write_text, cache_root
from fsar.knowledge.backends import Backend, Sampling, make_backend
from fsar.knowledge.cache import ResponseCache, canonical_json, request_key, sha256_text
from fsar.knowledge.errors import KnowledgeError
from fsar.knowledge.prompting import render_contrast_prompt, template_hash
from fsar.knowledge.schemas import CONTRAST_COUNTS, CONTRAST_FIELDS, contrast_schema
from fsar.knowledge.validate import InvalidAnswer, _near_duplicate, validate_contrast

SUFFIX = ".contrast"  # the derived set's model folder: <model>.contrast


@dataclass
class PairContrast:
    """One pair of classes: what the model said tells them apart, or why it failed."""

    a: str  # class keys
    b: str
    a_name: str
    b_name: str
    sim_before: float  # cosine of the two classes' knowledge centroids before
    status: str = "failed"  # "ok" or "failed"
    items: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # class key -> {"spatial": [...], "temporal": [...]}
    raw_outputs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    cache_keys: list[str] = field(default_factory=list)
    completion_tokens: int = 0
    seconds: float = 0.0
    sim_after: float | None = None


@dataclass
class ContrastRun:
    """What one contrast run did; ``summary_lines`` is what a command line prints."""

    dataset: str
    kind: str
    source_model: str
    model: str  # the derived set's model folder ("" when nothing was written)
    close: float
    pairs: list[PairContrast]
    path: str = ""
    llm_calls: int = 0
    cache_hits: int = 0
    seconds: float = 0.0

    @property
    def failed(self) -> list[PairContrast]:
        return [p for p in self.pairs if p.status != "ok"]

    def summary_lines(self) -> list[str]:
        if not self.pairs:
            return [f"{self.dataset} · contrast: no pair of classes is too close (centroid cosine >= {self.close}); nothing to do"]
        lines = [f"{self.dataset} · contrast: {len(self.pairs) - len(self.failed)}/{len(self.pairs)} pairs answered "
                 f"({self.llm_calls} LLM calls, {self.cache_hits} cached answers, {self.seconds:.1f} s) -> {self.path}"]
        for p in self.pairs:
            moved = f" -> {p.sim_after:.3f}" if p.sim_after is not None else ""
            why = f" · failed: {p.errors[-1]}" if p.status != "ok" and p.errors else ""
            lines.append(f"  {p.a_name} | {p.b_name}: similarity {p.sim_before:.3f}{moved}{why}")
        return lines


def _texts(row: dict) -> list[str]:
    k = row["knowledge"] or {}
    return list(k.get("spatial") or []) + list(k.get("temporal") or [])


class _Asker:
    """Asks the backend (or the response cache) with the request format of the generator, so answers are shared."""

    def __init__(self, backend: Backend, force: bool):
        self.backend = backend
        self.identity = backend.identity()
        self.cache = ResponseCache(cache_root() / "llm" / "responses")
        self.force = force
        self.sem = asyncio.Semaphore(max(1, backend.concurrency))
        self.calls = 0
        self.hits = 0

    async def ask(self, prompt: str, schema: dict, sampling: Sampling) -> tuple[str, str, dict]:
        request = {"backend": self.identity, "prompt": prompt, "schema": schema, "sampling": sampling.as_dict()}
        key = request_key(request)
        if not self.force:
            hit = self.cache.get(key)
            if hit is not None:
                self.hits += 1
                return hit["response"]["text"], key, hit["response"]
        async with self.sem:
            completion = await self.backend.agenerate(prompt, schema, sampling)
        response = asdict(completion)
        self.cache.put(key, request, response)
        self.calls += 1
        return completion.text, key, response


async def _contrast_pair(asker: _Asker, pair: PairContrast, known: tuple[list[str], list[str]], sampling: dict,
                         max_attempts: int, counts: dict[str, int]) -> PairContrast:
    schema = contrast_schema(pair.a_name, pair.b_name, **counts)
    schema_json = schema.model_json_schema()
    error = None
    for attempt in range(max_attempts):
        prompt = render_contrast_prompt(pair.a_name, pair.b_name, counts, error)
        s = Sampling(**{**sampling, "seed": sampling["seed"] + attempt})
        text, key, response = await asker.ask(prompt, schema_json, s)
        pair.raw_outputs.append(text)
        pair.cache_keys.append(key)
        pair.completion_tokens += int(response.get("completion_tokens") or 0)
        pair.seconds += float(response.get("seconds") or 0.0)
        try:
            answer = validate_contrast(schema, pair.a_name, pair.b_name, text, known)
        except InvalidAnswer as e:
            error = e.hint
            pair.errors.append(str(e))
            continue
        pair.status = "ok"
        pair.items = {key_: {CONTRAST_FIELDS[f]: answer[side][f] for f in CONTRAST_FIELDS}
                      for side, key_ in (("first", pair.a), ("second", pair.b))}
        break
    return pair


def contrast_knowledge(
    dataset: str,
    kind: str = "dist",
    source_model: str | None = None,
    backend: str | Backend = "llamacpp",
    llm_model: str | None = None,
    base_url: str | None = None,
    concurrency: int | None = None,
    options=None,
    encoder: str | None = None,
    thresholds=None,
    max_pairs: int | None = None,
    counts: dict[str, int] | None = None,
) -> ContrastRun:
    """Contrast the pairs of classes the report finds too close and write ``<source_model>.contrast``.

    ``source_model``: the knowledge set's model folder (default: the backend's, i.e. what ``generate`` with the
    same backend and model wrote); ``options``: a ``GenerateOptions`` (sampling, attempts, force); ``thresholds``:
    the report's (``close`` picks the pairs); ``max_pairs``: only the closest N pairs.
    """
    from fsar.knowledge.generate import GenerateOptions
    from fsar.knowledge.report import Thresholds, build_report
    from fsar.knowledge.store import load_knowledge, save_knowledge

    if kind != "dist":
        raise KnowledgeError(f"contrast adds spatial and temporal phrases, so it is for --kind dist, not '{kind}'")
    if max_pairs is not None and max_pairs < 1:
        raise KnowledgeError(f"--max-pairs must be at least 1, got {max_pairs}")
    opts = options or GenerateOptions()
    th = thresholds or Thresholds()
    c = {**CONTRAST_COUNTS, **(counts or {})}
    start = time.perf_counter()
    be = backend if isinstance(backend, Backend) else make_backend(backend, llm_model, base_url, concurrency)
    try:
        source_model = source_model or be.slug
        if source_model.endswith(SUFFIX):
            raise KnowledgeError(f"'{source_model}' is already a contrast set; contrast its source set instead")
        rep = build_report(dataset, kind, source_model, encoder, th)
        ks = rep.ks
        rows = {r["class_key"]: dict(r) for r in ks.rows}
        close = rep.data["overall"]["too_close_pairs"][: max_pairs or None]
        pairs = [PairContrast(p["a"], p["b"], rows[p["a"]]["class_name"], rows[p["b"]]["class_name"], p["sim"]) for p in close]
        run = ContrastRun(dataset, kind, ks.model, "", th.close, pairs)
        if not pairs:
            return run
        asker = _Asker(be, opts.force)

        async def main():
            return await asyncio.gather(*[
                _contrast_pair(asker, p, (_texts(rows[p.a]), _texts(rows[p.b])), opts.sampling(), opts.max_attempts, c)
                for p in pairs
            ])

        asyncio.run(main())
        run.llm_calls, run.cache_hits = asker.calls, asker.hits
        identity = be.identity()
    finally:
        if not isinstance(backend, Backend):
            be.close()

    derived = {
        "derived": "contrast", "source_model": ks.model, "source_fingerprint": ks.fingerprint, "encoder": rep.data["encoder"],
        "close": th.close, "model_id": canonical_json(identity), "template": "contrast.jinja",
        "template_hash": template_hash("contrast"), "counts": c,
        "schema_hash": sha256_text(canonical_json(contrast_schema(**c).model_json_schema()))[:16],
        **opts.sampling(), "max_attempts": opts.max_attempts,
    }
    added: dict[str, list[dict]] = {k: [] for k in rows}
    for p in pairs:
        if p.status != "ok":
            continue
        for key, other in ((p.a, p.b), (p.b, p.a)):
            row = rows[key]
            knowledge = {f: list(v) for f, v in row["knowledge"].items()}
            for fld, texts in p.items[key].items():
                for text in texts:
                    if any(_near_duplicate(text, old) for old in knowledge[fld]):
                        continue  # a class in two pairs can be told the same thing twice
                    knowledge[fld].append(text)
                    added[key].append({"field": fld, "text": text, "pair_with": other, "sim_before": round(p.sim_before, 4),
                                       "cache_key": p.cache_keys[-1]})
            row["knowledge"] = knowledge
    out_rows = []
    for key, row in rows.items():
        prov = dict(row["provenance"] or {})
        prov["filter"] = canonical_json({**derived, "added": added[key]})
        out_rows.append({**row, "provenance": prov})
    run.model = ks.model + SUFFIX
    saved = save_knowledge(dataset, kind, run.model, out_rows)
    run.path = str(saved.path)
    run.seconds = round(time.perf_counter() - start, 3)

    after = build_report(dataset, kind, run.model, encoder, th)
    where = {name: i for i, name in enumerate(after.sim_labels)}
    for p in pairs:
        if p.a_name in where and p.b_name in where:
            p.sim_after = float(after.sim[where[p.a_name], where[p.b_name]])
    record = {"run": {k: v for k, v in asdict(run).items() if k != "pairs"}, "provenance": derived,
              "pairs": [asdict(p) for p in pairs], "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write_text(Path(run.path) / "contrast.json", json.dumps(record, indent=2, ensure_ascii=False))
    return run


__all__ = ["ContrastRun", "PairContrast", "contrast_knowledge", "SUFFIX"]
