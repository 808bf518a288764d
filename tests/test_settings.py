"""Settings: every field documented in .env.example, OpenAI's variable names honoured."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings

ENV_EXAMPLE = Path(__file__).parents[1] / ".env.example"


def test_every_setting_is_in_env_example() -> None:
    documented = {line.split("=", 1)[0] for line in ENV_EXAMPLE.read_text().splitlines()
                  if line and not line.startswith("#")}
    expected = {f"LABELRANK_{name.upper()}" for name in Settings.model_fields}
    assert expected == documented


def test_openai_variable_names_configure_the_llm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    settings = Settings(_env_file=None)
    assert settings.llm_configured and settings.llm_base_url == "http://127.0.0.1:9/v1"
    assert "sk-test" not in repr(settings)


def test_no_llm_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "LABELRANK_LLM_BASE_URL",
                 "LABELRANK_LLM_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert not Settings(_env_file=None).llm_configured


def test_invalid_values_are_refused() -> None:
    with pytest.raises(ValidationError):
        Settings(_env_file=None, top_k=0)
    with pytest.raises(ValidationError):
        Settings(_env_file=None, aggregation="mean")


def test_a_copy_of_env_example_loads_as_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    from_example = Settings(_env_file=ENV_EXAMPLE)
    assert from_example.llm_max_answer_tokens is None and from_example.embed_threads is None
    assert not from_example.llm_configured
    assert from_example.model_dump() == Settings(_env_file=None).model_dump()
