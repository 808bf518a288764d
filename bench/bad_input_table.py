"""Print the bad-input table of docs/reliability.md from real requests and real commands.

    .venv/bin/python bench/bad_input_table.py > /tmp/table.md

Serves the mini test catalog with uvicorn on loopback (default limits, an API key), sends
every case of tests/bad_inputs.py, runs `labelrank index` on every bad catalog, and prints
one Markdown row per case with the answer actually received.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from retrieval.catalog import load_catalog  # noqa: E402
from retrieval.embedder import SentenceTransformerEmbedder  # noqa: E402
from retrieval.index import LabelIndex, chroma_client  # noqa: E402
from service.api.app import create_app  # noqa: E402
from tests.bad_inputs import API_CASES, CATALOG_CASES, index_command, send  # noqa: E402
from tests.conftest import MINI_CATALOG, make_settings  # noqa: E402
from tests.test_api import serve, wait_ready  # noqa: E402

KEY = "table-key-0123456789abcdef"


def main() -> None:
    embedder = SentenceTransformerEmbedder()
    with tempfile.TemporaryDirectory(prefix="labelrank-bad-") as tmp:
        settings = make_settings(Path(tmp), max_batch_items=16, api_key=KEY)
        LabelIndex(chroma_client(settings.db), embedder).sync(load_catalog(MINI_CATALOG))
        print("| input | request | answer (status, code) | message |\n|---|---|---|---|")
        with serve(create_app(settings, load_embedder=lambda: embedder)) as url, \
                httpx.Client(base_url=url, timeout=60) as client:
            wait_ready(client)
            for case in API_CASES:
                status, code, message = send(client, case, KEY)
                size = f", {len(case.body):,} B" if case.body and len(case.body) > 10_000 else ""
                print(f"| {case.name} | `{case.method} {case.path}`{size} | {status} "
                      f"`{code or '-'}` | {message[:90].replace('|', '/') or '-'} |")
        print("\n| catalog | `labelrank index` exit status and line |\n|---|---|")
        for n, case in enumerate(CATALOG_CASES):
            status, line = index_command(case, Path(tmp) / f"case{n}", Path(tmp) / "catdb")
            line = line.replace(str(Path(tmp)), "…").replace("|", "/")
            print(f"| {case.name} | {status}: `{line[:120]}` |")


if __name__ == "__main__":
    main()
