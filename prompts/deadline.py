"""An httpx transport that bounds a whole response, not each read.

httpx timeouts apply per network operation: a server that sends a few bytes every second
keeps a request alive far past `timeout`. This transport raises `httpx.ReadTimeout` once the
body is still arriving after `total_s`, which the openai client reports as a timeout.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx


class DeadlineTransport(httpx.BaseTransport):
    """Wraps a transport so each response must be complete within `total_s`."""

    def __init__(self, total_s: float, inner: httpx.BaseTransport | None = None) -> None:
        self.total_s = total_s
        self.inner = inner or httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send the request; the response body is read under the deadline."""
        deadline = time.monotonic() + self.total_s
        response = self.inner.handle_request(request)
        response.stream = _BoundedStream(response.stream, deadline, request)  # type: ignore[arg-type]
        return response

    def close(self) -> None:
        """Close the wrapped transport."""
        self.inner.close()


class _BoundedStream(httpx.SyncByteStream):
    """A response body that raises ReadTimeout when it is still arriving after the deadline."""

    def __init__(self, stream: httpx.SyncByteStream, deadline: float,
                 request: httpx.Request) -> None:
        self.stream, self.deadline, self.request = stream, deadline, request

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.stream:
            if time.monotonic() > self.deadline:
                raise httpx.ReadTimeout("the response took longer than the total timeout",
                                        request=self.request)
            yield chunk

    def close(self) -> None:
        self.stream.close()
