"""The answer contract: a fixed JSON schema over candidate slots, and a strict parser."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from prompts.render import slot_id

_SLOT = re.compile(r"\bC\d{2,3}\b")
# What a dropped id may look like when it is reported back: an id, not free text the model
# was talked into writing (such as the system prompt).
_ID_SHAPE = re.compile(r"[\w.:/+-]{1,64}")
_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


class InvalidAnswer(ValueError):
    """The LLM's answer could not be read as a label choice."""


@dataclass(frozen=True)
class ParsedAnswer:
    """Validated choice: candidate label ids, plus what was thrown away and why."""

    label_ids: list[str]
    unknown: list[str]
    over_limit: list[str]


@lru_cache(maxsize=16)
def answer_schema(slots: int) -> dict:
    """JSON schema whose ids are the enum C01..Cn; fixed per n, so providers compile it once."""
    return {
        "type": "object",
        "properties": {
            "labels": {"type": "array",
                       "items": {"type": "string", "enum": [slot_id(i) for i in range(slots)]}},
        },
        "required": ["labels"],
        "additionalProperties": False,
    }


def parse_answer(content: str, slots: Mapping[str, str], max_labels: int) -> ParsedAnswer:
    """Read `{"labels": [...]}` (or bare slot ids in text) and keep only known candidates."""
    raw_ids = _raw_ids(content)
    by_label_id = {label_id: label_id for label_id in slots.values()}
    chosen: list[str] = []
    unknown: list[str] = []
    for raw in raw_ids:
        label_id = slots.get(raw.strip().upper()) or by_label_id.get(raw.strip())
        if label_id is None:
            unknown.append(raw if _ID_SHAPE.fullmatch(raw) else f"(not an id: {len(raw)} chars)")
        elif label_id not in chosen:
            chosen.append(label_id)
    return ParsedAnswer(chosen[:max_labels], unknown, chosen[max_labels:])


def _raw_ids(content: str) -> list[str]:
    text = (content or "").strip()
    if not text:
        raise InvalidAnswer("empty answer")
    data = load_json(text)
    if data is None:
        ids = _SLOT.findall(text)
        if ids or text.casefold().strip(" .") in {"none", "none of these", "[]"}:
            return ids
        raise InvalidAnswer(f"answer is neither JSON nor a list of slot ids: {text[:80]!r}")
    if isinstance(data, dict):
        data = data.get("labels")
    if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
        raise InvalidAnswer(f"answer JSON lacks a 'labels' list of strings: {text[:80]!r}")
    return data


def load_json(text: str) -> object | None:
    """`text` as JSON, or the first {...} inside it as JSON; None when neither parses."""
    for candidate in (text, *(m.group(0) for m in [_OBJECT.search(text)] if m)):
        try:
            return json.loads(candidate)
        except json.JSONDecodeError:
            continue
    return None
