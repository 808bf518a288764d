"""Batch progress (a bar on a terminal, log lines elsewhere) and the end-of-run summary."""

from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TextIO

from tqdm import tqdm

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
        tty = self.stream.isatty() if tty is None else tty
        self._bar = tqdm(total=stats.total, initial=stats.previous, unit="rec",
                         file=self.stream, dynamic_ncols=True, mininterval=0.5) if tty else None

    def advance(self, records: list[dict]) -> None:
        """Count freshly written records and show where the run stands."""
        for record in records:
            self.stats.count(record)
        self.stats.written += len(records)
        if self._bar is not None:
            self._bar.update(len(records))
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
        eta = ""
        if s.total and s.rate > 0:
            eta = f", ETA {max(s.total - s.records, 0) / s.rate:.0f} s"
        return (f"batch: {s.records}{of} records, {s.rate:.1f} records/s{eta}, "
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
