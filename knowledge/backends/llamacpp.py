"""The embedded backend: llama-cpp-python in-process on a GGUF file, decoding constrained to the JSON schema.

``--model`` takes a short name of a packaged model (``fsar.knowledge.models``: ``qwen2.5-coder-1.5b``, the default,
and ``gemma-3-270m``) or a path to any GGUF file. Gemma 3 270M is a base model with no chat template, so its
prompts are plain completions with worked examples (see ``prompts/``); an instruction-tuned model gets the same
prompt as its user turn, rendered with the chat template stored in its GGUF (``prompt_style="chat"``).
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
from fsar.knowledge.models import MODELS, resolve_model

# requests decoded together. On a CPU a decode step of the 1.5B model is compute-bound with a poor kernel at small
# batches, so throughput kept rising up to a whole data set's classes in one batch (hmdb51 dist with Qwen on 2 cores:
# 13.4 tokens/s at 8, 33.3 at 64 with `python bench/bench_decoder.py --model qwen2.5-coder-1.5b --classes 51`). Our choice: 64, whose KV cache (1,280 cells per sequence) takes
# about 2.5 GB for Qwen and 1.5 GB for Gemma.
DEFAULT_PARALLEL = 64
PROMPT_STYLES = ("completion", "chat")


def default_model_path(name: str | None = None) -> tuple[Path, str | None]:
    """The GGUF of a packaged model (default: the default model; assembled in the user cache once) and its known sha256."""
    resolved = resolve_model(name)
    return resolved.path, resolved.sha256


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
    decoder = "fsar-batched-3"  # part of the identity: answers of another decoding algorithm are not reused

    def __init__(self, model_path: str | None = None, n_threads: int | None = None, parallel: int | None = None,
                 prompt_style: str | None = None):
        """``model_path``: a packaged model's short name or a GGUF path (None: the default model);
        ``prompt_style``: "completion" or "chat" (None: the packaged model's own, completion for a path)."""
        resolved = resolve_model(model_path)
        path = resolved.path
        check_gguf(path)
        self.sha256 = resolved.sha256 or file_sha256(path)
        if prompt_style is not None and prompt_style not in PROMPT_STYLES:
            raise BackendError(f"unknown prompt style '{prompt_style}'; choose one of {', '.join(PROMPT_STYLES)}")
        self.prompt_style = prompt_style or resolved.prompt_style
        self.path = path
        self.model = path.name
        # all cores by default (llama.cpp's own default is 1); FSAR_LLM_THREADS overrides, e.g. on a busy machine
        self.n_threads = n_threads or int(os.environ.get("FSAR_LLM_THREADS") or 0) or os.cpu_count() or 1
        if parallel is not None and parallel < 1:
            raise BackendError(f"--concurrency must be at least 1, got {parallel}")
        self.concurrency = parallel or DEFAULT_PARALLEL
        self._decoder: BatchedDecoder | None = None
        self._grammars: dict[str, str] = {}
        self._chat_template = None
        self._lock = threading.Lock()

    def identity(self) -> dict:
        ident = {"backend": self.name, "model": self.model, "model_sha256": self.sha256, "decoder": self.decoder}
        if self.prompt_style != "completion":  # (completion keeps the identity, and so the cache, it always had)
            ident["prompt_style"] = self.prompt_style
        return ident

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
            self._grammars[key] = schema_grammar(schema)
        return self._grammars[key]

    def format_prompt(self, prompt: str) -> str:
        """The text the model reads: the prompt itself (completion), or the prompt as the user turn of the model's
        own chat template, up to the start of the assistant's answer (chat)."""
        if self.prompt_style == "completion":
            return prompt
        decoder = self._load()
        with self._lock:
            if self._chat_template is None:
                source = decoder.chat_template()
                if not source:
                    raise BackendError(f"{self.path.name} has no chat template in its metadata; use prompt style 'completion'")
                self._chat_template = compile_chat_template(source)
        return render_chat(self._chat_template, [{"role": "user", "content": prompt.rstrip()}])

    def _submit(self, prompt: str, schema: dict, sampling: Sampling):
        text = self.format_prompt(prompt)
        special = self.prompt_style == "chat"  # the template's markers (<|im_start|>) are special tokens
        return self._load().submit(text, self._grammar(schema), Sampler(**sampling.as_dict()), special=special)

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


def _gbnf_literal(text: str) -> str:
    """A GBNF string literal matching ``text`` exactly (backslash, quote and line breaks escaped)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", "\\r").replace("\n", "\\n") + '"'


def schema_grammar(schema: dict) -> str:
    """The GBNF grammar of a JSON schema, keeping its property order (the model writes fields in that order).

    llama-cpp-python's converter writes a string constant (the ``action`` anchor: the class name) into the grammar
    without escaping backslashes, so a name with a quote or a backslash gave a grammar llama.cpp rejects, or JSON
    with an invalid escape. Such constants are converted as placeholders and put back correctly escaped.
    """
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    consts: dict[str, str] = {}

    def swap(node):
        if isinstance(node, dict):
            out = {k: swap(v) for k, v in node.items()}
            for key in ("const", "enum"):
                values = out.get(key) if key == "enum" else [out.get(key)]
                if key in out and any(isinstance(v, str) and any(c in v for c in '\\"\r\n') for v in values):
                    marks = []
                    for v in values:
                        mark = f"fsarconst{len(consts)}x"
                        consts[mark] = v
                        marks.append(mark)
                    out[key] = marks if key == "enum" else marks[0]
            return out
        if isinstance(node, list):
            return [swap(v) for v in node]
        return node

    grammar = json_schema_to_gbnf(json.dumps(swap(schema)))
    for mark, value in consts.items():
        placeholder = '"\\"' + mark + '\\""'  # how the converter writes the JSON string "mark"
        if placeholder not in grammar:
            raise BackendError("could not build the grammar of a class name with quotes or backslashes")
        grammar = grammar.replace(placeholder, _gbnf_literal(json.dumps(value, ensure_ascii=False)))
    return grammar


def compile_chat_template(source: str):
    """A GGUF's chat template (Jinja, as Hugging Face tokenizers write them) compiled in a sandbox."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise BackendError(f"the model's chat template refused the prompt: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(source)


def render_chat(template, messages: list[dict]) -> str:
    """The chat rendered up to the assistant's turn (``add_generation_prompt``), as llama.cpp would."""
    return template.render(messages=messages, add_generation_prompt=True, bos_token="", eos_token="", tools=None)
