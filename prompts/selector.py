"""The LLM selector: one chat call per text, retried by tenacity, answer validated on our side."""

from __future__ import annotations

import email.utils
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Generic, Literal, TypeVar

import openai
from openai.types.chat import ChatCompletion
from pydantic import BaseModel, ConfigDict
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from prompts.answer import InvalidAnswer, answer_schema, parse_answer
from prompts.breaker import CircuitBreaker
from prompts.render import Option, RenderedPrompt, render
from prompts.template import PromptTemplate
from retrieval.errors import LabelrankError

ResponseFormat = Literal["auto", "json_schema", "json_object", "none"]
# `auto` starts at the strictest dialect and steps down when a server rejects one.
DIALECTS: tuple[ResponseFormat, ...] = ("json_schema", "json_object", "none")


class LLMError(LabelrankError):
    """The LLM could not give a usable answer; `reason` says why."""

    code = "llm_unavailable"
    status = 502

    def __init__(self, message: str, reason: str, attempts: int = 1) -> None:
        super().__init__(message, reason=reason, attempts=attempts)
        self.reason = reason
        self.attempts = attempts


class Usage(BaseModel):
    """LLM tokens reported by the endpoint (per call, or summed over a result's calls)."""

    model_config = ConfigDict(frozen=True)

    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(prompt_tokens=self.prompt_tokens + other.prompt_tokens,
                     completion_tokens=self.completion_tokens + other.completion_tokens)


@dataclass(frozen=True)
class Selection:
    """The LLM's validated choice for one text."""

    label_ids: list[str]
    usage: Usage
    attempts: int
    latency_s: float
    dropped_ids: list[str] = field(default_factory=list)

    @classmethod
    def empty(cls) -> Selection:
        """No labels, no call made: nothing to choose from, or nothing sent."""
        return cls([], Usage(), 0, 0.0)


Answer = TypeVar("Answer")


@dataclass(frozen=True)
class Exchange(Generic[Answer]):
    """One request's parsed answer, with what it cost."""

    answer: Answer
    usage: Usage
    attempts: int
    latency_s: float


@dataclass(frozen=True)
class LLMConfig:
    """Endpoint, model and policy for the selector; every value comes from Settings (through
    service/factory.py), so none is defaulted here."""

    model: str
    response_format: ResponseFormat
    temperature: float
    max_answer_tokens: int | None
    max_attempts: int
    max_wait_s: float
    max_total_s: float
    max_text_tokens: int
    max_prompt_tokens: int
    schema_slots: int


def is_transient(exc: BaseException) -> bool:
    """Rate limits, timeouts, dropped connections and 5xx are worth another try."""
    if isinstance(exc, openai.RateLimitError | openai.APITimeoutError | openai.APIConnectionError):
        return True
    return (isinstance(exc, openai.APIStatusError) and exc.status_code >= 500
            and not rejects_format(exc))


def rejects_format(exc: BaseException) -> bool:
    """A server saying it does not support the response_format we sent (llama.cpp: HTTP 500)."""
    if not isinstance(exc, openai.APIStatusError) or exc.status_code in (408, 409, 429):
        return False
    message = str(exc).lower()
    return any(word in message for word in ("response_format", "json_schema", "schema"))


# Failures that say something about this request or answer, not about the endpoint's health.
NOT_ENDPOINT_FAILURES = frozenset({"invalid_answer", "format_rejected", "http_400", "http_413",
                                   "http_422"})


def endpoint_failed(exc: LLMError) -> bool:
    """Whether an LLM error counts against the endpoint in the circuit breaker."""
    return exc.reason not in NOT_ENDPOINT_FAILURES


def retry_after_s(exc: BaseException | None) -> float | None:
    """Seconds the server asked us to wait (`retry-after-ms` or `Retry-After`), if any."""
    response = getattr(exc, "response", None)
    if response is None:
        return None
    headers = response.headers
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return float(ms) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


