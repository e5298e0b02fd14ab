"""Validation of LLM answers: schema, then the semantic checks that catch what small models do wrong."""
from __future__ import annotations

import json

import pytest

from fsar.knowledge.schemas import get_kind
from fsar.knowledge.validate import InvalidAnswer, validate_answer

DIST = get_kind("dist")
LGA = get_kind("lga")
STAR = get_kind("star")


def dist(spatial, temporal):
    return json.dumps({"spatial": spatial, "temporal": temporal})


GOOD_DIST = dist(
    ["a comb or hairbrush", "long hair falling over the shoulder", "mirror in a bathroom", "hand raised to the head"],
    ["brush placed at the top of the head", "long downward strokes", "hand lifts and repeats", "hair smoothed and tidy"],
)


def test_valid_dist_passes():
    k = validate_answer(DIST, DIST.schema(), "brush hair", GOOD_DIST)
    assert k["spatial"][0] == "a comb or hairbrush" and len(k["temporal"]) == 4


def test_text_around_json_is_tolerated():
    assert validate_answer(DIST, DIST.schema(), "brush hair", "Sheet: " + GOOD_DIST + "\nAction:")


@pytest.mark.parametrize(
    "answer,match",
    [
        ("no json here", "no JSON object"),
        ('{"spatial": ["a b", ', "not valid JSON"),
        (dist(["a b c"] * 3, ["d e f"] * 4), "spatial: list should have at least 4 items"),
        (dist(["comb", "mirror", "bathroom sink", "comb"], ["x y z", "q r s", "t u v", "w x y"]), 'repeats item 1'),
        (dist(["brushing hair", "mirror", "sink", "towel"], ["a b c", "d e f", "g h i", "j k l"]), "only repeats the action name"),
        (dist(["mirror", "sink", "towel", "hair brushing"], ["a b c", "d e f", "g h i", "j k l"]), "only repeats the action name"),
        (dist(["mirror", "sink", "towel", "comb"], ["a b c", "d e f", "g h i", "hair brushed"]), "only repeats the action name"),
        (dist(["a round brown potato", "mirror", "sink", "towel"], ["a b c", "d e f", "g h i", "j k l"]), "copied from an example"),
        (dist(["mirror", "sink", "towel", "comb"], ["a b c", "d e f", "g h i", " ".join(["word"] * 20)]), "temporal.3: string should match pattern"),
        (dist(["mirror", "sink", "towel", "<b>comb</b>"], ["a b c", "d e f", "g h i", "j k l"]), "spatial.3: string should match pattern"),
        (dist(["mirror", "sink", "towel", "comb"], ["a b c", "d e f", "g h i", "comb"]), "repeats item 4"),
    ],
)
def test_invalid_dist(answer, match):
    with pytest.raises(InvalidAnswer, match=match):
        validate_answer(DIST, DIST.schema(), "brush hair", answer)


def test_action_anchor_is_checked_and_dropped():
    schema = DIST.schema(action="brush hair")
    answer = json.loads(GOOD_DIST)
    k = validate_answer(DIST, schema, "brush hair", json.dumps({"action": "brush hair", **answer}))
    assert "action" not in k and k == answer
    with pytest.raises(InvalidAnswer, match="action"):
        validate_answer(DIST, schema, "brush hair", json.dumps({"action": "catch", **answer}))


def test_hint_does_not_quote_the_bad_item():
    bad = dist(["comb", "mirror", "bathroom sink", "comb"], ["x y z", "q r s", "t u v", "w x y"])
    with pytest.raises(InvalidAnswer) as err:
        validate_answer(DIST, DIST.schema(), "brush hair", bad)
    assert '"comb"' in str(err.value) and "comb" not in err.value.hint


def test_counts_are_configurable():
    schema = DIST.schema(spatial=2, temporal=3)
    ok = dist(["comb", "mirror"], ["strokes down", "hand lifts", "hair tidy"])
    assert len(validate_answer(DIST, schema, "brush hair", ok)["temporal"]) == 3
    with pytest.raises(InvalidAnswer):
        validate_answer(DIST, schema, "brush hair", GOOD_DIST)


def _stage(stage, subject="diver", motion="leaps", obj="board", sentence="The diver bounces on the board and takes off."):
    return {"stage": stage, "subject": subject, "motion": motion, "object": obj, "sentence": sentence}


def test_lga_order_and_triplets():
    good = {"stages": [
        _stage("onset", motion="steps onto", obj="board", sentence="The diver walks to the end of the springboard."),
        _stage("progression", motion="springs off", obj="board", sentence="The diver bends the board and flies into the air."),
        _stage("completion", motion="enters", obj="water", sentence="The diver breaks the surface with hands first."),
    ]}
    assert validate_answer(LGA, LGA.schema(), "dive", json.dumps(good))["stages"][2]["object"] == "water"
    swapped = {"stages": [good["stages"][1], good["stages"][0], good["stages"][2]]}
    with pytest.raises(InvalidAnswer, match="onset, progression, completion in that order"):
        validate_answer(LGA, LGA.schema(), "dive", json.dumps(swapped))
    with pytest.raises(InvalidAnswer, match="literal_error|input should be"):
        bad = {"stages": [_stage("start")] + good["stages"][1:]}
        validate_answer(LGA, LGA.schema(), "dive", json.dumps(bad))


def test_star_summary_must_differ_from_descriptors():
    d = ["The player stands at the line.", "The ball is lifted above the head.", "The arms push it up.", "It drops through the hoop."]
    good = {"descriptors": d, "summary": "A player throws a ball up into a hoop."}
    assert validate_answer(STAR, STAR.schema(), "shoot ball", json.dumps(good))["summary"].startswith("A player")
    with pytest.raises(InvalidAnswer, match="repeats item 1"):
        validate_answer(STAR, STAR.schema(), "shoot ball", json.dumps({"descriptors": d, "summary": d[0]}))


