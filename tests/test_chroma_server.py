"""The Chroma server path end to end: `labelrank index`, `classify` and a two-worker `serve`,
all real processes against one real `chroma run`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import MINI_CATALOG, free_port, wait_http

LABELRANK = str(Path(sys.executable).parent / "labelrank")


def server_env(tmp_path: Path, host: str, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABELRANK_")}
    return env | {"LABELRANK_CHROMA_HOST": host, "LABELRANK_CHROMA_PORT": str(port),
                  "LABELRANK_DB": str(tmp_path / "must-not-exist"),
                  "LABELRANK_INDEX_REFRESH_S": "0.2"}


def worker_pids(pid: int) -> list[str]:
    """uvicorn's worker processes under `pid` (spawned; the resource tracker is not one)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [c for c in children
            if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


def top_label(response: httpx.Response) -> str | None:
    assert response.status_code == 200, response.text
    labels = response.json()["labels"]
    return labels[0]["id"] if labels else None


def every_worker_ready(url: str, process: subprocess.Popen, in_a_row: int = 8,
                       timeout_s: float = 180) -> None:
    """Ready answers on `in_a_row` fresh connections, which land on either worker: the first
    worker to load must not stand for the one still loading its model."""
    deadline = time.monotonic() + timeout_s
    streak = 0
    while streak < in_a_row:
        assert process.poll() is None, "labelrank serve exited"
        assert time.monotonic() < deadline, f"not every worker was ready in {timeout_s} s"
        with httpx.Client(base_url=url, timeout=10) as fresh:
            streak = streak + 1 if fresh.get("/readyz").status_code == 200 else 0
        time.sleep(0.05)


@pytest.mark.slow  # three CLI processes and two workers, each loading the model: minutes
def test_index_classify_and_shared_workers_over_a_chroma_server(
        tmp_path: Path, chroma_server: tuple[str, int]) -> None:
    env = server_env(tmp_path, *chroma_server)
    run = {"env": env, "capture_output": True, "text": True, "timeout": 300, "cwd": tmp_path}
    indexed = subprocess.run([LABELRANK, "index", str(MINI_CATALOG)], **run)
    assert indexed.returncode == 0, indexed.stderr
    assert "vectors: +" in indexed.stderr

    classified = subprocess.run([LABELRANK, "classify", "--mode", "retrieval",
                                 "my kitten keeps biting my hands"], **run)
    assert classified.returncode == 0, classified.stderr
    assert json.loads(classified.stdout)["labels"][0]["id"] == "pets.cats"

    port = free_port()
    serve = subprocess.Popen([LABELRANK, "serve", "--port", str(port), "--workers", "2"],
                             env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    text = "lava poured down the side of the erupting volcano"
    volcano = {"name": "Volcanoes", "examples": ["the volcano erupted and lava flowed"]}
    try:
        wait_http(f"{url}/readyz", serve, timeout_s=180)
        every_worker_ready(url, serve)
        assert len(worker_pids(serve.pid)) == 2
        with httpx.Client(base_url=url, timeout=30) as http:
            assert top_label(http.post("/v1/classify", json={"text": text})) is None
            assert http.put("/v1/labels/geo.volcanoes", json=volcano).status_code == 200
            time.sleep(1.0)  # well past the refresh interval: every worker has re-read the index
            for _ in range(8):  # fresh connections land on either worker
                with httpx.Client(base_url=url, timeout=30) as fresh:
                    assert top_label(fresh.post("/v1/classify", json={"text": text})) \
                        == "geo.volcanoes"
    finally:
        serve.terminate()
        _, stderr = serve.communicate(timeout=30)
    assert "Traceback" not in stderr
    assert not (tmp_path / "must-not-exist").exists()  # nothing embedded was opened
