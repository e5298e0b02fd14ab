"""Stage 1 end to end on the real embedded LLM (Gemma 3 270M through llama.cpp): generation, cache, kill, failures."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from fsar.knowledge.generate import GenerateOptions, generate_knowledge
from fsar.knowledge.schemas import get_kind
from fsar.knowledge.store import list_knowledge, load_knowledge

pytestmark = pytest.mark.slow
MODEL = "gemma-3-270m-q4_k_m"


@pytest.fixture(scope="module")
def backend():
    """One embedded model for the module (loading it is the slow part)."""
    from fsar.knowledge.backends.llamacpp import LlamaCppBackend

    be = LlamaCppBackend()
    yield be
    be.close()


def _cli(*args, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "fsar.cli.knowledge", *args], capture_output=True, text=True, env=env, **kw)


def test_embedded_generation_end_to_end(fsar_cache, backend):
    [s] = generate_knowledge("hmdb51", "dist", limit=3, backend=backend)
    assert s.classes == 3 and s.llm_calls >= 3 and s.cache_hits == 0
    ks = load_knowledge("hmdb51", "dist")
    assert ks.model == MODEL and len(ks.rows) == 3
    assert [r["class_key"] for r in ks.rows] == ["brush_hair", "catch", "chew"]
    schema = get_kind("dist").schema()
    for row in ks.rows:
        prov = row["provenance"]
        assert json.loads(prov["model_id"])["model_sha256"] == backend.sha256
        assert prov["template"] == "dist.jinja" and len(prov["template_hash"]) == 16
        assert prov["attempts"] == len(row["raw_outputs"]) == len(prov["cache_keys"]) >= 1
        if row["status"] == "ok":
            schema.model_validate(row["knowledge"])  # what is stored is what was validated
            assert len(row["errors"]) == prov["attempts"] - 1
        else:
            assert row["knowledge"] is None and len(row["errors"]) == prov["attempts"] == 3
    assert s.ok == len(ks.ok) >= 1, [r["errors"] for r in ks.rows]

    # a second run makes no LLM call: valid classes are kept, failed ones are retried with new seeds
    [again] = generate_knowledge("hmdb51", "dist", limit=3, backend=backend)
    assert again.kept == len(ks.ok)
    if not ks.failed:
        assert again.llm_calls == 0 and again.cache_hits == 0

    # with the store gone, every answer comes from the content-addressed cache: still no LLM call
    for d in (fsar_cache / "knowledge").iterdir():
        import shutil

        shutil.rmtree(d)
    [replay] = generate_knowledge("hmdb51", "dist", limit=3, backend=backend)
    assert replay.llm_calls == 0 and replay.cache_hits >= 3
    assert replay.ok == s.ok
    [m] = list_knowledge()
    assert m["fingerprint"] == ks.fingerprint


def test_failures_are_recorded_never_dropped(fsar_cache, backend):
    """Answers cut at 6 tokens can never validate: the classes are stored as failed, with outputs and errors."""
    opts = GenerateOptions(max_tokens=6, max_attempts=2)
    [s] = generate_knowledge("hmdb51", "star", limit=2, backend=backend, options=opts)
    assert s.ok == 0 and s.failed_classes == ["brush hair", "catch"] and s.llm_calls == 4
    rows = list(load_knowledge("hmdb51", "star").rows)
    assert [r["status"] for r in rows] == ["failed", "failed"]
    for r in rows:
        assert r["knowledge"] is None and len(r["raw_outputs"]) == 2 and all("JSON" in e for e in r["errors"])
    # the next run retries the failed classes with new attempts (new seeds), not the cached answers
    [retry] = generate_knowledge("hmdb51", "star", limit=2, backend=backend, options=opts)
    assert retry.llm_calls == 4 and retry.cache_hits == 0
    assert all(r["provenance"]["attempts"] == 4 for r in load_knowledge("hmdb51", "star").rows)


def test_cli_failure_exit_code_and_summary(fsar_cache):
    res = _cli("generate", "--dataset", "hmdb51", "--kind", "lga", "--limit", "1", "--max-tokens", "4", "--max-attempts", "1")
    assert res.returncode == 1, res.stderr
    assert "failed (1):" in res.stderr and "brush hair" in res.stderr
    shown = _cli("show", "--dataset", "hmdb51", "--kind", "lga", "--class", "brush hair")
    record = json.loads(shown.stdout)
    assert record["status"] == "failed" and record["raw_outputs"] and record["errors"]


def test_killed_run_resumes_with_only_missing_classes(fsar_cache, backend):
    env = {**os.environ, "FSAR_CACHE": str(fsar_cache)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fsar.cli.knowledge", "generate", "--dataset", "hmdb51", "--kind", "dist", "--limit", "5"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    manifest = fsar_cache / "knowledge" / "hmdb51" / "dist" / MODEL / "manifest.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if manifest.exists() and json.loads(manifest.read_text())["classes"] >= 1:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed; give it more classes"
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    before = {r["class_key"]: r for r in load_knowledge("hmdb51", "dist").rows}  # loads: nothing corrupt
    assert 1 <= len(before) < 5
    leftovers = [p for p in fsar_cache.rglob("*.tmp")]
    cached = len(list((fsar_cache / "llm" / "responses").rglob("*.json")))
    [s] = generate_knowledge("hmdb51", "dist", limit=5, backend=backend)
    after = {r["class_key"]: r for r in load_knowledge("hmdb51", "dist").rows}
    assert len(after) == 5
    ok_before = [k for k, r in before.items() if r["status"] == "ok"]
    assert s.kept == len(ok_before)
    for k in ok_before:  # finished classes were not regenerated
        assert after[k]["provenance"]["created_at"] == before[k]["provenance"]["created_at"]
    # only the classes the killed run had not finished needed the LLM (answers it had finished are replayed)
    missing = 5 - len(before)
    assert s.llm_calls + s.cache_hits >= missing and s.cache_hits <= cached
    assert all(p.name.startswith(".") for p in leftovers)  # at most a temp file, never a half-written store
