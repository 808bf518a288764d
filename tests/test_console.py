"""The web console in-process: pages, fragments, auth, runs and the HTML report (no browser).

The same pages in a real browser against a real `labelrank serve`: test_console_browser.py.
"""

from __future__ import annotations

import contextlib
import html
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result
from fastapi import FastAPI
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from eval.cli import app as cli_app
from eval.compare import flips
from eval.console_runs import runs_routers
from eval.run import load_run
from retrieval.index import LabelIndex
from service.cli import serve
from service.console.pages import console_router
from tests.conftest import api_settings
from tests.fake_openai import FakeOpenAI, Reply
from tests.run_files import two_runs

KEY = "console-test-key-4f9c2a7e"


def run_cli(*args: str, cwd: Path) -> Result:
    """`labelrank ARGS` in-process, in `cwd`, with no LABELRANK_ or OPENAI_ variables."""
    unset = {k: None for k in os.environ if k.startswith(("LABELRANK_", "OPENAI_"))}
    with contextlib.chdir(cwd):
        return CliRunner().invoke(cli_app, list(args), env=unset)


@pytest.fixture
def runs(tmp_path: Path, readonly_index: LabelIndex) -> tuple[Path, Path]:
    """Two real run files of the same gold set, B stricter than A."""
    return two_runs(readonly_index, tmp_path / "work", tmp_path / "runs")


@pytest.fixture
def make_console(make_client: Callable[..., TestClient],
                 runs: tuple[Path, Path]) -> Callable[..., TestClient]:
    """In-process clients of the whole served app: API, console and Runs pages."""
    return lambda **overrides: make_client(
        extra_routers=[console_router(), *runs_routers(runs[0].parent)], **overrides)


@pytest.fixture
def console(make_console: Callable[..., TestClient]) -> TestClient:
    return make_console()


