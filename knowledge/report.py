"""Quality report of a knowledge set: validity, attempts, duplicates, relevance, discriminativeness, generic items.

An *item* is what the kind says the report scores (``KnowledgeKind.report_units``) and the filter may drop
(``kept_fields`` never are; ``KnowledgeKind.drop`` removes them): a dist attribute, an lga stage (its vector: the
normalised mean of its triplet and sentence vectors), a star descriptor (the star summary is scored but never dropped).
With N items and C classes whose name prompts are P [C, D]:

- relevance of an item = cos(item, own class-name prompt);
- generic: at least ``max(generic_min, ceil(generic_frac * (C - 1)))`` other class names score within
  ``generic_margin`` of (or above) the item's own class name: the item says little about *this* class;
- duplicate: same normalised text as, or cosine >= ``duplicate`` to, an earlier item of the same class;
  shared: the same normalised text appears in another class's knowledge;
- discriminativeness of a class = 1 - cos(its knowledge centroid, the nearest other class's centroid);
  pairs of classes with centroid cosine >= ``close`` are flagged as too close to tell apart.

``build_report`` computes everything (JSON-able ``Report.data``); ``plot_report`` draws the PNG (class-by-class
similarity heatmap, relevance distribution, relevance vs nearest-class similarity); ``filter_knowledge`` writes a
``<model>.filtered`` knowledge set without the items that fail, recording what was dropped and why in provenance.
"""
from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from fsar.data.paths import atomic_write_bytes, atomic_write_text, cache_root
from fsar.knowledge.cache import canonical_json
from fsar.knowledge.embed import _check_nonempty, embed_knowledge, load_embeddings
from fsar.knowledge.encoders import normalize
from fsar.knowledge.errors import KnowledgeError
from fsar.knowledge.kinds import get_kind
from fsar.knowledge.store import KnowledgeSet, load_knowledge, save_knowledge
from fsar.knowledge.validate import normalize as normalize_text

@dataclass
class Thresholds:
    """What the report flags and the filter drops (recorded in provenance of a filtered set)."""

    min_relevance: float = 0.10  # cosine to own class-name prompt below this: irrelevant
    duplicate: float = 0.95  # cosine to an earlier item of the same class at or above this: duplicate
    generic_margin: float = 0.05
    generic_frac: float = 0.25
    generic_min: int = 3
    close: float = 0.85  # class-centroid cosine at or above this: too close to tell apart
    drop_duplicates: bool = True
    drop_generic: bool = True

    def generic_count(self, n_classes: int) -> int:
        """How many other classes must score close to the own class for an item to be generic."""
        return max(self.generic_min, math.ceil(self.generic_frac * max(n_classes - 1, 0)))


@dataclass
class Report:
    data: dict  # the JSON report
    sim: np.ndarray  # [V, V] centroid cosine of the V valid classes
    sim_labels: list[str]
    relevance: np.ndarray  # [N] per item
    fields: list[str]  # [N] field of each item
    ks: KnowledgeSet = field(repr=False, default=None)


def _units(kind: str, es, row_of: dict[str, int]) -> list[dict]:
    """The report's items from an embedding set, as the kind defines them (``KnowledgeKind.report_units``)."""
    return get_kind(kind).report_units(es.rows, es.vectors, row_of)


