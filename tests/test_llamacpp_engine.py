"""The batched grammar-constrained decoder on the real embedded model (Gemma 3 270M through llama.cpp's C API)."""
from __future__ import annotations

import json

import pytest

from fsar.knowledge.backends.llamacpp_engine import BatchedDecoder, Sampler, _Request, split_prompt
from fsar.knowledge.prompting import render_prompt
from fsar.knowledge.schemas import get_kind


def test_split_prompt_cuts_at_the_last_blank_line():
    assert split_prompt("examples\n\nmore\n\nAction: run\nSheet: ") == ("examples\n\nmore\n\n", "Action: run\nSheet: ")
    assert split_prompt("no blank line") == ("", "no blank line")
    assert split_prompt("ends with a blank line\n\n") == ("", "ends with a blank line\n\n")


@pytest.fixture(scope="module")
def model_path():
    from fsar.knowledge.backends.llamacpp import default_model_path

    return str(default_model_path()[0])


def _grammar(schema: dict) -> str:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    return json_schema_to_gbnf(json.dumps(schema))


def _dist_request(name: str, spatial: int = 2, temporal: int = 2):
    kind = get_kind("dist")
    schema = kind.schema(action=name, spatial=spatial, temporal=temporal)
    prompt = render_prompt("dist", name, {"spatial": spatial, "temporal": temporal})
    return prompt, _grammar(schema.model_json_schema()), schema


@pytest.mark.slow
def test_batched_answers_follow_the_schema(model_path):
    """Four requests decoded together: every answer is JSON of the schema, about its own class."""
    dec = BatchedDecoder(model_path, n_threads=2, n_parallel=4)
    try:
        names = ["brush hair", "ride bike", "pour", "climb stairs"]
        reqs = [_dist_request(n) for n in names]
        futures = [dec.submit(p, g, Sampler(seed=i, max_tokens=200)) for i, (p, g, _) in enumerate(reqs)]
        for name, (_, _, schema), fut in zip(names, reqs, futures):
            res = fut.result(timeout=300)
            answer = schema.model_validate_json(res.text)  # the grammar made it valid JSON of this schema
            assert answer.action == name
            assert 0 < res.completion_tokens < 200 and res.prompt_tokens > 100 and res.seconds > 0
    finally:
        dec.close()


@pytest.mark.slow
def test_one_request_at_a_time_depends_on_the_request_alone(model_path):
    """With one sequence in flight, the text is a function of (prompt, sampling): other requests before it, and the
    shared prompt head being cached or not, change nothing. Another seed gives another answer."""
    prompt, grammar, _ = _dist_request("brush hair")
    sampler = Sampler(seed=3, max_tokens=120)
    dec = BatchedDecoder(model_path, n_threads=2, n_parallel=1)
    try:
        alone = dec.submit(prompt, grammar, sampler).result(timeout=300).text
    finally:
        dec.close()
    dec = BatchedDecoder(model_path, n_threads=2, n_parallel=1)
    try:
        other_prompt, other_grammar, _ = _dist_request("dive")
        dec.submit(other_prompt, other_grammar, Sampler(seed=1, max_tokens=60)).result(timeout=300)
        after = dec.submit(prompt, grammar, sampler).result(timeout=300).text
        reseeded = dec.submit(prompt, grammar, Sampler(seed=4, max_tokens=120)).result(timeout=300).text
    finally:
        dec.close()
    assert after == alone
    assert reseeded != alone


@pytest.mark.slow
def test_grammar_falls_back_to_the_whole_vocabulary_and_limits_hold(model_path):
    """A grammar none of whose tokens is among the model's top candidates is still obeyed (the full-vocabulary
    path); max_tokens cuts an answer; greedy decoding ignores the seed; a prompt too long is a clear error."""
    dec = BatchedDecoder(model_path, n_threads=2, n_parallel=2)
    try:
        odd = 'root ::= "zqxv" [0-9] [0-9] "!"'
        res = dec.submit("The capital of France is", odd, Sampler(seed=0, max_tokens=20)).result(timeout=120)
        assert res.text[:4] == "zqxv" and res.text[4:6].isdigit() and res.text.endswith("!")

        free = 'root ::= [a-z ]+'
        cut = dec.submit("Once upon a time", free, Sampler(seed=0, max_tokens=5)).result(timeout=120)
        assert cut.completion_tokens == 5

        g1 = dec.submit("Once upon a time", free, Sampler(seed=1, temperature=0.0, max_tokens=8)).result(timeout=120)
        g2 = dec.submit("Once upon a time", free, Sampler(seed=2, temperature=0.0, max_tokens=8)).result(timeout=120)
        assert g1.text == g2.text

        # a prompt too long fails alone, with a message; the request beside it is answered
        beside = dec.submit("Once upon a time", free, Sampler(seed=3, max_tokens=6))
        with pytest.raises(ValueError, match="lower --max-tokens"):
            dec.submit("word " * 1500, free, Sampler(max_tokens=10)).result(timeout=120)
        assert beside.result(timeout=120).completion_tokens == 6
    finally:
        dec.close()


