"""One writer process per embedded index directory: `labelrank index` refuses a directory that
another process serves or indexes, with the lock `serve` takes (real processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from eval.cli import app
from retrieval.embedder import Embedder
from retrieval.index import LabelIndex, chroma_client
from service.jobs.indexing import build_or_update
from service.locking import LOCK_NAME, DirectoryBusyError
from tests.conftest import MINI_CATALOG, free_port, make_settings, wait_http
from tests.test_state import ROOT, synthetic_catalog

HOLD = ("import sys; from pathlib import Path; from service.locking import hold_directory; "
        "held = hold_directory(Path(sys.argv[1]), sys.argv[2]); print('held', flush=True); "
        "sys.stdin.read()")
QUIET = {"LABELRANK_EMBED_THREADS": "1", "LABELRANK_SELF_CALIBRATION_TEXTS": "0",
         "LABELRANK_CHROMA_HOST": "", "LABELRANK_LLM_BASE_URL": "", "OPENAI_BASE_URL": "",
         "LABELRANK_API_KEY": ""}


@pytest.fixture
def held_by_server(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """Another process holding the directory lock the way `labelrank serve` does."""
    db = tmp_path / "db"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(db), "serve"], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield db, holder.pid
    finally:
        holder.kill()
        holder.wait(10)


def labelrank(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "from eval.cli import main; main()", *args],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **QUIET})


def test_index_refuses_a_directory_that_another_process_serves(
        tmp_path: Path, held_by_server: tuple[Path, int]) -> None:
    db, pid = held_by_server
    settings = make_settings(tmp_path, db=db)
    with pytest.raises(DirectoryBusyError) as refused:
        build_or_update(settings, MINI_CATALOG, [])
    assert refused.value.code == "index_in_use"
    assert f"already served by another process (labelrank serve, pid {pid})" in str(
        refused.value)
    assert not (db / "chroma.sqlite3").exists()  # nothing was written

    env = {k: None for k in os.environ if k.startswith(("LABELRANK_", "OPENAI_"))}
    cli = CliRunner().invoke(app, ["index", str(MINI_CATALOG), "--db", str(db)], env=env)
    assert cli.exit_code == 2 and "error [index_in_use]" in cli.stderr
    assert "PUT /v1/labels" in cli.stderr  # says how to change labels instead


def test_the_lock_is_released_with_its_process(tmp_path: Path,
                                               held_by_server: tuple[Path, int]) -> None:
    db, _ = held_by_server
    holder_lock = json.loads((db / LOCK_NAME).read_text())
    assert holder_lock["purpose"] == "serve"
    subprocess.run(["kill", "-9", str(holder_lock["pid"])], check=True)
    deadline = time.monotonic() + 10
    while True:  # the kernel drops a flock when its holder dies, however it dies
        try:
            report, _ = build_or_update(make_settings(tmp_path, db=db), MINI_CATALOG, [])
            break
        except DirectoryBusyError:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert report.labels_added == 9
    assert json.loads((db / LOCK_NAME).read_text())["pid"] == os.getpid()


@pytest.mark.slow
def test_index_refuses_while_labelrank_serve_runs(tmp_path: Path) -> None:
    db = tmp_path / "db"
    built = labelrank("index", str(MINI_CATALOG), "--db", str(db))
    assert built.wait(300) == 0
    port = free_port()
    server = labelrank("serve", "--db", str(db), "--port", str(port))
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", server, timeout_s=120)
        index = labelrank("index", str(MINI_CATALOG), "--db", str(db), "--no-prune")
        _, err = index.communicate(timeout=120)
        assert index.returncode == 2, err
        assert "error [index_in_use]" in err and f"pid {server.pid}" in err
        # The server still answers, and its label edits still work.
        url = f"http://127.0.0.1:{port}/v1/labels/extra"
        assert httpx.put(url, json={"name": "Extra"}).status_code == 200
        assert httpx.get(url).json()["name"] == "Extra"
    finally:
        server.terminate()
        server.wait(30)


@pytest.mark.slow
def test_two_index_runs_on_one_directory_do_not_interleave(tmp_path: Path,
                                                           embedder: Embedder) -> None:
    catalog, db = tmp_path / "catalog.jsonl", tmp_path / "db"
    synthetic_catalog(catalog, 3000)
    first = labelrank("index", str(catalog), "--db", str(db))
    deadline = time.monotonic() + 120
    while not ((db / LOCK_NAME).is_file()
               and str(first.pid) in (db / LOCK_NAME).read_text()):
        assert first.poll() is None, first.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "the first run never took the directory"
        time.sleep(0.05)
    second = labelrank("index", str(MINI_CATALOG), "--db", str(db))
    _, err = second.communicate(timeout=120)
    assert second.returncode == 2 and "error [index_in_use]" in err, err
    assert f"being indexed by another process (labelrank index, pid {first.pid})" in err
    assert first.poll() is None, "the first run ended before the others were refused"
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    index = LabelIndex(chroma_client(db), embedder)
    assert len(index.labels) == 3000 and not set(index.labels) & {"pets", "money"}