def build_report(dataset: str, kind: str, model: str | None = None, encoder: str | None = None,
                 thresholds: Thresholds | None = None) -> Report:
    """Score a knowledge set (embedding it first if needed, which is cached)."""
    th = thresholds or Thresholds()
    get_kind(kind)
    ks = load_knowledge(dataset, kind, model)
    _check_nonempty(ks)
    embed_knowledge(dataset, kind, ks.model, encoder)
    es = load_embeddings(dataset, kind, ks.model, encoder, ks=ks)
    rows = sorted(ks.rows, key=lambda r: r["index"])
    keys = [r["class_key"] for r in rows]
    row_of = {k: i for i, k in enumerate(keys)}
    C = len(rows)
    names = np.zeros((C, es.vectors.shape[1]), np.float32)
    for r, v in zip(es.rows, es.vectors):
        if r["field"] == "name":
            names[row_of[r["class_key"]]] = v

    units = _units(kind, es, row_of)
    U = np.stack([u["vec"] for u in units]) if units else np.zeros((0, names.shape[1]), np.float32)
    own = np.array([row_of[u["class_key"]] for u in units], dtype=np.int64)
    S = U @ names.T  # [N, C] item-to-class-name cosine
    rel = S[np.arange(len(units)), own] if units else np.zeros(0, np.float32)
    others = S.copy()
    others[np.arange(len(units)), own] = -np.inf
    n_close = (others >= (rel - th.generic_margin)[:, None]).sum(1)
    need = th.generic_count(C)

    norm_texts = [normalize_text(u["text"]) for u in units]
    text_classes: dict[str, set[str]] = {}
    for u, t in zip(units, norm_texts):
        text_classes.setdefault(t, set()).add(u["class_key"])
    for j, u in enumerate(units):
        earlier = [i for i in range(j) if units[i]["class_key"] == u["class_key"]]
        u["duplicate"] = any(norm_texts[i] == norm_texts[j] or float(U[i] @ U[j]) >= th.duplicate for i in earlier)
        u["shared"] = len(text_classes[norm_texts[j]]) > 1
        u["relevance"] = float(rel[j])
        u["nearest_other_name"] = keys[int(np.argmax(others[j]))] if C > 1 else None
        u["n_close"] = int(n_close[j])
        u["generic"] = C > 1 and int(n_close[j]) >= need
        reasons = []
        if u["droppable"]:
            if u["relevance"] < th.min_relevance:
                reasons.append("low relevance")
            if th.drop_duplicates and u["duplicate"]:
                reasons.append("duplicate")
            if th.drop_generic and u["generic"]:
                reasons.append("generic")
        u["reasons"] = reasons
        u["drop"] = bool(reasons)

    # discriminativeness: centroid of each valid class's items
    valid = [k for k in keys if any(u["class_key"] == k for u in units)]
    cent = normalize(np.stack([np.mean([u["vec"] for u in units if u["class_key"] == k], axis=0) for k in valid])) if valid else np.zeros((0, U.shape[1]))
    sim = cent @ cent.T
    nearest: dict[str, tuple[str | None, float | None]] = {}
    for i, k in enumerate(valid):
        if len(valid) < 2:
            nearest[k] = (None, None)
            continue
        s = sim[i].copy()
        s[i] = -np.inf
        j = int(np.argmax(s))
        nearest[k] = (valid[j], float(s[j]))
    pairs = sorted(((valid[i], valid[j], float(sim[i, j])) for i in range(len(valid)) for j in range(i + 1, len(valid))), key=lambda p: -p[2])
    too_close = [p for p in pairs if p[2] >= th.close]

    classes = []
    for r in rows:
        k = r["class_key"]
        mine = [u for u in units if u["class_key"] == k]
        prov = r.get("provenance") or {}
        rels = [u["relevance"] for u in mine]
        nb, ns = nearest.get(k, (None, None))
        flags = []
        if r["status"] != "ok":
            flags.append("failed")
        if rels and float(np.mean(rels)) < th.min_relevance:
            flags.append("low relevance")
        if any(k in (a, b) for a, b, _ in too_close):
            flags.append("too close to " + ", ".join(b if a == k else a for a, b, _ in too_close if k in (a, b)))
        if mine and sum(u["generic"] for u in mine) * 2 > len(mine):
            flags.append("mostly generic")
        classes.append({
            "key": k, "name": r["class_name"], "split": r["split"], "status": r["status"],
            "attempts": int(prov.get("attempts") or 0), "items": len(mine),
            "duplicates": sum(u["duplicate"] for u in mine), "shared": sum(u["shared"] for u in mine),
            "generic": sum(u["generic"] for u in mine), "low_relevance": sum(u["relevance"] < th.min_relevance for u in mine),
            "dropped": sum(u["drop"] for u in mine),
            "relevance_mean": float(np.mean(rels)) if rels else None, "relevance_min": float(np.min(rels)) if rels else None,
            "nearest_class": nb, "nearest_sim": ns, "discriminativeness": None if ns is None else 1.0 - ns,
            "errors": list(r["errors"][-1:]) if r["status"] != "ok" else [], "flags": flags,
        })

    ok = [c for c in classes if c["status"] == "ok"]
    attempts = [c["attempts"] for c in classes if c["attempts"]]
    absent = []
    try:
        from fsar.data.registry import get_dataset

        absent = [c.key for c in get_dataset(dataset).classes if c.key not in row_of]
    except KeyError:
        pass
    overall = {
        "classes": C, "valid": len(ok), "failed": C - len(ok),
        "failed_classes": [c["name"] for c in classes if c["status"] != "ok"],
        "absent_from_set": absent,
        "first_try_valid": sum(1 for c in ok if c["attempts"] == 1),
        "mean_attempts": float(np.mean(attempts)) if attempts else None,
        "attempts_histogram": {str(a): n for a, n in sorted(Counter(attempts).items())},
        "items": len(units), "duplicates": sum(u["duplicate"] for u in units), "shared": sum(u["shared"] for u in units),
        "generic": sum(u["generic"] for u in units), "low_relevance": int(sum(u["relevance"] < th.min_relevance for u in units)),
        "would_drop": sum(u["drop"] for u in units),
        "relevance_mean": float(rel.mean()) if len(rel) else None,
        "relevance_median": float(np.median(rel)) if len(rel) else None,
        "relevance_p10": float(np.percentile(rel, 10)) if len(rel) else None,
        "nearest_sim_mean": float(np.mean([c["nearest_sim"] for c in ok if c["nearest_sim"] is not None])) if len(valid) > 1 else None,
        "too_close_pairs": [{"a": a, "b": b, "sim": s} for a, b, s in too_close],
        "closest_pairs": [{"a": a, "b": b, "sim": s} for a, b, s in pairs[:5]],
    }
    items = [{k: u[k] for k in ("class_key", "field", "slot", "text", "relevance", "nearest_other_name", "n_close", "generic",
                                  "duplicate", "shared", "drop", "reasons")} for u in units]
    data = {
        "dataset": dataset, "kind": kind, "model": ks.model, "encoder": es.manifest["encoder"],
        "knowledge_fingerprint": ks.fingerprint, "embeddings_fingerprint": es.manifest["fingerprint"],
        "thresholds": {**asdict(th), "generic_count": need}, "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "overall": overall, "classes": classes, "items": items,
    }
    names_of = {r["class_key"]: r["class_name"] for r in rows}
    return Report(data, sim, [names_of[k] for k in valid], rel.astype(np.float32), [u["field"] for u in units], ks)


