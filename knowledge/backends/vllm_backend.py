"""In-process vLLM (GPU): batched generation with structured outputs (``StructuredOutputsParams``, vLLM >= 0.10.2).

Requests that arrive together are gathered into one ``LLM.generate`` call, which is where vLLM is fast.
Install with ``pip install 'fsar[vllm]'`` on a machine with a GPU.
"""
from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from fsar.knowledge.backends.base import Backend, BackendError, Completion, Sampling


class VLLMBackend(Backend):
    name = "vllm"

    def __init__(self, model: str | None, max_batch: int = 256, **llm_kwargs):
        try:
            import vllm
            from vllm.sampling_params import StructuredOutputsParams
        except ImportError:
            raise BackendError(
                "the vllm backend needs vLLM >= 0.10.2 and a GPU; pip install 'fsar[vllm]', or use --backend llamacpp"
            ) from None
        if not model:
            raise BackendError("the vllm backend needs --model (a Hugging Face id or a local folder)")
        self._vllm = vllm
        self._structured = StructuredOutputsParams
        self.model = model
        self.concurrency = max_batch
        self._llm = vllm.LLM(model=model, **llm_kwargs)
        self._pending: list[tuple[str, dict, Sampling, asyncio.Future]] = []
        self._flush_task: asyncio.Task | None = None

    def identity(self) -> dict:
        ident = {"backend": self.name, "model": self.model}
        config = Path(self.model) / "config.json"
        if config.is_file():  # a local folder: its config's hash stands for the weights
            ident["config_sha256"] = hashlib.sha256(config.read_bytes()).hexdigest()
        return ident

    async def agenerate(self, prompt: str, schema: dict, sampling: Sampling) -> Completion:
        fut = asyncio.get_running_loop().create_future()
        self._pending.append((prompt, schema, sampling, fut))
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.create_task(self._flush())
        return await fut

    async def _flush(self) -> None:
        await asyncio.sleep(0.05)  # let the other requests of this round arrive
        batch, self._pending = self._pending, []
        params = [
            self._vllm.SamplingParams(
                temperature=s.temperature,
                top_p=s.top_p,
                seed=s.seed,
                frequency_penalty=s.frequency_penalty,
                presence_penalty=s.presence_penalty,
                max_tokens=s.max_tokens,  # vLLM's default of 16 tokens would cut every JSON answer short
                structured_outputs=self._structured(json=schema),
            )
            for _, schema, s, _ in batch
        ]
        try:
            outputs = await asyncio.to_thread(self._llm.generate, [p for p, *_ in batch], params, use_tqdm=False)
        except Exception as e:  # noqa: BLE001 - hand the error to every waiting request
            for *_, fut in batch:
                fut.set_exception(BackendError(f"vLLM generation failed: {e}"))
            return
        for (_, _, _, fut), out in zip(batch, outputs):
            o = out.outputs[0]
            fut.set_result(
                Completion(text=o.text, prompt_tokens=len(out.prompt_token_ids or []), completion_tokens=len(o.token_ids))
            )
