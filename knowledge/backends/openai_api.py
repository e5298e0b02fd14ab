"""Any OpenAI-compatible server (OpenAI, vLLM, llama.cpp's server, Ollama) through the ``openai`` SDK.

Structured output asks for ``response_format={"type": "json_schema"}``; servers that reject it (llama-cpp-python's
server answers HTTP 500) are asked again with ``{"type": "json_object", "schema": ...}``, and that choice is kept
for the rest of the run. 429 and 5xx answers are retried with exponential backoff.

The server is reached once when the backend is made (listing its models), with or without ``--model``, so a server
that is down or a wrong URL fails within seconds. Credentials in the URL (``http://user:secret@host/v1``) are used
for the requests but never stored or shown: identity and messages carry ``redact_url(base_url)``.
"""
from __future__ import annotations

import asyncio
import os
import time

from fsar.knowledge.backends.base import Backend, BackendError, Completion, Sampling, redact_url, redact_secrets

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class OpenAIBackend(Backend):
    name = "openai"

    def __init__(
        self,
        model: str | None,
        base_url: str | None = None,
        concurrency: int = 4,
        timeout: float = 120.0,
        max_retries: int = 4,
        connect_timeout: float = 3.0,
    ):
        try:
            import openai
        except ImportError:
            raise BackendError("the openai backend needs the openai package; pip install openai") from None
        self._openai = openai
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        self.url = redact_url(self.base_url)  # what is stored and shown
        self.concurrency = concurrency
        self.max_retries = max_retries
        self._client = openai.AsyncOpenAI(
            base_url=self.base_url,
            api_key=os.environ.get("OPENAI_API_KEY") or "not-needed",
            timeout=openai.Timeout(timeout, connect=connect_timeout),
            max_retries=0,  # retries are ours, so that every one is visible and bounded
        )
        self.model = self._probe_model(model, connect_timeout)
        self._format: str | None = None  # "json_schema" or "json_object", decided by the first answer

    def _probe_model(self, model: str | None, connect_timeout: float) -> str:
        """Reach the server (fail within seconds when it is down) and take its first model when none is named.

        With a named model, a server that answers but cannot list models (HTTP 404, 401) is still used."""
        try:
            client = self._openai.OpenAI(
                base_url=self.base_url,
                api_key=os.environ.get("OPENAI_API_KEY") or "not-needed",
                timeout=self._openai.Timeout(10.0, connect=connect_timeout),
                max_retries=0,
            )
            models = [m.id for m in client.models.list()]
        except self._openai.APIConnectionError:
            raise BackendError(f"cannot reach an OpenAI-compatible server at {self.url}; start it or fix --base-url") from None
        except self._openai.APIStatusError as e:
            if model:
                return model
            raise BackendError(f"server at {self.url} answered HTTP {e.status_code} when listing models; pass --model") from None
        if model:
            return model
        if not models:
            raise BackendError(f"server at {self.url} lists no models; pass --model")
        return models[0]

    def identity(self) -> dict:
        return {"backend": self.name, "model": self.model, "base_url": self.url}

    def _response_format(self, schema: dict, kind: str) -> dict:
        if self._format == "json_object":
            return {"type": "json_object", "schema": schema}
        return {"type": "json_schema", "json_schema": {"name": kind, "schema": schema, "strict": True}}

    async def agenerate(self, prompt: str, schema: dict, sampling: Sampling) -> Completion:
        kind = schema.get("title", "knowledge").lower()
        delay = 1.0
        for attempt in range(self.max_retries + 1):
            start = time.perf_counter()
            try:
                resp = await self._client.chat.completions.create(
                    model=self.model,
                    messages=[{"role": "user", "content": prompt}],
                    max_tokens=sampling.max_tokens,
                    temperature=sampling.temperature,
                    top_p=sampling.top_p,
                    seed=sampling.seed,
                    frequency_penalty=sampling.frequency_penalty,
                    presence_penalty=sampling.presence_penalty,
                    response_format=self._response_format(schema, kind),
                )
            except self._openai.APIConnectionError as e:
                if attempt == self.max_retries:
                    raise BackendError(f"lost the server at {self.url}: {redact_secrets(str(e))}") from None
            except self._openai.APIStatusError as e:
                if self._format is None and e.status_code in (400, 422, 500, 501):
                    self._format = "json_object"  # the server does not take json_schema: fall back, once
                    continue
                if e.status_code not in RETRY_STATUS or attempt == self.max_retries:
                    raise BackendError(f"server at {self.url} answered HTTP {e.status_code}: {_short(e)}") from None
            else:
                if self._format is None:
                    self._format = "json_schema"
                usage = resp.usage
                return Completion(
                    text=resp.choices[0].message.content or "",
                    prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                    completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
                    seconds=time.perf_counter() - start,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
        raise BackendError(f"server at {self.url} kept failing after {self.max_retries} retries")

    def close(self) -> None:
        pass


def _short(e: Exception) -> str:
    return redact_secrets(str(e).splitlines()[0][:200])
