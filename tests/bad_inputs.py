"""Every bad input of docs/reliability.md, with the answer it must get (tests and the doc
generator bench/bad_input_table.py both read this list)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ApiCase:
    """One HTTP request and the answer it must get: a status and a stable error code."""

    name: str
    method: str
    path: str
    body: bytes | None
    status: int
    code: str  # empty for an accepted request
    content_type: str = "application/json"

    @property
    def writes(self) -> bool:
        """A request that would change the index if it were accepted."""
        return self.method in ("PUT", "PATCH", "DELETE") or self.path == "/v1/feedback"


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


def _nested(depth: int) -> bytes:
    return b'{"text": ' + b"[" * depth + b"]" * depth + b"}"


CLASSIFY, BATCH = "/v1/classify", "/v1/classify/batch"
MB = 1_000_000

API_CASES = [
    ApiCase("empty text", "POST", CLASSIFY, _json({"text": ""}), 422, "invalid_text"),
    ApiCase("whitespace-only text", "POST", CLASSIFY, _json({"text": " \t\n "}), 422,
            "invalid_text"),
    ApiCase("control characters only", "POST", CLASSIFY, _json({"text": "\x00\x01\x1b\x7f"}),
            422, "invalid_text"),
    ApiCase("lone surrogate (\\ud800)", "POST", CLASSIFY, b'{"text": "\\ud800 cat"}', 422,
            "invalid_request"),
    ApiCase("invalid UTF-8 bytes", "POST", CLASSIFY, b'{"text": "\xff\xfe cat"}', 400,
            "bad_request"),
    ApiCase("not JSON at all", "POST", CLASSIFY, b"text=cat", 422, "invalid_request"),
    ApiCase("1 MB body", "POST", CLASSIFY, _json({"text": "a" * MB}), 413, "payload_too_large"),
    ApiCase("10 MB body", "POST", CLASSIFY, _json({"text": "a" * 10 * MB}), 413,
            "payload_too_large"),
    ApiCase("text over max_text_chars", "POST", CLASSIFY, _json({"text": "cat " * 6000}), 413,
            "text_too_long"),
    ApiCase("deeply nested JSON (100k levels)", "POST", CLASSIFY, _nested(100_000), 400,
            "bad_request"),
    ApiCase("wrong type: text is a number", "POST", CLASSIFY, _json({"text": 5}), 422,
            "invalid_request"),
    ApiCase("wrong type: top_k is a string", "POST", CLASSIFY,
            _json({"text": "cat", "top_k": "many"}), 422, "invalid_request"),
    ApiCase("unknown field", "POST", CLASSIFY, _json({"text": "cat", "colour": "red"}), 422,
            "invalid_request"),
    ApiCase("huge top_k", "POST", CLASSIFY, _json({"text": "cat", "top_k": 10**12}), 422,
            "invalid_request"),
    ApiCase("negative top_k", "POST", CLASSIFY, _json({"text": "cat", "top_k": -1}), 422,
            "invalid_request"),
    ApiCase("negative max_labels", "POST", CLASSIFY, _json({"text": "cat", "max_labels": -5}),
            422, "invalid_request"),
    ApiCase("unknown mode", "POST", CLASSIFY, _json({"text": "cat", "mode": "magic"}), 422,
            "invalid_request"),
    ApiCase("batch of 0 items (a valid no-op)", "POST", BATCH, _json({"items": []}), 200, ""),
    ApiCase("batch over max_batch_items", "POST", BATCH,
            _json({"items": [{"text": "cat"}] * 17}), 413, "batch_too_large"),
    ApiCase("negative offset", "GET", "/v1/labels?offset=-1", None, 422, "invalid_request"),
    ApiCase("huge limit", "GET", "/v1/labels?limit=100000000", None, 422, "invalid_request"),
    ApiCase("unknown label id (GET)", "GET", "/v1/labels/no.such.label", None, 404,
            "unknown_label"),
    ApiCase("unknown label id (PATCH)", "PATCH", "/v1/labels/no.such.label",
            _json({"name": "X"}), 404, "unknown_label"),
    ApiCase("unknown label id (DELETE)", "DELETE", "/v1/labels/no.such.label", None, 404,
            "unknown_label"),
    ApiCase("feedback names an unknown label", "POST", "/v1/feedback",
            _json({"text": "my cat", "labels": ["no.such.label"]}), 404, "unknown_label"),
    ApiCase("label with a missing parent", "PUT", "/v1/labels/orphan",
            _json({"name": "Orphan", "parent": "no.such.parent"}), 422, "invalid_label"),
    ApiCase("parent cycle (pets under pets.cats)", "PATCH", "/v1/labels/pets",
            _json({"parent": "pets.cats"}), 422, "invalid_label"),
    ApiCase("label is its own parent", "PATCH", "/v1/labels/pets.dogs",
            _json({"parent": "pets.dogs"}), 422, "invalid_label"),
    ApiCase("label id with a control character", "PUT", "/v1/labels/bad%07id",
            _json({"name": "Bad"}), 422, "invalid_request"),
    ApiCase("empty label name", "PUT", "/v1/labels/x", _json({"name": "  "}), 422,
            "invalid_request"),
    ApiCase("delete a parent without cascade", "DELETE", "/v1/labels/pets", None, 409,
            "label_has_children"),
]


@dataclass(frozen=True)
class CatalogCase:
    """A catalog file (and optionally an examples file) that `labelrank index` must refuse."""

    name: str
    catalog: bytes
    examples: bytes | None
    message: str  # a part of the one-line error


def _lines(*records: dict) -> bytes:
    return "\n".join(json.dumps(r) for r in records).encode() + b"\n"


CATALOG_CASES = [
    CatalogCase("empty catalog file", b"", None, "has no labels"),
    CatalogCase("duplicate ids", _lines({"id": "a", "name": "A"}, {"id": "a", "name": "B"}),
                None, "duplicate"),
    CatalogCase("parent cycle", _lines({"id": "a", "name": "A", "parent": "b"},
                                       {"id": "b", "name": "B", "parent": "a"}), None, "cycle"),
    CatalogCase("missing parent", _lines({"id": "a", "name": "A", "parent": "zzz"}), None,
                "zzz"),
    CatalogCase("invalid JSON line", b'{"id": "a", "name": "A"}\n{"id": "b", name}\n', None,
                ":2: not valid JSON"),
    CatalogCase("JSON nested 100k levels deep", b'{"id": "a", "name": ' + b"[" * 100_000
                + b"]" * 100_000 + b"}\n", None, "not valid JSON"),
    CatalogCase("invalid UTF-8 bytes", b'{"id": "a", "name": "\xff\xfe"}\n', None,
                ":1: not valid UTF-8"),
    CatalogCase("label without a name", _lines({"id": "a"}), None, "name"),
    CatalogCase("examples for unknown labels", _lines({"id": "a", "name": "A"}),
                _lines({"labels": ["nope"], "text": "some text"}), "unknown label id 'nope'"),
]


def send(client: Any, case: ApiCase, key: str) -> tuple[int, str, str]:
    """Send one case with an httpx-style client: (status, error code, error message)."""
    answer = client.request(case.method, case.path, content=case.body,
                            headers={"Authorization": f"Bearer {key}",
                                     "Content-Type": case.content_type})
    try:
        error = answer.json().get("error") or {}
    except ValueError:
        error = {"code": "(not JSON)", "message": answer.text[:100]}
    return answer.status_code, str(error.get("code", "")), str(error.get("message", ""))


def index_command(case: CatalogCase, workdir: Path, db: Path) -> tuple[int, str]:
    """Run `labelrank index` on the case's files: (exit status, the one line it prints)."""
    from typer.testing import CliRunner

    from eval.cli import app

    workdir.mkdir(parents=True, exist_ok=True)
    catalog = workdir / "catalog.jsonl"
    catalog.write_bytes(case.catalog)
    args = ["index", str(catalog), "--db", str(db)]
    if case.examples is not None:
        (workdir / "examples.jsonl").write_bytes(case.examples)
        args += ["--examples", str(workdir / "examples.jsonl")]
    result = CliRunner().invoke(app, args)
    exc = result.exception
    if exc is not None and not isinstance(exc, SystemExit):
        return result.exit_code, f"unexpected: {exc!r}"
    return result.exit_code, result.output.strip()
