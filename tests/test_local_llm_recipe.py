"""The local-LLM recipe: `labelrank llm serve-local` and docs/local-llm.md export the same
variables, and they give the selector limits that fit a local engine (no engine needed)."""

from __future__ import annotations

import re
from pathlib import Path

from prompts.local_llm import MODEL_ALIAS, client_env
from service.settings import Settings

DOC = Path(__file__).resolve().parents[1] / "docs" / "local-llm.md"
SLOWEST_LOCAL_ANSWER_S = 42  # Gemma 3 270M on 2 shared cores, README recipe


def test_the_docs_export_what_serve_local_prints() -> None:
    exported = re.search(r"^export (LABELRANK_LLM_BASE_URL=.*)$", DOC.read_text(), re.M)
    assert exported is not None
    documented = dict(pair.split("=", 1) for pair in exported.group(1).split())
    assert documented == client_env("http://127.0.0.1:8080/v1")


def test_the_recipe_fits_a_local_engine() -> None:
    settings = Settings(_env_file=None, **{
        name.removeprefix("LABELRANK_").lower(): value
        for name, value in client_env("http://127.0.0.1:8080/v1").items()})
    assert settings.llm_model == MODEL_ALIAS and settings.llm_configured
    assert settings.llm_concurrency == 1  # the engine answers one request at a time
    assert settings.llm_timeout_s >= 2 * SLOWEST_LOCAL_ANSWER_S
