"""OpenAI Batch API, first half: `prepare` retrieves for every input and writes the /v1/batches
request files. It goes through `Pipeline.classify_batch` with a recording candidate source and
a selector that renders each prompt instead of sending it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TypedDict

from prompts.selector import LLMSelector
from retrieval.iterables import chunks
from service.adapters import PromptOnly, Recording
from service.batch.io import InputRecord, open_input, read_records, resolve_format
from service.batch.run import DEFAULTS, BatchOptions, output_record
from service.batch.sidecar import run_config
from service.engine import Engine
from service.pipeline import ClassifyOptions, NoLLMConfigured, Pipeline
from service.results import ItemError

CHAT_URL = "/v1/chat/completions"
MAX_REQUESTS_PER_FILE = 50_000  # the Batch API's limits per input file
MAX_BYTES_PER_FILE = 190_000_000
BATCH_DISCOUNT = 0.5
LLM = ClassifyOptions(mode="llm")


def batch_dir(output: Path) -> Path:
    """`OUTPUT.openai-batch/`: request files, per-item state, meta."""
    return output.with_name(output.name + ".openai-batch")


class Prepared(TypedDict):
    """What `prepare` wrote: counts, the request files and their directory."""

    items: int
    requests: int
    errors: int
    files: list[str]
    directory: str


class _Staging:
    """The pipeline with a recording source and a prompt-only selector, one chunk at a time."""

    def __init__(self, pipeline: Pipeline, llm: LLMSelector) -> None:
        self.llm = llm
        self.recorder, self.deferrer = Recording(pipeline.retriever), PromptOnly(llm.prompt)
        self.pipeline = Pipeline(self.recorder, pipeline.threshold, pipeline.top_k,
                                 self.deferrer, pipeline.max_text_chars, llm_concurrency=1)

    def stage(self, chunk: list[InputRecord]) -> list[tuple[dict, dict | None]]:
        """Each record's item line and, when the LLM would be called, its request body."""
        self.recorder.shortlists.clear()
        self.deferrer.prompts.clear()
        valid = [r for r in chunk if r.error is None]
        outcomes = iter(self.pipeline.classify_batch([r.text or "" for r in valid], LLM))
        staged: list[tuple[dict, dict | None]] = []
        for record in chunk:
            outcome = None if record.error else next(outcomes)
            if outcome is None or isinstance(outcome, ItemError):
                staged.append((output_record(record, outcome), None))
                continue
            text = record.text or ""
            rendered = self.deferrer.prompts[text]
            item = {**record.head(), "custom_id": f"line-{record.line}", "slots": rendered.slots,
                    "candidates": [c.to_json() for c in self.recorder.shortlists[text]]}
            staged.append((item, self.llm.request(rendered) if rendered.slots else None))
        return staged


def prepare(engine: Engine, source: str, output: Path,
            options: BatchOptions = DEFAULTS) -> Prepared:
    """Retrieve for every input and write the request files; returns what was written."""
    pipeline = engine.pipeline
    if not isinstance(pipeline.selector, LLMSelector):
        raise NoLLMConfigured("--openai-batch prepare needs the LLM settings: set "
                              "LABELRANK_LLM_MODEL and OPENAI_API_KEY (no request is sent)")
    staging = _Staging(pipeline, pipeline.selector)
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
            for item, body in staging.stage(chunk):
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
