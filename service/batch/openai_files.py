"""OpenAI Batch API: `prepare` writes the /v1/batches request files, `collect` reads the results.

Both go through `Pipeline.classify_batch` with other parts plugged into its protocols: prepare
records each prompt instead of sending it; collect replays the provider's answers over the
candidates saved at prepare time, validated exactly as the online path validates them.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

from prompts.answer import InvalidAnswer, parse_answer
from prompts.render import Option, RenderedPrompt
from prompts.selector import LLMError, LLMSelector, Selection, Usage
from retrieval.fusion import Candidate
from retrieval.index import LabelIndex
from retrieval.iterables import chunks
from service.batch.io import InputRecord, open_input, read_records, resolve_format
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
from service.pipeline import CandidateSource, ClassifyOptions, NoLLMConfigured, Pipeline
from service.results import ItemError

CHAT_URL = "/v1/chat/completions"
MAX_REQUESTS_PER_FILE = 50_000  # the Batch API's limits per input file
MAX_BYTES_PER_FILE = 190_000_000
BATCH_DISCOUNT = 0.5
LLM = ClassifyOptions(mode="llm")


def batch_dir(output: Path) -> Path:
    """`OUTPUT.openai-batch/`: request files, per-item state, meta."""
    return output.with_name(output.name + ".openai-batch")


class _Recorder:
    """A CandidateSource that remembers the shortlists of its last call."""

    def __init__(self, inner: CandidateSource) -> None:
        self.inner = inner
        self.last: list[list[Candidate]] = []

    @property
    def index(self) -> LabelIndex:
        return self.inner.index

    def candidates(self, texts: Sequence[str], top_k: int,
                   within: frozenset[str] | None = None) -> list[list[Candidate]]:
        self.last = self.inner.candidates(texts, top_k, within)
        return self.last

    def describe(self) -> str:
        """The wrapped retriever's method."""
        return self.inner.describe()


class _Deferrer:
    """A Selector that renders the exact prompt the LLM would get, and sends nothing."""

    def __init__(self, llm: LLMSelector) -> None:
        self.llm = llm
        self.prompts: dict[str, RenderedPrompt] = {}
        self._lock = threading.Lock()

    def select(self, text: str, options: Sequence[Option], max_labels: int) -> Selection:
        rendered = self.llm.prompt(text, options, max_labels)
        with self._lock:  # same text, same candidates, same prompt: keyed by text is enough
            self.prompts[text] = rendered
        return Selection([], Usage(), 0, 0.0)


class Prepared(TypedDict):
    """What `prepare` wrote: counts, the request files and their directory."""

    items: int
    requests: int
    errors: int
    files: list[str]
    directory: str


