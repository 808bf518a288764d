"""The web console in a real browser: Debian's Chromium driven by Playwright, against a real
`labelrank serve` on loopback with the bundled demo catalog and an API key.

Run with `make test-browser`. Each page is saved as a screenshot in $LABELRANK_SCREENSHOTS (or
a pytest temp directory) for a person to look at.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from eval.compare import flips
from eval.run import load_run
from retrieval.index import LabelIndex
from tests.conftest import free_port, wait_http
from tests.run_files import two_runs

playwright = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
from playwright.sync_api import Browser, Page, expect  # noqa: E402

pytestmark = pytest.mark.browser

LABELRANK = str(Path(sys.executable).parent / "labelrank")
DEMO_CATALOG = Path(__file__).parent.parent / "service" / "demo_data" / "catalog.jsonl"
KEY = "browser-test-key-8d41c6f2a9e0"
# Headless, and quiet: without the networking flags Chromium keeps calling home, which on a
# machine without internet means a stream of failing requests.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@dataclass(frozen=True)
class Served:
    """A running `labelrank serve` and the two run files its Runs pages list."""

    url: str
    run_a: Path
    run_b: Path


def chromium() -> str:
    """$LABELRANK_CHROMIUM, else Debian's chromium; a skip that says how to get one."""
    for candidate in (os.environ.get("LABELRANK_CHROMIUM"), shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and Path(candidate).exists():
            return candidate
    pytest.skip("no Chromium to drive: apt-get install -y chromium (.ci/run does it where apt "
                "works), or set LABELRANK_CHROMIUM")


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the screenshots go."""
    wanted = os.environ.get("LABELRANK_SCREENSHOTS")
    folder = Path(wanted) if wanted else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory,
           readonly_index: LabelIndex) -> Iterator[Served]:
    """`labelrank index` of the demo catalog, then `labelrank serve` with a key and two runs."""
    chromium()  # skip before minutes of setup when there is no browser
    work = tmp_path_factory.mktemp("console")
    run_a, run_b = two_runs(readonly_index, work / "eval", work / "runs")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABELRANK_", "OPENAI_"))}
    env["LABELRANK_API_KEY"] = KEY
    # The pages show the demo's answers, which self-calibration's choice decides: its budget
    # counts work, not time, so the default 30 s stops at the same setting on any machine (a
    # wall-clock budget cut token matching on a machine twice as slow as ours, and the panda
    # text lost its second label). tests/test_self_calibration_bound.py covers the budget.
    indexed = subprocess.run([LABELRANK, "index", str(DEMO_CATALOG), "--db", str(work / "db")],
                             env=env, cwd=work, capture_output=True, text=True, timeout=600)
    assert indexed.returncode == 0, indexed.stderr
    port = free_port()
    log = (work / "serve.log").open("w")  # a file, not a pipe: a full pipe would stall it
    process = subprocess.Popen([LABELRANK, "serve", "--db", str(work / "db"), "--port",
                                str(port), "--runs", str(work / "runs")],
                               env=env, cwd=work, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/readyz", process, timeout_s=300)
        yield Served(url, run_a, run_b)
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
    assert "Traceback" not in (work / "serve.log").read_text()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Chromium, headless, with a fresh profile (Playwright makes one per launch)."""
    with playwright.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def open_page(browser: Browser, served: Served, with_key: bool = True) -> Page:
    """A page in a new context (its own session storage), holding the key if asked."""
    context = browser.new_context(base_url=served.url, viewport={"width": 1280, "height": 900})
    if with_key:
        context.add_init_script(f"sessionStorage.setItem('labelrank-api-key', {json.dumps(KEY)})")
    page = context.new_page()
    page.set_default_timeout(60_000)
    outside = []
    page.on("request", lambda request: outside.append(request.url)
            if not request.url.startswith((served.url, "data:")) else None)
    page.outside_requests = outside  # type: ignore[attr-defined]
    return page


@pytest.fixture
def page(browser: Browser, served: Served) -> Iterator[Page]:
    opened = open_page(browser, served)
    yield opened
    assert opened.outside_requests == []  # type: ignore[attr-defined]  # offline: all local
    opened.context.close()


def classify(page: Page, text: str) -> None:
    """Type `text` in the playground and wait for its answer."""
    page.goto("/")
    page.get_by_label("Texts").fill(text)
    page.get_by_role("button", name="Classify").click()
    expect(page.locator("#results article")).to_have_count(1)


def test_multi_branch_text_gets_both_labels(page: Page, shots: Path) -> None:
    classify(page, "pandas spend most of the day chewing bamboo shoots")
    chosen = page.locator("#results .chosen")
    expect(chosen).to_contain_text("Bears")
    expect(chosen).to_contain_text("Bamboo and grasses")
    expect(page.locator("#results .shortlist tbody tr").first).to_contain_text("“")  # evidence
    page.screenshot(path=shots / "playground.png", full_page=True)


def test_text_with_no_label_says_why(page: Page, shots: Path) -> None:
    classify(page, "every finite group of prime order is cyclic")
    none = page.locator("#results .none")
    expect(none).to_contain_text("No label.")
    expect(none).to_contain_text("none reached the calibrated threshold")
    expect(none).to_contain_text("below_threshold")
    page.screenshot(path=shots / "playground-none.png", full_page=True)


def test_prompt_preview_shows_the_candidate_slots(page: Page, shots: Path) -> None:
    classify(page, "pandas spend most of the day chewing bamboo shoots")
    page.get_by_text("Prompt the LLM would get").click()
    user = page.locator("#results .prompt pre").nth(1)
    expect(user).to_be_visible()
    expect(user).to_contain_text("C01 | ")
    expect(user).to_contain_text("C02 | ")
    expect(user).to_contain_text("pandas spend most of the day")
    page.get_by_role("heading", name="User message").scroll_into_view_if_needed()
    page.screenshot(path=shots / "playground-prompt.png")


def test_confirming_a_label_changes_the_next_answer(page: Page) -> None:
    text = "my hamster runs on its squeaky wheel half the night"
    classify(page, text)
    unchosen = page.locator("#results tbody tr:not(.is-chosen)").first
    name = unchosen.locator("button[data-feedback=confirm]").get_attribute("data-name")
    expect(page.locator("#results .chosen")).not_to_contain_text(name or "?")
    unchosen.get_by_role("button", name="Confirm").click()
    expect(page.locator("#status")).to_contain_text(f"Confirmed {name}")
    expect(page.locator("#results .chosen")).to_contain_text(name or "?")


def test_add_a_label_in_the_browser_then_classify_with_it(page: Page, shots: Path) -> None:
    page.goto("/labels")
    expect(page.locator("#tree")).to_contain_text("Animals")
    page.get_by_text("New label", exact=True).click()
    form = page.locator("#new-label")
    form.get_by_label("Id", exact=True).fill("volcanoes")
    form.get_by_label("Name", exact=True).fill("Volcanoes")
    form.get_by_label("Description").fill("Volcanoes, eruptions and lava.")
    form.get_by_label("Examples").fill("the volcano erupted and lava flowed down the slope\n"
                                       "ash from the eruption closed the airport for days")
    form.get_by_role("button", name="Create label").click()
    expect(page.locator("#label h2")).to_have_text("Volcanoes")
    expect(page.locator("#tree")).to_contain_text("Volcanoes")
    page.get_by_label("Search by id, name or alias").fill("volc")
    expect(page.locator("#hits")).to_contain_text("Volcanoes")
    page.screenshot(path=shots / "labels.png", full_page=True)

    classify(page, "lava poured down the side of the erupting mountain")
    expect(page.locator("#results .chosen")).to_contain_text("Volcanoes")


def test_label_page_browses_the_tree(page: Page, shots: Path) -> None:
    page.goto("/labels?id=animals.bears")
    expect(page.locator("#label h2")).to_have_text("Bears")
    expect(page.locator("#label")).to_contain_text("giant panda cubs are born pink")
    page.locator("#tree summary", has_text="Animals").click()
    expect(page.locator("#tree")).to_contain_text("Dogs")
    page.screenshot(path=shots / "label-detail.png", full_page=True)


def test_run_comparison_lists_a_flipped_text(page: Page, served: Served, shots: Path) -> None:
    flipped = flips(load_run(served.run_a), load_run(served.run_b))
    assert flipped
    page.goto("/runs")
    expect(page.locator("table.runs tbody tr")).to_have_count(2)
    page.screenshot(path=shots / "runs.png", full_page=True)
    page.get_by_role("button", name="Compare A with B").click()
    expect(page.locator(".compare")).to_contain_text("Texts that changed")
    flip = page.locator("details.flip", has_text=flipped[0].text)
    expect(flip).to_have_count(1)
    flip.locator("summary").click()
    expect(flip.locator(".cands table")).to_have_count(2)  # both runs' candidates
    page.screenshot(path=shots / "compare.png", full_page=True)
    page.goto(f"/runs/{served.run_a.stem}")
    expect(page.locator(".run svg polyline")).to_have_count(1)
    page.screenshot(path=shots / "run.png", full_page=True)


def test_html_report_opens_from_a_file_with_no_server(browser: Browser, served: Served,
                                                     tmp_path: Path, shots: Path) -> None:
    out = tmp_path / "report.html"
    written = subprocess.run([LABELRANK, "report", str(served.run_a), str(served.run_b),
                              "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert written.returncode == 0, written.stderr
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(out.as_uri())
    flipped = flips(load_run(served.run_a), load_run(served.run_b))[0].text
    expect(page.locator("details.flip", has_text=flipped)).to_have_count(1)
    expect(page.locator("svg polyline")).to_have_count(4)  # two curves compared, one per run
    assert requests == [out.as_uri()]  # the file itself and nothing else
    page.screenshot(path=shots / "report.png", full_page=True)
    page.close()


def test_pages_show_no_data_until_the_key_is_given(browser: Browser, served: Served,
                                                  shots: Path) -> None:
    page = open_page(browser, served, with_key=False)
    page.goto("/labels")
    dialog = page.locator("#key-dialog")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("needs an API key")
    expect(page.locator("#tree")).not_to_contain_text("Animals")
    page.screenshot(path=shots / "key.png")
    page.get_by_label("Key", exact=True).fill("not-the-key")
    page.get_by_role("button", name="Use this key").click()
    expect(dialog).to_contain_text("That key was refused")
    page.get_by_label("Key", exact=True).fill(KEY)
    page.get_by_role("button", name="Use this key").click()
    expect(page.locator("#tree")).to_contain_text("Animals")
    expect(dialog).to_be_hidden()
    page.context.close()


def test_api_docs_render_without_a_network(page: Page, shots: Path) -> None:
    page.goto("/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("labelrank")
    expect(page.locator(".swagger-ui")).to_contain_text("/v1/classify")
    page.screenshot(path=shots / "docs.png")
