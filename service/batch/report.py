"""Batch progress (a bar on a terminal, log lines elsewhere) and the end-of-run summary."""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TextIO

from tqdm import tqdm

from prompts.selector import Usage
from service.pricing import token_cost


@dataclass
class Stats:
    """Counts over every record in OUTPUT, earlier runs included."""

    total: int | None = None
    previous: int = 0
    written: int = 0
    results: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    degraded: Counter[str] = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    started: float = field(default_factory=time.monotonic)
    cached_answers: int = 0  # LLM answers this run took from the answer cache
    cached_usage: Usage = field(default_factory=Usage)  # what they had cost when asked

    def count(self, record: dict) -> None:
        """Tally one output record."""
        error = record.get("error")
        if error is not None:
            code = error.get("code", "error") if isinstance(error, dict) else "error"
            self.errors[str(code)] += 1
            return
        self.results += 1
        if record.get("degraded"):
            self.degraded[str(record.get("reason"))] += 1
        usage = record.get("usage") or {}
        self.prompt_tokens += int(usage.get("prompt_tokens") or 0)
        self.completion_tokens += int(usage.get("completion_tokens") or 0)

    def add(self, other: Stats) -> None:
        """Fold in the counts of another part of the output (a shard)."""
        self.previous += other.previous
        self.written += other.written
        self.results += other.results
        self.errors.update(other.errors)
        self.degraded.update(other.degraded)
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cached_answers += other.cached_answers
        self.cached_usage = self.cached_usage + other.cached_usage

    def to_dict(self) -> dict[str, object]:
        """The counts as JSON-ready data (timing left out)."""
        return {"previous": self.previous, "written": self.written, "results": self.results,
                "errors": dict(self.errors), "degraded": dict(self.degraded),
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "cached_answers": self.cached_answers,
                "cached_usage": self.cached_usage.model_dump()}

    @classmethod
    def from_dict(cls, data: dict) -> Stats:
        """Counts saved by `to_dict`."""
        return cls(previous=data["previous"], written=data["written"], results=data["results"],
                   errors=Counter(data["errors"]), degraded=Counter(data["degraded"]),
                   prompt_tokens=data["prompt_tokens"],
                   completion_tokens=data["completion_tokens"],
                   cached_answers=data.get("cached_answers", 0),  # done logs of older runs
                   cached_usage=Usage(**data.get("cached_usage", {})))

    @property
    def records(self) -> int:
        """Records in OUTPUT so far."""
        return self.previous + self.written

    @property
    def rate(self) -> float:
        """Records written per second by this run."""
        return self.written / max(time.monotonic() - self.started, 1e-9)


def estimate_cost(stats: Stats, model: str, prices: dict[str, tuple[float, float]],
                  discount: float = 1.0) -> float | None:
    """USD for the tokens so far at the model's per-million prices; None when it has no price."""
    if not stats.prompt_tokens and not stats.completion_tokens:
        return 0.0
    return token_cost(stats.prompt_tokens, stats.completion_tokens, model, prices, discount)


def summary(stats: Stats, model: str, prices: dict[str, tuple[float, float]],
            discount: float = 1.0) -> str:
    """A few lines: counts, errors by reason, degraded, tokens, cost, speed."""
    lines = [f"batch: {stats.records} records in output ({stats.written} written now, "
             f"{stats.previous} already there): {stats.results} results, "
             f"{sum(stats.degraded.values())} degraded, {sum(stats.errors.values())} errors"]
    if stats.errors:
        lines.append("  errors: " + _counts(stats.errors))
    if stats.degraded:
        lines.append("  degraded: " + _counts(stats.degraded))
    if stats.prompt_tokens or stats.completion_tokens:
        cost = estimate_cost(stats, model, prices, discount)
        money = (f"estimated ${cost:.4f} ({model}{', batch price' if discount != 1 else ''})"
                 if cost is not None else f"no price for {model!r} in LABELRANK_LLM_PRICES")
        lines.append(f"  tokens: {stats.prompt_tokens} prompt + {stats.completion_tokens} "
                     f"completion; {money}")
    if stats.cached_answers:
        saved = stats.cached_usage
        lines.append(f"  LLM answers from the cache: {stats.cached_answers} (no request; "
                     f"{saved.prompt_tokens} prompt + {saved.completion_tokens} completion "
                     "tokens of the above not spent again)")
    lines.append(f"  {time.monotonic() - stats.started:.1f} s, {stats.rate:.1f} records/s")
    return "\n".join(lines)


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in counter.most_common())


class Progress:
    """Shows progress: a tqdm bar on a terminal, a plain line every `every_s` seconds otherwise."""

    def __init__(self, stats: Stats, every_s: float = 10.0, tty: bool | None = None,
                 stream: TextIO | None = None) -> None:
        self.stats = stats
        self.every_s = every_s
        self.stream = stream or sys.stderr
        self._last = time.monotonic()
        self.in_flight = 0
        tty = self.stream.isatty() if tty is None else tty
        self._bar = tqdm(total=stats.total, initial=stats.previous, unit="rec",
                         file=self.stream, dynamic_ncols=True, mininterval=0.5) if tty else None

    def advance(self, records: list[dict]) -> None:
        """Count freshly written records and show where the run stands."""
        for record in records:
            self.stats.count(record)
        self.stats.written += len(records)
        self._show()

    def add(self, shard: Stats) -> None:
        """Count a finished shard of a sharded run and show where the run stands."""
        self.stats.add(shard)
        self._show()

    def unfinished(self, written: int) -> None:
        """Records written so far by shards still running, shown until their shard is added."""
        self.in_flight = written
        self._show()

    def _show(self) -> None:
        if self._bar is not None:
            self._bar.update(self.stats.records + self.in_flight - self._bar.n)
            self._bar.set_postfix(tokens=self.stats.prompt_tokens + self.stats.completion_tokens,
                                  errors=sum(self.stats.errors.values()),
                                  degraded=sum(self.stats.degraded.values()), refresh=False)
        elif time.monotonic() - self._last >= self.every_s:
            self._last = time.monotonic()
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def line(self) -> str:
        """One plain progress line."""
        s = self.stats
        of = f"/{s.total}" if s.total else ""
        records = s.records + self.in_flight
        rate = (s.written + self.in_flight) / max(time.monotonic() - s.started, 1e-9)
        eta = ""
        if s.total and rate > 0:
            eta = f", ETA {max(s.total - records, 0) / rate:.0f} s"
        return (f"batch: {records}{of} records, {rate:.1f} records/s{eta}, "
                f"tokens {s.prompt_tokens + s.completion_tokens}, "
                f"errors {sum(s.errors.values())}, degraded {sum(s.degraded.values())}")

    def close(self) -> None:
        """Close the bar."""
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
