"""An httpx transport that bounds a whole exchange (connect, headers, body), not each read.

httpx timeouts apply per network operation: a server that sends a few bytes every second, of
its headers or of its body, keeps a request alive far past `timeout`. This transport gives
each request one deadline, `total_s` after it starts, and hands every socket operation only
the time left until then; past it, the operation raises httpx's timeout of its kind
(`ConnectTimeout`, `ReadTimeout`, `WriteTimeout`), which the openai client reports as a timeout.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import httpcore
import httpx

_local = threading.local()  # the deadline of the request this thread is exchanging, if any


def _time_left(timeout: float | None, error: type[httpcore.TimeoutException]) -> float | None:
    """The smaller of an operation's own timeout and the time left to the deadline."""
    deadline = getattr(_local, "deadline", None)
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise error("the exchange took longer than the total timeout")
    return left if timeout is None else min(timeout, left)


class _BoundedNetworkStream(httpcore.NetworkStream):
    """A socket stream whose reads and writes end by the deadline of the current request."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self.inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.inner.read(max_bytes, _time_left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.inner.write(buffer, _time_left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self.inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _BoundedNetworkStream(self.inner.start_tls(
            ssl_context, server_hostname, _time_left(timeout, httpcore.ConnectTimeout)))

    def get_extra_info(self, info: str) -> Any:
        return self.inner.get_extra_info(info)


class _BoundedBackend(httpcore.NetworkBackend):
    """httpcore's socket backend, with connects and streams bounded by the deadline."""

    def __init__(self) -> None:
        self.inner = httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        return _BoundedNetworkStream(self.inner.connect_tcp(
            host, port, _time_left(timeout, httpcore.ConnectTimeout), local_address,
            socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None
                            ) -> httpcore.NetworkStream:
        return _BoundedNetworkStream(self.inner.connect_unix_socket(
            path, _time_left(timeout, httpcore.ConnectTimeout), socket_options))

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


class DeadlineTransport(httpx.HTTPTransport):
    """An HTTP transport whose every exchange ends within `total_s`, however the server trickles."""

    def __init__(self, total_s: float, limits: httpx.Limits | None = None) -> None:
        limits = limits or httpx.Limits(max_connections=100, max_keepalive_connections=20)
        super().__init__(limits=limits)
        self.total_s = total_s
        # httpx takes no network backend, so the pool it built is replaced by one that uses ours.
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(), max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry, network_backend=_BoundedBackend())

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send the request and receive the headers under the deadline; the body follows it."""
        deadline = time.monotonic() + self.total_s
        _local.deadline = deadline
        try:
            response = super().handle_request(request)
        finally:
            _local.deadline = None
        # httpx types `stream` as its own SyncByteStream; _BoundedBody is a drop-in iterable.
        response.stream = _BoundedBody(response.stream, deadline)  # type: ignore[arg-type]
        return response


class _BoundedBody(httpx.SyncByteStream):
    """A response body read under its request's deadline (in whichever thread reads it)."""

    def __init__(self, stream: httpx.SyncByteStream, deadline: float) -> None:
        self.stream, self.deadline = stream, deadline

    def __iter__(self) -> Iterator[bytes]:
        chunks = iter(self.stream)
        while True:
            _local.deadline = self.deadline
            try:
                chunk = next(chunks, None)
            finally:
                _local.deadline = None
            if chunk is None:
                return
            yield chunk

    def close(self) -> None:
        self.stream.close()
