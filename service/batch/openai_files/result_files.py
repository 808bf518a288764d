"""OpenAI Batch API, second half: `collect` reads the provider's result files and writes OUTPUT.
It goes through `Pipeline.classify_batch` over the candidates saved at prepare time, with the
provider's answers in place of LLM calls, validated exactly as the online path validates them."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prompts.answer import InvalidAnswer, parse_answer
from prompts.render import Option
from prompts.selector import LLMError, Selection, Usage
from retrieval.fusion import Candidate
from retrieval.iterables import chunks
from service.adapters import Replaying
from service.batch.io import InputRecord
from service.batch.openai_files.request_files import LLM, batch_dir
from service.batch.report import Stats
from service.batch.run import DEFAULTS, BatchOptions, output_record
from service.batch.sidecar import (
    BatchMismatchError,
    check_and_record,
    differences,
    meta_path,
    run_config,
)
from service.engine import Engine
from service.pipeline import Pipeline


@dataclass(frozen=True)
class Answer:
    """One line of the provider's results: the content and usage, or why there is none."""

    content: str | None = None
    usage: Usage = field(default_factory=Usage)
    reason: str | None = None
    message: str = ""


class _Replayer:
    """A Selector that reads the provider's answer for a custom_id instead of calling the LLM."""

    def __init__(self, answers: dict[str, Answer], slots: dict[str, dict[str, str]]) -> None:
        self.answers = answers
        self.slots = slots

    def select(self, text: str, options: Sequence[Option], max_labels: int) -> Selection:
        """The provider's answer to this custom_id, validated as a live answer would be."""
        slots = self.slots[text]
        if not slots:
            return Selection.empty()
        answer = self.answers.get(text)
        if answer is None:
            raise LLMError("no answer for this request in the results files",
                           reason="missing_from_results")
        if answer.reason is not None:
            raise LLMError(f"the batch request failed: {answer.message}", reason=answer.reason)
        try:
            parsed = parse_answer(answer.content or "", slots, max_labels)
        except InvalidAnswer as exc:
            raise LLMError(f"LLM answer unusable: {exc}", reason="invalid_answer") from exc
        return Selection(parsed.label_ids, answer.usage, 1, 0.0,
                         dropped_ids=parsed.unknown + parsed.over_limit)


def collect(engine: Engine, output: Path, results: Sequence[Path],
            options: BatchOptions = DEFAULTS) -> tuple[Stats, int]:
    """Write OUTPUT from the prepared items and the results files; returns (stats, bad lines)."""
    pipeline = engine.pipeline
    directory = batch_dir(output)
    if not (directory / "items.jsonl").is_file():
        raise BatchMismatchError(f"{directory} holds no prepared batch: run "
                                 "`labelrank batch INPUT OUTPUT --openai-batch prepare` first")
    prepared = json.loads((directory / "meta.json").read_text())["config"]
    config = run_config(engine, "llm", "openai-batch", prepared["text_field"],
                        prepared["id_field"])
    if (changed := differences(prepared, config)) and not options.force:
        raise BatchMismatchError(
            "the batch was prepared with a different index or settings ("
            + "; ".join(changed[:8]) + "); pass --force to collect anyway", changed=changed)
    # An OUTPUT written by an online run is not silently replaced.
    has_records = output.is_file() and output.stat().st_size > 0
    check_and_record(meta_path(output), prepared, has_records, force=options.force)
    answers, bad_lines = read_answers(results)
    stats = Stats()
    tmp = output.with_name(output.name + ".tmp")
    with (directory / "items.jsonl").open() as items, tmp.open("w") as out:
        for chunk in chunks((json.loads(line) for line in items), options.chunk_size or 256):
            for record in _replay(pipeline, answers, chunk, options.candidates):
                stats.count(record)
                stats.written += 1
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(tmp, output)
    return stats, bad_lines


def _replay(pipeline: Pipeline, answers: dict[str, Answer], items: list[dict],
            candidates: bool) -> list[dict]:
    staged = [i for i in items if "custom_id" in i]
    shortlists = {i["custom_id"]: [Candidate.from_json(c) for c in i["candidates"]]
                  for i in staged}
    replay = Pipeline(Replaying(pipeline.index, shortlists), pipeline.threshold, pipeline.top_k,
                      _Replayer(answers, {i["custom_id"]: i["slots"] for i in staged}),
                      pipeline.max_text_chars, llm_concurrency=1)
    outcomes = iter(replay.classify_batch([i["custom_id"] for i in staged], LLM))
    records = []
    for item in items:
        head = InputRecord(item["line"], item["id"], error=item.get("error"))
        records.append(output_record(head, None if "error" in item else next(outcomes),
                                     candidates))
    return records


def read_answers(paths: Sequence[Path]) -> tuple[dict[str, Answer], int]:
    """Answers by custom_id from the provider's output (and error) files; unreadable lines."""
    answers: dict[str, Answer] = {}
    bad = 0
    for path in paths:
        with path.open("rb") as handle:
            for raw in handle:
                if not raw.strip():
                    continue
                try:
                    data = json.loads(raw)
                    custom_id, answer = str(data["custom_id"]), _answer(data)
                except (ValueError, KeyError, TypeError, AttributeError):
                    bad += 1
                    continue
                if custom_id not in answers or answers[custom_id].reason is not None:
                    answers[custom_id] = answer  # a success wins over a failed attempt
    return answers, bad


def _answer(data: dict) -> Answer:
    error = data.get("error")
    if error:
        code = str(error.get("code") or "batch_error")
        return Answer(reason=code, message=str(error.get("message") or code))
    response = data.get("response") or {}
    status = int(response.get("status_code") or 0)
    body = response.get("body")
    if status != 200:
        reason = ("rate_limited" if status == 429 else "server_error" if status >= 500
                  else f"http_{status}")
        return Answer(reason=reason, message=json.dumps(body)[:200])
    if not isinstance(body, dict):
        return Answer(reason="invalid_answer", message="the response body is not JSON")
    usage = body.get("usage") or {}
    tokens = Usage(prompt_tokens=int(usage.get("prompt_tokens") or 0),
                   completion_tokens=int(usage.get("completion_tokens") or 0))
    try:
        content = body["choices"][0]["message"]["content"] or ""
    except (KeyError, IndexError, TypeError):
        return Answer(usage=tokens, reason="invalid_answer",
                      message="the response has no message content")
    return Answer(content, tokens)