def text_of(page: str) -> str:
    """The visible text of an HTML fragment, whitespace collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


def test_pages_hold_no_data_and_fragments_need_the_key(
        make_console: Callable[..., TestClient]) -> None:
    client = make_console(api_key=KEY)
    for shell in ("/", "/labels", "/labels?id=pets.cats", "/runs"):
        answer = client.get(shell)
        assert answer.status_code == 200 and "Cats" not in answer.text
    fragments = [("GET", "/console/labels/tree"), ("GET", "/console/labels/search?q=cat"),
                 ("GET", "/console/label/pets.cats"), ("GET", "/console/runs")]
    for method, url in fragments:
        assert client.request(method, url).status_code == 401
    assert client.post("/console/classify", json={"texts": "my cat"}).status_code == 401
    key = {"Authorization": f"Bearer {KEY}"}
    assert "Cats" in client.get("/console/label/pets.cats", headers=key).text
    assert client.post("/console/classify", json={"texts": "my cat"}, headers=key).is_success


def test_playground_explains_labels_candidates_evidence_and_empty_answers(
        console: TestClient) -> None:
    texts = "my kitten keeps biting my hands\n\n  \nthe moons of jupiter are icy\n"
    answer = console.post("/console/classify", json={"texts": texts, "mode": "retrieval",
                                                     "top_k": 4})
    assert answer.status_code == 200, answer.text
    cat, moons = answer.text.split('<article class="result card"')[1:]
    assert "✓ Cats" in cat and "pets.cats" in cat and "in Pets" in cat
    assert "“why does my kitten bite my hands”" in text_of(cat)  # the example that matched
    assert cat.count("<tr") == 5  # header + top_k candidates
    assert "No label." in moons and "none reached the calibrated threshold" in moons
    assert "below_threshold" in moons and "best candidate similarity" in moons
    assert "C01 | " in text_of(cat) and "no LLM is configured" in cat  # prompt, never sent


def test_playground_knobs_and_errors(console: TestClient) -> None:
    within = console.post("/console/classify", json={"texts": "my kitten bites",
                                                     "subtree": "food"})
    assert "pets.cats" not in within.text and "food." in within.text
    unknown = console.post("/console/classify", json={"texts": "my cat", "subtree": "nope"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_subtree"
    empty = console.post("/console/classify", json={"texts": " \n "})
    assert empty.status_code == 422 and "at least one text" in empty.json()["error"]["message"]
    too_long = console.post("/console/classify", json={"texts": "my cat\n" + "x" * 30_000})
    assert too_long.status_code == 200 and "text_too_long" in too_long.text
    assert "✓ Cats" in too_long.text  # the other text is still answered


def test_prompt_preview_is_what_the_llm_receives(make_console: Callable[..., TestClient],
                                                  fake_llm: FakeOpenAI) -> None:
    client = make_console(llm_base_url=fake_llm.base_url, llm_api_key="test",
                          llm_model="fake-model", llm_max_attempts=1)
    fake_llm.default = Reply.labels("C01")
    text = "my kitten keeps biting my hands"
    answer = client.post("/console/classify", json={"texts": text, "mode": "llm"})
    assert answer.status_code == 200, answer.text
    assert fake_llm.request_count == 1  # the preview itself calls nothing
    sent = fake_llm.requests[0]["messages"]
    shown = [html.unescape(block) for block in re.findall(r"<pre>(.*?)</pre>", answer.text,
                                                          flags=re.S)]
    assert shown == [sent[0]["content"], sent[1]["content"]]
    assert "✓ Cats" in answer.text and "mode: llm" in answer.text


def test_label_search_tree_and_detail(console: TestClient) -> None:
    found = console.get("/console/labels/search", params={"q": "KITTEN"}).text
    assert "pets.cats" in found and "1 label match" in text_of(found)  # by alias, any case
    assert "pets.cats" in console.get("/console/labels/search", params={"q": "pets.c"}).text
    roots = console.get("/console/labels/tree").text
    assert "Pets" in roots and "pets.cats" not in roots  # children load when opened
    assert "pets.cats" in console.get("/console/labels/tree", params={"parent": "pets"}).text
    detail = text_of(console.get("/console/label/pets.cats").text)
    assert "Cat care and behaviour." in detail and "kittens" in detail
    assert "“why does my kitten bite my hands”" in detail
    assert console.get("/console/label/nope").status_code == 404


def test_runs_list_one_run_and_comparison(console: TestClient,
                                          runs: tuple[Path, Path]) -> None:
    a, b = runs
    listing = console.get("/console/runs").text
    assert a.stem in listing and b.stem in listing and "f1_samples" in listing
    one = console.get(f"/console/runs/{a.stem}").text
    assert "<polyline" in one and "Labels, worst first" in one and "pets.cats" in one
    compared = console.get("/console/runs/compare", params={"a": a.stem, "b": b.stem}).text
    flipped = flips(load_run(a), load_run(b))
    assert flipped, "the strict run should lose a label the loose one found"
    assert html.escape(flipped[0].text) in compared
    assert "threshold" in text_of(compared) and "0.3" in compared and "0.6" in compared
    for bad in ("nope", "..%2Fsecrets", "a b"):
        assert console.get(f"/console/runs/{bad}").status_code == 404
    assert console.get("/runs/compare", params={"a": a.stem, "b": b.stem}).status_code == 200


def test_html_report_is_one_self_contained_file(tmp_path: Path,
                                                runs: tuple[Path, Path]) -> None:
    a, b = runs
    done = run_cli("report", str(a), str(b), "--out", "r.html", cwd=tmp_path)
    assert done.exit_code == 0, done.stderr
    page = (tmp_path / "r.html").read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing to fetch
    assert "<script" not in page and "<link" not in page and "<style>" in page
    assert page.count("<svg viewBox") == 3  # the comparison's curves, then each run's
    assert html.escape(flips(load_run(a), load_run(b))[0].text) in page
    assert 'href="/runs' not in page  # no links into a console that is not there


def test_docs_load_swagger_from_the_app(console: TestClient) -> None:
    docs = console.get("/docs").text
    assets = re.findall(r"""(?:src|href)=["']([^"']+)""", docs)
    assert assets and all(url.startswith("/static/docs/") for url in assets)
    for url in assets:
        assert console.get(url).status_code == 200


def test_serve_mounts_the_console_and_the_pages_given_from_above(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def pages_of(app: FastAPI) -> list[int]:
        client = TestClient(app)  # no lifespan: only what needs no index
        return [client.get(url).status_code
                for url in ("/", "/labels", "/runs", "/static/console/console.js")]

    assert pages_of(serve.build_app(api_settings(tmp_path), tmp_path, runs_routers)) == [200] * 4
    assert pages_of(serve.build_app(api_settings(tmp_path), tmp_path))[2] == 404
    monkeypatch.setenv(serve.PAGES_ENV, "eval.console_runs:runs_routers")
    monkeypatch.setenv(serve.RUNS_ENV, str(tmp_path))
    monkeypatch.setenv("LABELRANK_DB", str(tmp_path / "db"))
    assert pages_of(serve.worker_app()) == [200] * 4