def plot_report(rep: Report, path: Path) -> Path:
    """PNG: class-by-class knowledge similarity, relevance distribution, relevance vs nearest-class similarity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = rep.data
    V = len(rep.sim_labels)
    fig = plt.figure(figsize=(17, 9), dpi=110)
    grid = fig.add_gridspec(2, 2, width_ratios=[1.25, 1], hspace=0.35, wspace=0.18)
    ax = fig.add_subplot(grid[:, 0])
    if V:
        off = rep.sim[~np.eye(V, dtype=bool)] if V > 1 else rep.sim.ravel()
        shown = np.where(np.eye(V, dtype=bool), np.nan, rep.sim) if V > 1 else rep.sim  # the diagonal (1.0) is grey
        cmap = matplotlib.colormaps["magma"].with_extremes(bad="lightgrey")
        im = ax.imshow(shown, cmap=cmap, vmin=float(off.min()), vmax=max(float(off.max()), d["thresholds"]["close"]))
        fs = max(3.5, min(9.0, 420 / V))
        ax.set_xticks(range(V), rep.sim_labels, rotation=90, fontsize=fs)
        ax.set_yticks(range(V), rep.sim_labels, fontsize=fs)
        idx = {n: i for i, n in enumerate(rep.sim_labels)}
        names_of = {c["key"]: c["name"] for c in d["classes"]}
        for p in d["overall"]["too_close_pairs"]:
            i, j = idx[names_of[p["a"]]], idx[names_of[p["b"]]]
            for a, b in ((i, j), (j, i)):
                ax.add_patch(plt.Rectangle((b - 0.5, a - 0.5), 1, 1, fill=False, edgecolor="cyan", linewidth=1.5))
        fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, label="cosine of class knowledge centroids")
    ax.set_title(f"class-by-class similarity of knowledge ({V} valid classes; cyan = too close, >= {d['thresholds']['close']})", fontsize=10)

    ax = fig.add_subplot(grid[0, 1])
    fields = sorted(set(rep.fields))
    if len(rep.relevance):
        bins = np.linspace(min(-0.1, float(rep.relevance.min())), max(1.0, float(rep.relevance.max())), 41)
        ax.hist([rep.relevance[[f == g for f in rep.fields]] for g in fields], bins=bins, stacked=True, label=fields)
        ax.legend(fontsize=8)
    ax.axvline(d["thresholds"]["min_relevance"], color="red", linestyle="--", linewidth=1)
    ax.text(d["thresholds"]["min_relevance"], ax.get_ylim()[1] * 0.92, " min relevance", color="red", fontsize=8)
    ax.set_xlabel("relevance: cosine(item, own class-name prompt)")
    ax.set_ylabel("items")
    o = d["overall"]
    med = f"{o['relevance_median']:.2f}" if o["relevance_median"] is not None else "-"
    ax.set_title(f"relevance of {o['items']} items (median {med}; {o['low_relevance']} below, {o['generic']} generic, {o['duplicates']} duplicates)", fontsize=10)

    ax = fig.add_subplot(grid[1, 1])
    pts = [c for c in d["classes"] if c["relevance_mean"] is not None and c["nearest_sim"] is not None]
    if pts:
        x = [c["nearest_sim"] for c in pts]
        y = [c["relevance_mean"] for c in pts]
        colors = ["tab:red" if c["flags"] else "tab:blue" for c in pts]
        ax.scatter(x, y, c=colors, s=18)
        worst = sorted(pts, key=lambda c: (len(c["flags"]) == 0, -c["nearest_sim"]))[:12]
        for c in worst:
            ax.annotate(c["name"], (c["nearest_sim"], c["relevance_mean"]), fontsize=7, xytext=(3, 2), textcoords="offset points")
    ax.axhline(d["thresholds"]["min_relevance"], color="red", linestyle="--", linewidth=1)
    ax.axvline(d["thresholds"]["close"], color="cyan", linestyle="--", linewidth=1)
    ax.set_xlabel("similarity to the nearest other class's knowledge (lower = more distinctive)")
    ax.set_ylabel("mean relevance")
    ax.set_title("per class (red = flagged)", fontsize=10)
    fig.suptitle(f"knowledge report · {d['dataset']} · {d['kind']} · {d['model']} · {o['valid']}/{o['classes']} valid · encoder {d['encoder']}", fontsize=12)
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def write_report(rep: Report, folder: Path | None = None) -> tuple[Path, Path]:
    """Write report.json and report.png (atomically) into ``folder`` (default: cache/reports/...)."""
    d = rep.data
    folder = Path(folder) if folder else cache_root() / "reports" / d["dataset"] / d["kind"] / d["model"] / _slug(d["encoder"])
    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / "report.json"
    atomic_write_text(json_path, json.dumps(d, indent=2, ensure_ascii=False))
    return json_path, plot_report(rep, folder / "report.png")


def _slug(encoder_id: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._@-]+", "-", encoder_id.replace("/", "__")).strip("-")


def filter_knowledge(rep: Report, out_model: str | None = None) -> KnowledgeSet:
    """Write ``<model>.filtered``: the knowledge without the items the report marks ``drop``.

    Each row's provenance ``filter`` holds the JSON of the thresholds, the source set, the encoder and the dropped
    items with their reasons. A valid class whose droppable items all fail becomes failed (never silently emptied);
    failed classes stay failed.
    """
    d = rep.data
    ks = rep.ks
    out_model = out_model or f"{ks.model}.filtered"
    if out_model == ks.model:
        raise KnowledgeError(f"the filtered set needs a new model name, not '{ks.model}'")
    drop: dict[str, dict[tuple[str, int], list[str]]] = {}
    for it in d["items"]:
        if it["drop"]:
            drop.setdefault(it["class_key"], {})[(it["field"], it["slot"])] = it["reasons"]
    base = {"thresholds": d["thresholds"], "source_model": ks.model, "source_fingerprint": d["knowledge_fingerprint"], "encoder": d["encoder"]}
    kind = get_kind(ks.kind)
    n_items = {c["key"]: c["items"] for c in d["classes"]}
    n_kept = Counter(it["class_key"] for it in d["items"] if it["field"] in kind.kept_fields)  # never droppable
    text_of = {(it["class_key"], it["field"], it["slot"]): it["text"] for it in d["items"]}
    rows = []
    for r in ks.rows:
        r = dict(r)
        gone = drop.get(r["class_key"], {})
        dropped = [{"field": f, "slot": s, "text": text_of[(r["class_key"], f, s)], "reasons": why} for (f, s), why in sorted(gone.items())]
        prov = dict(r["provenance"] or {})
        prov["filter"] = canonical_json({**base, "dropped": dropped})
        r["provenance"] = prov
        if r["status"] == "ok" and gone:
            k = kind.drop(r["knowledge"], set(gone))
            droppable = n_items[r["class_key"]] - n_kept.get(r["class_key"], 0)
            if len(gone) >= droppable:
                r["status"], r["knowledge"] = "failed", None
                r["errors"] = list(r["errors"]) + [f"filter: all {droppable} items fell below the thresholds ({', '.join(sorted({w for v in gone.values() for w in v}))})"]
            else:
                r["knowledge"] = k
        rows.append(r)
    return save_knowledge(ks.dataset, ks.kind, out_model, rows)