def test_near_duplicate_sentences_are_rejected():
    d = ["The player stands at the line and looks at the hoop.", "The player stands at the line and looks at hoop.",
         "The arms push the ball up.", "It drops through the hoop."]
    with pytest.raises(InvalidAnswer, match="descriptor 2 .* repeats item 1"):
        validate_answer(STAR, STAR.schema(), "shoot ball", json.dumps({"descriptors": d, "summary": "A ball is thrown into a hoop."}))


# ---- no false alarms, and no phrases cut mid-thought or words glued together (issue 16) ----

def _spatial(*items):
    return dist(list(items) + ["mirror", "bathroom sink", "towel"][: 4 - len(items)],
                ["brush placed at the top of the head", "long downward strokes", "hand lifts and repeats", "hair smoothed and tidy"])


@pytest.mark.parametrize("item", ["hair brush", "a wooden hair brush", "hair", "long dark hair", "brush"])
def test_an_object_named_in_the_action_is_a_spatial_attribute(item):
    """"hair brush" for *brush hair* names the object: it was rejected as "only repeats the action name"."""
    k = validate_answer(DIST, DIST.schema(), "brush hair", _spatial(item))
    assert k["spatial"][0] == item


@pytest.mark.parametrize("item", ["brushing hair", "brush the hair", "brushes her hair", "hair brushing", "brushing"])
def test_the_action_itself_is_still_no_spatial_attribute(item):
    with pytest.raises(InvalidAnswer, match="only repeats the action name"):
        validate_answer(DIST, DIST.schema(), "brush hair", _spatial(item))


@pytest.mark.parametrize("item,word", [("ball bounces up in", "in"), ("player runs around for", "for"), ("hand grips the", "the"),
                                       ("arm swings back and", "and"), ("at the top of", "of")])
def test_a_phrase_that_ends_mid_thought_is_rejected(item, word):
    answer = dist(["basketball", "wooden court", "bent arm", "open palm"], ["palm pushes the ball down", item, "ball returns to the hand", "player keeps running"])
    with pytest.raises(InvalidAnswer, match=f'temporal item 2 .* ends mid-thought on "{word}"') as err:
        validate_answer(DIST, DIST.schema(), "dribble", answer)
    assert item not in err.value.hint


@pytest.mark.parametrize("item", ["ball bounces back up", "player picks the ball up", "ball is set down", "player breathes out",
                                  "a soda can", "ball lit from within"])
def test_a_phrase_may_end_on_a_particle(item):
    answer = dist(["basketball", "wooden court", "bent arm", "open palm"], ["palm pushes the ball down", item, "ball returns to the hand", "player keeps running"])
    assert validate_answer(DIST, DIST.schema(), "dribble", answer)["temporal"][1] == item


@pytest.mark.parametrize("item,glued", [("turns and turns thewheel", "thewheel"), ("hands on the wheel andtheirselfisoverridden", "andtheirselfisoverridden"),
                                        ("feet ontheground", "ontheground"), ("a " + "x" * 21, "x" * 21),
                                        ("the rider andthewheels", "andthewheels")])
def test_glued_words_are_rejected(item, glued):
    answer = dist(["bicycle frame", "handlebars", "bike path", item], ["feet push the pedals", "wheels roll forward", "rider steers", "bike gains speed"])
    with pytest.raises(InvalidAnswer, match=f'spatial item 4 .* glued together \\("{glued}"\\)') as err:
        validate_answer(DIST, DIST.schema(), "ride bike", answer)
    assert glued not in err.value.hint


@pytest.mark.parametrize("item", ["a backflip off the ramp", "hairbrush and comb", "kickflip on the board", "rider's helmet",
                                  "rider leans toward themself", "the massager's hands", "two bikers"])
def test_real_and_compound_words_are_not_glue(item):
    answer = dist(["bicycle frame", "handlebars", "bike path", item], ["feet push the pedals", "wheels roll forward", "rider steers", "bike gains speed"])
    assert validate_answer(DIST, DIST.schema(), "ride bike", answer)["spatial"][3] == item


def test_a_word_of_the_class_name_is_never_glue():
    answer = dist(["flicflac mat", "gym hall", "arched back", "hands on the floor"], ["run up", "hands touch down", "legs flip over", "lands on the feet"])
    assert validate_answer(DIST, DIST.schema(), "flicflac", answer)


def test_sentences_and_lga_objects_are_checked_too():
    d = ["The player stands at the line.", "The ball is lifted above the head.", "The arms push it up toward the.", "It drops through the hoop."]
    with pytest.raises(InvalidAnswer, match='descriptor 3 .* ends mid-thought on "the"'):
        validate_answer(STAR, STAR.schema(), "shoot ball", json.dumps({"descriptors": d, "summary": "A ball is thrown into a hoop."}))
    stages = [
        _stage("onset", motion="steps onto", obj="end of", sentence="The diver walks to the end of the springboard."),
        _stage("progression", motion="springs off", obj="board", sentence="The diver bends the board and flies into the air."),
        _stage("completion", motion="sinks into", obj="water", sentence="The diver breaks the surface with hands first."),
    ]
    with pytest.raises(InvalidAnswer, match='onset object "end of" ends mid-thought on "of"'):
        validate_answer(LGA, LGA.schema(), "dive", json.dumps({"stages": stages}))
    stages[0] = _stage("onset", motion="steps onto", obj="board", sentence="The diver walks to the end of the springboard.")
    # a motion may end on its preposition: "sinks into" + "water"
    assert validate_answer(LGA, LGA.schema(), "dive", json.dumps({"stages": stages}))["stages"][2]["motion"] == "sinks into"
