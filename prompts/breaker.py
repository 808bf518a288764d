"""A circuit breaker for the LLM endpoint: stop calling it while it fails, probe it to recover."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Literal

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Opens after `fail_max` failed calls in a row; after `reset_s`, one trial call decides.

    Thread-safe without holding a lock during the call itself, so concurrent LLM requests
    are not serialised (the reason this is not pybreaker, whose `call` holds its lock).
    """

    def __init__(self, fail_max: int = 5, reset_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.fail_max = fail_max
        self.reset_s = reset_s
        self._clock = clock
        self._lock = threading.Lock()
        self._state: State = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._trial_running = False
        self.opens = 0

    @property
    def state(self) -> State:
        """closed (calls pass), open (calls refused) or half_open (one trial call running)."""
        with self._lock:
            return self._state

    def allow(self) -> bool:
        """Whether a call may go out now; every True must be followed by `record`."""
        with self._lock:
            if self._state == "closed":
                return True
            if self._state == "open" and self._clock() - self._opened_at >= self.reset_s:
                self._state, self._trial_running = "half_open", False
            if self._state == "half_open" and not self._trial_running:
                self._trial_running = True
                return True
            return False

    def record(self, ok: bool) -> None:
        """The outcome of an allowed call: a success closes the circuit, failures open it."""
        with self._lock:
            if ok:
                self._state, self._failures, self._trial_running = "closed", 0, False
                return
            self._failures += 1
            if self._state == "half_open" or self._failures >= self.fail_max:
                if self._state != "open":
                    self.opens += 1
                self._state, self._opened_at, self._trial_running = "open", self._clock(), False

    def retry_in_s(self) -> float:
        """Seconds until an open circuit lets a trial call through (0 when not open)."""
        with self._lock:
            if self._state != "open":
                return 0.0
            return max(0.0, self.reset_s - (self._clock() - self._opened_at))

    def describe(self) -> dict[str, object]:
        """State, failures in a row, times opened, and seconds until the next trial."""
        retry_in = round(self.retry_in_s(), 2)
        with self._lock:
            return {"state": self._state, "failures": self._failures, "opens": self.opens,
                    "retry_in_s": retry_in}
