"""A small fake OpenAI-compatible HTTP server for tests that talk real HTTP."""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

CHAT_PATH = "/v1/chat/completions"
MODELS_PATH = "/v1/models"
FAKE_MODEL = "fake-model"

_ERROR_TYPES: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "not_found"),
    408: ("timeout_error", None),
    409: ("conflict_error", None),
    422: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
}


@dataclass(frozen=True)
class Reply:
    """One scripted answer to a chat completion request."""

    status: int = 200
    body: bytes | None = None
    content: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    drop_connection: bool = False
    usage: tuple[int, int] | None = None
    trickle_s: float = 0.0  # spread the body over this many seconds, a few bytes at a time
    header_trickle_s: float = 0.0  # the same for the status line and headers

    @classmethod
    def labels(cls, *slot_ids: str, **kw: Any) -> Reply:
        """A normal answer whose content is `{"labels": [...slot_ids]}`."""
        return cls(content=json.dumps({"labels": list(slot_ids)}), **kw)

    @classmethod
    def error(cls, status: int, retry_after: float | None = None, message: str = "error") -> Reply:
        """An OpenAI-style error body with the given status, plus Retry-After when given."""
        err_type, code = _ERROR_TYPES.get(
            status, ("server_error" if status >= 500 else "invalid_request_error", None)
        )
        body = json.dumps({"error": {"message": message, "type": err_type, "code": code}})
        headers: dict[str, str] = {}
        if retry_after is not None:
            headers["Retry-After"] = _format_seconds(retry_after)
        return cls(status=status, body=body.encode(), headers=headers)

    @classmethod
    def garbage(cls) -> Reply:
        """A 200 answer (Content-Type application/json) whose body is not JSON at all."""
        return cls(body=b"<html>502 Bad Gateway?! this is not JSON {{{")

    @classmethod
    def hang(cls, seconds: float) -> Reply:
        """A normal (empty labels) answer sent only after sleeping `seconds`."""
        return cls.labels(delay_s=seconds)

    @classmethod
    def disconnect(cls) -> Reply:
        """Close the connection without sending any HTTP response."""
        return cls(drop_connection=True)

    @classmethod
    def empty_choice(cls) -> Reply:
        """A 200 chat.completion whose `choices` list is empty."""
        body = {"id": "chatcmpl-fake-empty", "object": "chat.completion", "created": 0,
                "model": FAKE_MODEL, "choices": [],
                "usage": {"prompt_tokens": 1, "completion_tokens": 0, "total_tokens": 1}}
        return cls(body=json.dumps(body).encode())

    @classmethod
    def slow_stream(cls, seconds: float, *slot_ids: str) -> Reply:
        """A normal answer whose body trickles in over `seconds`: each read is quick, the
        whole is slow (a per-read timeout never fires)."""
        return cls.labels(*slot_ids, trickle_s=seconds)

    @classmethod
    def format_refused(cls) -> Reply:
        """What llama.cpp's server answers an OpenAI `json_schema` response_format: an HTTP
        500 carrying the request validation error."""
        return cls.error(500, message=(
            "[{'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), 'msg': "
            "\"Input should be 'text' or 'json_object'\", 'input': 'json_schema'}]"))

    @classmethod
    def slow_headers(cls, seconds: float, *slot_ids: str) -> Reply:
        """A normal answer whose status line and headers trickle in over `seconds`, the body
        then at once: no read waits long, yet the response starts late."""
        return cls.labels(*slot_ids, header_trickle_s=seconds)


Responder = Callable[[dict[str, Any]], Reply]


def _format_seconds(seconds: float) -> str:
    """Render seconds as an integer string when whole, else as a decimal."""
    return str(int(seconds)) if float(seconds).is_integer() else repr(float(seconds))


