"""`labelrank doctor config` and the same checks before `labelrank serve`."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from eval.cli import app
from retrieval.index import LabelIndex
from service.cli.config_check import check_config, weak_key
from tests.conftest import make_settings

STRONG = "q7Vx2LmP9rT4wZ8kY3nB6cD1"
CLEAN_ENV = {"LABELRANK_API_KEY": "", "LABELRANK_API_WRITE_KEY": "", "LABELRANK_CHROMA_HOST": "",
             "LABELRANK_LLM_BASE_URL": "", "LABELRANK_LLM_API_KEY": "", "OPENAI_API_KEY": "",
             "OPENAI_BASE_URL": "", "LABELRANK_EMBEDDER": ""}


def codes(tmp_path: Path, host: str = "127.0.0.1", **settings: object) -> dict[str, str]:
    return {f.code: f.severity for f in check_config(make_settings(tmp_path, **settings), host)}


def test_loopback_defaults_are_clean(tmp_path: Path) -> None:
    assert codes(tmp_path) == {}


def test_public_bind_needs_a_strong_key(tmp_path: Path) -> None:
    assert codes(tmp_path, "0.0.0.0") == {"no_api_key_on_public_bind": "error"}
    assert codes(tmp_path, "0.0.0.0", api_key="changeme") == {"weak_api_key": "error"}
    assert codes(tmp_path, "127.0.0.1", api_key="short") == {"weak_api_key": "warning"}
    assert codes(tmp_path, "0.0.0.0", api_key=STRONG) == {}
    assert codes(tmp_path, "::1") == {}


@pytest.mark.parametrize("key", ["changeme", "your-api-key-here-please", "sk-...",
                                 "aaaaaaaaaaaaaaaaaaaaaaaa", "<your key>", "test"])
def test_placeholder_and_short_keys_are_weak(key: str) -> None:
    from pydantic import SecretStr

    assert weak_key(SecretStr(key)) is not None


def test_read_and_write_keys(tmp_path: Path) -> None:
    assert codes(tmp_path, api_write_key=STRONG) == {"write_key_without_read_key": "warning"}
    assert codes(tmp_path, api_key=STRONG, api_write_key=STRONG) == {
        "same_read_and_write_key": "warning"}


def test_chroma_host_must_be_private(tmp_path: Path) -> None:
    for private in ("127.0.0.1", "localhost", "10.1.2.3", "192.168.0.9", "fd00::1"):
        assert codes(tmp_path, chroma_host=private) == {}, private
    assert codes(tmp_path, chroma_host="8.8.8.8") == {"chroma_not_private": "error"}


def test_llm_endpoint(tmp_path: Path) -> None:
    assert codes(tmp_path, llm_base_url="http://127.0.0.1:8080/v1") == {}
    assert codes(tmp_path, llm_base_url="http://1.1.1.1/v1") == {"llm_key_missing": "error"}
    assert codes(tmp_path, llm_base_url="http://1.1.1.1/v1", llm_api_key=STRONG) == {
        "llm_key_in_clear": "error"}
    assert codes(tmp_path, llm_base_url="https://1.1.1.1/v1", llm_api_key=STRONG) == {}
    assert codes(tmp_path, llm_base_url="ftp://x") == {"llm_url_invalid": "error"}
    assert codes(tmp_path, llm_api_key=STRONG, llm_breaker_failures=0) == {}  # no URL: OpenAI
    assert codes(tmp_path, llm_base_url="http://127.0.0.1:1/v1", llm_breaker_failures=0) == {
        "llm_breaker_off": "warning"}


def test_cli_reports_and_exits_non_zero(tmp_path: Path) -> None:
    runner = CliRunner()
    env = {**CLEAN_ENV, "LABELRANK_DB": str(tmp_path / "none")}
    bad = runner.invoke(app, ["doctor", "config", "--host", "0.0.0.0"], env=env)
    assert bad.exit_code == 1
    assert "error [no_api_key_on_public_bind]" in bad.output
    assert "warning [no_index]" in bad.output
    good = runner.invoke(app, ["doctor", "config"], env={**env, "LABELRANK_API_KEY": STRONG})
    assert good.exit_code == 0, good.output
    assert STRONG not in good.output + bad.output  # keys are never printed


def test_index_embedder_mismatch(readonly_db: Path, readonly_index: LabelIndex) -> None:
    runner = CliRunner()
    env = {**CLEAN_ENV, "LABELRANK_DB": str(readonly_db)}
    assert runner.invoke(app, ["doctor", "config"], env=env).exit_code == 0
    other = runner.invoke(app, ["doctor", "config"],
                          env={**env, "LABELRANK_EMBEDDER": "/models/other-embedder"})
    assert other.exit_code == 1 and "error [index_embedder_mismatch]" in other.output


def test_serve_refuses_on_errors(tmp_path: Path) -> None:
    env = {**CLEAN_ENV, "LABELRANK_DB": str(tmp_path / "db")}
    refused = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0"], env=env)
    assert refused.exit_code == 2
    assert "no_api_key_on_public_bind" in refused.output and "refusing to serve" in refused.output
