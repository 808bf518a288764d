"""The infer step: before retrieval, the LLM names the label-like phrases a text implies."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import openai

from prompts.breaker import CircuitBreaker
from prompts.infer_answer import parse_phrases, phrases_schema
from prompts.render import quote, truncate
from prompts.selector import LLMConfig, LLMError, LLMSelector, ResponseFormat, Usage
from prompts.template import PromptTemplate, load_prompt

INFER_PROMPT = "infer_phrases@v1"


def load_infer_prompt(ref: str = INFER_PROMPT) -> PromptTemplate:
    """An infer prompt file: it must place the text, and may say how many phrases to give."""
    return load_prompt(ref, required=frozenset({"text"}),
                       allowed=frozenset({"text", "max_phrases"}))


@dataclass(frozen=True)
class Inference:
    """The phrases inferred for one text and what asking cost; `failed` is the LLM fault's
    reason when the call failed (then there are no phrases)."""

    phrases: list[str]
    usage: Usage
    attempts: int
    latency_s: float
    failed: str | None = None

    @classmethod
    def failure(cls, exc: LLMError) -> Inference:
        """No phrases, because the LLM failed as `exc` says."""
        return cls([], Usage(), exc.attempts, 0.0, failed=exc.reason)

    def to_json(self) -> dict:
        """A JSON-able record (the answer cache keeps it)."""
        return {**asdict(self), "usage": self.usage.model_dump()}

    @classmethod
    def from_json(cls, data: dict) -> Inference:
        """A record made by `to_json`."""
        return cls(**{**data, "usage": Usage(**data["usage"])})


class InferringSelector(LLMSelector):
    """An LLM selector that can also infer, in one more call per text on the same endpoint
    (retries, breaker and dialect shared), the label-like phrases a text implies."""

    def __init__(self, client: openai.OpenAI, template: PromptTemplate, config: LLMConfig,
                 breaker: CircuitBreaker | None, infer_template: PromptTemplate,
                 max_phrases: int) -> None:
        super().__init__(client, template, config, breaker)
        self.infer_template = infer_template
        self.max_phrases = max_phrases

    def infer_request(self, text: str, dialect: ResponseFormat | None = None) -> dict:
        """The chat completion request body that asks for `text`'s phrases."""
        text, _ = truncate(text, self.config.max_text_tokens)
        system, user = self.infer_template.render(text=quote(text), max_phrases=self.max_phrases)
        return self.chat_body(system, user, dialect or self.dialect,
                              ("label_phrases", phrases_schema()),
                              phrases_schema(self.max_phrases))

    def infer(self, text: str) -> Inference:
        """The phrases `text` implies (possibly none); LLMError when no usable answer comes."""
        got = self.exchange(lambda dialect: self.infer_request(text, dialect),
                            lambda content: parse_phrases(content, self.max_phrases))
        return Inference(got.answer, got.usage, got.attempts, got.latency_s)
