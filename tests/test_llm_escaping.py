"""Class names with a double quote or a backslash (issue 10, defect 1): escaped in the grammar and the JSON, so
such a class generates and validates on the real embedded model, and the classes beside it are unaffected."""
from __future__ import annotations

import json

import pytest

from fsar.knowledge.backends.base import Sampling
from fsar.knowledge.backends.llamacpp import LlamaCppBackend, schema_grammar
from fsar.knowledge.prompting import render_prompt
from fsar.knowledge.schemas import get_kind

NAMES = ['say "hi"', "back\\slash", 'a "quoted\\" \\ mix', "brush hair"]
DIST = get_kind("dist")


def test_the_grammar_writes_the_name_as_json_would():
    """The rule of the ``action`` anchor, read back as a GBNF literal, is exactly the JSON string of the name."""
    for name in NAMES:
        grammar = schema_grammar(DIST.schema(action=name).model_json_schema())
        [rule] = [line for line in grammar.splitlines() if line.startswith("action ::=")]
        literal = rule.split("::=", 1)[1].strip()
        # a GBNF literal unescapes like a JSON string
        assert json.loads(literal) == json.dumps(name, ensure_ascii=False), rule
    plain = schema_grammar(DIST.schema(action="brush hair").model_json_schema())
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    assert plain == json_schema_to_gbnf(json.dumps(DIST.schema(action="brush hair").model_json_schema()))


@pytest.mark.slow
def test_names_with_quotes_and_backslashes_generate_on_the_real_model(fsar_cache):
    backend = LlamaCppBackend("gemma-3-270m", parallel=len(NAMES))
    counts = {"spatial": 2, "temporal": 2}
    try:
        futures = []
        for i, name in enumerate(NAMES):
            schema = DIST.schema(action=name, **counts)
            prompt = render_prompt("dist", name, counts)
            futures.append((name, schema, backend._submit(prompt, schema.model_json_schema(), Sampling(seed=i, max_tokens=160))))
        for name, schema, fut in futures:
            text = fut.result(timeout=300).text
            answer = json.loads(text)  # valid JSON: the name's quote and backslash are escaped
            assert answer["action"] == name, text
            schema.model_validate(answer)  # and it is an answer of the schema, anchored on this class
    finally:
        backend.close()
