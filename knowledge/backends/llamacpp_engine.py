"""Batched, grammar-constrained decoding on llama.cpp's C API: what makes the embedded backend fast on a CPU.

llama-cpp-python's ``create_completion`` decodes one request at a time and checks the JSON grammar against all
262,144 tokens of Gemma's vocabulary at every step (7-9 tokens/s on 2 cores). This decoder instead
- decodes up to ``n_parallel`` requests together, one batch per step (one pass over the weights serves them all);
- checks the grammar on the top candidates only, and on the whole vocabulary only when none of them fits
  (what llama.cpp's own example sampler does): tokens ranked below the 64 best, which min-p and top-p would cut
  anyway, are drawn only when none of the 64 fits;
- computes the KV cache of a prompt's shared head (everything up to its last blank line: the worked examples)
  once, and shares it between requests.

Each request has its own KV stream. With one request in flight its text is a function of the request alone; with
several, llama.cpp's batched kernels round differently depending on the batch (measured: logits move by up to 0.2
after a few steps), so sampled text can differ between runs. The response cache is what makes reruns exact.
"""
from __future__ import annotations

import collections
import ctypes
import re
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from fsar.knowledge.backends.base import Sampling

TOP_CANDIDATES = 64  # grammar is checked on this many best tokens first


@dataclass(frozen=True)
class Sampler(Sampling):
    """How a token is drawn: penalties on tokens already written (and the no-repeat ban), then top-k, temperature,
    top-p and min-p (the cut-offs llama.cpp's own sampler uses by default)."""

    top_k: int = 40
    min_p: float = 0.05


@dataclass
class Result:
    text: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float


def split_prompt(prompt: str) -> tuple[str, str]:
    """(shared head, own tail): the head ends at the last blank line, so prompts that differ only in their last
    paragraph (the class name, a retry note) share the head's KV cache."""
    cut = prompt.rfind("\n\n")
    if cut <= 0 or not prompt[cut + 2 :].strip():
        return "", prompt
    return prompt[: cut + 2], prompt[cut + 2 :]


@dataclass
class _Request:
    head: str
    tail: str
    grammar: str
    sampler: Sampler
    future: Future
    special: bool = False  # parse special-token markers in the prompt (a chat template's <|im_start|>)
    # decoding state
    seq: int = -1
    pos: int = 0
    last: int = -1
    tokens: list[int] = field(default_factory=list)
    counts: collections.Counter = field(default_factory=collections.Counter)
    word_counts: collections.Counter = field(default_factory=collections.Counter)  # words begun with a space
    ngrams: dict[tuple, set] = field(default_factory=dict)  # (n-1 words) -> words that followed them
    grammar_ptr: object = None
    rng: np.random.Generator | None = None
    prompt_tokens: int = 0
    started: float = 0.0


