"""The sidecar beside a batch OUTPUT: what index and settings wrote it, checked on resume."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from prompts.template import load_prompt
from retrieval.errors import LabelrankError
from service.engine import Engine
from service.settings import Settings

# Settings that change how a run goes but never what a record says; every other setting is
# recorded and checked, so a knob added later is guarded without anyone remembering to list it.
OPERATIONAL = frozenset({
    "db", "chroma_host", "chroma_port", "collection", "embed_batch_size", "embed_threads",
    "llm_api_key", "llm_timeout_s", "llm_max_attempts", "llm_max_wait_s", "llm_max_total_s",
    "llm_concurrency",
    "llm_prices", "api_key", "api_write_key", "max_body_bytes", "max_batch_items",
    "microbatch_size", "microbatch_wait_ms", "index_refresh_s", "feedback_log",
    "compact_dead_ratio", "compact_min_dead_slots"})
LLM_ONLY = frozenset({"prompt", "max_text_tokens", "max_prompt_tokens"})


class BatchMismatchError(LabelrankError):
    code = "batch_mismatch"
    status = 409


def meta_path(output: Path) -> Path:
    """`OUTPUT.meta.json`."""
    return output.with_name(output.name + ".meta.json")


def run_config(engine: Engine, mode: str, source: str, text_field: str,
               id_field: str) -> dict[str, object]:
    """Everything that decides what a record says: index fingerprint and effective settings."""
    effective = engine.settings
    chosen: dict[str, object] = {
        name: getattr(effective, name) for name in sorted(Settings.model_fields)
        if name not in OPERATIONAL
        and (mode == "llm" or not (name.startswith("llm_") or name in LLM_ONLY))}
    if mode == "llm":
        chosen["prompt_sha256"] = load_prompt(effective.prompt).sha256
    config = {"index": engine.index.fingerprint(), "source": source, "mode": mode,
              "text_field": text_field, "id_field": id_field, "settings": chosen}
    return json.loads(json.dumps(config, default=str))  # as it reads back from the file


def differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Human-readable `key: old -> new` lines, nested keys dotted."""
    found = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        if isinstance(before, dict) and isinstance(after, dict):
            found += differences(before, after, f"{prefix}{key}.")
        elif before != after:
            found.append(f"{prefix}{key}: {before!r} -> {after!r}")
    return found


def check_and_record(path: Path, config: dict, has_records: bool, force: bool) -> None:
    """Refuse to mix configurations in one OUTPUT unless forced; then record the current one."""
    write_meta(path, checked(path, read_meta(path), config, has_records, force))


def checked(path: Path, previous: dict | None, config: dict, has_records: bool,
            force: bool) -> dict[str, object]:
    """`{config, history, updated}` for a file that held `previous`, or a mismatch error."""
    history: list[dict] = []
    if has_records:
        if previous is None and not force:
            raise BatchMismatchError(
                f"{path.name} is missing, so the records already in the output cannot be "
                "checked against this run; pass --force to continue anyway", path=str(path))
        changed = differences(previous.get("config", {}), config) if previous else []
        if changed and not force:
            raise BatchMismatchError(
                "the output was written with a different index or settings ("
                + "; ".join(changed[:8]) + "); pass --force to continue anyway, or choose "
                "another OUTPUT", path=str(path), changed=changed)
        history = (previous or {}).get("history", [])
        if changed:
            history = [*history, previous.get("config") if previous else None]
    return {"config": config, "history": history, "updated": time.time()}


def read_meta(path: Path) -> dict | None:
    """The sidecar's content, or None when there is none."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise BatchMismatchError(f"{path} is not valid JSON ({exc}); delete it and pass --force",
                                 path=str(path)) from None


def write_meta(path: Path, content: dict) -> None:
    """Replace the sidecar atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(content, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)
