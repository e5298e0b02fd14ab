"""The openai backend against a real OpenAI-compatible server on 127.0.0.1 (llama-cpp-python's server, same GGUF)."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from fsar.knowledge.backends import BackendError
from fsar.knowledge.backends.openai_api import OpenAIBackend
from fsar.knowledge.generate import GenerateOptions, generate_knowledge
from fsar.knowledge.store import load_knowledge


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# llama_cpp.server as is, except on CPUs with AMX, where its matrix kernels segfault (see BatchedDecoder): there the
# server's models get the plain CPU buffer, as the embedded decoder does
_SERVER = """
import runpy, sys
import llama_cpp.llama_cpp as C
from fsar.knowledge.backends.llamacpp_engine import cpu_has_amx
if cpu_has_amx():
    _defaults = C.llama_model_default_params
    def _no_extra_buffers():
        params = _defaults()
        params.use_extra_bufts = False
        return params
    C.llama_model_default_params = _no_extra_buffers
sys.argv[0] = "llama_cpp.server"
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Start ``python -m llama_cpp.server`` on a free local port and wait until it lists its model."""
    from fsar.knowledge.backends.llamacpp import default_model_path

    path, _ = default_model_path()
    port = _free_port()
    log = open(tmp_path_factory.mktemp("server") / "server.log", "w+")  # a file, not a pipe: a full pipe blocks it
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVER, "--model", str(path), "--model_alias", "gemma3-270m",
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "2"],
        stdout=log, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            pytest.fail(f"llama_cpp.server exited: {log.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=1) as r:
                if json.load(r)["data"]:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("llama_cpp.server did not come up within 120 s")
    yield url
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


@pytest.mark.slow
def test_generate_through_server_with_concurrency(fsar_cache, server):
    backend = OpenAIBackend(None, base_url=server, concurrency=3)
    assert backend.model == "gemma3-270m"  # taken from the server's model list
    [s] = generate_knowledge("ucf101", "dist", limit=3, backend=backend)
    assert s.classes == 3 and s.llm_calls >= 3
    assert backend._format in ("json_schema", "json_object")
    rows = list(load_knowledge("ucf101", "dist", "gemma3-270m").rows)
    assert [r["class_key"] for r in rows] == ["ApplyEyeMakeup", "Archery", "BabyCrawling"]
    for r in rows:
        assert r["provenance"]["backend"] == "openai" and r["raw_outputs"]
        assert json.loads(r["provenance"]["model_id"])["base_url"] == server
        if r["status"] == "ok":
            assert set(r["knowledge"]) == {"spatial", "temporal"}
    # everything answered is cached: a rerun of a fresh store asks the server nothing
    [again] = generate_knowledge("ucf101", "dist", limit=3, backend=OpenAIBackend(None, base_url=server, concurrency=3))
    assert again.kept == s.ok
    if s.ok == 3:
        assert again.llm_calls == 0


def test_unreachable_server_fails_fast():
    start = time.perf_counter()
    with pytest.raises(BackendError, match="cannot reach an OpenAI-compatible server at http://127.0.0.1:9/v1"):
        OpenAIBackend(None, base_url="http://127.0.0.1:9/v1")
    assert time.perf_counter() - start < 10


def test_named_model_on_unreachable_server_fails_fast():
    """With --model the server is still reached first: a wrong URL fails in seconds, not after 15 s of retries."""
    start = time.perf_counter()
    with pytest.raises(BackendError, match=r"cannot reach an OpenAI-compatible server at http://\*\*\*@127.0.0.1:9/v1") as e:
        OpenAIBackend("m", base_url="http://user:secret@127.0.0.1:9/v1")
    assert time.perf_counter() - start < 5
    assert "secret" not in str(e.value)


def test_cli_unreachable_server_one_line_without_credentials(fsar_cache):
    start = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-m", "fsar.cli.knowledge", "generate", "--dataset", "hmdb51", "--limit", "1", "--backend", "openai",
         "--base-url", "http://user:secret@127.0.0.1:9/v1", "--model", "m"],
        capture_output=True, text=True,
    )
    assert time.perf_counter() - start < 15  # Python start-up included; the retries alone took 15 s
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert lines[0] == "error: cannot reach an OpenAI-compatible server at http://***@127.0.0.1:9/v1; start it or fix --base-url"
    assert "secret" not in res.stdout + res.stderr


@pytest.mark.slow
def test_credentials_in_the_url_are_used_but_never_stored(fsar_cache, server):
    url = server.replace("http://", "http://user:secret@")
    opts = GenerateOptions(max_tokens=8, max_attempts=1)  # one short request is enough to write everything
    [s] = generate_knowledge("ucf101", "dist", limit=1, backend="openai", base_url=url, model="gemma3-270m", options=opts)
    assert s.llm_calls == 1
    [row] = load_knowledge("ucf101", "dist", "gemma3-270m").rows
    assert json.loads(row["provenance"]["model_id"])["base_url"] == server.replace("http://", "http://***@")
    written = [p for p in fsar_cache.rglob("*") if p.is_file()]
    assert any("responses" in p.parts for p in written)  # the response cache was written...
    assert not [p for p in written if b"secret" in p.read_bytes()]  # ...and no file holds the password