class BatchedDecoder:
    """One llama.cpp model and context serving requests from any thread: ``submit`` returns a Future[Result]."""

    def __init__(self, model_path: str, n_threads: int, n_parallel: int = 8, n_ctx_seq: int = 1280, n_heads: int = 3):
        import llama_cpp
        from llama_cpp import _internals
        from llama_cpp._logger import set_verbose
        from llama_cpp._utils import suppress_stdout_stderr

        set_verbose(False)
        self.L = llama_cpp
        self.n_heads = n_heads  # prompt heads kept in the KV cache (one per knowledge kind is plenty)
        mparams = llama_cpp.llama_model_default_params()
        # our choice: on a CPU with AMX, llama.cpp's AMX matrix product (an "extra buffer type") crashed this decoder
        # (segfault in ggml_backend_amx_mul_mat, llama-cpp-python 0.3.36 built natively on a Xeon with amx_int8),
        # so there the weights stay in the plain CPU buffer; elsewhere the faster repacked layouts are kept
        mparams.use_extra_bufts = not cpu_has_amx()
        self.model = _internals.LlamaModel(path_model=model_path, params=mparams, verbose=False)
        cparams = llama_cpp.llama_context_default_params()
        # sequences: the prompt heads and the requests in flight, each in its own KV stream (not unified), so a
        # request's cells are its own and in position order; a head is copied whole into a request's stream
        n_seq = n_heads + n_parallel
        self.n_ctx_seq = n_ctx_seq
        cparams.n_ctx = n_ctx_seq * n_seq
        cparams.n_batch = 512
        cparams.n_ubatch = 512
        cparams.n_seq_max = n_seq
        cparams.kv_unified = False
        cparams.swa_full = True  # Gemma's sliding-window layers keep every cell, so heads can be shared
        cparams.n_threads = n_threads
        cparams.n_threads_batch = n_threads
        with suppress_stdout_stderr(disable=False):  # llama.cpp prints a note about the SWA cache otherwise
            self.ctx = _internals.LlamaContext(model=self.model, params=cparams, verbose=False)
        self.vocab = self.model.vocab
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.memory = llama_cpp.llama_get_memory(self.ctx.ctx)
        self.batch = llama_cpp.llama_batch_init(512, 0, 1)
        self._heads: collections.OrderedDict[tuple, int] = collections.OrderedDict()  # head tokens -> its sequence
        self._free_seqs = list(range(n_heads, n_heads + n_parallel))
        self._top = _TokenArray(llama_cpp, TOP_CANDIDATES)
        self._full = _TokenArray(llama_cpp, self.n_vocab)
        self._full_ids = np.arange(self.n_vocab, dtype=np.int32)
        self._word_tokens: dict[int, str] = {}
        self._pieces: dict[int, bytes] = {}
        self._pending: collections.deque[_Request] = collections.deque()
        self._active: list[_Request] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="fsar-llamacpp", daemon=True)
        self._thread.start()

    # ---- public -----------------------------------------------------------------------------------------------
    def submit(self, prompt: str, grammar: str, sampler: Sampler, special: bool = False) -> Future:
        """Queue one request; ``special``: the prompt's special-token markers (a chat template's) are tokens."""
        head, tail = split_prompt(prompt)
        req = _Request(head=head, tail=tail, grammar=grammar, sampler=sampler, future=Future(), special=special)
        with self._cond:
            if self._closed:
                raise RuntimeError("the decoder is closed")
            self._pending.append(req)
            self._cond.notify()
        return req.future

    def chat_template(self) -> str | None:
        """The model's default chat template from its GGUF metadata (``tokenizer.chat_template``), if it has one."""
        ptr = self.L.llama_model_chat_template(self.model.model, None)
        return ptr.decode("utf-8") if ptr else None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()
        self.L.llama_batch_free(self.batch)
        self.ctx.close()
        self.model.close()

    # ---- the loop ---------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._pending and not self._active:
                    self._cond.wait()
                if self._closed:
                    break
                admitted = [self._pending.popleft() for _ in range(min(len(self._pending), len(self._free_seqs)))]
            for req in admitted:
                try:
                    self._start(req)
                except Exception as e:  # a bad request (a prompt too long) fails alone
                    self._finish(req, error=e)
            try:
                if self._active:
                    self._step()
            except Exception as e:  # a broken context fails every request in flight, never hangs them
                for req in list(self._active):
                    self._finish(req, error=e)
        for req in list(self._active) + list(self._pending):
            req.future.cancel() or self._finish(req, error=RuntimeError("decoder closed"))

    def _start(self, req: _Request) -> None:
        """Prefill a request alone: its shared head from the cache (computing it once), then its own tail."""
        if not req.future.set_running_or_notify_cancel():
            return
        req.started = time.perf_counter()
        head = tuple(self.model.tokenize(req.head.encode(), add_bos=True, special=req.special)) if req.head else ()
        tail = self.model.tokenize(req.tail.encode(), add_bos=not head, special=req.special)
        head_len = len(head)
        req.prompt_tokens = head_len + len(tail)
        if req.prompt_tokens + req.sampler.max_tokens > self.n_ctx_seq:  # checked before any decoding
            raise ValueError(
                f"a prompt of {req.prompt_tokens} tokens plus max_tokens {req.sampler.max_tokens} does not fit the "
                f"context of {self.n_ctx_seq} tokens per request; lower --max-tokens"
            )
        head_seq = self._head(head)
        req.seq = self._free_seqs.pop(0)
        self.L.llama_memory_seq_rm(self.memory, req.seq, -1, -1)
        if head_len:
            self.L.llama_memory_seq_cp(self.memory, head_seq, req.seq, -1, -1)
        self._decode([(t, head_len + i, req.seq, i == len(tail) - 1) for i, t in enumerate(tail)])
        req.pos = head_len + len(tail)
        req.grammar_ptr = self.L.llama_sampler_init_grammar(self.vocab, req.grammar.encode(), b"root")
        if not req.grammar_ptr:
            raise ValueError("llama.cpp rejected the grammar")
        req.rng = np.random.default_rng(req.sampler.seed)
        self._active.append(req)
        self._advance(req, self._logits(0))

    def _step(self) -> None:
        """One token for every active request, in one batch."""
        rows = [(r.last, r.pos, r.seq, True) for r in self._active]
        self._decode(rows)
        for i, req in enumerate(list(self._active)):
            req.pos += 1
            self._advance(req, self._logits(i))

    def _advance(self, req: _Request, logits: np.ndarray) -> None:
        token = self._sample(req, logits)
        if token is None or self.L.llama_vocab_is_eog(self.vocab, token):
            self._finish(req)
            return
        self.L.llama_sampler_accept(req.grammar_ptr, token)
        req.tokens.append(token)
        req.counts[token] += 1
        if self._piece(token)[:1] == b" " and self._word(token):
            req.word_counts[self._word(token)] += 1
        req.last = token
        n = req.sampler.no_repeat_ngram
        if n and len(req.tokens) >= n:
            words = [self._word(t) for t in req.tokens[-n:]]
            if all(words):
                req.ngrams.setdefault(tuple(words[:-1]), set()).add(words[-1])
        if len(req.tokens) >= req.sampler.max_tokens:
            self._finish(req)

    def _finish(self, req: _Request, error: Exception | None = None) -> None:
        if req in self._active:
            self._active.remove(req)
        if req.seq >= 0:
            self.L.llama_memory_seq_rm(self.memory, req.seq, -1, -1)
            self._free_seqs.append(req.seq)
            req.seq = -1
        if req.grammar_ptr:
            self.L.llama_sampler_free(req.grammar_ptr)
            req.grammar_ptr = None
        if req.future.done():
            return
        if error is not None:
            req.future.set_exception(error)
            return
        text = b"".join(self._piece(t) for t in req.tokens).decode("utf-8", errors="replace")
        req.future.set_result(Result(text, req.prompt_tokens, len(req.tokens), time.perf_counter() - req.started))

    # ---- sampling -----------------------------------------------------------------------------------------------
    def _sample(self, req: _Request, raw: np.ndarray) -> int | None:
        s = req.sampler
        logits = raw.copy()
        if req.counts and (s.frequency_penalty or s.presence_penalty):
            ids = np.fromiter(req.counts.keys(), dtype=np.int64)
            n = np.fromiter(req.counts.values(), dtype=np.float32)
            logits[ids] -= s.frequency_penalty * n + s.presence_penalty
        # grammar on the best candidates first; on the whole vocabulary only when none of them is allowed
        top = np.argpartition(logits, -TOP_CANDIDATES)[-TOP_CANDIDATES:].astype(np.int32)
        top_logits = logits[top]
        if req.word_counts and (s.frequency_penalty or s.presence_penalty):
            # a used word's penalty also falls on the same word without its space: penalising " the" alone made
            # "the" glued to the word before the cheaper choice ("ofthemotion", "across thesky")
            n = np.array([self._glued_count(req, int(t)) for t in top], dtype=np.float32)
            top_logits -= s.frequency_penalty * n + s.presence_penalty * (n > 0)
        banned = self._banned(req)
        if banned:  # words that would repeat a run of n words (" fox" and "Fox" count as the same word)
            top_logits[[self._word(int(t)) in banned or self._glues(int(t), banned) for t in top]] = -np.inf
        word_bound = self._at_word_bound(req, top, top_logits)
        ids, lg = self._allowed(req, top, top_logits)
        if word_bound:
            ids, lg = self._drop_glue(ids, lg)
        if ids.size == 0:  # (the ban does not apply here: the grammar may want exactly a banned word)
            ids, lg = self._allowed(req, self._full_ids, logits, full=True)
            if word_bound:
                kept = self._drop_glue(ids, lg)
                ids, lg = kept if kept[0].size else (ids, lg)
        if ids.size == 0:
            return None  # nothing fits the grammar: the answer ends here (and fails validation)
        order = np.argsort(-lg, kind="stable")[: s.top_k]
        ids, lg = ids[order], lg[order]
        if s.temperature <= 0:
            return int(ids[0])
        p = np.exp((lg - lg[0]) / s.temperature)
        p /= p.sum()
        keep = np.searchsorted(np.cumsum(p), s.top_p) + 1  # smallest head whose mass reaches top_p
        keep = min(keep, int(np.sum(p >= s.min_p * p[0])) or 1)
        p = p[:keep] / p[:keep].sum()
        return int(ids[req.rng.choice(keep, p=p)])

    def _allowed(self, req: _Request, ids: np.ndarray, logits: np.ndarray, full: bool = False):
        """The candidates the grammar allows next (their ids and logits)."""
        arr = self._full if full else self._top
        view = arr.fill(ids, logits)
        self.L.llama_sampler_apply(req.grammar_ptr, ctypes.byref(arr.struct))
        ok = np.isfinite(view["logit"])
        return view["id"][ok].copy(), view["logit"][ok].copy()

    # ---- llama.cpp plumbing -----------------------------------------------------------------------------------
    def _banned(self, req: _Request) -> set[str] | None:
        """The words that may not come next: they would complete a run of n words already in the answer."""
        n = req.sampler.no_repeat_ngram
        if not n or len(req.tokens) < n - 1:
            return None
        words = tuple(self._word(t) for t in req.tokens[len(req.tokens) - (n - 1) :])
        return req.ngrams.get(words) if all(words) else None

    def _word(self, token: int) -> str:
        """A token's word, lower-cased without its leading space; "" for JSON punctuation, digits and blanks."""
        if token not in self._word_tokens:
            piece = self._piece(token)
            self._word_tokens[token] = piece.strip().lower().decode() if _WORD.fullmatch(piece) else ""
        return self._word_tokens[token]

    def _at_word_bound(self, req: _Request, top: np.ndarray, top_logits: np.ndarray) -> bool:
        """Whether the model wants a new word that the grammar refuses (a schema's word limit is reached).

        There it used to write the word glued to the last one ("end of thepace" for " space" as the 11th word of a
        10-word phrase), because the closing quote is rarely among the best candidates."""
        best = int(top[np.argmax(top_logits)])
        if self._piece(best)[:1] != b" " or not self._word(best):
            return False
        return self._allowed(req, np.array([best], dtype=np.int32), top_logits[[np.argmax(top_logits)]])[0].size == 0

    def _drop_glue(self, ids: np.ndarray, lg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The candidates without the pieces that would continue the last word."""
        keep = np.array([not self._starts_glued(int(t)) for t in ids], dtype=bool)
        return ids[keep], lg[keep]

    def _starts_glued(self, token: int) -> bool:
        """A piece that would continue the word before it: letters or "-" first, no leading space."""
        piece = self._piece(token)
        return piece[:1].isalpha() or piece[:1] == b"-"

    def _glued_count(self, req: _Request, token: int) -> int:
        """How often the answer has used, as a word of its own, the word that this piece would glue on (0 for
        a piece that starts a new word)."""
        piece = self._piece(token)
        if piece[:1] in (b" ", b""):
            return 0
        return req.word_counts.get(self._word(token), 0)

    def _glues(self, token: int, banned: set[str]) -> bool:
        """Whether a piece would write a banned word glued to the word before ("the" + "room", "the" + "-right").

        Without this the model goes around the ban by dropping the space ("the other side of theroom"), which the
        validator then rejects. Only pieces that start no new word and begin a banned word are barred (our choice:
        barring every piece without a leading space while a ban is active also stopped legitimate word endings and
        made the 270M model glue whole phrases)."""
        piece = self._piece(token)
        if piece[:1] in (b" ", b"") or not _WORD.fullmatch(piece):
            return False
        stem = piece.lower().lstrip(b"-").decode()  # a bare "-" glues ("the-right"); a bare "'" may start "'s"
        return any(word.startswith(stem) for word in banned)

    def _piece(self, token: int) -> bytes:
        """A token's text (cached: the glue rules ask for the 64 candidates' pieces at every step)."""
        if token not in self._pieces:
            buf = ctypes.create_string_buffer(64)
            n = self.L.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
            self._pieces[token] = buf.raw[: max(n, 0)]
        return self._pieces[token]

    def _head(self, tokens: tuple[int, ...]) -> int:
        """The sequence holding a prompt head's KV cache, computed alone when it is new (least recently used out)."""
        if not tokens:
            return -1
        if tokens in self._heads:
            self._heads.move_to_end(tokens)
            return self._heads[tokens]
        seq = self._heads.popitem(last=False)[1] if len(self._heads) >= self.n_heads else len(self._heads)
        self.L.llama_memory_seq_rm(self.memory, seq, -1, -1)
        for i in range(0, len(tokens), 512):
            chunk = tokens[i : i + 512]
            self._decode([(t, i + j, seq, False) for j, t in enumerate(chunk)])
        self._heads[tokens] = seq
        return seq

    def _decode(self, rows: list[tuple[int, int, int, bool]]) -> None:
        """Decode (token, position, sequence, want_logits) rows in one batch."""
        b = self.batch
        for i, (tok, pos, seq, want) in enumerate(rows):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, 1, want
            b.seq_id[i][0] = seq
        b.n_tokens = len(rows)
        self._logit_rows = [i for i, r in enumerate(rows) if r[3]]
        rc = self.L.llama_decode(self.ctx.ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed ({rc}): the KV cache is full; lower the parallel requests")

    def _logits(self, i: int) -> np.ndarray:
        """Logits of the i-th row that asked for them in the last batch."""
        ptr = self.L.llama_get_logits_ith(self.ctx.ctx, self._logit_rows[i])
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))


def cpu_has_amx() -> bool:
    """Whether this CPU advertises AMX (Linux's /proc/cpuinfo flags; False where that file does not exist)."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " amx_int8" in line for line in f)
    except OSError:
        return False


_WORD = re.compile(rb"[A-Za-z' -]+")
_TOKEN_DTYPE = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


class _TokenArray:
    """A llama_token_data_array over a buffer that numpy fills and reads (no Python loop over tokens)."""

    def __init__(self, llama_cpp, n: int):
        self.data = (llama_cpp.llama_token_data * n)()
        self.struct = llama_cpp.llama_token_data_array(data=self.data, size=n, selected=-1, sorted=False)
        self.view = np.frombuffer(self.data, dtype=_TOKEN_DTYPE)

    def fill(self, ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
        n = ids.size
        view = self.view[:n]
        view["id"], view["logit"], view["p"] = ids, logits, 0.0
        self.struct.size, self.struct.selected, self.struct.sorted = n, -1, False
        return view