def prepare(engine: Engine, source: str, output: Path,
            options: BatchOptions = DEFAULTS) -> Prepared:
    """Retrieve for every input and write the request files; returns what was written."""
    pipeline = engine.pipeline
    if not isinstance(pipeline.selector, LLMSelector):
        raise NoLLMConfigured("--openai-batch prepare needs the LLM settings: set "
                              "LABELRANK_LLM_MODEL and OPENAI_API_KEY (no request is sent)")
    recorder, deferrer = _Recorder(pipeline.retriever), _Deferrer(pipeline.selector)
    staged = Pipeline(recorder, pipeline.threshold, pipeline.top_k, deferrer,
                      pipeline.max_text_chars, llm_concurrency=1)
    final = batch_dir(output)
    work = final.with_name(final.name + ".tmp")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    fmt = resolve_format(source, options.input_format)
    requests = _RequestFiles(work)
    counts = {"items": 0, "requests": 0, "errors": 0}
    with open_input(source) as stream, (work / "items.jsonl").open("w") as items:
        for chunk in chunks(read_records(stream, fmt, options.text_field, options.id_field),
                            options.chunk_size or 256):
            for item, body in _stage(staged, recorder, deferrer, chunk):
                items.write(json.dumps(item, ensure_ascii=False) + "\n")
                counts["items"] += 1
                counts["errors"] += "error" in item
                if body is not None:
                    requests.add(item["custom_id"], body)
                    counts["requests"] += 1
    requests.close()
    config = run_config(engine, "llm", "openai-batch", options.text_field, options.id_field)
    (work / "meta.json").write_text(json.dumps({"config": config, **counts}, indent=2,
                                               sort_keys=True, default=str) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(work, final)
    return Prepared(items=counts["items"], requests=counts["requests"], errors=counts["errors"],
                    files=[str(final / p.name) for p in requests.paths], directory=str(final))


def _stage(staged: Pipeline, recorder: _Recorder, deferrer: _Deferrer,
           chunk: list[InputRecord]) -> list[tuple[dict, dict | None]]:
    valid = [r for r in chunk if r.error is None]
    deferrer.prompts.clear()
    outcomes = iter(staged.classify_batch([r.text or "" for r in valid], LLM))
    shortlists = iter(recorder.last)  # one per outcome that is not an ItemError, in order
    staged_items: list[tuple[dict, dict | None]] = []
    for record in chunk:
        outcome = None if record.error else next(outcomes)
        if outcome is None or isinstance(outcome, ItemError):
            staged_items.append((output_record(record, outcome), None))
            continue
        rendered = deferrer.prompts[record.text or ""]
        custom_id = f"line-{record.line}"
        item = {**record.head(), "custom_id": custom_id, "slots": rendered.slots,
                "candidates": [c.to_json() for c in next(shortlists)]}
        body = deferrer.llm.request(rendered) if rendered.slots else None
        staged_items.append((item, body))
    return staged_items


class _RequestFiles:
    """requests-001.jsonl, requests-002.jsonl, ... within the Batch API's per-file limits."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.paths: list[Path] = []
        self._file = None
        self._count = self._bytes = 0

    def add(self, custom_id: str, body: dict) -> None:
        line = (json.dumps({"custom_id": custom_id, "method": "POST", "url": CHAT_URL,
                            "body": body}, ensure_ascii=False) + "\n").encode()
        if (self._file is None or self._count >= MAX_REQUESTS_PER_FILE
                or self._bytes + len(line) > MAX_BYTES_PER_FILE):
            self.close()
            self.paths.append(self.directory / f"requests-{len(self.paths) + 1:03d}.jsonl")
            self._file = self.paths[-1].open("wb")
            self._count = self._bytes = 0
        self._file.write(line)
        self._count += 1
        self._bytes += len(line)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass(frozen=True)
class Answer:
    """One line of the provider's results: the content and usage, or why there is none."""

    content: str | None = None
    usage: Usage = field(default_factory=Usage)
    reason: str | None = None
    message: str = ""


class _Saved:
    """A CandidateSource over the shortlists saved at prepare time, looked up by custom_id."""

    def __init__(self, index: LabelIndex, shortlists: dict[str, list[Candidate]]) -> None:
        self.index = index
        self.shortlists = shortlists

    def candidates(self, texts: Sequence[str], top_k: int,
                   within: frozenset[str] | None = None) -> list[list[Candidate]]:
        return [self.shortlists[custom_id] for custom_id in texts]

    def describe(self) -> str:
        """Shortlists come from the files, not from a search."""
        return "saved shortlists"


class _Replayer:
    """A Selector that reads the provider's answer for a custom_id instead of calling the LLM."""

    def __init__(self, answers: dict[str, Answer], slots: dict[str, dict[str, str]]) -> None:
        self.answers = answers
        self.slots = slots

    def select(self, text: str, options: Sequence[Option], max_labels: int) -> Selection:
        slots = self.slots[text]
        if not slots:
            return Selection([], Usage(), 0, 0.0)
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
    replay = Pipeline(_Saved(pipeline.index, shortlists), pipeline.threshold, pipeline.top_k,
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
