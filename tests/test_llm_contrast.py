"""Contrast knowledge: how two classes the report finds too close differ (validation, and a real small run)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fsar.knowledge.schemas import contrast_schema
from fsar.knowledge.validate import InvalidAnswer, validate_contrast

A, B = "dribble", "shoot ball"
GOOD = {
    "first": {"action": A, "seen": ["ball bouncing beside the knee", "player crouched low"],
              "motion": ["palm pushes the ball down again and again", "player runs while the ball bounces"]},
    "second": {"action": B, "seen": ["hoop and backboard above", "arms raised over the head"],
               "motion": ["knees bend then the body jumps", "ball flies in an arc to the hoop"]},
}


def _answer(**changes) -> str:
    answer = json.loads(json.dumps(GOOD))
    for path, value in changes.items():
        side, fld, i = path.split("__")
        answer[side][fld][int(i)] = value
    return json.dumps(answer)


def test_a_valid_contrast_gives_both_sides_without_anchors():
    out = validate_contrast(contrast_schema(A, B), A, B, json.dumps(GOOD))
    assert out["first"]["motion"][0] == "palm pushes the ball down again and again"
    assert set(out["second"]) == {"seen", "motion"}


@pytest.mark.parametrize("changes,match", [
    ({"second__seen__0": "ball bouncing beside the knee"}, "said of both actions"),
    ({"second__motion__0": "player runs while the ball flies"}, "said of both actions"),  # one word differs
    ({"first__motion__1": "shooting the ball"}, 'first motion item 2 "shooting the ball" names the other action'),
    ({"first__motion__1": "dribbling"}, "only repeats the action name"),
    ({"second__motion__0": "ball flies toward the"}, "ends mid-thought"),
])
def test_invalid_contrasts(changes, match):
    with pytest.raises(InvalidAnswer, match=match):
        validate_contrast(contrast_schema(A, B), A, B, _answer(**changes))


def test_an_item_already_known_adds_nothing():
    known = (["player crouched low", "a basketball"], [])
    with pytest.raises(InvalidAnswer, match='first seen item 2 "player crouched low" is already in the knowledge of "dribble"'):
        validate_contrast(contrast_schema(A, B), A, B, json.dumps(GOOD), known)


def test_the_anchor_is_each_actions_own_name():
    bad = json.loads(json.dumps(GOOD))
    bad["first"]["action"], bad["second"]["action"] = B, A
    with pytest.raises(InvalidAnswer, match="first.action"):
        validate_contrast(contrast_schema(A, B), A, B, json.dumps(bad))


@pytest.mark.slow
def test_contrast_on_a_real_small_run(fsar_cache):
    """Hand-written dist knowledge of six classes, its closest pair flagged, the real Gemma model asked how the two
    differ: both classes get the new items in <model>.contrast with provenance, the source set is unchanged, and
    a second run replays the answer from the cache."""
    from _knowledge_helpers import DATASET, DIST, MODEL, save_dist

    from fsar.knowledge.backends.llamacpp import LlamaCppBackend
    from fsar.knowledge.contrast import contrast_knowledge
    from fsar.knowledge.report import Thresholds, build_report
    from fsar.knowledge.store import load_knowledge

    save_dist()
    closest = build_report(DATASET, "dist", MODEL).data["overall"]["closest_pairs"][0]
    th = Thresholds(close=closest["sim"] - 1e-6)  # exactly the closest pair (and any tie) is "too close"
    backend = LlamaCppBackend("gemma-3-270m", parallel=1)
    try:
        run = contrast_knowledge(DATASET, source_model=MODEL, backend=backend, thresholds=th, max_pairs=1)
        [pair] = run.pairs
        assert {pair.a, pair.b} == {closest["a"], closest["b"]} and run.llm_calls == len(pair.raw_outputs) >= 1
        assert pair.status == "ok", pair.errors
        derived = {r["class_key"]: r for r in load_knowledge(DATASET, "dist", MODEL + ".contrast").rows}
        for key in (pair.a, pair.b):
            row = derived[key]
            new = pair.items[key]
            assert row["knowledge"]["spatial"] == DIST[key]["spatial"] + new["spatial"]
            assert row["knowledge"]["temporal"] == DIST[key]["temporal"] + new["temporal"]
            prov = json.loads(row["provenance"]["filter"])
            assert prov["derived"] == "contrast" and prov["source_model"] == MODEL and prov["template"] == "contrast.jinja"
            assert {a["text"] for a in prov["added"]} == set(new["spatial"] + new["temporal"])
            assert all(a["pair_with"] in (pair.a, pair.b) and a["cache_key"] == pair.cache_keys[-1] for a in prov["added"])
        untouched = [k for k in derived if k not in (pair.a, pair.b)]
        assert all(derived[k]["knowledge"] == DIST[k] for k in untouched)
        assert all(r["knowledge"] == DIST[r["class_key"]] for r in load_knowledge(DATASET, "dist", MODEL).rows)
        assert pair.sim_after is not None
        record = json.loads((Path(run.path) / "contrast.json").read_text())
        assert record["pairs"][0]["raw_outputs"] == pair.raw_outputs

        again = contrast_knowledge(DATASET, source_model=MODEL, backend=backend, thresholds=th, max_pairs=1)
        assert again.llm_calls == 0 and again.cache_hits == len(pair.raw_outputs)
        assert again.pairs[0].items == pair.items
    finally:
        backend.close()