def _message_text(messages: Any) -> str:
    """Concatenate the text of all chat messages (string or content-part form)."""
    if not isinstance(messages, list):
        return ""
    parts: list[str] = []
    for msg in messages:
        if not isinstance(msg, dict):
            continue
        content = msg.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "".join(parts)


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows its FakeOpenAI and keeps quiet about dropped sockets."""

    daemon_threads = True
    block_on_close = False
    fake: FakeOpenAI

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore connection errors (clients that timed out); report anything else."""
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    """Request handler that delegates to the owning FakeOpenAI."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        """Register the connection so close() can shut it down."""
        super().setup()
        self.server.fake._track(self.connection, add=True)

    def finish(self) -> None:
        """Unregister the connection."""
        try:
            super().finish()
        finally:
            self.server.fake._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default stderr access log."""

    def _path(self) -> str:
        """Request path without query string or trailing slash."""
        return self.path.split("?", 1)[0].rstrip("/") or "/"

    def _read_body(self) -> bytes:
        """Read the request body according to Content-Length."""
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        """Write a complete response with Content-Length."""
        hdrs = {"Content-Type": "application/json"}
        hdrs.update(headers or {})
        self.send_response(status)
        for name, value in hdrs.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _send_reply(self, reply: Reply) -> None:
        """Write a scripted Reply as an HTTP response."""
        if reply.trickle_s > 0:
            self._trickle(reply)
            return
        if reply.header_trickle_s > 0:
            self._trickle_headers(reply)
            return
        self._send(reply.status, reply.body or b"", reply.headers)

    def _trickle(self, reply: Reply, pieces: int = 20) -> None:
        """Write the headers at once, then the body in `pieces` spread over `trickle_s`."""
        body = reply.body or b""
        self.send_response(reply.status)
        for name, value in {"Content-Type": "application/json", **reply.headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.flush()
        step = max(1, -(-len(body) // pieces))
        for start in range(0, len(body), step):
            if self.server.fake._stopping.wait(reply.trickle_s / pieces):
                self.close_connection = True
                return
            self.wfile.write(body[start:start + step])
            self.wfile.flush()

    def _trickle_headers(self, reply: Reply, pieces: int = 20) -> None:
        """Write the status line and headers in `pieces` spread over `header_trickle_s`, then
        the body at once."""
        body = reply.body or b""
        headers = {"Content-Type": "application/json", **reply.headers,
                   "Content-Length": str(len(body))}
        head = (f"HTTP/1.1 {reply.status} OK\r\n"
                + "".join(f"{name}: {value}\r\n" for name, value in headers.items())
                + "\r\n").encode()
        step = max(1, -(-len(head) // pieces))
        for start in range(0, len(head), step):
            if self.server.fake._stopping.wait(reply.header_trickle_s / pieces):
                self.close_connection = True
                return
            self.wfile.write(head[start:start + step])
            self.wfile.flush()
        self.wfile.write(body)
        self.wfile.flush()

    def do_GET(self) -> None:
        """Serve /v1/models; everything else is 404."""
        if self._path() == MODELS_PATH:
            data = {
                "object": "list",
                "data": [{"id": FAKE_MODEL, "object": "model", "created": 0, "owned_by": "fake"}],
            }
            self._send(200, json.dumps(data).encode())
        else:
            self._send_reply(Reply.error(404, message=f"Unknown path: GET {self.path}"))

    def do_POST(self) -> None:
        """Serve /v1/chat/completions from the script; everything else is 404."""
        raw = self._read_body()
        if self._path() != CHAT_PATH:
            self._send_reply(Reply.error(404, message=f"Unknown path: POST {self.path}"))
            return
        try:
            payload = json.loads(raw or b"{}")
        except ValueError:
            self._send_reply(Reply.error(400, message="Request body is not valid JSON"))
            return
        if not isinstance(payload, dict):
            self._send_reply(Reply.error(400, message="Request body must be a JSON object"))
            return
        fake = self.server.fake
        reply = fake._next_reply(payload)
        if reply.delay_s > 0 and fake._stopping.wait(reply.delay_s):
            self.close_connection = True  # server is closing: drop without answering
            return
        if reply.drop_connection:
            self.close_connection = True
            return
        if reply.body is None:
            reply = Reply(
                status=reply.status,
                body=fake._completion_body(payload, reply),
                headers=reply.headers,
                trickle_s=reply.trickle_s,
                header_trickle_s=reply.header_trickle_s,
            )
        self._send_reply(reply)

    def do_PUT(self) -> None:
        """Unsupported method: 404."""
        self._read_body()
        self._send_reply(Reply.error(404, message=f"Unknown path: PUT {self.path}"))

    def do_DELETE(self) -> None:
        """Unsupported method: 404."""
        self._send_reply(Reply.error(404, message=f"Unknown path: DELETE {self.path}"))


class FakeOpenAI:
    """OpenAI-compatible /v1/chat/completions server answering from a script; logs requests."""

    def __init__(self, default: Reply | Responder | None = None) -> None:
        """Create a stopped server; `default` answers when the queue is empty."""
        self.default: Reply | Responder = default if default is not None else Reply.labels()
        self.requests: list[dict[str, Any]] = []
        self.errors: list[BaseException] = []  # exceptions raised by responders
        self._queue: deque[Reply | Responder] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._conns: set[socket.socket] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._counter = 0

    @property
    def base_url(self) -> str:
        """Base URL for openai.OpenAI(base_url=...), e.g. http://127.0.0.1:54321/v1."""
        if self._server is None:
            raise RuntimeError("FakeOpenAI is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def request_count(self) -> int:
        """Number of chat completion requests received so far."""
        with self._lock:
            return len(self.requests)

    def enqueue(self, *replies: Reply | Responder) -> None:
        """Append replies (or responders) to the FIFO script, consumed one per request."""
        with self._lock:
            self._queue.extend(replies)

    def start(self) -> FakeOpenAI:
        """Bind 127.0.0.1 on a free port and serve in a daemon thread."""
        if self._server is not None:
            raise RuntimeError("FakeOpenAI already started")
        self._stopping.clear()
        server = _Server(("127.0.0.1", 0), _Handler)
        server.fake = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-openai",
            daemon=True,
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Wake sleeping replies, stop serving and drop open connections; idempotent."""
        server = self._server
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=2)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeOpenAI:
        """Start the server."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the server."""
        self.close()

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        """Add or remove an open client connection."""
        with self._lock:
            if add:
                self._conns.add(conn)
            else:
                self._conns.discard(conn)

    def _next_reply(self, payload: dict[str, Any]) -> Reply:
        """Record the request and resolve the next scripted reply."""
        with self._lock:
            self.requests.append(payload)
            item = self._queue.popleft() if self._queue else self.default
        if isinstance(item, Reply):
            return item
        try:
            reply = item(payload)
        except Exception as exc:
            with self._lock:
                self.errors.append(exc)
            return Reply.error(500, message=f"fake responder raised {exc!r}")
        if not isinstance(reply, Reply):
            return Reply.error(500, message=f"fake responder returned {type(reply).__name__}")
        return reply

    def _completion_body(self, payload: dict[str, Any], reply: Reply) -> bytes:
        """Build a chat.completion JSON body for a normal reply."""
        with self._lock:
            self._counter += 1
            n = self._counter
        if reply.usage is not None:
            prompt_tokens, completion_tokens = reply.usage
        else:
            prompt_tokens = len(_message_text(payload.get("messages"))) // 4
            completion_tokens = max(1, len(reply.content) // 4)
        data = {
            "id": f"chatcmpl-fake-{n}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": payload.get("model", FAKE_MODEL),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": reply.content},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        return json.dumps(data).encode()


def like_llama_cpp(answer: Reply | Responder) -> Responder:
    """Answer like `answer`, except that `json_schema` requests are refused as llama.cpp does."""

    def respond(payload: dict[str, Any]) -> Reply:
        if (payload.get("response_format") or {}).get("type") == "json_schema":
            return Reply.format_refused()
        return answer(payload) if callable(answer) else answer

    return respond


def faults(hang_s: float = 3.0) -> dict[str, Reply]:
    """One scripted reply per kind of LLM fault, by name."""
    return {
        "429_retry_after": Reply.error(429, retry_after=0.05),
        "429": Reply.error(429),
        "500": Reply.error(500),
        "502": Reply.error(502),
        "503": Reply.error(503),
        "hang": Reply.hang(hang_s),
        "disconnect": Reply.disconnect(),
        "invalid_json": Reply.garbage(),
        "schema_violation": Reply(content=json.dumps({"labels": "C01", "extra": True})),
        "ids_outside": Reply.labels("C99", "X1", "not.a.label"),
        "duplicate_ids": Reply.labels("C01", "C01", "C01"),
        "too_many": Reply.labels(*(f"C{i:02d}" for i in range(1, 50))),
        "empty_choice": Reply.empty_choice(),
        "slow_stream": Reply.slow_stream(hang_s, "C01"),
        "slow_headers": Reply.slow_headers(hang_s, "C01"),
    }


def with_faults(answer: Reply | Responder, rate: float, seed: int = 0,
                hang_s: float = 3.0) -> Responder:
    """Answer like `answer`, except that a share `rate` of requests get a random fault."""
    import random

    rng, choices, lock = random.Random(seed), list(faults(hang_s).values()), threading.Lock()

    def respond(payload: dict[str, Any]) -> Reply:
        with lock:
            fault = rng.choice(choices) if rng.random() < rate else None
        if fault is not None:
            return fault
        return answer(payload) if callable(answer) else answer

    return respond
