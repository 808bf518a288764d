"""The infer step's answer contract: a JSON list of short phrases, and a strict parser."""

from __future__ import annotations

from functools import lru_cache

from prompts.answer import InvalidAnswer, load_json

# A label-like phrase is a few words; anything longer is prose the model was not asked for.
MAX_PHRASE_CHARS = 80


@lru_cache(maxsize=16)
def phrases_schema(max_phrases: int | None = None) -> dict:
    """JSON schema of `{"phrases": [...]}`; with `max_phrases`, the limits a grammar-compiling
    server (llama.cpp) enforces while decoding (OpenAI's strict mode is sent without them)."""
    items: dict = {"type": "string"}
    phrases: dict = {"type": "array", "items": items}
    if max_phrases is not None:
        items["maxLength"] = MAX_PHRASE_CHARS
        phrases["maxItems"] = max_phrases
    return {"type": "object", "properties": {"phrases": phrases}, "required": ["phrases"],
            "additionalProperties": False}


def parse_phrases(content: str, max_phrases: int) -> list[str]:
    """Read `{"phrases": [...]}` (or a bare JSON list): each phrase on one line, blank, over-long
    and repeated ones dropped, at most `max_phrases`. InvalidAnswer when it is not such a list,
    or when it listed phrases and none was usable."""
    text = (content or "").strip()
    if not text:
        raise InvalidAnswer("empty answer")
    data = load_json(text)
    if isinstance(data, dict):
        data = data.get("phrases")
    if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
        raise InvalidAnswer(f"answer lacks a 'phrases' list of strings: {text[:80]!r}")
    kept: dict[str, str] = {}
    for raw in data:
        phrase = " ".join(raw.split())
        if phrase and len(phrase) <= MAX_PHRASE_CHARS and any(c.isalnum() for c in phrase):
            kept.setdefault(phrase.casefold(), phrase)
    if data and not kept:
        raise InvalidAnswer(f"none of the {len(data)} phrases is a short phrase")
    return list(kept.values())[:max_phrases]