class LLMSelector:
    """Chooses among candidates with any OpenAI-compatible chat endpoint."""

    def __init__(self, client: openai.OpenAI, template: PromptTemplate, config: LLMConfig,
                 breaker: CircuitBreaker | None = None):
        self.client = client
        self.template = template
        self.config = config
        self.breaker = breaker
        self._backoff = wait_exponential_jitter(multiplier=0.5, max=config.max_wait_s)
        self.dialect: ResponseFormat = (DIALECTS[0] if config.response_format == "auto"
                                        else config.response_format)
        self._dialect_lock = threading.Lock()

    def prompt(self, text: str, options: Sequence[Option], max_labels: int) -> RenderedPrompt:
        """The exact prompt `select` would send."""
        cfg = self.config
        return render(self.template, text, options, max_labels,
                      max_text_tokens=cfg.max_text_tokens, max_prompt_tokens=cfg.max_prompt_tokens)

    def request(self, rendered: RenderedPrompt, dialect: ResponseFormat | None = None) -> dict:
        """The chat completion request body for a rendered prompt (in the dialect learnt so far,
        unless one is given)."""
        schema = answer_schema(max(self.config.schema_slots, len(rendered.slots)))
        # llama.cpp and several other servers take the schema inside json_object and compile
        # it to a grammar per request, so a label limit there costs nothing and stops a small
        # model from listing every slot.
        limited = {**schema, "properties": {"labels": {
            **schema["properties"]["labels"], "maxItems": rendered.max_labels}}}
        return self.chat_body(rendered.system, rendered.user, dialect or self.dialect,
                              ("label_choice", schema), limited)

    def chat_body(self, system: str, user: str, dialect: ResponseFormat,
                  strict: tuple[str, dict], inside_object: dict) -> dict:
        """A chat completion request in `dialect`: the named schema `strict` under OpenAI's
        json_schema, `inside_object` within json_object (for servers that compile it)."""
        cfg = self.config
        body: dict = {
            "model": cfg.model,
            "messages": [{"role": "system", "content": system},
                         {"role": "user", "content": user}],
            "temperature": cfg.temperature,
        }
        if dialect == "json_schema":
            name, schema = strict
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": name, "strict": True, "schema": schema}}
        elif dialect == "json_object":
            body["response_format"] = {"type": "json_object", "schema": inside_object}
        if cfg.max_answer_tokens:
            body["max_tokens"] = cfg.max_answer_tokens
        return body

    def select(self, text: str, options: Sequence[Option], max_labels: int) -> Selection:
        """Ask the LLM which options apply; raises LLMError when no usable answer comes back."""
        rendered = self.prompt(text, options, max_labels)
        if not rendered.slots:
            return Selection.empty()
        got = self.exchange(lambda dialect: self.request(rendered, dialect),
                            lambda content: parse_answer(content, rendered.slots, max_labels))
        return Selection(got.answer.label_ids, got.usage, got.attempts, got.latency_s,
                         dropped_ids=got.answer.unknown + got.answer.over_limit)

    def exchange(self, body: Callable[[ResponseFormat], dict],
                 read: Callable[[str], Answer]) -> Exchange[Answer]:
        """One usable answer from the endpoint, for any request this selector's endpoint takes:
        `body` builds the request in a dialect, `read` parses the content (InvalidAnswer when it
        cannot). The breaker, dialect steps and retries apply; LLMError when no answer comes."""
        if self.breaker is None:
            return self._any_dialect(body, read)
        if not self.breaker.allow():
            raise LLMError(f"the LLM endpoint failed {self.breaker.fail_max} calls in a row; "
                           f"next try in {self.breaker.retry_in_s():.0f} s",
                           reason="circuit_open", attempts=0)
        ok = False
        try:
            got = self._any_dialect(body, read)
            ok = True
            return got
        except LLMError as exc:
            ok = not endpoint_failed(exc)
            raise
        finally:
            self.breaker.record(ok)

    def _any_dialect(self, body: Callable[[ResponseFormat], dict],
                     read: Callable[[str], Answer]) -> Exchange[Answer]:
        """A refused dialect is asked again at once in the next one: the refusal says nothing
        about the text, so it must not cost the text its answer (nor count as a retry)."""
        dialect, refused = self.dialect, 0
        while True:
            try:
                got = self._exchange(body(dialect), read)
            except LLMError as exc:
                weaker = self._after_refusal(dialect) if exc.reason == "format_rejected" else None
                if weaker is None:
                    if refused:
                        raise LLMError(exc.message, exc.reason, exc.attempts + refused) from exc
                    raise
                dialect, refused = weaker, refused + exc.attempts
                continue
            return replace(got, attempts=got.attempts + refused)

    def _after_refusal(self, refused: ResponseFormat) -> ResponseFormat | None:
        """Under `auto`, the dialect to ask in after a server refused `refused`; None when
        there is no weaker one."""
        if self.config.response_format != "auto":
            return None
        with self._dialect_lock:
            # Concurrent requests all sent the old dialect and all get refused: only the first
            # refusal steps down, the others follow it (stepping once each went past a dialect
            # the server takes).
            if self.dialect == refused:
                position = DIALECTS.index(refused)
                if position + 1 >= len(DIALECTS):
                    return None
                self.dialect = DIALECTS[position + 1]
            return self.dialect

    def _exchange(self, body: dict, read: Callable[[str], Answer]) -> Exchange[Answer]:
        started = time.perf_counter()
        retrying = Retrying(
            retry=retry_if_exception(is_transient),
            stop=stop_after_attempt(self.config.max_attempts)
            | stop_after_delay(self.config.max_total_s),
            wait=self._wait,
            reraise=True,
        )
        attempts = 0
        try:
            for attempt in retrying:
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    completion = self.client.chat.completions.create(**body)
        except openai.APIError as exc:
            raise LLMError(f"LLM request failed after {attempts} attempt(s): {exc}",
                           reason=_reason(exc), attempts=attempts) from exc
        except ValueError as exc:  # the SDK raises a bare JSONDecodeError on a non-JSON 200
            raise LLMError(f"LLM answered with a body that is not JSON: {exc}",
                           reason="invalid_answer", attempts=attempts) from exc
        latency = time.perf_counter() - started
        content, usage = _content_and_usage(completion, attempts)
        try:
            answer = read(content)
        except InvalidAnswer as exc:
            raise LLMError(f"LLM answer unusable: {exc}", reason="invalid_answer",
                           attempts=attempts) from exc
        return Exchange(answer, usage, attempts, latency)

    def _wait(self, state: RetryCallState) -> float:
        asked = retry_after_s(state.outcome.exception() if state.outcome else None)
        if asked is not None:
            return min(asked, self.config.max_wait_s)
        return self._backoff(state)


def _content_and_usage(completion: ChatCompletion, attempts: int) -> tuple[str, Usage]:
    try:  # servers differ: a missing part is an unusable answer, not a crash
        content = completion.choices[0].message.content or ""
    except (AttributeError, IndexError, TypeError) as exc:
        raise LLMError("LLM response has no message content", reason="invalid_answer",
                       attempts=attempts) from exc
    usage = getattr(completion, "usage", None)
    return content, Usage(prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                          completion_tokens=getattr(usage, "completion_tokens", 0) or 0)


def _reason(exc: openai.APIError) -> str:
    if isinstance(exc, openai.RateLimitError):
        return "rate_limited"
    if isinstance(exc, openai.APITimeoutError):
        return "timeout"
    if isinstance(exc, openai.APIConnectionError):
        return "connection_error"
    if rejects_format(exc):
        return "format_rejected"
    if isinstance(exc, openai.APIStatusError):
        return "server_error" if exc.status_code >= 500 else f"http_{exc.status_code}"
    return "llm_error"
