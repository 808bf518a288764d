"""`labelrank llm serve-local`: a local LLM engine for LLM mode without an API key."""

from __future__ import annotations

import sys
from typing import Annotated

import typer


def serve_local(
    port: Annotated[int, typer.Option(help="Loopback port.")] = 8080,
) -> None:
    """Run llama.cpp's OpenAI-compatible server with the packaged Gemma 3 270M model."""
    import signal
    import time

    from prompts.local_llm import MODEL_ALIAS, LocalLLMServer, client_env

    # A plain `kill` must also stop the engine, not orphan it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = LocalLLMServer(port=port).start()
    exports = " ".join(f"{name}={value}" for name, value in client_env(server.base_url).items())
    typer.echo(f"llama.cpp is serving {MODEL_ALIAS} on {server.base_url}; point labelrank at it "
               f"(one request at a time, each allowed up to the timeout):\n  export {exports}\n"
               "Ctrl-C stops it.", err=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


def register(app: typer.Typer) -> None:
    """Add the `llm` group to the command tree."""
    group = typer.Typer(help="A local LLM engine for LLM mode without an API key.")
    group.command("serve-local")(serve_local)
    app.add_typer(group, name="llm")
