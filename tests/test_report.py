"""The knowledge quality report and its filter, checked against figures computed here from the real encoder."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

import _knowledge_helpers as H
from fsar.knowledge.contract import load_text_embeddings
from fsar.knowledge.encoders import load_encoder
from fsar.knowledge.pipeline import ensure_embeddings
from fsar.knowledge.report import Thresholds, build_report, filter_knowledge, write_report
from fsar.knowledge.store import load_knowledge, save_knowledge
from fsar.knowledge.validate import normalize as normalize_text

JUNK = "the stock market closed higher today"


def designed_knowledge() -> dict:
    """Tiny-set dist knowledge with known defects: a duplicate, an off-topic item, a generic item, two identical classes."""
    k = {key: {f: list(v) for f, v in d.items()} for key, d in H.DIST.items()}
    k["brush_hair"]["spatial"].append("A hairbrush held in one hand.")  # duplicate of item 0 after normalisation
    k["brush_hair"]["temporal"].append(JUNK)  # off-topic
    k["push_up"]["spatial"].append("a video")  # generic: as close to every class name
    k["pour"] = {f: list(v) for f, v in k["ride_bike"].items()}  # pour's knowledge = ride bike's: too close
    return k


@pytest.fixture(scope="module")
def encoder():
    H.register_tiny()
    return load_encoder()


def enc(encoder, texts):
    return encoder.model.encode(texts, normalize_embeddings=True, convert_to_numpy=True).astype(np.float64)


@pytest.fixture
def designed(fsar_cache, encoder):
    knowledge = designed_knowledge()
    H.save_dist(knowledge, failed=("golf",), attempts={"ride_bike": 2})
    return knowledge


def expected_items(encoder, knowledge: dict, th: Thresholds) -> list[dict]:
    """Each item's relevance, generic and duplicate flags, computed independently of fsar's report code."""
    rows = [(k, n) for _, k, n, _ in H.class_rows()]
    items = [(c, key, t) for c, (key, _) in enumerate(rows) if key in knowledge and key != "golf"
             for t in knowledge[key]["spatial"] + knowledge[key]["temporal"]]
    vecs = enc(encoder, [f"a video of a person {n}" for _, n in rows] + [t for _, _, t in items])  # one encoder call
    names, vecs = vecs[: len(rows)], vecs[len(rows):]
    need = max(th.generic_min, math.ceil(th.generic_frac * (len(rows) - 1)))
    out = []
    for j, ((c, key, t), v) in enumerate(zip(items, vecs)):
        sims = names @ v
        rel = sims[c]
        close = sum(1 for o in range(len(rows)) if o != c and sims[o] >= rel - th.generic_margin)
        earlier = [i for i in range(j) if items[i][1] == key]
        dup = any(normalize_text(items[i][2]) == normalize_text(t) or vecs[i] @ v >= th.duplicate for i in earlier)
        out.append({"class": key, "text": t, "relevance": rel, "generic": close >= need, "duplicate": dup})
    return out


def test_report_figures(designed, encoder):
    th = Thresholds()
    rep = build_report(H.DATASET, "dist", thresholds=th)
    d = rep.data
    o = d["overall"]
    assert (o["classes"], o["valid"], o["failed"], o["failed_classes"]) == (6, 5, 1, ["golf"])
    assert o["first_try_valid"] == 4 and o["attempts_histogram"] == {"1": 4, "2": 1, "3": 1}
    assert o["mean_attempts"] == pytest.approx((1 + 1 + 2 + 1 + 3 + 1) / 6)
    exp = expected_items(encoder, designed, th)
    assert o["items"] == len(exp) == len(d["items"])
    got = {(i["class_key"], i["text"]): i for i in d["items"]}
    for e in exp:
        g = got[(e["class"], e["text"])]
        assert g["relevance"] == pytest.approx(e["relevance"], abs=1e-4)
        assert (g["generic"], g["duplicate"]) == (e["generic"], e["duplicate"]), e["text"]
    by_class = {c["key"]: c for c in d["classes"]}
    assert by_class["brush_hair"]["duplicates"] == 1 and o["duplicates"] == 1
    junk = got[("brush_hair", JUNK)]
    assert junk["relevance"] < 0.1 and junk["relevance"] == min(i["relevance"] for i in d["items"])
    assert "low relevance" in junk["reasons"] and junk["drop"]
    assert got[("push_up", "a video")]["generic"]
    # identical knowledge: the two classes are each other's nearest, at cosine 1, and flagged
    assert by_class["pour"]["nearest_class"] == "ride_bike" and by_class["pour"]["nearest_sim"] == pytest.approx(1.0, abs=1e-5)
    assert [(p["a"], p["b"]) for p in o["too_close_pairs"]] == [("ride_bike", "pour")]
    assert any(f.startswith("too close to ride_bike") for f in by_class["pour"]["flags"])
    assert o["shared"] == 2 * len(designed["pour"]["spatial"] + designed["pour"]["temporal"])
    assert by_class["golf"]["status"] == "failed" and by_class["golf"]["attempts"] == 3 and by_class["golf"]["flags"] == ["failed"]
    assert rep.sim.shape == (5, 5) and np.allclose(np.diag(rep.sim), 1, atol=1e-5)

    json_path, png_path = write_report(rep)
    assert json.loads(json_path.read_text()) == json.loads(json.dumps(d))
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    img = matplotlib.image.imread(png_path)
    assert img.shape[1] > 1200 and img.shape[0] > 700 and img[..., :3].std() > 0.05  # big, not blank


def test_filter_drops_exactly_what_fails(designed, encoder):
    th = Thresholds(min_relevance=0.2, drop_duplicates=True, drop_generic=True)
    rep = build_report(H.DATASET, "dist", thresholds=th)
    fk = filter_knowledge(rep)
    assert fk.model == f"{H.MODEL}.filtered"
    exp = expected_items(encoder, designed, th)
    should_drop = {(e["class"], e["text"]) for e in exp if e["relevance"] < 0.2 or e["duplicate"] or e["generic"]}
    assert ("brush_hair", JUNK) in should_drop and len(should_drop) < len(exp)
    source = {r["class_key"]: r for r in load_knowledge(H.DATASET, "dist", H.MODEL).rows}
    dropped, kept = set(), set()
    for r in load_knowledge(H.DATASET, "dist", fk.model).rows:
        src = source[r["class_key"]]
        flt = json.loads(r["provenance"]["filter"])
        assert flt["thresholds"]["min_relevance"] == 0.2 and flt["source_model"] == H.MODEL
        assert flt["source_fingerprint"] == load_knowledge(H.DATASET, "dist", H.MODEL).fingerprint
        if src["status"] != "ok":
            assert r["status"] == "failed"
            continue
        for f in ("spatial", "temporal"):
            after = r["knowledge"][f] if r["knowledge"] else []
            assert after == [t for t in src["knowledge"][f] if t in after]  # order kept
            dropped |= {(r["class_key"], t) for i, t in enumerate(src["knowledge"][f]) if t not in after or src["knowledge"][f].index(t) != i}
            kept |= {(r["class_key"], t) for t in after}
        assert {(r["class_key"], x["text"]) for x in flt["dropped"]} == {k for k in should_drop if k[0] == r["class_key"]}
    assert dropped == should_drop
    assert not kept & should_drop
    # the filtered set feeds the contract directly; its texts were all embedded before
    ensure_embeddings(H.DATASET, "dist", fk.model)
    te = load_text_embeddings(H.DATASET, "dist", model=fk.model, allow_missing=True)
    b = te.class_keys.index("brush_hair")
    n_left = len([t for t in designed["brush_hair"]["spatial"] if ("brush_hair", t) not in should_drop])
    assert int(te.masks["spatial"][b].sum()) == max(n_left, 1)


def test_filter_that_empties_a_class_marks_it_failed(designed):
    rep = build_report(H.DATASET, "dist", thresholds=Thresholds(min_relevance=1.5))
    fk = filter_knowledge(rep, "nothing_left")
    rows = list(load_knowledge(H.DATASET, "dist", "nothing_left").rows)
    assert all(r["status"] == "failed" and r["knowledge"] is None for r in rows)
    assert all(any(e.startswith("filter: all") for e in r["errors"]) for r in rows if r["class_key"] != "golf")
    with pytest.raises(ValueError, match="new model name"):
        filter_knowledge(rep, H.MODEL)
    assert fk.model == "nothing_left"


def test_lga_report_filters_whole_stages(fsar_cache, encoder):
    H.save_lga()
    ks = load_knowledge(H.DATASET, "lga")
    rows = []
    for r in ks.rows:
        r = dict(r)
        if r["class_key"] == "ride_bike":  # its progression stage is off-topic
            stages = [dict(s) for s in r["knowledge"]["stages"]]
            stages[1].update(subject="market", motion="closes", object="higher", sentence="The stock market closed higher today after trading.")
            r["knowledge"] = {"stages": stages}
        rows.append(r)
    save_knowledge(H.DATASET, "lga", H.MODEL, rows)
    rep = build_report(H.DATASET, "lga", thresholds=Thresholds(drop_generic=False, min_relevance=0.1))
    assert rep.data["overall"]["items"] == 18 and set(rep.fields) == {"stages"}
    bad = [i for i in rep.data["items"] if i["drop"]]
    assert [(i["class_key"], i["slot"]) for i in bad] == [("ride_bike", 1)]
    fk = filter_knowledge(rep)
    ensure_embeddings(H.DATASET, "lga", fk.model)
    te = load_text_embeddings(H.DATASET, "lga", model=fk.model)
    rb = te.class_keys.index("ride_bike")
    assert te.masks["stages"][rb].tolist() == [True, False, True]  # the dropped stage leaves its slot empty
    assert te.masks["stages"].sum() == 17


def test_report_bad_input(fsar_cache, encoder):
    with pytest.raises(FileNotFoundError, match="fsar-knowledge generate --dataset tiny6 --kind star"):
        build_report(H.DATASET, "star")
    with pytest.raises(KeyError, match="unknown knowledge kind"):
        build_report(H.DATASET, "nope")


def test_cli_report_with_filter(designed, tmp_path):
    from fsar.cli.knowledge_embed import register

    app = typer.Typer()
    register(app)
    r = CliRunner().invoke(app, ["report", "-d", H.DATASET, "-k", "dist", "--out", str(tmp_path / "rep"), "--filter"])
    assert r.exit_code == 0, r.output
    assert "ride_bike~pour" in r.output and "5/6" in r.output and "golf" in r.output
    assert (tmp_path / "rep" / "report.json").is_file() and (tmp_path / "rep" / "report.png").is_file()
    assert "handwritten.filtered" in r.output
    assert load_knowledge(H.DATASET, "dist", "handwritten.filtered").rows[0]["provenance"]["filter"]
    r = CliRunner().invoke(app, ["report", "-d", "hmdb51", "-k", "dist"])
    assert r.exit_code == 2 and "fsar-knowledge generate --dataset hmdb51 --kind dist" in r.output