def _repeated_runs(text: str, n: int) -> set[tuple[str, ...]]:
    words = text.split()
    runs = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return {r for r in runs if runs.count(r) > 1}


@pytest.mark.slow
def test_no_repeat_ngram_stops_the_copy_loop(model_path):
    """The test makes its own copy loop: a prompt of one phrase said six times, no punctuation, and a grammar of
    lower-case words, so greedy decoding continues the phrase. Checked here without the ban (the premise); with
    the 4-gram ban the answer starts the same, goes on to the token limit, and never repeats a run of 4 words."""
    phrase = "red fox jumps high"
    prompt = " ".join([phrase] * 6)
    words = "root ::= [a-z ]+"
    dec = BatchedDecoder(model_path, n_threads=2, n_parallel=2)
    try:
        loop = dec.submit(prompt, words, Sampler(temperature=0.0, max_tokens=24))
        banned = dec.submit(prompt, words, Sampler(temperature=0.0, max_tokens=24, no_repeat_ngram=4))
        loop, banned = loop.result(timeout=300), banned.result(timeout=300)
    finally:
        dec.close()
    assert loop.text.split().count("fox") >= 3 and _repeated_runs(loop.text, 4), f"premise: no loop in {loop.text!r}"
    assert banned.text.split()[:4] == phrase.split(), banned.text  # the first run is still allowed
    assert banned.completion_tokens == 24, banned.text  # it kept writing: the ban did not just end the answer
    assert not _repeated_runs(banned.text, 4), banned.text


def test_the_ban_also_bars_the_banned_word_glued_to_the_word_before(model_path):
    """Around a ban the model used to drop the space ("side of theroom", "left to the-right"): pieces that start
    no new word and begin a banned word are barred too, while a new word, another word ending and "'s" are not."""
    dec = BatchedDecoder(model_path, n_threads=1, n_parallel=1)
    try:
        banned = {"room", "right"}

        def glues(text: str) -> list[bool]:
            return [dec._glues(t, banned) for t in dec.model.tokenize(text.encode(), add_bos=False, special=False)]

        assert glues("room") == [True] and glues("-")[0] and glues("-right")[0]
        assert not any(glues(" room")) and not any(glues(" right"))  # the banned word itself is the other test's
        assert not glues("ory")[0] and not glues("'s")[0]  # "the" + "ory", "player" + "'s" stay allowed
        # the penalty rule: "the" without its space counts the uses of " the", a word of its own
        req = _Request(head="", tail="", grammar="", sampler=Sampler(), future=None)
        req.word_counts["the"] = 3
        (spaced,), (bare,) = (dec.model.tokenize(t.encode(), add_bos=False, special=False) for t in (" the", "the"))
        assert dec._glued_count(req, bare) == 3 and dec._glued_count(req, spaced) == 0
    finally:
        dec.close()


@pytest.mark.slow
def test_at_the_word_limit_the_phrase_ends_instead_of_gluing(model_path):
    """A grammar of at most three words and a prompt that wants a fourth: the answer ends after three words. The
    premise, with the word-bound rule switched off: the model glues the words on ("jumpshighredfox...")."""
    prompt = " ".join(["red fox jumps high"] * 6)
    grammar = 'root ::= [a-z]+ (" " [a-z]+){0,2} "."'
    dec = BatchedDecoder(model_path, n_threads=2, n_parallel=1)
    try:
        ended = dec.submit(prompt, grammar, Sampler(temperature=0.0, max_tokens=24)).result(timeout=300)
        dec._at_word_bound = lambda *args: False
        glued = dec.submit(prompt, grammar, Sampler(temperature=0.0, max_tokens=24)).result(timeout=300)
    finally:
        dec.close()
    assert glued.text.startswith("red fox jumps") and len(glued.text.split()[-1]) > len("jumps."), glued.text
    assert ended.text == "red fox jumps.", ended.text
